"""Deterministic planning: a spec becomes a reproducible sequence of WorkItems."""

from factory.planning.plan import draw_style, iter_plan, plan, planned_count

__all__ = ["draw_style", "iter_plan", "plan", "planned_count"]
