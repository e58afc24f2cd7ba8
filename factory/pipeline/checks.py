"""The basic checks every sample passes through, written as Scorers so the anomaly
gate plugs in beside them through the same protocol.

Reasons are `code: detail`; the manifest and the report count rejects by `code`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from factory.generators.base import Sample
from factory.quality.base import Scorer, Verdict
from factory.spec import DatasetSpec

MIN_STD = 2.0  # grey levels: below this the image is flat (blank)
MAX_CLIPPED = 0.5  # share of pixels at 0 or 255 above which the image is saturated
MIN_BOX_SIDE = 2


class SanityScorer:
    """Right size and channels, uint8, not blank, not saturated."""

    name = "sanity"

    def score(self, samples: Sequence[Sample]) -> list[Verdict]:
        out = []
        for s in samples:
            v = Verdict()
            img = np.asarray(s.image)
            want = (s.item.height, s.item.width, s.item.channels)
            if img.dtype != np.uint8:
                v.reasons.append(f"sanity: dtype {img.dtype}, expected uint8")
            elif img.ndim != 3 or img.shape != want:
                v.reasons.append(f"sanity: shape {img.shape}, expected {want}")
            else:
                std = float(img.std())
                clipped = float(((img == 0) | (img == 255)).mean())
                v.scores.update(image_std=std, clipped=clipped)
                if std < MIN_STD:
                    v.reasons.append(f"blank: pixel std {std:.2f} < {MIN_STD}")
                if clipped > MAX_CLIPPED:
                    v.reasons.append(f"saturated: {clipped:.0%} of pixels at 0 or 255")
            out.append(v)
        return out


class BoxScorer:
    """Boxes inside the image, big enough, of known classes, one class per requested
    class; with a generator-reported mask, the defect must not spill out of its box."""

    name = "boxes"

    def __init__(self, class_names: Sequence[str], spillover_max: float):
        self.class_names = list(class_names)
        self.spillover_max = spillover_max

    def score(self, samples: Sequence[Sample]) -> list[Verdict]:
        return [self._one(s) for s in samples]

    def _one(self, s: Sample) -> Verdict:
        v = Verdict()
        W, H = s.item.width, s.item.height
        for b in s.boxes:
            if not b.inside(W, H):
                v.reasons.append(f"box_outside: [{b.x1},{b.y1},{b.x2},{b.y2}] not inside {W}x{H}")
            elif min(b.width, b.height) < MIN_BOX_SIDE:
                v.reasons.append(f"box_tiny: {b.width}x{b.height} px")
            if not (0 <= b.class_id < len(self.class_names)) or self.class_names[b.class_id] != b.class_name:
                v.reasons.append(f"box_class: unknown class {b.class_id}/{b.class_name!r}")
        if set(b.class_name for b in s.boxes) != set(s.item.classes):
            v.reasons.append(
                f"box_missing: asked for {sorted(s.item.classes)}, got {sorted({b.class_name for b in s.boxes})}"
            )
        v.scores["boxes"] = float(len(s.boxes))
        if s.mask is not None and s.boxes:
            worst = 0.0
            for k, b in enumerate(s.boxes, start=1):
                defect = s.mask == k
                total = int(defect.sum())
                if total:
                    inside = int(defect[b.y1:b.y2, b.x1:b.x2].sum())
                    worst = max(worst, 1.0 - inside / total)
            v.scores["mask_spillover"] = worst
            if worst > self.spillover_max:
                v.reasons.append(f"spillover: {worst:.0%} of a defect lies outside its box (max {self.spillover_max:.0%})")
        return v


def scorers_for(spec: DatasetSpec, device: str = "cpu") -> list[Scorer]:
    """The basic checks, then the quality gate's scorers (`build_scorers(spec)`; a
    scorer of the same name replaces the basic one)."""
    from factory.quality import build_scorers

    gate = list(build_scorers(spec, device=device))
    names = {s.name for s in gate}
    basic: list[Scorer] = [SanityScorer(), BoxScorer(spec.class_names, spec.quality.spillover_max)]
    return [s for s in basic if s.name not in names] + gate
