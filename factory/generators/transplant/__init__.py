"""`kind: transplant`: new defective images of the target line, composed from its own
real parts. No checkpoint, CPU only.

Spec usage:
    domain:
      references: [pv-vision-crack@1]      # defect-free images of the line (folders, URIs, NAME@VERSION)
    generators:
      - kind: transplant
        params:
          source: pv-vision-crack@1         # labelled real set from `factory data import` (train split only)
          blend: poisson                    # or alpha

Per item: a background (`style["reference"]` modulo the references), flipped and
slightly jittered in gain/offset/gamma; per planned box, an instance of that class
picked from the item's seed, fitted, intensity-matched and blended in
(`paste.py`). Boxes are the tight boxes of the pasted masks; the mask is returned
for the gate. Negatives are augmented backgrounds. Same item, same bytes.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, Sequence

import numpy as np
from pydantic import Field

from factory.core import Box, Sample, WorkItem
from factory.generators.base import GeneratorParams
from factory.generators.transplant.bank import load_bank, nearest
from factory.generators.transplant.sources import background_uris, check_references, check_source, load_background, qualify


class TransplantParams(GeneratorParams):
    source: str  # labelled real set: NAME@VERSION or a YOLO folder URI; only its train split is read
    references: str | list[str] | None = None  # defect-free backgrounds; default: the spec's domain.references
    blend: Literal["poisson", "alpha"] = "poisson"
    feather: float = Field(2.0, ge=0, le=16)  # px: alpha ramp, Poisson margin, soft edge of box-only instances
    max_distortion: float = Field(1.5, ge=1, le=4)  # how far an instance's aspect may be stretched to the box's
    jitter: float = Field(0.04, ge=0, le=0.5)  # background gain/gamma change (offset a quarter of it)
    max_per_class: int = Field(5000, ge=1)  # instances read per class
    candidates: int = Field(16, ge=1)  # per box, one of this many instances closest in size and aspect


class TransplantGenerator:
    """Cuts real defects (along their masks) from a labelled set's train split and
    blends them into the planned boxes of real defect-free images."""

    kind: ClassVar[str] = "transplant"
    classes: ClassVar[None] = None  # whatever its source holds (checked by check_resources)
    uses_references: ClassVar[bool] = True
    wants_gpu: ClassVar[bool] = False
    Params: ClassVar[type[TransplantParams]] = TransplantParams

    def __init__(self, params: TransplantParams, bank: dict, references: list[str]):
        self.p, self.bank, self.references = params, bank, references
        self.sizes = {c: np.array([i.size for i in pool], float) for c, pool in bank.items()}

    @classmethod
    def load(cls, checkpoint: str | None, params: dict[str, Any], device: str = "cpu") -> "TransplantGenerator":
        if checkpoint:
            raise ValueError(f"the transplant generator takes no checkpoint, got {checkpoint!r}")
        p = cls.Params.parse(cls.kind, params)
        if not p.references:
            raise ValueError("transplant needs params.references (defect-free images of the line), e.g. domain.references")
        refs = background_uris(p.references)
        if not refs:
            raise ValueError(f"no defect-free images in references {p.references}")
        bank = load_bank(p.source, None, p.max_per_class, p.feather)
        if not bank:
            raise ValueError(f"{p.source}: no defect instances in its train split")
        return cls(p, bank, refs)

    @classmethod
    def prepare_params(cls, params: dict[str, Any], spec) -> dict[str, Any]:
        """Bare `NAME@VERSION` source/references -> `ROOT/NAME@VERSION` in the spec's registry."""
        root = spec.output.uri
        params["source"] = qualify(params["source"], root)
        refs = params.get("references")
        if refs:
            params["references"] = [qualify(r, root) for r in ([refs] if isinstance(refs, str) else refs)]
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
        refs = params.get("references")
        if refs:
            why = check_references(refs)
            if why:
                domain_refs = [qualify(r, spec.output.uri) for r in spec.domain.references]
                field = "domain.references" if refs == domain_refs else f"{where}.params.references"
                problems.append((field, why))
        return problems

    def generate(self, items: Sequence[WorkItem]) -> list[Sample]:
        return [self._one(item) for item in items]

    def _one(self, item: WorkItem) -> Sample:
        from factory.generators.transplant.paste import augment, paste  # cv2: imported when generating

        seqs = np.random.SeedSequence(item.seed).spawn(1 + len(item.boxes))
        ref_idx = int(item.style.get("reference", item.seed)) % len(self.references)
        canvas = augment(load_background(self.references[ref_idx], item.width, item.height),
                         np.random.default_rng(seqs[0]), self.p.jitter)
        mask = np.zeros((item.height, item.width), np.uint16)
        used = []
        for j, box in enumerate(item.boxes):
            pool = self.bank.get(box.class_name)
            if not pool:
                raise ValueError(f"transplant source {self.p.source} has no {box.class_name!r} instances in its train "
                                 f"split; it has {', '.join(sorted(self.bank))}")
            rng = np.random.default_rng(seqs[1 + j])
            near = nearest(pool, self.sizes[box.class_name], box.height, box.width, self.p.candidates)
            inst = pool[near[int(rng.integers(len(near)))]]
            pasted = paste(canvas, inst, box, rng, self.p.blend, self.p.feather, self.p.max_distortion)
            mask[pasted] = j + 1
            used.append(inst.origin)
        boxes, final = _tight_boxes(item.boxes, mask)
        image = np.clip(np.round(canvas), 0, 255).astype(np.uint8)
        image = np.repeat(image[:, :, None], item.channels, axis=2)
        meta = {"checkpoint": "", "reference": self.references[ref_idx], "instances": used, "blend": self.p.blend}
        return Sample(item=item, image=image, boxes=boxes, mask=final, meta=meta)


def _tight_boxes(planned: Sequence[Box], mask: np.ndarray) -> tuple[list[Box], np.ndarray]:
    """The tight box of each instance's surviving pixels (a later paste may cover an
    earlier one), and the mask renumbered to k = 1 + index in the returned boxes."""
    boxes, out = [], np.zeros(mask.shape, np.uint8)
    for j, b in enumerate(planned):
        ys, xs = np.nonzero(mask == j + 1)
        if len(ys) == 0:
            continue
        boxes.append(Box(b.class_id, b.class_name, int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1))
        out[mask == j + 1] = len(boxes)
    return boxes, out


__all__ = ["TransplantGenerator", "TransplantParams"]
