"""Read a spec file and turn every failure into `file: field.path: reason` lines.

Parsing is bounded, since a spec may come from anyone who can submit a job: the
file size, the number of values after YAML aliases are expanded, the nesting
depth and the size of integers all have limits, duplicate keys are errors (YAML
would silently keep the last), and values quoted back in messages are cut short.
Values are read by YAML 1.2 rules (`factory.spec.yaml12.SpecLoader`), so `1:30` or
`no` never turn silently into 90 or false; `factory.spec.errors` words the problems.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from factory.spec.errors import PREVIEW_CHARS, SpecError, describe_error, preview
from factory.spec.model import DatasetSpec
from factory.spec.yaml12 import SpecLoader

MAX_SPEC_BYTES = 1 << 20  # a real spec is a few KB
MAX_VALUES = 100_000  # values after YAML aliases are expanded
MAX_DEPTH = 32  # nesting of mappings and lists
MAX_INT = 2**63 - 1


def load_spec(path: str | Path) -> DatasetSpec:
    """Load and validate a YAML spec file."""
    path = Path(path)
    source = str(path)
    if not path.exists():
        raise SpecError(source, [("", "file not found")])
    if path.is_dir():
        raise SpecError(source, [("", "is a folder, expected a YAML file")])
    if path.stat().st_size > MAX_SPEC_BYTES:
        raise SpecError(source, [("", f"{path.stat().st_size} bytes: a spec may be at most {MAX_SPEC_BYTES} bytes")])
    with open(path, "rb") as f:  # bounded: a device or pipe (/dev/zero) has no size to check first
        data = f.read(MAX_SPEC_BYTES + 1)
    if len(data) > MAX_SPEC_BYTES:
        raise SpecError(source, [("", f"more than {MAX_SPEC_BYTES} bytes: a spec may be at most that")])
    return parse_spec(data.decode("utf-8", errors="replace"), source)


def parse_spec(text: str, source: str = "<spec>") -> DatasetSpec:
    if not text.strip():
        raise SpecError(source, [("", "file is empty; a spec needs at least name, count and defects")])
    if len(text.encode("utf-8", errors="replace")) > MAX_SPEC_BYTES:
        raise SpecError(source, [("", f"a spec may be at most {MAX_SPEC_BYTES} bytes")])
    try:
        data = yaml.load(text, Loader=SpecLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        what = "" if isinstance(e, yaml.constructor.ConstructorError) else "YAML syntax error at "
        raise SpecError(source, [("", f"{what}{where}{problem}")]) from None
    except RecursionError:
        raise SpecError(source, [("", f"nested too deeply (at most {MAX_DEPTH} levels)")]) from None
    except ValueError as e:  # e.g. an integer literal longer than Python converts
        raise SpecError(source, [("", f"unreadable value: {str(e)[:PREVIEW_CHARS]}")]) from None
    if data is None:
        raise SpecError(source, [("", "file is empty; a spec needs at least name, count and defects")])
    return spec_from_dict(data, source)


def _check_bounds(data: Any, source: str) -> None:
    """Refuse alias bombs, deep nesting, cycles and huge integers before pydantic walks
    the data (it would expand every alias). Sizes are counted per distinct object,
    so a shared (aliased) subtree costs its expanded size without being expanded."""
    sizes: dict[int, int] = {}
    problems: list[tuple[str, str]] = []

    def size(value: Any, path: str, depth: int) -> int:
        if depth > MAX_DEPTH:
            raise SpecError(source, [(path, f"nested too deeply (at most {MAX_DEPTH} levels)")])
        if isinstance(value, bool):
            return 1
        if isinstance(value, int) and abs(value) > MAX_INT and len(problems) < 10:
            problems.append((path, f"integer too large: {preview(value)}"))
        if not isinstance(value, (dict, list)):
            return 1
        key = id(value)
        if key in sizes:
            if sizes[key] < 0:
                raise SpecError(source, [(path, "refers to itself (a recursive YAML alias)")])
            return sizes[key]
        sizes[key] = -1
        items = value.items() if isinstance(value, dict) else enumerate(value)
        total = 1
        for k, v in items:
            child = f"{path}[{k}]" if isinstance(k, int) else (f"{path}.{k}" if path else str(k))
            total += size(v, child[:PREVIEW_CHARS], depth + 1)
            if total > MAX_VALUES:
                raise SpecError(source, [(path, f"expands to more than {MAX_VALUES} values (YAML aliases?)")])
        sizes[key] = total
        return total

    size(data, "", 0)
    if problems:
        raise SpecError(source, problems)


def spec_from_dict(data: Any, source: str = "<spec>") -> DatasetSpec:
    if not isinstance(data, dict):
        raise SpecError(source, [("", f"the top level must be a mapping of keys, got {type(data).__name__}")])
    _check_bounds(data, source)
    try:
        return DatasetSpec.model_validate(data)
    except ValidationError as e:
        errors = e.errors()
        raise SpecError(source, [describe_error(err) for err in errors], *_partial(data, errors)) from None


# stand-ins for required fields that failed; boxes that fit the smallest image
_PLACEHOLDERS = {"name": "placeholder", "count": 1,
                 "defects": [{"class": "placeholder", "boxes": {"size": {"min": 0.5, "max": 0.5}}}]}


def _partial(data: dict[Any, Any], errors: list[ErrorDetails]) -> tuple[DatasetSpec | None, tuple[str, ...]]:
    """The spec with every failing value set aside, and their field paths: a failing key
    of a generator is dropped from it, any other failing field goes back to its default
    (a required one to a placeholder). The generator checks then still run on the rest,
    so `factory validate` shows every problem in one pass, not layer by layer. `data`'s
    keys are as YAML read them: an unknown one may be a number."""
    data = dict(data)
    aside: set[str] = set()
    for _ in range(3):  # a stand-in may fail a cross-field check in turn
        for err in errors:
            loc = err["loc"]
            gens = data.get("generators")
            if not loc:
                return None, ()
            at = loc[1] if len(loc) >= 3 else None  # generators[at].key
            if (loc[0] == "generators" and isinstance(at, int) and loc[2] != "kind" and isinstance(gens, list)
                    and isinstance(gens[at], dict)):
                gens = data["generators"] = list(gens)
                gens[at] = {k: v for k, v in gens[at].items() if k != loc[2]}
                aside.add(f"generators[{at}].{loc[2]}")
            else:
                data.pop(loc[0], None)
                if loc[0] in _PLACEHOLDERS:
                    data[loc[0]] = _PLACEHOLDERS[loc[0]]
                aside.add(str(loc[0]))
        try:
            return DatasetSpec.model_validate(data), tuple(sorted(aside))
        except ValidationError as e:
            errors = e.errors()
    return None, ()

