"""Patches at the data's native scale: the model sees P x P crops of the image resized
by one factor (aspect kept), not the whole image squashed to a small square, so
pinholes and hairline cracks keep their pixels. Heat maps are computed per tile
(overlapping by half a tile) and stitched back by averaging where tiles overlap."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from factory.quality.anomaly.preprocess import to_gray_float


@dataclass
class PatchConfig:
    size: int = 64  # P: the model's input is P x P
    scale: float = 1.0  # images are resized by this factor first (1.0 = native pixels), aspect kept
    stride: int | None = None  # tile step at scoring time (default P / 2)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def step(self) -> int:
        return max(1, self.stride or self.size // 2)


def rescale(image: np.ndarray, cfg: PatchConfig) -> np.ndarray:
    """Image (uint8 or float, HxW[xC]) -> float HxW in [0, 1] at the model's scale, at least P per side."""
    x = to_gray_float(image)
    H, W = x.shape
    s = cfg.scale
    h, w = max(cfg.size, int(round(H * s))), max(cfg.size, int(round(W * s)))
    if (h, w) != (H, W):
        x = np.asarray(Image.fromarray(x).resize((w, h), Image.BILINEAR), np.float32)
    return x


def rescale_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    im = Image.fromarray(np.asarray(mask, np.uint8) * 255).resize((w, h), Image.BILINEAR)
    return np.asarray(im) >= 128


def tile_starts(length: int, size: int, step: int) -> list[int]:
    """Tile origins covering [0, length) with tiles of `size`; the last one ends at the edge."""
    if length <= size:
        return [0]
    starts = list(range(0, length - size, step))
    return starts + [length - size]


def tiles(x: np.ndarray, cfg: PatchConfig) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """One rescaled image (HxW) -> (T x 1 x P x P tiles, their (y, x) origins)."""
    P = cfg.size
    pos = [(y, xx) for y in tile_starts(x.shape[0], P, cfg.step) for xx in tile_starts(x.shape[1], P, cfg.step)]
    return np.stack([x[y : y + P, xx : xx + P] for y, xx in pos])[:, None].astype(np.float32), pos


def stitch(maps: np.ndarray, pos: list[tuple[int, int]], shape: tuple[int, int]) -> np.ndarray:
    """Tile maps (T x P x P) -> one HxW map, averaged where tiles overlap."""
    acc = np.zeros(shape, np.float32)
    cnt = np.zeros(shape, np.float32)
    P = maps.shape[-1]
    for m, (y, x) in zip(maps, pos):
        acc[y : y + P, x : x + P] += m
        cnt[y : y + P, x : x + P] += 1
    return acc / np.maximum(cnt, 1)


def random_patches(images: list[np.ndarray], per_image: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """`per_image` random P x P crops of each rescaled image -> N x 1 x P x P uint8 (compact for Ray Data)."""
    out = []
    for x in images:
        H, W = x.shape
        for _ in range(per_image):
            y, xx = int(rng.integers(0, H - size + 1)), int(rng.integers(0, W - size + 1))
            out.append(x[y : y + size, xx : xx + size])
    return (np.clip(np.stack(out), 0, 1) * 255).round().astype(np.uint8)[:, None]
