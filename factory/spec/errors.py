"""Spec problems as `file: field.path: reason` lines: `SpecError` (one line per problem,
each short whatever the spec holds) and `describe_error`, which turns one pydantic
error into a readable (field path, reason)."""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel
from pydantic_core import ErrorDetails

from factory.spec.model import DatasetSpec, SpecFieldError

PREVIEW_CHARS = 80
MAX_LINE = 280  # a problem's line, so that it stays under 300 with the CLI's "invalid spec " before it


class SpecError(ValueError):
    """An invalid spec. `problems` is a list of (field path, reason)."""

    def __init__(self, source: str, problems: list[tuple[str, str]], partial: DatasetSpec | None = None,
                 aside: tuple[str, ...] = ()):
        self.source = source
        self.problems = problems
        self.partial = partial  # the spec without the failing values (`factory.spec.load._partial`), for the checks after this one
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


def preview(value: Any) -> str:
    """`repr(value)`, cut to a short preview for messages."""
    return cut(repr(value), PREVIEW_CHARS)


def cut(text: str, limit: int) -> str:
    """`text`, or its start and its length when longer than `limit`."""
    return text if len(text) <= limit else text[: limit - 15 - len(str(len(text)))] + f"... ({len(text)} chars)"


def format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def describe_error(err: ErrorDetails) -> tuple[str, str]:
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


def _unknown_key(err: ErrorDetails) -> str:
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
    model: type[BaseModel] = DatasetSpec
    for part in loc:
        if isinstance(part, int):
            continue
        fields = {(f.alias or n): f for n, f in model.model_fields.items()}
        if part not in fields:
            return None
        found = _first_model(fields[part].annotation)
        if found is None:
            return None
        model = found
    return model


def _first_model(ann: Any) -> type[BaseModel] | None:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for arg in getattr(ann, "__args__", ()) or ():
        found = _first_model(arg)
        if found is not None:
            return found
    return None
