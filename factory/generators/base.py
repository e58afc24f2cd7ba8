"""The one protocol every generator family implements, and the registry of kinds.

A family is a class that describes itself (`kind`, the `classes` it can draw,
whether it `uses_references`, whether it `wants_gpu`, and a pydantic `Params`
model of its spec `params`) and implements `load` + `generate`. The pipeline, the
serve app and the CLI only ever talk to this protocol. Built-in families are
listed in `BUILTIN_KINDS`; a third-party package adds one through the
`factory.generators` entry-point group (`kind = "pkg.module:Class"`). A family's
class module must stay light (numpy, pydantic): heavy imports (torch, diffusers)
happen in `load`, so validating a spec never imports them.
"""

from __future__ import annotations

import importlib
from functools import lru_cache
from importlib.metadata import entry_points
from typing import Any, ClassVar, Protocol, Sequence, runtime_checkable

from pydantic import BaseModel, ConfigDict, ValidationError

from factory.core import Sample, WorkItem

ENTRY_POINT_GROUP = "factory.generators"


class GeneratorParams(BaseModel):
    """Base of every family's `Params`: unknown keys are errors, so a typo in a spec's
    `params` is refused by `factory validate`, not inside a Ray worker."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @classmethod
    def parse(cls, kind: str, params: dict[str, Any]) -> "GeneratorParams":
        """Validate a spec's params in `load`, with one readable error (`factory validate`
        reports the same problems per field before a run starts)."""
        try:
            return cls.model_validate(params)
        except ValidationError as e:
            unknown = sorted(str(err["loc"][-1]) for err in e.errors() if err["type"] == "extra_forbidden")
            if unknown:
                raise ValueError(f"unknown {kind} params {unknown}; known: {sorted(cls.model_fields)}") from None
            problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'params'}: {err['msg']}" for err in e.errors())
            raise ValueError(f"invalid {kind} params: {problems}") from None


class NoParams(GeneratorParams):
    """For families that take no params."""


@runtime_checkable
class Generator(Protocol):
    """Turn a batch of WorkItems into Samples.

    Class metadata: `kind`; `classes`: the class names it can draw, or None when it
    draws whatever its checkpoint or source holds; `uses_references`: it needs real
    images of the target line (`params.references`, defaulting to the spec's
    `domain.references`); `wants_gpu`; `Params`: the pydantic model of `params`.

    `load` gets the checkpoint URI the spec names (None when the family needs none)
    and the spec's `params`; it must raise `CheckpointError` naming what to provide
    when the checkpoint is missing. `device` is "cpu" or "cuda".
    """

    kind: ClassVar[str]
    classes: ClassVar[tuple[str, ...] | None]
    uses_references: ClassVar[bool]
    wants_gpu: ClassVar[bool]
    Params: ClassVar[type[GeneratorParams]]

    @classmethod
    def load(cls, checkpoint: str | None, params: dict[str, Any], device: str = "cpu") -> "Generator": ...

    def generate(self, items: Sequence[WorkItem]) -> list[Sample]: ...


class CheckpointError(RuntimeError):
    """A model's weights are missing or unreadable; the message says what to provide."""


# kind -> "module:Class" of the families that ship with the factory.
BUILTIN_KINDS: dict[str, str] = {
    "procedural": "factory.generators.procedural:ProceduralELGenerator",
    "pdig": "factory.generators.pdig:PDIGGenerator",
    "dg2gan": "factory.generators.dg2gan:DG2GANGenerator",
    "transplant": "factory.generators.transplant:TransplantGenerator",
}


@lru_cache(maxsize=1)
def registered_kinds() -> dict[str, str]:
    """Every known kind -> "module:Class": the built-ins, then entry points."""
    kinds = dict(BUILTIN_KINDS)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        kinds.setdefault(ep.name, ep.value)
    return kinds


def available_kinds() -> list[str]:
    return sorted(registered_kinds())


def generator_class(kind: str) -> type[Generator]:
    """Import and return the class for a generator kind (raises ValueError if unknown)."""
    kinds = registered_kinds()
    if kind not in kinds:
        raise ValueError(f"unknown generator kind {kind!r}; available: {', '.join(available_kinds())}")
    module_name, _, cls_name = kinds[kind].partition(":")
    return getattr(importlib.import_module(module_name), cls_name)


def load_generator(kind: str, checkpoint: str | None, params: dict[str, Any] | None = None, device: str = "cpu") -> Generator:
    return generator_class(kind).load(checkpoint, dict(params or {}), device=device)
