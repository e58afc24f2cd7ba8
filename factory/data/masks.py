"""Masks -> boxes: connected components per class.

Real defect sets often come with segmentation masks, but a detector needs boxes.
One box per connected component of each class's pixels; components smaller than
`min_area` pixels are annotation specks, not defects. `merge_gap` first bridges
gaps of up to that many pixels (a crack cut in two by a busbar is one defect);
the box is still the tight box of the original pixels.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
from scipy import ndimage

from factory.core import Box

EIGHT_CONNECTED = np.ones((3, 3), bool)


def binary_to_boxes(
    binary: np.ndarray, class_id: int, class_name: str, min_area: int = 1, merge_gap: int = 0
) -> list[Box]:
    """Boxes of the connected components (8-connected) of a boolean HxW map."""
    binary = np.asarray(binary, bool)
    if binary.ndim != 2:
        raise ValueError(f"expected an HxW mask, got shape {binary.shape}")
    if min_area < 1:
        raise ValueError(f"min_area must be >= 1, got {min_area}")
    if not binary.any():
        return []
    grown = ndimage.binary_dilation(binary, EIGHT_CONNECTED, iterations=merge_gap) if merge_gap > 0 else binary
    labels, n = ndimage.label(grown, structure=EIGHT_CONNECTED)
    labels = np.where(binary, labels, 0)  # measure the original pixels only
    boxes = []
    for k, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        area = int((labels[sl] == k).sum())
        if area < min_area:
            continue
        ys, xs = sl
        boxes.append(Box(class_id, class_name, xs.start, ys.start, xs.stop, ys.stop))
    return sorted(boxes, key=lambda b: (b.y1, b.x1, b.class_id))


def mask_to_boxes(
    mask: np.ndarray, classes: Mapping[int, tuple[int, str]], min_area: int = 1, merge_gap: int = 0
) -> list[Box]:
    """Boxes for a label mask (HxW ints). `classes` maps a mask value to
    (class_id, class_name); values not in it (background, structure) are ignored."""
    mask = np.asarray(mask)
    out: list[Box] = []
    for value, (class_id, name) in classes.items():
        out += binary_to_boxes(mask == value, class_id, name, min_area=min_area, merge_gap=merge_gap)
    return sorted(out, key=lambda b: (b.y1, b.x1, b.class_id))
