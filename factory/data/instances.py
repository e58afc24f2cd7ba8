"""Defect instances with their exact masks: what `factory data import` keeps beside
the boxes so a generator can cut a real defect along its outline.

An instance map is an HxW integer image: 0 = no defect, k = the pixels of box
k - 1 of the image's label file (the same order as its YOLO lines). It is made
by the same connected-component rule as `factory.data.masks` (so its boxes are
exactly the boxes the importer writes) and stored as `masks/<split>/<stem>.png`
in the imported YOLO tree (8-bit, or 16-bit beyond 255 boxes).
"""

from __future__ import annotations

import io
from typing import Mapping

import numpy as np
from PIL import Image
from scipy import ndimage

from factory.core import Box
from factory.data.masks import EIGHT_CONNECTED


def binary_instances(
    binary: np.ndarray, class_id: int, class_name: str, min_area: int = 1, merge_gap: int = 0
) -> list[tuple[Box, np.ndarray]]:
    """(box, HxW bool pixels) per connected component, as `masks.binary_to_boxes` boxes them."""
    binary = np.asarray(binary, bool)
    if not binary.any():
        return []
    grown = ndimage.binary_dilation(binary, EIGHT_CONNECTED, iterations=merge_gap) if merge_gap > 0 else binary
    labels, _ = ndimage.label(grown, structure=EIGHT_CONNECTED)
    labels = np.where(binary, labels, 0)
    out = []
    for k, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        pixels = labels == k
        if int(pixels[sl].sum()) < min_area:
            continue
        ys, xs = sl
        out.append((Box(class_id, class_name, xs.start, ys.start, xs.stop, ys.stop), pixels))
    return sorted(out, key=lambda bp: (bp[0].y1, bp[0].x1, bp[0].class_id))


def label_instances(
    mask: np.ndarray, classes: Mapping[int, tuple[int, str]], min_area: int = 1, merge_gap: int = 0
) -> tuple[list[Box], np.ndarray]:
    """Boxes of a label mask (as `masks.mask_to_boxes`) and their instance map."""
    mask = np.asarray(mask)
    found: list[tuple[Box, np.ndarray]] = []
    for value, (class_id, name) in classes.items():
        found += binary_instances(mask == value, class_id, name, min_area=min_area, merge_gap=merge_gap)
    found.sort(key=lambda bp: (bp[0].y1, bp[0].x1, bp[0].class_id))
    return [b for b, _ in found], instance_map(mask.shape, [p for _, p in found])


def instance_map(shape: tuple[int, ...], pixels: list[np.ndarray]) -> np.ndarray:
    """HxW map with k = 1 + index of the instance (uint8, uint16 beyond 255)."""
    out = np.zeros(shape[:2], np.uint8 if len(pixels) < 256 else np.uint16)
    for k, p in enumerate(pixels, start=1):
        out[p & (out == 0)] = k
    return out


def encode_map(m: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(m).save(buf, format="PNG")
    return buf.getvalue()


def decode_map(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im).astype(np.int32)


def difference_instances(test: np.ndarray, template: np.ndarray, boxes: list[Box], threshold: int = 64,
                         min_area: int = 4) -> np.ndarray:
    """The instance map of a defective image and its aligned defect-free twin (a
    golden template): box k's pixels are where the two differ by more than
    `threshold` grey levels inside that box, less connected pieces under
    `min_area` pixels (alignment noise). The instance is the difference only,
    never the box's background; a box with no difference gets no pixels (its
    instance falls back to the box)."""
    if test.shape != template.shape:
        raise ValueError(f"image {test.shape} and template {template.shape} differ in size")
    diff = np.abs(test.astype(np.int16) - template.astype(np.int16)) > threshold
    pixels = []
    for b in boxes:
        inside = diff[b.y1:b.y2, b.x1:b.x2]
        lab, n = ndimage.label(inside, structure=EIGHT_CONNECTED)
        if n:
            sizes = ndimage.sum(inside, lab, range(1, n + 1))
            inside = np.isin(lab, 1 + np.nonzero(sizes >= min_area)[0])
        m = np.zeros(diff.shape, bool)
        m[b.y1:b.y2, b.x1:b.x2] = inside
        pixels.append(m)
    return instance_map(test.shape, pixels)


def instance_mask_path(split: str, stem: str) -> str:
    """Where an imported YOLO tree keeps an image's instance map (relative to the tree)."""
    return f"masks/{split}/{stem}.png"


def template_path(split: str, name: str) -> str:
    """Where an imported YOLO tree keeps an image's aligned defect-free twin (same file name)."""
    return f"templates/{split}/{name}"
