"""Image folders for training generators: find images and their defect masks, and
cut square crops around defects (or away from them), resized to one training size.

Folders are listed by `factory.data.folders` (images and the masks beside them);
a folder without masks is a plain image folder: every image is used whole.
Locations may be local paths, `file://` or `s3://` URIs (downloaded first).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
from PIL import Image

from factory.data.folders import ImageRecord, read_image, read_mask


def _resize(crop: np.ndarray, size: int) -> np.ndarray:
    c = crop.shape[2]
    im = Image.fromarray(crop[:, :, 0] if c == 1 else crop)
    a = np.asarray(im.resize((size, size), Image.BICUBIC))
    return a[:, :, None] if a.ndim == 2 else a


def _square(cx: float, cy: float, side: int, w: int, h: int) -> tuple[int, int, int, int]:
    """A square of `side` centred near (cx, cy), shifted to lie inside a w x h image."""
    side = int(min(side, w, h))
    x1 = int(np.clip(round(cx - side / 2), 0, w - side))
    y1 = int(np.clip(round(cy - side / 2), 0, h - side))
    return x1, y1, x1 + side, y1 + side


def defect_crops(
    img: np.ndarray,
    mask: np.ndarray,
    size: int,
    context: float = 1.5,
    max_frac: float = 0.5,
    min_area: int = 8,
    per_long_defect: int = 3,
    rng: np.random.Generator | None = None,
) -> list[np.ndarray]:
    """Square crops around each defect (connected component of the slightly dilated
    mask): side = context x the defect's longer side. A defect too long for a crop of
    `max_frac` of the image's short side (a road crack) gives `per_long_defect` crops
    centred on its pixels instead."""
    from scipy import ndimage

    rng = rng or np.random.default_rng(0)
    h, w = mask.shape
    max_side = max(16, int(max_frac * min(h, w)))
    labels, _ = ndimage.label(ndimage.binary_dilation(mask, iterations=2))
    out = []
    for k, sl in enumerate(ndimage.find_objects(labels), start=1):
        ys, xs = sl
        if int(mask[sl].sum()) < min_area:
            continue
        side = int(context * max(ys.stop - ys.start, xs.stop - xs.start, 8))
        if side <= max_side:
            centres = [((xs.start + xs.stop) / 2, (ys.start + ys.stop) / 2)]
        else:
            py, px = np.nonzero(labels == k)
            pick = rng.choice(len(py), size=min(per_long_defect, len(py)), replace=False)
            centres = [(float(px[i]), float(py[i])) for i in pick]
            side = max_side
        for cx, cy in centres:
            x1, y1, x2, y2 = _square(cx, cy, side, w, h)
            out.append(_resize(img[y1:y2, x1:x2], size))
    return out


def clean_crops(
    img: np.ndarray,
    mask: np.ndarray | None,
    size: int,
    n: int,
    rng: np.random.Generator,
    side_frac: tuple[float, float] = (0.2, 0.6),
    tries: int = 20,
) -> list[np.ndarray]:
    """`n` random square crops that contain no defect pixel (side a random fraction
    of the image's short side), so defect-free crops match the scale of defect crops."""
    h, w = img.shape[:2]
    out = []
    for _ in range(n):
        for _ in range(tries):
            side = max(8, int(rng.uniform(*side_frac) * min(h, w)))
            x1 = int(rng.integers(0, w - side + 1))
            y1 = int(rng.integers(0, h - side + 1))
            if mask is None or not mask[y1 : y1 + side, x1 : x1 + side].any():
                out.append(_resize(img[y1 : y1 + side, x1 : x1 + side], size))
                break
    return out


def split_records(records: Sequence[ImageRecord], holdout: float, seed: int = 0) -> tuple[list, list]:
    """A seeded (train, held-out) split; held-out gets round(holdout * n), at least 1 if holdout > 0."""
    idx = np.random.default_rng(seed).permutation(len(records))
    k = 0 if holdout <= 0 else max(1, round(holdout * len(records)))
    held = sorted(idx[:k].tolist())
    train = sorted(idx[k:].tolist())
    return [records[i] for i in train], [records[i] for i in held]


def load_crops(
    records: Sequence[ImageRecord],
    role: str,
    size: int,
    channels: int = 1,
    context: float = 1.5,
    crops_per_image: int = 2,
    seed: int = 0,
    defect_values: Iterable[int] | None = None,
    limit: int | None = None,
) -> np.ndarray:
    """N x size x size x C uint8 training crops for one domain.

    role "defective": crops around the defects where a mask exists, else whole images.
    role "defect-free": random defect-free crops (crops_per_image per image).
    In a set where some images have masks, images without one are skipped.
    """
    if role not in ("defective", "defect-free"):
        raise ValueError(f"role must be 'defective' or 'defect-free', got {role!r}")
    rng = np.random.default_rng(seed)
    if any(r.mask is not None for r in records):
        # a masked set: an image without a mask (CrackForest has 37) cannot be told apart
        records = [r for r in records if r.mask is not None]
    crops: list[np.ndarray] = []
    for rec in records:
        img = read_image(rec.image, channels)
        mask = read_mask(rec.mask, defect_values) if rec.mask is not None else None
        if role == "defective":
            if mask is not None and mask.any():
                crops += defect_crops(img, mask, size, context=context, rng=rng)
            elif mask is None:
                crops.append(_resize(img, size))
        else:
            crops += clean_crops(img, mask, size, crops_per_image, rng)
        if limit is not None and len(crops) >= limit:
            crops = crops[:limit]
            break
    if not crops:
        raise ValueError(f"no {role} crops found in {len(records)} images")
    return np.stack(crops)


def to_tensor(batch: np.ndarray):
    """uint8 NxHxWxC -> float NxCxHxW in [-1, 1]."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
