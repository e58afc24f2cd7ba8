"""Gate audit: can the quality gate be trusted on this spec's generators?

    report = audit(spec, checkpoint="file://./checkpoints/gate", n=200)

Builds a control set from the spec's own generators: the samples as generated (the
gate should keep them) and broken variants of each (it should reject them):
- `erased`: the sample without its defect, a generator whose defect went missing. Where
  the generator draws the same item without boxes into the very same image outside
  them (procedural, transplant), that clean render is the erased sample; otherwise
  (learned generators redraw everything) the defect's mask, or its boxes, is inpainted
  from the surrounding background (cv2.inpaint), which leaves smears a gate may
  rightly call anomalous, so the report counts which way each sample was erased;
- `moved`: the defect's pixels shifted outside its box onto the erased image, the box
  left where it was: a defect that spilled out of its box;
- `blank`: one flat grey level; `saturated`: all white.
By default every variant is stripped of the generator's mask, defect maps and
background (the exact tests, quality/outside.py, are not what is audited) so that only
the pixels decide, as for a learned generator that fails silently. With
`as_generated=True` every variant keeps what its generator reported (a broken variant
is the same sample whose pixels went wrong, its background and mask as reported): the
gate exactly as the pipeline runs it on this spec, where a generator that knows its
background (procedural, transplant) is judged by the exact tests first. Each variant is
scored as its own batch with `build_scorers(spec)` (the one list of checks, here
with `quality.anomaly_checkpoint` = the checkpoint under audit).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Sequence

import numpy as np

from factory.core import Box, Sample, WorkItem
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


def move_outside(image: np.ndarray, mask: np.ndarray, boxes: Sequence[Box], rng: np.random.Generator,
                 erased: np.ndarray | None = None) -> np.ndarray | None:
    """The defect pixels pasted where they overlap no box, onto `erased` (default: the old
    place inpainted); None if no such place exists in the image."""
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
            out = (inpaint(image, mask) if erased is None else erased).copy()
            out[ys + dy, xs + dx] = image[ys, xs]
            return out
    return None


def broken_variants(sample: Sample, rng: np.random.Generator, clean: np.ndarray | None = None,
                    as_generated: bool = False) -> dict[str, Sample]:
    """The sample (`good`) and its broken versions, stripped of masks, defect maps and
    background unless `as_generated`; `clean` is the sample drawn without its defects
    (`clean_renders`), else the defect is inpainted. `moved` is left out when the defect
    cannot be placed outside every box."""
    plain = sample if as_generated else replace(
        sample, mask=None, meta={k: v for k, v in sample.meta.items() if k != "defect_maps"}, background=None)
    img = sample.image
    m = defect_mask(sample)
    erased = inpaint(img, m) if clean is None else clean
    out = {"good": plain, "erased": replace(plain, image=erased)}
    moved = move_outside(img, m, sample.boxes, rng, erased)
    if moved is not None:
        out["moved"] = replace(plain, image=moved)
    out["blank"] = replace(plain, image=np.full_like(img, int(img.mean())))
    out["saturated"] = replace(plain, image=np.full_like(img, 255))
    return out


def draw_items(items: Sequence[WorkItem], device: str, tolerate_errors: bool = False) -> list[Sample | None]:
    """Items drawn by their own generators (one per ref key), in order; with
    `tolerate_errors`, None for the items of a generator that cannot draw them."""
    by_gen: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        by_gen.setdefault(it.generator_ref.key, []).append(i)
    out: list[Sample | None] = [None] * len(items)
    for idx in by_gen.values():
        gen = load_generator(items[idx[0]].generator_ref, device=device)
        try:
            drawn = gen.generate([items[i] for i in idx])
        except Exception:
            if not tolerate_errors:
                raise
            continue
        for i, s in zip(idx, drawn):
            out[i] = s
    return out


def _boxed_items(spec, n: int, start: int = 0) -> list:
    """The first `n` items of the spec's plan from `start` on that have boxes."""
    return [it for it in plan(spec, n=4 * n, start=start) if it.boxes][:n]


def generate(spec, n: int, device: str = "cpu") -> list[Sample]:
    """The first `n` items of the spec's plan that have boxes, drawn by their own generators."""
    return draw_items(_boxed_items(spec, n), device)


def labelled_defects(spec, n: int, device: str = "cpu", start: int = 200_000) -> list[tuple[np.ndarray, np.ndarray]]:
    """(image, bool defect mask) of `n` samples the spec's own generators draw for plan items
    from `start` on, far past the ones `generate` audits: defects of the kind the spec draws,
    labelled, for the gate's simulated anomalies (`factory train anomaly --defects-from`)."""
    return [(s.image, defect_mask(s)) for s in draw_items(_boxed_items(spec, n, start), device)]


def save_defect_free_renders(spec, n: int, folder, device: str = "cpu", start: int = 100_000) -> int:
    """Write `n` images the spec's own generators draw for plan items from `start` on with
    their boxes removed (PNG, in `folder`): the line's defect-free backgrounds framed
    exactly as the spec's outputs, the images a gate for this spec should learn as normal
    (`factory train anomaly --normal-from SPEC`). Returns how many were written."""
    from pathlib import Path

    from PIL import Image

    drawn = [s.image for s in draw_items([replace(it, boxes=()) for it in plan(spec, n=n, start=start)], device) if s]
    for i, im in enumerate(drawn):
        Image.fromarray(im[..., 0] if im.shape[-1] == 1 else im).save(Path(folder) / f"{i:05d}.png")
    return len(drawn)


