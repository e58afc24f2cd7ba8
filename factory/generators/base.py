"""The one protocol every generator family implements, and the registry of kinds.

A family is a class that describes itself (`kind`, the `classes` it can draw,
whether it `uses_references`, whether it `wants_gpu`, and a pydantic `Params`
model of its spec `params`) and implements `load` + `generate`. The pipeline, the
serve app and the CLI only ever talk to this protocol, through `GeneratorRef`s
(`factory.core`: kind + checkpoint + params, one per spec generator).

One family, one folder: a built-in family is a subpackage `factory/generators/<kind>/`
whose `__init__` names its class `FAMILY`; next to its params, model and generator
it may hold its Ray Train loop (`train.py`) and its command line (`cli.py`, a
`register(train_app)` function that adds `factory train ...` subcommands). Adding a
folder adds the family: nothing else lists it. A third-party package adds one through
the `factory.generators` entry-point group (`kind = "pkg.module:Class"`) and its
commands through `factory.generators.commands` (`kind = "pkg.module:register"`).
A family's class module must stay light (numpy, pydantic): heavy imports (torch,
diffusers) happen in `load`, so validating a spec never imports them.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from functools import lru_cache
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar, MutableMapping, Protocol, Sequence, runtime_checkable

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import ErrorDetails

from factory.core import GeneratorRef, Sample, WorkItem
from factory.spec.errors import describe_error

ENTRY_POINT_GROUP = "factory.generators"
COMMANDS_GROUP = "factory.generators.commands"  # kind = "pkg.module:register" (a family's CLI subcommands)


class GeneratorParams(BaseModel):
    """Base of every family's `Params`: unknown keys are errors, so a typo in a spec's
    `params` is refused by `factory validate`, not inside a Ray worker."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @classmethod
    def parse(cls, kind: str, params: dict[str, Any]) -> "GeneratorParams":
        """The family's typed params, or one ValueError listing every problem as
        `check` words it (`factory validate` reports the same problems per field)."""
        try:
            return cls.model_validate(params)
        except ValidationError as e:
            problems = "; ".join(f"{loc or 'params'}: {msg}" for loc, msg in cls.problems(e))
            raise ValueError(f"invalid {kind} params: {problems}") from None

    @classmethod
    def check(cls, params: dict[str, Any]) -> list[tuple[str, str]]:
        """Every problem of `params` as (field path under params, reason); [] when valid."""
        try:
            cls.model_validate(params)
        except ValidationError as e:
            return cls.problems(e)
        return []

    @classmethod
    def problems(cls, e: ValidationError) -> list[tuple[str, str]]:
        return [cls._problem(err) for err in e.errors()]

    @classmethod
    def _problem(cls, err: ErrorDetails) -> tuple[str, str]:
        loc, msg = describe_error(err)
        if err["type"] == "extra_forbidden":
            key = str(err["loc"][-1])
            known = sorted(cls.model_fields)
            hint = difflib.get_close_matches(key, known, n=1)
            msg = f"unknown key {key!r}" + (f" (did you mean {hint[0]!r}?)" if hint else
                                             f"; allowed keys: {', '.join(known) or 'none'}")
        return loc, msg


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


def builtin_kinds() -> dict[str, str]:
    """kind -> "module:FAMILY" of the families that ship with the factory: every
    subpackage of `factory.generators` is one (its folder name is its kind)."""
    return {name: f"{__package__}.{name}:FAMILY" for name in _family_folders()}


@lru_cache(maxsize=1)
def _family_folders() -> dict[str, bool]:
    """Family folder name -> whether it holds a `cli.py`; read from the disk, nothing imported."""
    folder = Path(__file__).parent
    return {m.name: any(c.name == "cli" for c in pkgutil.iter_modules([str(folder / m.name)]))
            for m in sorted(pkgutil.iter_modules([str(folder)]), key=lambda m: m.name) if m.ispkg}


@lru_cache(maxsize=1)
def registered_kinds() -> dict[str, str]:
    """Every known kind -> "module:Class": the built-ins, then entry points."""
    kinds = builtin_kinds()
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        kinds.setdefault(ep.name, ep.value)
    return kinds


def available_kinds() -> list[str]:
    return sorted(registered_kinds())


def family_commands() -> dict[str, str]:
    """kind -> "module:register" of every family with command-line subcommands: the
    built-in folders that hold a `cli.py`, then entry points. Found without importing
    the families (`factory --help` stays quick)."""
    out = {kind: f"{__package__}.{kind}.cli:register" for kind, has_cli in _family_folders().items() if has_cli}
    for ep in entry_points(group=COMMANDS_GROUP):
        out.setdefault(ep.name, ep.value)
    return dict(sorted(out.items()))


def generator_class(kind: str) -> type[Generator]:
    """Import and return the class for a generator kind (raises ValueError if unknown)."""
    kinds = registered_kinds()
    if kind not in kinds:
        shown = kind if len(kind) <= 60 else kind[:57] + "..."  # a mutated spec may hold any string
        raise ValueError(f"unknown generator kind {shown!r}; available: {', '.join(available_kinds())}")
    module_name, _, cls_name = kinds[kind].partition(":")
    return getattr(importlib.import_module(module_name), cls_name)


def load_generator(ref: GeneratorRef | str, checkpoint: str | None = None, params: dict[str, Any] | None = None,
                   device: str = "cpu") -> Generator:
    """Load the generator `ref` names (or the one-off ref of kind, checkpoint, params)."""
    if isinstance(ref, str):
        ref = GeneratorRef(ref, checkpoint, dict(params or {}))
    return generator_class(ref.kind).load(ref.checkpoint, dict(ref.params), device=device)


def generator_for(item: WorkItem, loaded: MutableMapping[str, Generator], device: str = "cpu") -> Generator:
    """The generator that draws `item` (its ref: two generators of one kind in a spec
    differ in params), loaded once into `loaded` (ref key -> generator)."""
    ref = item.generator_ref
    if ref.key not in loaded:
        loaded[ref.key] = load_generator(ref, device=device)
    return loaded[ref.key]
