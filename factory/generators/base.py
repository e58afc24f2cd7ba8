"""The one protocol every generator family implements, and the registry of kinds.

The pipeline, the serve app and the CLI only ever talk to this protocol, so adding
a family means: a subpackage with a class that implements `Generator`, and one
line in `KINDS` below. Kinds are registered as import strings so that validating
a spec never imports torch or diffusers.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, Sequence, runtime_checkable

import numpy as np

from factory.planning.work import Box, WorkItem


@dataclass
class Sample:
    """What a generator returns for one WorkItem.

    `boxes` are the annotations the generator vouches for (they may be tighter than
    the requested ones, or measured, as DG2GAN does). `mask` is an HxW uint8 map of
    defect pixels (0 = background, k = 1 + index of the box in `boxes`) when the
    generator knows it exactly, else None. `meta` carries provenance (checkpoint,
    extra per-sample info) and optional debugging arrays (e.g. attention maps).
    """

    item: WorkItem
    image: np.ndarray  # HxWxC uint8
    boxes: list[Box]
    mask: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def sample_id(self) -> str:
        return self.item.item_id


@runtime_checkable
class Generator(Protocol):
    """Turn a batch of WorkItems into Samples.

    `load` gets the checkpoint URI the spec names (None when the family needs none)
    and the spec's `params`; it must raise `CheckpointError` naming what to provide
    when the checkpoint is missing. `device` is "cpu" or "cuda".
    """

    kind: ClassVar[str]
    wants_gpu: ClassVar[bool]

    @classmethod
    def load(cls, checkpoint: str | None, params: dict[str, Any], device: str = "cpu") -> "Generator": ...

    def generate(self, items: Sequence[WorkItem]) -> list[Sample]: ...


class CheckpointError(RuntimeError):
    """A model's weights are missing or unreadable; the message says what to provide."""


# kind -> "module:Class". A kind listed here is accepted by spec validation.
KINDS: dict[str, str] = {
    "procedural": "factory.generators.procedural:ProceduralELGenerator",
    "pdig": "factory.generators.pdig:PDIGGenerator",
    "dg2gan": "factory.generators.dg2gan:DG2GANGenerator",
}

# kinds the product plans but this build cannot run yet, with the reason shown to users.
PLANNED_KINDS: dict[str, str] = {
}


# kinds that draw a fixed set of classes: "module:attribute" of a collection of names.
# Spec validation refuses a class such a kind cannot draw.
FIXED_CLASSES: dict[str, str] = {
    "procedural": "factory.generators.procedural.render:DEFECTS",
}


# kinds that translate real images of the target domain: their `params.references`
# defaults to the spec's `domain.references`, and a spec must give one or the other.
USES_DOMAIN_REFERENCES: set[str] = {"dg2gan"}


def supported_classes(kind: str) -> list[str] | None:
    """The classes a kind can draw, or None when it draws whatever its checkpoint learned."""
    if kind not in FIXED_CLASSES:
        return None
    module_name, _, attr = FIXED_CLASSES[kind].partition(":")
    return list(getattr(importlib.import_module(module_name), attr))


def available_kinds() -> list[str]:
    return sorted(KINDS)


def generator_class(kind: str) -> type[Generator]:
    """Import and return the class for a generator kind (raises ValueError if unknown)."""
    if kind not in KINDS:
        if kind in PLANNED_KINDS:
            raise ValueError(f"generator kind {kind!r} is not available: {PLANNED_KINDS[kind]}")
        raise ValueError(f"unknown generator kind {kind!r}; available: {', '.join(available_kinds())}")
    module_name, _, cls_name = KINDS[kind].partition(":")
    return getattr(importlib.import_module(module_name), cls_name)


def load_generator(kind: str, checkpoint: str | None, params: dict[str, Any] | None = None, device: str = "cpu") -> Generator:
    return generator_class(kind).load(checkpoint, dict(params or {}), device=device)