def clean_renders(samples: Sequence[Sample], device: str = "cpu", grow: int = 4, tolerance: int = 2) -> list[np.ndarray | None]:
    """Each sample's item drawn again without boxes, kept only where it equals the sample
    (within `tolerance` grey levels) everywhere outside the sample's planned and final boxes
    grown by `grow` px, or by the sample's own `blend_px` where that is more (how far its
    generator may change pixels outside a box): then it is exactly that sample with its
    defects missing. None where the generator redraws more than the boxes, or cannot draw
    the item without them."""
    clean = draw_items([replace(s.item, boxes=()) for s in samples], device, tolerate_errors=True)
    out = []
    for s, c in zip(samples, clean):
        H, W = s.image.shape[:2]
        g = max(grow, s.blend_px)
        inside = np.zeros((H, W), bool)
        for b in (*s.item.boxes, *s.boxes):
            inside[max(0, b.y1 - g) : b.y2 + g, max(0, b.x1 - g) : b.x2 + g] = True
        same = c is not None and c.image.shape == s.image.shape and \
            int(np.abs(c.image.astype(np.int16) - s.image.astype(np.int16))[~inside].max(initial=0)) <= tolerance
        out.append(c.image if same else None)
    return out


def real_samples(source: str, spec, split: str = "val") -> list[Sample]:
    """The line's own labelled defect images of one split (`NAME@VERSION` or a YOLO tree),
    framed to the spec's size as generators frame backgrounds, with their boxes and masks
    (as the spec's class ids; images with a box of another class are left out). What the
    gate does to real defects bounds what it can keep of generated ones."""
    from factory.generators.transplant.sources import labelled_backgrounds, load_labelled

    classes, im = tuple(spec.class_names), spec.image
    names, labelled = labelled_backgrounds(source, list(classes), split)
    out = []
    for k, lab in enumerate(labelled):
        image, boxes, mask = load_labelled(lab, tuple(names), classes, im.width, im.height)
        if not boxes:
            continue
        item = WorkItem(f"real-{split}-{k}", k, "real", None, im.width, im.height, im.channels, 0, boxes)
        grey = image.astype(np.uint8)  # a uint8 image framed (`load_background`), held as float32
        out.append(Sample(item, np.repeat(grey[:, :, None], im.channels, axis=2), list(boxes), mask.astype(np.uint8)))
    if not out:
        raise ValueError(f"{source}: no labelled {split} image whose boxes are all of the spec's classes {list(classes)}")
    return out


def audit(spec, checkpoint: str | None, n: int = 200, seed: int = 0, device: str = "cpu",
          samples: list[Sample] | None = None, box_check: str | None = None, real: str | None = None,
          as_generated: bool = False) -> dict:
    """Per variant: how many samples, how many the gate rejected, and the reason codes.
    `good` should be kept (kept_rate), the rest rejected (rejected_rate). `checkpoint` and
    `box_check` replace the spec's own (quality.anomaly_checkpoint / quality.box_check).
    `real`: a labelled real set of the line; its val images are scored too (row `real`:
    the kept rate a perfect generator could hope for). `as_generated`: the variants keep
    their generator's background and masks (the module docstring)."""
    update = {k: v for k, v in (("anomaly_checkpoint", checkpoint), ("box_check", box_check)) if v}
    if update:
        spec = spec.model_copy(update={"quality": spec.quality.model_copy(update=update)})
    scorers = build_scorers(spec, device)
    samples = samples if samples is not None else generate(spec, n, device)
    clean = clean_renders(samples, device)
    rng = np.random.default_rng(seed)
    variants: dict[str, list[Sample]] = {}
    for s, c in zip(samples, clean):
        for name, v in broken_variants(s, rng, c, as_generated).items():
            variants.setdefault(name, []).append(v)
    rows = {}
    if real:
        variants["real"] = real_samples(real, spec)
    for name in ("good", *BROKEN, *(("real",) if real else ())):
        batch = variants.get(name, [])
        verdicts = score_all(scorers, batch)
        rejected = sum(not v.accepted for v in verdicts)
        codes = Counter(r.code for v in verdicts for r in v.reasons)
        rows[name] = {"n": len(batch), "rejected": rejected, "rejected_rate": rejected / max(len(batch), 1),
                      "kept_rate": 1 - rejected / max(len(batch), 1), "reasons": dict(codes.most_common())}
    n_clean = sum(c is not None for c in clean)
    rows["erased"]["erased_by"] = {"clean render": n_clean, "inpainting": len(samples) - n_clean}
    return {"spec": spec.name, "checkpoint": checkpoint, "box_check": spec.quality.box_check, "scorers": [s.name for s in scorers],
            "as_generated": as_generated, "variants": rows,
            "broken_rejected_rate": _pooled(rows, BROKEN), "good_kept_rate": rows["good"]["kept_rate"]}


def _pooled(rows: dict, names: Sequence[str]) -> float:
    n = sum(rows[k]["n"] for k in names)
    return sum(rows[k]["rejected"] for k in names) / max(n, 1)
