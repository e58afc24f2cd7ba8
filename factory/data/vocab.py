"""Class vocabularies of the real data sets: one spelling per defect, shared by the
importers, the generators' training loaders and the procedural renderer."""

from __future__ import annotations

PV_VISION_CLASSES = ["crack", "cross_crack", "dark_area"]  # the procedural generator's names
PV_VISION_VALUES = {3: "crack", 2: "cross_crack", 1: "dark_area"}  # pv_vision mask value -> class; 4 = busbar
MAGNETIC_TILE_CLASSES = ["blowhole", "break", "crack", "fray", "uneven"]
