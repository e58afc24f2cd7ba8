"""Box checks every sample passes: a generator must annotate what was asked for."""

from __future__ import annotations

from typing import Sequence

from factory.core import Box, Reason, Sample
from factory.quality.base import Verdict

MIN_BOX_SIDE = 2


def drawn_boxes(s: Sample) -> list[Box]:
    """The boxes the generator drew. A labelled background's own boxes (transplant
    `backgrounds: labelled`, counted in `provenance.kept_boxes`) come last: real defects the
    image, and its background, already had; only the drawn ones answer what was asked for."""
    kept = int(((s.meta or {}).get("provenance") or {}).get("kept_boxes", 0))
    return list(s.boxes[:len(s.boxes) - kept])


class BoxScorer:
    """Boxes inside the image, big enough, of known classes, one box class per
    requested class. (Spillover out of a box is `SpilloverScorer`'s job.)"""

    name = "boxes"

    def __init__(self, class_names: Sequence[str]):
        self.class_names = list(class_names)

    def score(self, samples: Sequence[Sample]) -> list[Verdict]:
        return [self._one(s) for s in samples]

    def _one(self, s: Sample) -> Verdict:
        v = Verdict()
        W, H = s.item.width, s.item.height
        for b in s.boxes:
            if not b.inside(W, H):
                v.reasons.append(Reason("box_outside", f"[{b.x1},{b.y1},{b.x2},{b.y2}] not inside {W}x{H}"))
            elif min(b.width, b.height) < MIN_BOX_SIDE:
                v.reasons.append(Reason("box_tiny", f"{b.width}x{b.height} px"))
            if not (0 <= b.class_id < len(self.class_names)) or self.class_names[b.class_id] != b.class_name:
                v.reasons.append(Reason("box_class", f"unknown class {b.class_id}/{b.class_name!r}"))
        drawn = {b.class_name for b in drawn_boxes(s)}
        if drawn != set(s.item.classes):
            v.reasons.append(Reason("box_missing", f"asked for {sorted(s.item.classes)}, got {sorted(drawn)}"))
        v.scores["boxes"] = float(len(s.boxes))
        return v
