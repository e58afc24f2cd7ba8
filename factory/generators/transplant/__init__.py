"""`kind: transplant`: new defective images of the target line, composed from its own
real parts. No checkpoint, CPU only.

Spec usage:
    domain:
      references: [pv-vision-crack@1]      # defect-free images of the line (folders, URIs, NAME@VERSION)
    generators:
      - kind: transplant
        params:
          source: pv-vision-crack@1         # labelled real set from `factory data import` (train split only)
          blend: mixed                      # hard, alpha or poisson per paste (or pin one)

          placement: context                # where the background looks like the instance's own spot

Per item: a background (`style["reference"]` modulo the references), flipped and
slightly jittered in gain/offset/gamma (binary boards: flipped or turned only);
per planned box, an instance of that class picked from the item's seed, given a
new shape, placed where it belongs (on binary boards: where it changes the
conductors as it did in its source: a short joins two), intensity-matched and
blended in (`paste.py`).
Boxes are the tight boxes of the pasted masks; the mask is returned for the gate
and each paste's place, match score and blend are recorded on the sample.
Negatives are augmented backgrounds. Same item, same bytes.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, Sequence

import numpy as np
from pydantic import Field, field_validator

from factory.core import VISIBLE_DIFF, Box, Sample, WorkItem
from factory.generators.base import GeneratorParams
from factory.generators.references import background_uris, load_background, qualify, qualify_references, reference_problems
from factory.generators.transplant.bank import load_bank, nearest
from factory.generators.transplant.sources import Labelled, check_source, labelled_backgrounds, load_labelled


class TransplantParams(GeneratorParams):
    source: str  # labelled real set: NAME@VERSION or a YOLO folder URI; only its train split is read
    references: str | list[str] | None = None  # defect-free backgrounds; default: the spec's domain.references
    placement: Literal["context", "random"] = "context"  # where the background looks like the instance's spot, or the planned box
    top_k: int = Field(8, ge=1, le=256)  # context: a seeded choice among this many best separated positions,
    match_tolerance: float = Field(0.05, ge=0, le=2)  # of those, the ones scoring within this of the best
    blend: Literal["mixed", "hard", "alpha", "poisson"] = "mixed"  # mixed: hard, alpha or poisson, seeded per paste
    feather: float = Field(2.0, ge=0, le=16)  # px: alpha ramp, Poisson margin, soft edge of box-only instances
    max_distortion: float = Field(1.5, ge=1, le=4)  # how far an instance's aspect may be stretched to the box's
    scale: tuple[float, float] = (0.5, 2.0)  # how far an instance may be scaled toward its planned box
    flips: bool = True  # mirror instances (and turn them 90 degrees where that fits the box)
    rotate: bool = True
    elastic: float = Field(2.0, ge=0, le=32)  # px: largest smooth deformation of an instance
    contrast: tuple[float, float] = (0.8, 1.25)  # the defect's contrast to its surroundings, times this
    merge: float = Field(0.0, ge=0, le=1)  # chance that a box gets two instances of its class, merged into one
    jitter: float = Field(0.04, ge=0, le=0.5)  # background gain/gamma change (offset a quarter of it); not on binary images
    backgrounds: Literal["defect_free", "labelled", "both"] = "defect_free"  # labelled: the source's train images, boxes kept
    min_visible: float = Field(0.3, ge=0, le=1)  # a paste changing fewer of its pixels than this is undone
    # ... and tried again (another instance and spot, same seeded stream) up to this many times in all before its box
    # is dropped: a dropped box costs the whole image at the gate (box_missing), and shorts and opens, which need the
    # right gap or trace, were dropped most (a third of DeepPCB boards rejected, shorts under-represented)
    attempts: int = Field(6, ge=1, le=16)
    # binary images with golden templates: a paste must change the local topology as its instance did in its
    # source (a short joins two conductors, an open splits one, spurs and mousebites neither), else it is tried
    # again; context placement looks for such spots first. Pasted shorts that joined nothing looked like spurs.
    topology: bool = True
    # the finished image through JPEG at the line's own quality (e.g. 75 for DeepPCB's boards), so that pasted
    # pixels carry the codec's noise as the rest does; None: no re-encoding
    jpeg_quality: int | None = Field(None, ge=1, le=100)
    classes: list[str] | None = None  # the spec's class names in id order (set from the spec: kept boxes' ids)
    max_per_class: int = Field(5000, ge=1)  # instances read per class
    candidates: int = Field(16, ge=1)  # per box, one of this many instances closest in size and aspect

    @field_validator("scale", "contrast")
    @classmethod
    def _range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1] <= 16:
            raise ValueError(f"must be [lo, hi] with 0 < lo <= hi <= 16, got {list(v)}")
        return v


class TransplantGenerator:
    """Cuts real defects (along their masks) from a labelled set's train split and
    blends them into the planned boxes of real defect-free images."""

    kind: ClassVar[str] = "transplant"
    classes: ClassVar[None] = None  # whatever its source holds (checked by check_resources)
    uses_references: ClassVar[bool] = True
    wants_gpu: ClassVar[bool] = False
    Params: ClassVar[type[TransplantParams]] = TransplantParams

    def __init__(self, params: TransplantParams, bank: dict, backgrounds: list, source_names: tuple[str, ...] = ()):
        self.p, self.bank, self.backgrounds, self.source_names = params, bank, backgrounds, source_names
        self.sizes = {c: np.array([i.size for i in pool], float) for c, pool in bank.items()}

    @classmethod
    def load(cls, checkpoint: str | None, params: dict[str, Any], device: str = "cpu") -> "TransplantGenerator":
        if checkpoint:
            raise ValueError(f"the transplant generator takes no checkpoint, got {checkpoint!r}")
        p = cls.Params.parse(cls.kind, params)
        backgrounds: list = []
        if p.backgrounds != "labelled":
            if not p.references:
                raise ValueError("transplant needs params.references (defect-free images of the line), e.g. domain.references")
            backgrounds = background_uris(p.references)
            if not backgrounds:
                raise ValueError(f"no defect-free images in references {p.references}")
        names: list[str] = []
        if p.backgrounds != "defect_free":
            if not p.classes:
                raise ValueError("backgrounds: labelled needs params.classes (the spec's class names; `check_spec` sets them)")
            names, labelled = labelled_backgrounds(p.source, p.classes)
            if not labelled:
                raise ValueError(f"{p.source}: no labelled train image whose classes are all among {p.classes}")
            backgrounds += labelled
        bank = load_bank(p.source, None, p.max_per_class, p.feather)
        if not bank:
            raise ValueError(f"{p.source}: no defect instances in its train split")
        return cls(p, bank, backgrounds, tuple(names))

    @classmethod
    def prepare_params(cls, params: dict[str, Any], spec) -> dict[str, Any]:
        """Bare `NAME@VERSION` source/references -> `ROOT/NAME@VERSION` in the spec's registry."""
        params["source"] = qualify(params["source"], spec.output.uri)
        qualify_references(params, spec.output.uri)
        if params.get("backgrounds", "defect_free") != "defect_free":
            params["classes"] = list(spec.class_names)
        return params

    @classmethod
    def check_resources(cls, params: dict[str, Any], spec, where: str, checkpoint: str | None = None) -> list[tuple[str, str]]:
        """The source exists and has every class the spec draws with weight > 0 in its
        train split; the references exist and hold defect-free images."""
        problems = []
        why, missing = check_source(params["source"], [d.class_name for d in spec.defects if d.weight > 0])
        if why:
            problems.append((f"{where}.params.source", why))
        problems += [(f"defects[{i}].class", missing[d.class_name]) for i, d in enumerate(spec.defects)
                     if d.class_name in missing]
        return problems + reference_problems(params, spec, where)

    def generate(self, items: Sequence[WorkItem]) -> list[Sample]:
        return [self._one(item) for item in items]

    def _one(self, item: WorkItem) -> Sample:
        from factory.generators.transplant.paste import frame_box, halo, margin, paste  # cv2: imported when generating

        p = self.p
        seqs = np.random.SeedSequence(item.seed).spawn(1 + len(item.boxes))
        ref, canvas, levels, kept, kept_map = self._background(item, np.random.default_rng(seqs[0]))
        background = np.clip(np.round(canvas), 0, 255).astype(np.uint8)  # before any paste: the exact outside test
        mask = np.zeros((item.height, item.width), np.uint16)
        forbidden = kept_map > 0  # a paste never lands on a kept defect
        used, pastes, frames, reach = [], [], {}, 0
        for j, box in enumerate(item.boxes):
            rng = np.random.default_rng(seqs[1 + j])
            for attempt in range(p.attempts):
                shown = False
                for inst, at, v, blend in self._paste_box(canvas, box, rng, levels, forbidden | (mask > 0)):
                    before = canvas.copy()
                    pasted = paste(canvas, v, at[:2], inst.exact, blend, p.feather, levels)
                    visible = float((np.abs(canvas - before)[pasted] > (127 if levels is not None else VISIBLE_DIFF)).mean()) \
                        if pasted.any() else 0.0
                    why = f"invisible ({visible:.2f} changed)" if visible < p.min_visible else None  # an open on bare substrate
                    if why is None and levels is not None and p.topology:
                        win = _window(at, v.patch.shape, canvas.shape)
                        if not v.fits_topology(before[win], canvas[win]):
                            why = f"topology (not {list(v.topology)})"
                    if why:
                        canvas[:] = before
                        pastes.append({"box": j, "instance": inst.origin, "attempt": attempt, "dropped": why})
                        continue
                    shown = True
                    reach = max(reach, halo(v, levels))
                    mask[pasted] = j + 1
                    f = frame_box(v, at[:2], mask.shape)
                    if f is not None:
                        g = frames.get(j, f)
                        frames[j] = (min(f[0], g[0]), max(f[1], g[1]), min(f[2], g[2]), max(f[3], g[3]))
                    used.append(inst.origin)
                    pastes.append({"box": j, "instance": inst.origin, "at": [int(at[1]), int(at[0])],
                                   "scale": round(v.scale, 3), "blend": blend,
                                   "match": None if at[2] is None else round(at[2], 4)})
                if shown:
                    break
        boxes, final = _tight_boxes(item.boxes, mask, frames)
        for k, b in enumerate(kept, start=1):  # the labelled background's own defects, after the pasted ones
            boxes.append(b)
            final[(kept_map == k) & (final == 0)] = len(boxes)
        image = np.clip(np.round(canvas), 0, 255).astype(np.uint8)
        blend_px = margin(p.feather) + reach
        if p.jpeg_quality:  # blocks (8 px) without a changed pixel decode exactly as the background's own
            image, background = _jpeg(image, p.jpeg_quality), _jpeg(background, p.jpeg_quality)
            blend_px += 8
        image, background = (np.repeat(a[:, :, None], item.channels, axis=2) for a in (image, background))
        meta = {"checkpoint": "", "reference": ref, "instances": used,
                "provenance": {"reference": ref, "placement": p.placement, "pastes": pastes, "kept_boxes": len(kept)}}
        return Sample(item=item, image=image, boxes=boxes, mask=final, meta=meta, background=background,
                      blend_px=blend_px)

    def _background(self, item: WorkItem, rng: np.random.Generator):
        """(its URI, the augmented canvas, its grey levels if binary, kept boxes, their map):
        `style["reference"]` picks among the defect-free references and, with
        `backgrounds: labelled | both`, the source's labelled train images (boxes kept)."""
        from factory.generators.transplant.paste import augment, grey_levels, move_boxes, turn

        pick = self.backgrounds[int(item.style.get("reference", item.seed)) % len(self.backgrounds)]
        if isinstance(pick, Labelled):
            background, boxes, kept_map = load_labelled(pick, self.source_names, tuple(self.p.classes or ()),
                                                        item.width, item.height)
        else:
            background, boxes, kept_map = load_background(pick, item.width, item.height), (), None
        levels = grey_levels(background)
        canvas, ops = augment(background, rng, self.p.jitter, binary=levels is not None)
        kept = move_boxes(boxes, ops, item.height, item.width)
        kept_map = np.zeros(canvas.shape, np.uint16) if kept_map is None else np.ascontiguousarray(turn(kept_map, ops))
        return (pick.uri if isinstance(pick, Labelled) else pick), canvas, levels, kept, kept_map

    def _paste_box(self, canvas: np.ndarray, box: Box, rng: np.random.Generator, levels, forbidden: np.ndarray):
        """The instance(s) for one planned box, each varied, placed and given a blend:
        [(instance, (top, left, match), variant, blend)]; two with `merge`."""
        from factory.generators.transplant.paste import BLENDS, place, turned, vary

        p = self.p
        pool = self.bank.get(box.class_name)
        if not pool:
            raise ValueError(f"transplant source {p.source} has no {box.class_name!r} instances in its train "
                             f"split; it has {', '.join(sorted(self.bank))}")
        near = nearest(pool, self.sizes[box.class_name], box.height, box.width, p.candidates)
        parts = [pool[near[int(rng.integers(len(near)))]]]
        if p.merge and rng.random() < p.merge:
            parts.append(pool[near[int(rng.integers(len(near)))]])
        out: list = []
        for inst in parts:
            v = vary(inst, box, rng, p.max_distortion, p.scale, p.flips, p.rotate, p.elastic, p.contrast)
            if not out:
                keep = p.topology and levels is not None
                at = place(canvas, v, box, rng, p.placement, p.top_k, forbidden, levels is not None, p.match_tolerance, keep)
                if p.placement == "context" and p.rotate:  # the turned instance may fit the spot better
                    t = turned(v)
                    at_t = place(canvas, t, box, rng, p.placement, p.top_k, forbidden, levels is not None,
                                 p.match_tolerance, keep)
                    if at_t[2] is not None and (at[2] is None or at_t[2] > at[2]):
                        v, at = t, at_t
            else:  # the second part of a merged defect: beside the first, overlapping it by about half
                h, w = v.patch.shape
                first = out[0][1]
                at = (first[0] + int(rng.integers(-h // 3, h // 3 + 1)), first[1] + int(rng.integers(-w // 3, w // 3 + 1)), None)
            out.append((inst, at, v, p.blend if p.blend != "mixed" else BLENDS[int(rng.integers(len(BLENDS)))]))
        return out


def _window(at: tuple[int, ...], size: tuple[int, int], shape: tuple[int, int]) -> tuple[slice, slice]:
    """The canvas rows and columns under a patch of `size` with its top-left at `at`, clipped."""
    return (slice(max(0, at[0]), min(shape[0], at[0] + size[0])), slice(max(0, at[1]), min(shape[1], at[1] + size[1])))


def _jpeg(grey: np.ndarray, quality: int) -> np.ndarray:
    """HxW uint8 through a baseline greyscale JPEG at `quality` and back (deterministic)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(grey).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())))


def _tight_boxes(planned: Sequence[Box], mask: np.ndarray,
                 frames: dict[int, tuple[int, int, int, int]]) -> tuple[list[Box], np.ndarray]:
    """Each instance's box: the tight box of its surviving pixels (a later paste may
    cover an earlier one), grown to its annotated frame (the source's own boxes are
    as loose as its annotators drew them); and the mask renumbered to k = 1 + index
    in the returned boxes."""
    boxes, out = [], np.zeros(mask.shape, np.uint8)
    for j, b in enumerate(planned):
        ys, xs = np.nonzero(mask == j + 1)
        if len(ys) == 0:
            continue
        y1, y2, x1, x2 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
        if j in frames:
            f = frames[j]
            y1, y2, x1, x2 = min(y1, f[0]), max(y2, f[1]), min(x1, f[2]), max(x2, f[3])
        boxes.append(Box(b.class_id, b.class_name, x1, y1, x2, y2))
        out[mask == j + 1] = len(boxes)
    return boxes, out


FAMILY = TransplantGenerator  # what `factory.generators.base` registers as kind "transplant" (this folder)

__all__ = ["FAMILY", "TransplantGenerator", "TransplantParams"]
