"""Box spillover: how much of a defect lies outside the box that annotates it
(the PDIG paper's Table IV metric, measured automatically instead of by hand).

    spillover(extent, box) = |extent \\ box| / |extent|

The extent comes from the generator's exact mask when the Sample has one (mask == k+1
for box k), from per-box defect maps in `meta["defect_maps"]` (e.g. attention maps,
thresholded at half their maximum), or else from the anomaly heat map: the connected
anomalous components that touch the box (grown by a margin, so a defect drawn just
beside its box still counts as that box's defect, leaking out).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from factory.core import Box, Reason, Sample
from factory.quality.base import Verdict


def box_mask(box: Box, height: int, width: int, margin: float = 0.0) -> np.ndarray:
    """HxW bool map of the box, optionally grown by `margin` x its side on each side (min 1 px when > 0)."""
    mx = int(np.ceil(margin * box.width)) if margin > 0 else 0
    my = int(np.ceil(margin * box.height)) if margin > 0 else 0
    if margin > 0:
        mx, my = max(mx, 1), max(my, 1)
    m = np.zeros((height, width), bool)
    m[max(0, box.y1 - my) : min(height, box.y2 + my), max(0, box.x1 - mx) : min(width, box.x2 + mx)] = True
    return m


def spillover(extent: np.ndarray, box: Box) -> float:
    """Fraction of the extent's pixels outside the box; NaN when the extent is empty."""
    total = int(extent.sum())
    if total == 0:
        return float("nan")
    inside = int(extent[max(0, box.y1) : box.y2, max(0, box.x1) : box.x2].sum())
    return (total - inside) / total


def extents_from_mask(mask: np.ndarray, n_boxes: int) -> list[np.ndarray]:
    return [mask == k + 1 for k in range(n_boxes)]


def extents_from_maps(maps: Sequence[np.ndarray], rel: float = 0.5) -> list[np.ndarray]:
    """Per-box defect maps (float, any scale) -> extents: pixels >= rel x the map's max."""
    out = []
    for m in maps:
        m = np.asarray(m, np.float32)
        peak = float(m.max()) if m.size else 0.0
        out.append(m >= rel * peak if peak > 0 else np.zeros(m.shape, bool))
    return out


def extents_from_binary(binary: np.ndarray, boxes: Sequence[Box], margin: float = 0.25, min_area: int = 1,
                        heat: np.ndarray | None = None, rel: float = 0.0) -> tuple[list[np.ndarray], np.ndarray]:
    """Assign the connected components of an anomaly map to boxes.

    A component belongs to every box (grown by `margin`) it touches. With `heat` and
    `rel` > 0, a box's extent keeps only pixels >= rel x the peak heat of its
    components (a half-maximum width: the smoothed heat map spreads wider than the
    defect). Returns (extent per box, stray: the components that touch no box)."""
    from factory.quality.anomaly.postprocess import connected_components

    H, W = binary.shape
    labels, n = connected_components(binary, min_area)
    claimed = np.zeros(n + 1, bool)
    extents = []
    for b in boxes:
        ids = np.unique(labels[box_mask(b, H, W, margin)])
        ids = ids[ids > 0]
        claimed[ids] = True
        ext = np.isin(labels, ids) if len(ids) else np.zeros((H, W), bool)
        if heat is not None and rel > 0 and ext.any():
            ext &= heat >= rel * float(heat[ext].max())
        extents.append(ext)
    claimed[0] = True
    stray = ~claimed[labels]
    return extents, stray


def sample_extents(sample: Sample) -> list[np.ndarray] | None:
    """The generator's own per-box extents, when it provides them."""
    if sample.mask is not None:
        return extents_from_mask(np.asarray(sample.mask), len(sample.boxes))
    maps = sample.meta.get("defect_maps") if sample.meta else None
    if maps is not None and len(maps) == len(sample.boxes):
        return extents_from_maps(maps)
    return None


def spillover_reasons(spills: Sequence[float], limit: float) -> list[Reason]:
    worst = max((s for s in spills if s == s), default=float("nan"))
    return [Reason("spillover", f"{worst:.2f} > {limit:.2f}")] if worst == worst and worst > limit else []


class SpilloverScorer:
    """Spillover from the generator's own masks/maps alone (no anomaly model needed).
    Samples without a mask or maps get no spillover score from this scorer."""

    name = "spillover"

    def __init__(self, spillover_max: float = 0.2):
        self.spillover_max = spillover_max

    def score(self, samples: Sequence[Sample]) -> list[Verdict]:
        out = []
        for s in samples:
            extents = sample_extents(s)
            if extents is None or not s.boxes:
                out.append(Verdict())
                continue
            spills = [spillover(e, b) for e, b in zip(extents, s.boxes)]
            reasons = spillover_reasons(spills, self.spillover_max)
            empty = [k for k, e in enumerate(extents) if not e.any()]
            if empty:
                reasons.append(Reason("empty_defect", f"box {empty[0]}"))
            valid = [v for v in spills if v == v]
            out.append(Verdict({"spillover.max": max(valid, default=float("nan")),
                                "spillover.mean": float(np.mean(valid)) if valid else float("nan")}, reasons))
        return out
