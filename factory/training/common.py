"""Helpers every trainer under Ray Train shares."""

from __future__ import annotations


def unwrap(model):
    """The plain module inside a DDP/FSDP wrapper (`prepare_model` wraps when there are
    several workers), so state dicts and module attributes read the same either way."""
    return getattr(model, "module", model)
