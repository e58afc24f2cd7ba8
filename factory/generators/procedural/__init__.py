"""`kind: procedural`: the EL cell renderer, no weights needed.

`params.background: references` draws the defects onto real defect-free images of
the line (`params.references`, default `domain.references`; picked per item by
`style["reference"]`, flipped by the item's seed) instead of rendered cells."""

from __future__ import annotations

from typing import Any, ClassVar, Literal, Sequence

import numpy as np

from factory.core import Sample, WorkItem
from factory.generators.base import GeneratorParams
from factory.generators.procedural.render import DEFECTS, render_el_with_background
from factory.generators.references import background_uris, load_background, qualify_references, reference_problems

CLASSES = tuple(DEFECTS)


class ProceduralParams(GeneratorParams):
    background: Literal["rendered", "references"] = "rendered"
    references: str | list[str] | None = None  # with background: references; default: the spec's domain.references


class ProceduralELGenerator:
    """Renders PV EL cells with defects drawn inside the requested boxes; returns
    the exact defect mask and the background (the cell without them), so later
    stages can check themselves against truth."""

    kind: ClassVar[str] = "procedural"
    classes: ClassVar[tuple[str, ...]] = CLASSES
    uses_references: ClassVar[bool] = False
    wants_gpu: ClassVar[bool] = False
    Params: ClassVar[type[ProceduralParams]] = ProceduralParams

    def __init__(self, references: list[str] | None = None):
        self.references = references

    @classmethod
    def needs_references(cls, params: dict[str, Any]) -> bool:
        return params.get("background") == "references"

    @classmethod
    def prepare_params(cls, params: dict[str, Any], spec) -> dict[str, Any]:
        return qualify_references(params, spec.output.uri)

    @classmethod
    def check_resources(cls, params: dict[str, Any], spec, where: str, checkpoint: str | None = None) -> list[tuple[str, str]]:
        if params.get("background") != "references":
            return []
        return reference_problems(params, spec, where)

    @classmethod
    def load(cls, checkpoint: str | None, params: dict[str, Any], device: str = "cpu") -> "ProceduralELGenerator":
        if checkpoint:
            raise ValueError(f"the procedural generator takes no checkpoint, got {checkpoint!r}")
        p = cls.Params.parse(cls.kind, params)
        if p.background == "rendered":
            return cls()
        if not p.references:
            raise ValueError("procedural with background: references needs params.references (or domain.references)")
        refs = background_uris(p.references)
        if not refs:
            raise ValueError(f"no defect-free images in references {p.references}")
        return cls(refs)

    def generate(self, items: Sequence[WorkItem]) -> list[Sample]:
        out = []
        for item in items:
            cell, meta = None, {"checkpoint": ""}
            if self.references:
                ref = self.references[int(item.style.get("reference", item.seed)) % len(self.references)]
                cell = load_background(ref, item.width, item.height) / 255.0
                flips = np.random.default_rng([item.seed, 1]).random(2) < 0.5
                cell = cell[:, ::-1] if flips[0] else cell
                cell = cell[::-1] if flips[1] else cell
                meta["reference"] = ref
            image, boxes, mask, background = render_el_with_background(item, cell)
            out.append(Sample(item=item, image=image, boxes=boxes, mask=mask, meta=meta, background=background))
        return out


FAMILY = ProceduralELGenerator  # what `factory.generators.base` registers as kind "procedural" (this folder)

__all__ = ["CLASSES", "FAMILY", "ProceduralELGenerator", "ProceduralParams"]
