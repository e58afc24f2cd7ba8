"""Deterministic planning: a spec becomes a reproducible sequence of WorkItems."""

from factory.planning.plan import iter_plan, plan, planned_count

__all__ = ["iter_plan", "plan", "planned_count"]
