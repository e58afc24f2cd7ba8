"""Simulated anomalies for training the discriminative head (DRAEM's recipe, from the
paper's description, not its code).

A Perlin-noise map thresholded into a blobby mask M picks where the anomaly goes; the
masked region is filled with a source A at a random opacity beta:
    I_a = (1 - M) * I + M * ((1 - beta) * I + beta * A)
Sources (chosen per sample):
- "patch": a patch of *another* normal image in the batch (NSA/DRAEM-style texture
  from the same line, so the head cannot win by spotting foreign textures);
- "plain": one plain grey level (DRAEM reports 96.2 image AUROC with plain fills);
- "real": a real defect cut along its mask from a labelled source (`DefectBank`),
  pasted as its deviation from its own background (intensity matched), when given.
Half the samples stay normal (target all zero), as in DRAEM. The returned mask is
exactly the set of pixels that changed, so the training target is where the anomaly is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


def perlin_noise(h: int, w: int, res: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """2-D gradient (Perlin) noise on an h x w grid with res[0] x res[1] lattice cells; values ~[-1, 1]."""
    ry, rx = res
    angles = rng.uniform(0, 2 * np.pi, (ry + 1, rx + 1))
    grad = np.stack([np.cos(angles), np.sin(angles)], -1)
    y = np.linspace(0, ry, h, endpoint=False)
    x = np.linspace(0, rx, w, endpoint=False)
    yi, xi = np.floor(y).astype(int), np.floor(x).astype(int)
    fy, fx = (y - yi)[:, None], (x - xi)[None, :]

    def dot(oy: int, ox: int) -> np.ndarray:
        g = grad[yi[:, None] + oy, xi[None, :] + ox]
        return g[..., 0] * (fy - oy) + g[..., 1] * (fx - ox)

    fade = lambda t: 6 * t**5 - 15 * t**4 + 10 * t**3  # noqa: E731
    u, v = fade(fx), fade(fy)
    top = dot(0, 0) * (1 - u) + dot(0, 1) * u
    bottom = dot(1, 0) * (1 - u) + dot(1, 1) * u
    return np.sqrt(2) * (top * (1 - v) + bottom * v)


def perlin_mask(h: int, w: int, rng: np.random.Generator, threshold: float = 0.5, min_pixels: int = 4) -> np.ndarray:
    """A blobby bool mask: Perlin noise at a random scale (2^0..2^4 cells per side), randomly
    rotated by a multiple of 90 degrees, thresholded; retried until it is not empty."""
    for _ in range(20):
        res = (2 ** int(rng.integers(0, 5)), 2 ** int(rng.integers(0, 5)))
        noise = perlin_noise(h, w, res, rng)
        m = noise > threshold
        if m.sum() >= min_pixels:
            return m
    y, x = int(rng.integers(0, h)), int(rng.integers(0, w))  # fallback: a small square
    m = np.zeros((h, w), bool)
    m[max(0, y - 2) : y + 2, max(0, x - 2) : x + 2] = True
    return m


@dataclass
class DefectBank:
    """Real defects cut along their masks: per defect, its deviation from its own local
    background (float, ~[-1, 1]) and its bool mask, both cropped to the mask's bounding box."""

    deviations: list[np.ndarray]
    masks: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.masks)

    @classmethod
    def from_pairs(cls, pairs, max_side: int) -> "DefectBank":
        """`pairs`: (image float HxW in [0,1], bool mask HxW) at the model's scale. Each connected
        component of a mask becomes one defect (cropped to at most max_side per side)."""
        devs, masks = [], []
        for img, mask in pairs:
            labels, n = ndimage.label(mask)
            for sl in ndimage.find_objects(labels):
                if sl is None:
                    continue
                y0, x0 = sl[0].start, sl[1].start
                y1, x1 = min(sl[0].stop, y0 + max_side), min(sl[1].stop, x0 + max_side)
                m = mask[y0:y1, x0:x1]
                if m.sum() < 4:
                    continue
                ring = ndimage.binary_dilation(mask, iterations=3)[y0:y1, x0:x1] & ~m
                crop = img[y0:y1, x0:x1]
                bg = float(crop[ring].mean()) if ring.any() else float(np.median(img))
                devs.append((crop - bg).astype(np.float32))
                masks.append(m.copy())
        return cls(devs, masks)

    def to_arrays(self) -> dict:
        return {"deviations": self.deviations, "masks": self.masks}


def _paste_real(img: np.ndarray, bank: DefectBank, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The fill image and mask of one real defect at a random place (flipped at random)."""
    k = int(rng.integers(len(bank)))
    dev, m = bank.deviations[k], bank.masks[k]
    if rng.random() < 0.5:
        dev, m = dev[:, ::-1], m[:, ::-1]
    if rng.random() < 0.5:
        dev, m = dev[::-1], m[::-1]
    H, W = img.shape
    h, w = min(m.shape[0], H), min(m.shape[1], W)
    y, x = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
    mask = np.zeros((H, W), bool)
    mask[y : y + h, x : x + w] = m[:h, :w]
    fill = img.copy()
    fill[y : y + h, x : x + w] += dev[:h, :w]
    return np.clip(fill, 0, 1), mask


def simulate(batch: np.ndarray, rng: np.random.Generator, bank: DefectBank | None = None, p_anomaly: float = 0.5,
             opacity: tuple[float, float] = (0.2, 1.0), min_change: float = 0.02) -> tuple[np.ndarray, np.ndarray]:
    """Simulated anomalies on a batch of normal images (B x 1 x H x W float in [0, 1]).
    Returns (images, masks B x 1 x H x W float32, 1 where the image changed)."""
    out = batch.astype(np.float32).copy()
    masks = np.zeros_like(out)
    B, _, H, W = out.shape
    for i in range(B):
        if rng.random() >= p_anomaly:
            continue
        img = out[i, 0]
        sources = ["patch", "plain"] + (["real", "real"] if bank is not None and len(bank) else [])
        source = sources[int(rng.integers(len(sources)))]
        if source == "real":
            fill, m = _paste_real(img, bank, rng)
            beta = rng.uniform(max(opacity[0], 0.5), 1.0)
        else:
            m = perlin_mask(H, W, rng)
            beta = rng.uniform(*opacity)
            if source == "patch":  # another image of the batch (or this one, shifted), flipped
                j = int((i + rng.integers(1, B)) % B) if B > 1 else i
                other = np.roll(batch[j, 0], (int(rng.integers(H)), int(rng.integers(W))), (0, 1))
                fill = other[::-1] if rng.random() < 0.5 else other[:, ::-1]
            else:
                fill = np.full((H, W), rng.uniform(0, 1), np.float32)
        new = np.where(m, (1 - beta) * img + beta * fill, img)
        changed = m & (np.abs(new - img) >= min_change)  # the target is where the image really changed
        out[i, 0] = np.where(changed, new, img)
        masks[i, 0] = changed
    return out, masks
