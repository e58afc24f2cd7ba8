"""The exact outside-the-box test, for generators that know their background.

A transplant image is its background plus pastes: outside the boxes (grown by the
blend margin the generator reports) every pixel must equal the background it was
pasted onto. Where that is known there is nothing to estimate, so this check is
exact and a learned model (the anomaly gate) only judges what the generator does
not know: whether the content of each box looks like a real defect.

Contract (factory.core.Sample): `sample.background` is the image before any defect
was drawn (the sample's shape, uint8) and `sample.blend_px` how far outside a box
blending may reach. Samples without a background get no verdict here.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from factory.core import Reason, Sample
from factory.quality.base import Verdict


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


class OutsideExactScorer:
    """Rejects a sample whose pixels outside its boxes differ from its background."""

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
            out.append(Verdict({"outside.changed_px": float(n)}, reasons))
        return out
