"""Gate audit: can the quality gate be trusted on this spec's generators?

    report = audit(spec, checkpoint="file://./checkpoints/gate", n=200)

Builds a control set from the spec's own generators: the samples as generated (the
gate should keep them) and broken variants of each (it should reject them):
- `erased`: the defect removed by inpainting its mask (or, without a mask, its boxes)
  from the surrounding background (cv2.inpaint): a generator whose defect went missing;
- `moved`: the defect's pixels shifted outside its box, the box left where it was
  (the old place inpainted): a defect that spilled out of its box;
- `blank`: one flat grey level; `saturated`: all white.
Every variant is stripped of the generator's mask and defect maps so that only the
pixels decide, as for a learned generator that fails silently. Each variant is
scored as its own batch with `build_scorers(spec)` (the one list of checks, here
with `quality.anomaly_checkpoint` = the checkpoint under audit).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Sequence

import numpy as np

from factory.core import Box, Sample
from factory.generators.base import load_generator
from factory.planning import plan
from factory.quality import build_scorers, score_all

BROKEN = ("erased", "moved", "blank", "saturated")


def defect_mask(sample: Sample) -> np.ndarray:
    """HxW bool: the generator's mask when it has one, else the union of the boxes."""
    H, W = sample.image.shape[:2]
    if sample.mask is not None:
        return np.asarray(sample.mask) > 0
    m = np.zeros((H, W), bool)
    for b in sample.boxes:
        m[b.y1 : b.y2, b.x1 : b.x2] = True
    return m


def inpaint(image: np.ndarray, mask: np.ndarray, grow: int = 2) -> np.ndarray:
    """Fill `mask` (grown by `grow` px, to catch anti-aliased edges) from its surroundings."""
    import cv2

    m = cv2.dilate(mask.astype(np.uint8), np.ones((2 * grow + 1, 2 * grow + 1), np.uint8))
    chans = [cv2.inpaint(np.ascontiguousarray(image[:, :, c]), m, 5, cv2.INPAINT_TELEA) for c in range(image.shape[2])]
    return np.stack(chans, -1)


def move_outside(image: np.ndarray, mask: np.ndarray, boxes: Sequence[Box], rng: np.random.Generator) -> np.ndarray | None:
    """The defect pixels pasted where they overlap no box (the old place inpainted); None if
    no such place exists in the image."""
    H, W = mask.shape
    ys, xs = np.nonzero(mask)
    if not len(ys):
        return None
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    boxed = np.zeros((H, W), bool)
    for b in boxes:
        boxed[b.y1 : b.y2, b.x1 : b.x2] = True
    for _ in range(200):
        dy, dx = int(rng.integers(-y0, H - y1 + 1)), int(rng.integers(-x0, W - x1 + 1))
        moved = np.zeros((H, W), bool)
        moved[ys + dy, xs + dx] = True
        if not (moved & boxed).any():
            out = inpaint(image, mask)
            out[ys + dy, xs + dx] = image[ys, xs]
            return out
    return None


def broken_variants(sample: Sample, rng: np.random.Generator) -> dict[str, Sample]:
    """The sample stripped of masks (`good`) and its broken versions; `moved` is left out
    when the defect cannot be placed outside every box."""
    plain = replace(sample, mask=None, meta={k: v for k, v in sample.meta.items() if k != "defect_maps"})
    img = sample.image
    m = defect_mask(sample)
    out = {"good": plain, "erased": replace(plain, image=inpaint(img, m))}
    moved = move_outside(img, m, sample.boxes, rng)
    if moved is not None:
        out["moved"] = replace(plain, image=moved)
    out["blank"] = replace(plain, image=np.full_like(img, int(img.mean())))
    out["saturated"] = replace(plain, image=np.full_like(img, 255))
    return out


def generate(spec, n: int, device: str = "cpu") -> list[Sample]:
    """The first `n` items of the spec's plan that have boxes, drawn by their own generators."""
    items = [it for it in plan(spec, n=4 * n) if it.boxes][:n]
    by_gen: dict[tuple, list] = {}
    for it in items:
        key = (it.generator, it.checkpoint, repr(sorted(it.params.items())))
        by_gen.setdefault(key, []).append(it)
    samples = []
    for (kind, checkpoint, _), group in by_gen.items():
        gen = load_generator(kind, checkpoint, group[0].params, device=device)
        samples += gen.generate(group)
    return samples


def audit(spec, checkpoint: str | None, n: int = 200, seed: int = 0, device: str = "cpu",
          samples: list[Sample] | None = None) -> dict:
    """Per variant: how many samples, how many the gate rejected, and the reason codes.
    `good` should be kept (kept_rate), the rest rejected (rejected_rate)."""
    if checkpoint:
        spec = spec.model_copy(update={"quality": spec.quality.model_copy(update={"anomaly_checkpoint": checkpoint})})
    scorers = build_scorers(spec, device)
    samples = samples if samples is not None else generate(spec, n, device)
    rng = np.random.default_rng(seed)
    variants: dict[str, list[Sample]] = {}
    for s in samples:
        for name, v in broken_variants(s, rng).items():
            variants.setdefault(name, []).append(v)
    rows = {}
    for name in ("good", *BROKEN):
        batch = variants.get(name, [])
        verdicts = score_all(scorers, batch)
        rejected = sum(not v.accepted for v in verdicts)
        codes = Counter(r.code for v in verdicts for r in v.reasons)
        rows[name] = {"n": len(batch), "rejected": rejected, "rejected_rate": rejected / max(len(batch), 1),
                      "kept_rate": 1 - rejected / max(len(batch), 1), "reasons": dict(codes.most_common())}
    return {"spec": spec.name, "checkpoint": checkpoint, "scorers": [s.name for s in scorers], "variants": rows,
            "broken_rejected_rate": _pooled(rows, BROKEN), "good_kept_rate": rows["good"]["kept_rate"]}


def _pooled(rows: dict, names: Sequence[str]) -> float:
    n = sum(rows[k]["n"] for k in names)
    return sum(rows[k]["rejected"] for k in names) / max(n, 1)
