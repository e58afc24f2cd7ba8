"""Deterministic planning: a spec becomes a reproducible sequence of WorkItems."""

from factory.planning.plan import NEGATIVE, draw_style, generator_refs, iter_plan, plan, planned_count, quotas

__all__ = ["NEGATIVE", "draw_style", "generator_refs", "iter_plan", "plan", "planned_count", "quotas"]
