"""Box distributions fitted from labelled images: a spec's `defects` whose box sizes
and aspects are the line's own. Why it matters: the transplant frames each pasted
defect by its planned box, so boxes drawn larger than the line's put the defect in
a crop of thinner context, a cue that both a crop classifier and a detector see
(DeepPCB box-crop C2ST 0.718 -> 0.691 against a 0.675 floor; BENCHMARKS.md). Sizes are
log-normal: defect sizes spread over up to a decade (pv cracks 0.02-0.4 of the side),
which a normal fits badly (Kolmogorov-Smirnov distance 0.13 vs 0.05 on pv cracks)."""

from __future__ import annotations

from collections import Counter
from typing import Iterable, Protocol, Sequence

import numpy as np
import yaml

from factory.core import Box

MIN_BOXES = 5  # fewer boxes of a class than this fit nothing: the spec keeps its own


class Labelled(Protocol):
    width: int
    height: int
    boxes: list[Box]


def fitted_boxes(samples: Iterable[Labelled], order: Sequence[str] = (),
                 frame: tuple[int, int] | None = None) -> dict[str, dict]:
    """Class name (in `order`, then as met) -> a spec's `boxes` mapping, as these
    images' own boxes: size (the side as the spec reads it, sqrt(w h / (W H)))
    log-normal at the mean and std of its logarithm, clipped to its 5-95% range; aspect ((w / W) / (h / H))
    log-uniform over its 5-95% range; count per image from 1 to the 95th percentile
    among images with the class. `frame` (the spec's width, height): the boxes as they
    appear in images framed to it (centre-cropped to its aspect, as generators frame
    backgrounds): on images of other aspects (magnetic tiles: 0.4-1.6) the boxes the
    outputs show differ from the source's relative ones (tile cracks framed to 192 x 192:
    tall, aspect 0.07-0.83, and a quarter larger than the unframed fit says)."""
    sides: dict[str, list[float]] = {}
    aspects: dict[str, list[float]] = {}
    counts: dict[str, list[int]] = {}
    for s in samples:
        W, H = frame or (s.width, s.height)
        boxes = [b for b in (b.framed(s.width, s.height, W, H) for b in s.boxes) if b] if frame else s.boxes
        for name, k in Counter(b.class_name for b in boxes).items():
            counts.setdefault(name, []).append(k)
        for b in boxes:
            sides.setdefault(b.class_name, []).append(float(np.sqrt(b.width * b.height / (W * H))))
            aspects.setdefault(b.class_name, []).append((b.width / W) / (b.height / H))
    out = {}
    for name in [*[c for c in order if c in sides], *[c for c in sides if c not in order]]:
        side = sides[name]
        if len(side) < MIN_BOXES:
            continue
        lo, hi = np.percentile(side, [5, 95])
        a_lo, a_hi = np.percentile(aspects[name], [5, 95])
        out[name] = {
            "count": [1, max(1, int(np.ceil(np.percentile(counts[name], 95))))],
            "size": {"dist": "lognormal", "mean": _r(np.mean(np.log(side))), "std": _r(max(np.std(np.log(side)), 1e-4)),
                     "min": _r(lo), "max": _r(max(hi, lo + 1e-4))},
            "aspect": {"dist": "loguniform", "min": _r(a_lo), "max": _r(max(a_hi, a_lo + 1e-4))},
        }
    return out


def defects_yaml(fitted: dict[str, dict]) -> str:
    """The `defects:` block of a spec, one line a class, ready to paste."""
    lines = ["defects:"]
    for name, boxes in fitted.items():
        flow = yaml.safe_dump(boxes, default_flow_style=True, sort_keys=False, width=10_000).strip()
        lines.append(f"  - class: {name}\n    boxes: {flow}")
    return "\n".join(lines)


def _r(x: float) -> float:
    return round(float(x), 4)
