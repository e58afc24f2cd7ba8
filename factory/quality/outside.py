"""The exact tests, for generators that know their background.

A transplant or procedural image is its background plus defects drawn into the
boxes: outside the boxes (grown by the blend margin the generator reports) every
pixel must equal the background (`outside_changed`), and inside each box some pixel
must differ from it visibly (`box_unchanged`: a defect that went missing). Where the
background is known there is nothing to estimate, so these checks are exact and a
learned model (the anomaly gate, the box check) only judges what the generator does
not know: whether the content of each box looks like a real defect.

Contract (factory.core.Sample): `sample.background` is the image before any defect
was drawn (the sample's shape, uint8) and `sample.blend_px` how far outside a box
blending may reach. Samples without a background get no verdict here.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from factory.core import VISIBLE_DIFF, Reason, Sample
from factory.quality.base import Verdict
from factory.quality.boxes import drawn_boxes


def changed_outside(image: np.ndarray, background: np.ndarray, boxes, grow_px: int) -> np.ndarray:
    """HxW bool: pixels that differ from the background and lie outside every box
    grown by `grow_px` on each side."""
    image, background = np.asarray(image), np.asarray(background)
    if image.shape != background.shape:
        raise ValueError(f"background shape {background.shape} != image shape {image.shape}")
    changed = image != background
    if changed.ndim == 3:
        changed = changed.any(axis=2)
    H, W = changed.shape
    for b in boxes:
        changed[max(0, b.y1 - grow_px): min(H, b.y2 + grow_px), max(0, b.x1 - grow_px): min(W, b.x2 + grow_px)] = False
    return changed


def unchanged_boxes(image: np.ndarray, background: np.ndarray, boxes, min_diff: int = VISIBLE_DIFF) -> list[int]:
    """Indices of the boxes in which no pixel differs from the background by more than
    `min_diff` grey levels (in any channel)."""
    diff = np.abs(np.asarray(image).astype(np.int16) - np.asarray(background).astype(np.int16))
    if diff.ndim == 3:
        diff = diff.max(axis=2)
    return [k for k, b in enumerate(boxes) if not (diff[b.y1: b.y2, b.x1: b.x2] > min_diff).any()]


class OutsideExactScorer:
    """Rejects a sample whose pixels outside its boxes differ from its background, or
    one of whose boxes does not differ from it visibly."""

    name = "outside"

    def score(self, samples: Sequence[Sample]) -> list[Verdict]:
        out = []
        for s in samples:
            if s.background is None:
                out.append(Verdict())
                continue
            stray = changed_outside(s.image, s.background, s.boxes, s.blend_px)
            n = int(stray.sum())
            reasons = [Reason("outside_changed", f"{n} px differ from the background outside the boxes")] if n else []
            empty = unchanged_boxes(s.image, s.background, drawn_boxes(s))  # not a labelled background's own
            if empty:
                reasons.append(Reason("box_unchanged", f"box {empty[0]} equals the background (within {VISIBLE_DIFF} levels)"))
            out.append(Verdict({"outside.changed_px": float(n), "outside.unchanged_boxes": float(len(empty))}, reasons))
        return out
