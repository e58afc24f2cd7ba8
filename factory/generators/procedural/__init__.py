"""`kind: procedural`: the EL cell renderer, no weights needed."""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

from factory.core import Sample, WorkItem
from factory.generators.base import NoParams
from factory.generators.procedural.render import DEFECTS, render_el

CLASSES = tuple(DEFECTS)


class ProceduralELGenerator:
    """Renders PV EL cells with defects drawn inside the requested boxes; returns
    the exact defect mask, so later stages can check themselves against truth."""

    kind: ClassVar[str] = "procedural"
    classes: ClassVar[tuple[str, ...]] = CLASSES
    uses_references: ClassVar[bool] = False
    wants_gpu: ClassVar[bool] = False
    Params: ClassVar[type[NoParams]] = NoParams

    @classmethod
    def load(cls, checkpoint: str | None, params: dict[str, Any], device: str = "cpu") -> "ProceduralELGenerator":
        if checkpoint:
            raise ValueError(f"the procedural generator takes no checkpoint, got {checkpoint!r}")
        cls.Params.parse(cls.kind, params)
        return cls()

    def generate(self, items: Sequence[WorkItem]) -> list[Sample]:
        out = []
        for item in items:
            image, boxes, mask = render_el(item)
            out.append(Sample(item=item, image=image, boxes=boxes, mask=mask, meta={"checkpoint": ""}))
        return out


__all__ = ["CLASSES", "ProceduralELGenerator"]
