"""Read a spec file and turn every failure into `file: field.path: reason` lines.

Parsing is bounded, since a spec may come from anyone who can submit a job: the
file size, the number of values after YAML aliases are expanded, the nesting
depth and the size of integers all have limits, duplicate keys are errors (YAML
would silently keep the last), and values quoted back in messages are cut short.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from factory.spec.model import DatasetSpec, SpecFieldError


class SpecError(ValueError):
    """An invalid spec. `problems` is a list of (field path, reason)."""

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = problems
        super().__init__("\n".join(self.lines()))

    def lines(self) -> list[str]:
        return [f"{self.source}: {loc}: {msg}" if loc else f"{self.source}: {msg}" for loc, msg in self.problems]


MAX_SPEC_BYTES = 1 << 20  # a real spec is a few KB
MAX_VALUES = 100_000  # values after YAML aliases are expanded
MAX_DEPTH = 32  # nesting of mappings and lists
MAX_INT = 2**63 - 1
PREVIEW_CHARS = 80


def preview(value: Any) -> str:
    """`repr(value)`, cut to a short preview for messages."""
    text = repr(value)
    return text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 15] + f"... ({len(text)} chars)"


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
    text = path.read_text(encoding="utf-8", errors="replace")
    return parse_spec(text, source)


class _SpecLoader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses duplicate keys."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {preview(key)} (first at line {seen[key].start_mark.line + 1})",
                    key_node.start_mark)
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def parse_spec(text: str, source: str = "<spec>") -> DatasetSpec:
    if not text.strip():
        raise SpecError(source, [("", "file is empty; a spec needs at least name, count and defects")])
    if len(text.encode("utf-8", errors="replace")) > MAX_SPEC_BYTES:
        raise SpecError(source, [("", f"a spec may be at most {MAX_SPEC_BYTES} bytes")])
    try:
        data = yaml.load(text, Loader=_SpecLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise SpecError(source, [("", f"YAML syntax error at {where}{problem}")]) from None
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
        raise SpecError(source, [describe_error(err) for err in e.errors()]) from None


def format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def describe_error(err: dict[str, Any]) -> tuple[str, str]:
    """(field path, readable reason) for one pydantic error."""
    loc = format_loc(err["loc"])
    kind = err["type"]
    ctx = err.get("ctx") or {}
    got = err.get("input")
    cause = ctx.get("error")
    if isinstance(cause, SpecFieldError):
        full = ".".join(p for p in (loc, cause.loc) if p).replace(".[", "[")
        return full, cause.msg
    if kind == "value_error":
        return loc, str(cause) if cause is not None else err["msg"]
    if kind == "extra_forbidden":
        return loc, _unknown_key(err)
    if kind == "missing":
        parent = format_loc(err["loc"][:-1])
        if isinstance(err["loc"][-1], int) and _is_range_field(parent):
            return parent, "must be a [lo, hi] pair"
        return loc, "required field is missing"
    if kind in ("less_than_equal", "less_than", "greater_than_equal", "greater_than"):
        op, bound = {
            "less_than_equal": ("<=", "le"),
            "less_than": ("<", "lt"),
            "greater_than_equal": (">=", "ge"),
            "greater_than": (">", "gt"),
        }[kind]
        return loc, f"must be {op} {_num(ctx[bound])}, got {_num(got)}"
    if kind == "string_pattern_mismatch":
        return loc, _pattern_message(loc, got)
    if kind == "too_short" and isinstance(got, list) and not got:
        return loc, "must not be empty"
    if kind in ("tuple_type", "too_long", "too_short") and _is_range_field(loc):
        return loc, f"must be a [lo, hi] pair, got {preview(got)}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return loc, f"expected an integer, got {preview(got)}"
    if kind in ("float_type", "float_parsing"):
        return loc, f"expected a number, got {preview(got)}"
    if kind in ("bool_type", "bool_parsing"):
        return loc, f"expected true or false, got {preview(got)}"
    if kind in ("string_type",):
        return loc, f"expected text, got {preview(got)}"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return loc, f"expected a mapping of keys, got {type(got).__name__}"
    if kind == "list_type":
        return loc, f"expected a list, got {type(got).__name__}"
    msg = err["msg"].replace("Input should be", "must be")
    return loc, f"{msg}, got {preview(got)}"


def _num(v: Any) -> Any:
    return int(v) if isinstance(v, float) and v.is_integer() else v


def _is_range_field(loc: str) -> bool:
    return loc.rsplit(".", 1)[-1].split("[")[0] in {
        "brightness", "contrast", "grid_pitch", "busbars", "count", "center", "classes_per_image",
    }


def _pattern_message(loc: str, got: Any) -> str:
    leaf = loc.rsplit(".", 1)[-1]
    if leaf == "name" and "." not in loc:
        return (
            "must be 1-63 characters of lowercase letters, digits and '-', starting with a letter or digit "
            f"(it becomes a folder name), got {preview(got)}"
        )
    return f"must be 1-64 characters of letters, digits, '_' and '-', starting with a letter or digit, got {preview(got)}"


def _unknown_key(err: dict[str, Any]) -> str:
    key = str(err["loc"][-1])
    model = _model_at(err["loc"][:-1])
    known = sorted(_field_names(model)) if model is not None else []
    hint = difflib.get_close_matches(key, known, n=1)
    msg = f"unknown key {preview(key)}"
    if hint:
        msg += f" (did you mean {hint[0]!r}?)"
    elif known:
        msg += f"; allowed keys: {', '.join(known)}"
    return msg


def _field_names(model: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items()]


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """Walk the spec's model tree along a location to find the model there."""
    model: Any = DatasetSpec
    for part in loc:
        if isinstance(part, int):
            continue
        fields = {(f.alias or n): f for n, f in model.model_fields.items()}
        if part not in fields:
            return None
        ann = fields[part].annotation
        model = _first_model(ann)
        if model is None:
            return None
    return model


def _first_model(ann: Any) -> type[BaseModel] | None:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for arg in getattr(ann, "__args__", ()) or ():
        found = _first_model(arg)
        if found is not None:
            return found
    return None
