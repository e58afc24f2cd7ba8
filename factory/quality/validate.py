"""Check the gate's spillover estimate against ground truth.

Procedural EL images come with exact masks. We move each tight box sideways by a
known fraction of its width, so the true spillover (mask outside the moved box) is
known, and compare it with what the gate estimates from the heat map alone
(`use_sample_masks=False`). Used by the tests and `benchmarks/anomaly.py`.
"""

from __future__ import annotations

import numpy as np

from factory.core import Box, WorkItem
from factory.quality.spillover import spillover

CLASSES = ("black_spot", "dark_area", "crack", "cross_crack", "unjoined_weld")


def procedural_items(n: int, size: int, seed: int = 0, with_defect: bool = True, box_frac=(0.2, 0.3)) -> list[WorkItem]:
    """Items for the procedural renderer: one square-ish box per image, or none."""
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        boxes: tuple[Box, ...] = ()
        if with_defect:
            cls = CLASSES[i % len(CLASSES)]
            w = int(rng.uniform(*box_frac) * size)
            h = int(rng.uniform(*box_frac) * size)
            x1 = int(rng.uniform(0.1, 0.9) * size - w / 2)
            y1 = int(rng.uniform(0.1, 0.9) * size - h / 2)
            x1, y1 = min(max(x1, 0), size - w), min(max(y1, 0), size - h)
            boxes = (Box(CLASSES.index(cls), cls, x1, y1, x1 + w, y1 + h),)
        style = {"brightness": float(rng.uniform(0.5, 0.65)), "contrast": 1.0, "grid_pitch": float(rng.uniform(6, 10)),
                 "busbars": float(rng.integers(2, 5))}
        items.append(WorkItem(f"val-{seed}-{i}", i, "procedural", None, size, size, 1, int(rng.integers(1 << 31)), boxes, style))
    return items


def render(items):
    from factory.generators.procedural.render import render_el

    return [render_el(it) for it in items]


def shift_box(b: Box, frac: float, direction: int, width: int) -> Box:
    dx = int(round(frac * b.width)) * direction
    dx = max(-b.x1, min(width - b.x2, dx))
    return Box(b.class_id, b.class_name, b.x1 + dx, b.y1, b.x2 + dx, b.y2)


def validate_spillover(gate, n: int = 20, size: int = 64, shifts=(0.0, 0.25, 0.5, 0.75), seed: int = 1) -> dict:
    """Returns MAE and Pearson correlation of estimated vs true spillover, and the rows."""

    rng = np.random.default_rng(seed)
    rendered = render(procedural_items(n, size, seed))
    heats = gate.detector.heat_maps([r[0] for r in rendered], original_size=True)
    rows = []
    for (image, boxes, mask), heat in zip(rendered, heats):
        frac = float(shifts[len(rows) % len(shifts)])
        b = shift_box(boxes[0], frac, int(rng.choice([-1, 1])), size)
        true = spillover(mask == 1, b)
        est = gate.assess(heat, [b]).scores.get("spillover.max", float("nan"))
        rows.append({"shift": frac, "true": true, "estimate": est})
    t = np.array([r["true"] for r in rows])
    e = np.array([r["estimate"] for r in rows])
    found = ~np.isnan(e)
    e_filled = np.where(found, e, 1.0)  # nothing found at the box: counted as all outside
    corr = float(np.corrcoef(t, e_filled)[0, 1]) if t.std() > 0 and e_filled.std() > 0 else float("nan")
    return {"n": len(rows), "mae": float(np.abs(t - e_filled).mean()), "corr": corr, "missed": int((~found).sum()), "rows": rows}
