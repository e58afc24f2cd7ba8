"""What every spec model shares: unknown keys and non-finite numbers refused, the
name patterns (names become folder names), and [lo, hi] ranges."""

from __future__ import annotations

import operator
from typing import Callable, Literal, TypeVar

from pydantic import BaseModel, ConfigDict

from factory.core import uri_problem

NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
CLASS_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"

# (lo, hi) pairs. Validation of lo <= hi happens in check_range.
FloatRange = tuple[float, float]
IntRange = tuple[int, int]
RangeT = TypeVar("RangeT", FloatRange, IntRange)
NumberT = TypeVar("NumberT", float, int)


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)


def check_range(value: RangeT, within: tuple[int, int] | None = None) -> RangeT:
    """`value`, refused (ValueError) unless lo <= hi and, when `within` is given, both
    ends lie in it (`must lie in [0, 1], got [0.2, 1.5]`)."""
    lo, hi = value
    if lo > hi:
        raise ValueError(f"lo must be <= hi, got [{lo}, {hi}]")
    if within is not None and not (within[0] <= lo and hi <= within[1]):
        raise ValueError(f"must lie in [{within[0]}, {within[1]}], got [{lo}, {hi}]")
    return value


_HOLDS: dict[str, Callable[[float, float], bool]] = {">": operator.gt, ">=": operator.ge, "<=": operator.le}


def check_bound(value: NumberT, op: Literal[">", ">=", "<="], bound: int) -> NumberT:
    """`value`, refused (ValueError: `must be > 0, got -1`) unless `value op bound` holds."""
    if not _HOLDS[op](value, bound):
        raise ValueError(f"must be {op} {bound}, got {value}")
    return value


def check_uri(value: str) -> str:
    """A field's URI or path, refused (ValueError) when storage would misread it."""
    problem = uri_problem(value)
    if problem:
        raise ValueError(problem)
    return value
