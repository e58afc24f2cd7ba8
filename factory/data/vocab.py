"""Class vocabularies of the real data sets: one spelling per defect, shared by the
importers, the generators' training loaders and the procedural renderer."""

from __future__ import annotations

PV_VISION_CLASSES = ["crack", "cross_crack", "dark_area"]  # the procedural generator's names
PV_VISION_VALUES = {3: "crack", 2: "cross_crack", 1: "dark_area"}  # pv_vision mask value -> class; 4 = busbar
MAGNETIC_TILE_CLASSES = ["blowhole", "break", "crack", "fray", "uneven"]
DEEPPCB_CLASSES = ["open", "short", "mousebite", "spur", "spurious_copper", "pin_hole"]  # DeepPCB type 1..6
DEEPPCB_VAL_GROUPS = ("group20085", "group44000", "group50600", "group77000")  # whole boards held out: 491 of 999 pairs
