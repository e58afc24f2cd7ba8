"""Cheap image checks that need no model: sanity (right size, not blank, not
saturated) and near-duplicate rejection by perceptual hash.

Actors only hash; the driver decides near-duplicates for the whole dataset in
plan order with a `NearDuplicateIndex`, so the same spec and seed publish the
same samples however the work was scheduled.
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


# not imagehash.phash: its bits differ on ~half of images, and ours are stored in published shards (phash.hi/lo)
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


class NearDuplicateIndex:
    """Hashes of the images kept so far, searchable for one within `max_distance`
    bits. Pigeonhole: two 64-bit hashes that differ in at most d bits agree exactly
    on at least one of d + 1 disjoint bit blocks, so only hashes that share a block
    value are compared: for d = 4 about 70 comparisons a lookup at 100k kept
    hashes and 700 at a million, instead of all of them. Memory: about 200 bytes
    per kept hash."""

    def __init__(self, max_distance: int = 4):
        self.max_distance = max_distance
        edges = np.linspace(0, 64, max_distance + 2).astype(int)
        self.masks = [((1 << int(b - a)) - 1) << int(a) for a, b in zip(edges[:-1], edges[1:])]
        self.buckets: list[dict[int, list[int]]] = [{} for _ in self.masks]  # block value -> kept orders
        self.hashes: list[int] = []
        self.ids: list[str] = []

    def nearest(self, h: int) -> tuple[str, int] | None:
        """(id, distance) of the closest kept hash within `max_distance` (the earliest
        kept wins a tie), or None."""
        best: tuple[int, int] | None = None  # (distance, order)
        for mask, bucket in zip(self.masks, self.buckets):
            for order in bucket.get(h & mask, ()):
                d = hamming(h, self.hashes[order])
                if d <= self.max_distance and (best is None or (d, order) < best):
                    best = (d, order)
        return None if best is None else (self.ids[best[1]], best[0])

    def add(self, h: int, sample_id: str) -> None:
        order = len(self.hashes)
        self.hashes.append(h)
        self.ids.append(sample_id)
        for mask, bucket in zip(self.masks, self.buckets):
            bucket.setdefault(h & mask, []).append(order)


def phash_of(scores: dict[str, float]) -> int | None:
    """The hash `NearDuplicateScorer` left in a sample's scores (None without one)."""
    if "phash.hi" not in scores:
        return None
    return int(scores["phash.hi"]) << 32 | int(scores["phash.lo"])


class NearDuplicateScorer:
    """Hashes each image (`phash.hi`/`phash.lo` scores, two exact 32-bit halves);
    rejects nothing itself. Which samples are near-duplicates is decided once for
    the whole dataset, in plan order, by the driver (pipeline/rounds.py `Dedupe`),
    so the answer does not depend on which actor saw which image first."""

    name = "near_duplicate"

    def __init__(self, max_distance: int = 4):
        self.max_distance = max_distance  # the driver's rule; kept here so the gate's list shows the setting

    def score(self, samples: Sequence[Sample]) -> list[Verdict]:
        out = []
        for s in samples:
            h = phash(s.image)
            out.append(Verdict({"phash.hi": float(h >> 32), "phash.lo": float(h & 0xFFFFFFFF)}, []))
        return out
