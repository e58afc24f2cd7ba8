"""Read a spec file and turn every failure into `file: field.path: reason` lines.

Parsing is bounded, since a spec may come from anyone who can submit a job: the
file size, the number of values after YAML aliases are expanded, the nesting
depth and the size of integers all have limits, duplicate keys are errors (YAML
would silently keep the last), and values quoted back in messages are cut short.
Values are read by YAML 1.2 rules (`_SpecLoader`), so `1:30` or `no` never turn
silently into 90 or false.
"""

from __future__ import annotations

import difflib
import math
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from factory.spec.model import DatasetSpec, SpecFieldError


class SpecError(ValueError):
    """An invalid spec. `problems` is a list of (field path, reason)."""

    def __init__(self, source: str, problems: list[tuple[str, str]], partial: DatasetSpec | None = None,
                 aside: tuple[str, ...] = ()):
        self.source = source
        self.problems = problems
        self.partial = partial  # the spec without the failing values (`_partial`), for the checks after this one
        self.aside = aside  # the field paths of those values
        super().__init__("\n".join(self.lines()))

    def is_aside(self, loc: str) -> bool:
        """Whether a later check's problem at `loc` is about a value set aside (so not the user's)."""
        return any(loc == a or loc.startswith((a + ".", a + "[")) for a in self.aside)

    def lines(self) -> list[str]:
        """One line per problem, each under MAX_LINE characters: a key or value echoed
        back (the field path too) may be anything up to the spec's size."""
        source = cut(_printable(self.source), 100)
        out = []
        for loc, msg in self.problems:
            head = f"{source}: {cut(_printable(loc), 100)}: " if loc else f"{source}: "
            out.append(cut(head + _printable(str(msg)), MAX_LINE))
        return out


def _printable(text: str) -> str:
    """`text` on one line: newlines and other control characters (a key may hold any) escaped."""
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


MAX_SPEC_BYTES = 1 << 20  # a real spec is a few KB
MAX_VALUES = 100_000  # values after YAML aliases are expanded
MAX_DEPTH = 32  # nesting of mappings and lists
MAX_INT = 2**63 - 1
PREVIEW_CHARS = 80
MAX_LINE = 280  # a problem's line, so that it stays under 300 with the CLI's "invalid spec " before it


def preview(value: Any) -> str:
    """`repr(value)`, cut to a short preview for messages."""
    return cut(repr(value), PREVIEW_CHARS)


def cut(text: str, limit: int) -> str:
    """`text`, or its start and its length when longer than `limit`."""
    return text if len(text) <= limit else text[: limit - 15 - len(str(len(text)))] + f"... ({len(text)} chars)"


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


class _SpecLoader(yaml.SafeLoader):
    """PyYAML's safe loader read with YAML 1.2 core-schema rules, where 1.1 silently
    changes values: `1:30` (90), `yes`/`no`/`on`/`off` (booleans) and dates stay text.
    Refused: a leading-zero integer (`017`: 15 in 1.1, 17 in 1.2), a complex key
    (`? [a, b]`) and a duplicate key (YAML would silently keep the last)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise yaml.constructor.ConstructorError(
                    None, None, "a key must be plain text, not a list or mapping (a complex key `? ...`)",
                    key_node.start_mark)
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {preview(key)} (first at line {seen[key].start_mark.line + 1})",
                    key_node.start_mark)
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node):
        text = self.construct_scalar(node)
        if _LEADING_ZERO.match(text):
            raise yaml.constructor.ConstructorError(
                None, None, f"{preview(text)} is ambiguous (octal in YAML 1.1, decimal in 1.2): "
                f"write {int(text)} for the number, 0o{text.lstrip('+-0') or '0'} for octal, or quote it for text",
                node.start_mark)
        return int(text, 0)

    def construct_yaml_float(self, node):
        text = self.construct_scalar(node).lower()
        if text.endswith(".inf"):
            return -math.inf if text.startswith("-") else math.inf
        return math.nan if text == ".nan" else float(text)


_LEADING_ZERO = re.compile(r"^[-+]?0[0-9]+$")
_YAML_1_1_ONLY = {"tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float",
                  "tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:value"}
_SpecLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in _YAML_1_1_ONLY]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
for _tag, _pattern, _first in [  # the YAML 1.2 core schema
    ("bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    ("int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", "-+0123456789"),
    ("float", r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
              r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$", "-+.0123456789"),
]:
    _SpecLoader.add_implicit_resolver(f"tag:yaml.org,2002:{_tag}", re.compile(_pattern), list(_first))
_SpecLoader.add_constructor("tag:yaml.org,2002:int", _SpecLoader.construct_yaml_int)
_SpecLoader.add_constructor("tag:yaml.org,2002:float", _SpecLoader.construct_yaml_float)


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


def _partial(data: dict, errors: list[dict]) -> tuple[DatasetSpec | None, tuple[str, ...]]:
    """The spec with every failing value set aside, and their field paths: a failing key
    of a generator is dropped from it, any other failing field goes back to its default
    (a required one to a placeholder). The generator checks then still run on the rest,
    so `factory validate` shows every problem in one pass, not layer by layer."""
    data = dict(data)
    aside: set[str] = set()
    for _ in range(3):  # a stand-in may fail a cross-field check in turn
        for err in errors:
            loc = err["loc"]
            gens = data.get("generators")
            if not loc:
                return None, ()
            if (loc[0] == "generators" and len(loc) >= 3 and loc[2] != "kind" and isinstance(gens, list)
                    and isinstance(gens[loc[1]], dict)):
                gens = data["generators"] = list(gens)
                gens[loc[1]] = {k: v for k, v in gens[loc[1]].items() if k != loc[2]}
                aside.add(f"generators[{loc[1]}].{loc[2]}")
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
