"""Deterministic planning: a spec becomes a reproducible sequence of WorkItems."""

from factory.planning.plan import iter_plan, plan, planned_count
from factory.planning.work import Box, WorkItem

__all__ = ["Box", "WorkItem", "iter_plan", "plan", "planned_count"]
