"""Cheap image checks that need no model: sanity (right size, not blank, not
saturated) and near-duplicate rejection by perceptual hash.

The duplicate check remembers the hashes it has seen in this scorer instance, so
under a Ray Data actor pool it catches duplicates within one actor's stream; the
hashes are also returned as scores (`phash.hi`/`phash.lo`, two exact 32-bit halves)
so a dataset-wide pass (`find_near_duplicates`) can catch the rest.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image
from scipy.fft import dctn

from factory.core import Reason, Sample
from factory.quality.base import Verdict


class SanityScorer:
    """Right size and channels (the WorkItem's, else the configured ones), not blank
    (pixel std too low), not saturated (too many pixels at 0 or 255). Reasons are
    `code: detail`, as the pipeline counts them by code."""

    name = "sanity"

    def __init__(self, width: int | None = None, height: int | None = None, channels: int | None = None,
                 min_std: float = 2.0, max_saturated: float = 0.5):
        self.width, self.height, self.channels = width, height, channels
        self.min_std, self.max_saturated = min_std, max_saturated

    def check(self, image: np.ndarray, width: int | None = None, height: int | None = None,
              channels: int | None = None) -> Verdict:
        """Check one image against the given (or configured) size."""
        width, height, channels = width or self.width, height or self.height, channels or self.channels
        img = np.asarray(image)
        reasons = []
        if img.ndim == 2:
            img = img[:, :, None]
        if img.ndim != 3 or img.dtype != np.uint8:
            return Verdict({}, [Reason("dtype", f"{img.dtype} {img.shape}, expected HxWxC uint8")])
        H, W, C = img.shape
        if (width and W != width) or (height and H != height):
            reasons.append(Reason("size", f"{W}x{H} != {width}x{height}"))
        if channels and C != channels:
            reasons.append(Reason("channels", f"{C} != {channels}"))
        std = float(img.std())
        sat = float(((img == 0) | (img == 255)).all(axis=2).mean())
        if std < self.min_std:
            reasons.append(Reason("blank", f"std {std:.2f} < {self.min_std:.2f}"))
        if sat > self.max_saturated:
            reasons.append(Reason("saturated", f"{sat:.2f} > {self.max_saturated:.2f}"))
        return Verdict({"sanity.std": std, "sanity.saturated": sat}, reasons)

    def score(self, samples: Sequence[Sample]) -> list[Verdict]:
        return [self.check(s.image, s.item.width, s.item.height, s.item.channels) for s in samples]


def phash(image: np.ndarray, hash_size: int = 8) -> int:
    """64-bit DCT perceptual hash: low-frequency 8x8 DCT block of the 32x32 grayscale image vs its median."""
    img = np.asarray(image)
    if img.ndim == 3:
        img = img[..., :3].mean(axis=2)
    small = np.asarray(Image.fromarray(img.astype(np.float32)).resize((4 * hash_size, 4 * hash_size), Image.BILINEAR), np.float64)
    block = dctn(small, norm="ortho")[:hash_size, :hash_size].ravel()
    bits = block > np.median(block[1:])
    return int(sum(1 << i for i, b in enumerate(bits) if b))


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def find_near_duplicates(hashes: Sequence[int], max_distance: int = 4) -> list[tuple[int, int, int]]:
    """All pairs (i, j, distance) with i < j and Hamming distance <= max_distance (O(n^2); fine to ~1e4)."""
    h = np.asarray([int(x) for x in hashes], np.uint64)
    pairs = []
    for i in range(len(h) - 1):
        x = np.bitwise_xor(h[i + 1 :], h[i])
        d = np.unpackbits(x.view(np.uint8).reshape(-1, 8), axis=1).sum(1)
        for j in np.nonzero(d <= max_distance)[0]:
            pairs.append((i, i + 1 + int(j), int(d[j])))
    return pairs


class NearDuplicateScorer:
    """Reject an image whose perceptual hash is within `max_distance` bits of one
    already seen by this scorer (the first one is kept). max_distance < 0 disables."""

    name = "near_duplicate"

    def __init__(self, max_distance: int = 4):
        self.max_distance = max_distance
        self.seen: list[tuple[int, str]] = []

    def score(self, samples: Sequence[Sample]) -> list[Verdict]:
        out = []
        for s in samples:
            h = phash(s.image)
            scores = {"phash.hi": float(h >> 32), "phash.lo": float(h & 0xFFFFFFFF)}
            reasons = []
            if self.max_distance >= 0:
                best = min(((hamming(h, o), oid) for o, oid in self.seen), default=None)
                if best is not None and best[0] <= self.max_distance:
                    reasons.append(Reason("near_duplicate", f"of {best[1]} (hamming {best[0]})"))
                else:
                    self.seen.append((h, s.sample_id))
            out.append(Verdict(scores, reasons))
        return out
