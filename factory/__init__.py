"""Synthetic defect-image dataset factory on Ray."""

__version__ = "0.1.0"
