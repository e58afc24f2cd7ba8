"""What every spec model shares: unknown keys and non-finite numbers refused, the
name patterns (names become folder names), and [lo, hi] ranges."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from factory.core import uri_problem

NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
CLASS_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"

# (lo, hi) pairs. Validation of lo <= hi happens in _check_range.
FloatRange = tuple[float, float]
IntRange = tuple[int, int]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)


def _check_range(value: tuple, what: str = "range") -> tuple:
    lo, hi = value
    if lo > hi:
        raise ValueError(f"lo must be <= hi, got [{lo}, {hi}]")
    return value


def check_uri(value: str) -> str:
    """A field's URI or path, refused (ValueError) when storage would misread it."""
    problem = uri_problem(value)
    if problem:
        raise ValueError(problem)
    return value
