"""The crops the per-class box check (`factory.quality.box_check`) sees: a square around
each box, grey, at the network's input size; positives around the labelled instances,
negatives at the same boxes where there is no defect (the image's aligned defect-free
twin, or the same relative place on a defect-free image); and the labelled real set
they come from (a registry version or a YOLO folder, its train split only)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from factory.core import Box
from factory.generators.references import frame_image, read_grey  # bounded: a regular file, a sane size, an image

if TYPE_CHECKING:
    from factory.quality.box_check import BoxCheckConfig


def box_in_crop(box: Box, scale: float) -> np.ndarray:
    """The box's place inside its `box_crop` as fractions of the crop side (x1, y1, x2, y2);
    the same arithmetic as `factory.viz.box_crop`."""
    side = max(2, int(round(scale * max(box.width, box.height))))
    y0 = (box.y1 + box.y2) // 2 - side // 2
    x0 = (box.x1 + box.x2) // 2 - side // 2
    return np.array([(box.x1 - x0) / side, (box.y1 - y0) / side, (box.x2 - x0) / side, (box.y2 - y0) / side], np.float32)


def crop_boxes(image: np.ndarray, boxes: Sequence[Box], cfg: BoxCheckConfig) -> tuple[np.ndarray, np.ndarray]:
    """(N x S x S uint8 grey crops, N x 4 box places in them) of the boxes of one image."""
    from factory.viz import box_crop

    S = cfg.crop_size
    if not boxes:
        return np.zeros((0, S, S), np.uint8), np.zeros((0, 4), np.float32)
    crops = np.stack([box_crop(image, b, cfg.crop_scale, S) for b in boxes])
    return crops, np.stack([box_in_crop(b, cfg.crop_scale) for b in boxes])


def framed(image: np.ndarray, boxes: Sequence[Box], frame: tuple[int, int] | None) -> tuple[np.ndarray, list[Box]]:
    """The image centre-cropped to the frame's aspect and resized to it, as generators frame
    their backgrounds (`factory.generators.references.frame_image`), and its boxes moved
    with it (a box the crop cuts keeps its visible part; one cut to under 1 px is dropped).
    `frame` None: both as they are."""
    if frame is None:
        return image, list(boxes)
    width, height = frame
    H, W = image.shape[:2]
    moved = [b.framed(W, H, width, height) for b in boxes]
    return frame_image(image, width, height), [b for b in moved if b is not None]


def moved_box(box: Box, width: int, height: int, to_width: int, to_height: int) -> Box:
    """The box at the same relative place of an image of another size (at least 2 px a side)."""
    sx, sy = to_width / width, to_height / height
    x1, y1 = min(int(box.x1 * sx), to_width - 2), min(int(box.y1 * sy), to_height - 2)
    x2, y2 = max(x1 + 2, min(to_width, int(round(box.x2 * sx)))), max(y1 + 2, min(to_height, int(round(box.y2 * sy))))
    return Box(box.class_id, box.class_name, x1, y1, x2, y2)


@dataclass
class Labelled:
    """One labelled real image: how to read it (and its aligned defect-free twin, where the set
    has one; `read(path)` gives HxW[xC] uint8), its boxes, and the group it is held out with."""

    image: str
    boxes: list[Box]
    template: str | None = None
    group: str = ""


@dataclass
class CropSet:
    """Crops with their labels: `classes[i]` is the class of the box the crop is around, `defect[i]`
    whether the crop holds that defect (False: the same box where there is none)."""

    crops: np.ndarray  # N x S x S uint8
    places: np.ndarray  # N x 4: the box inside the crop (fractions)
    classes: list[str]
    defect: np.ndarray  # N bool
    groups: list[str]

    def __len__(self) -> int:
        return len(self.classes)

    def subset(self, keep: np.ndarray) -> "CropSet":
        idx = np.flatnonzero(keep)
        return CropSet(self.crops[idx], self.places[idx], [self.classes[i] for i in idx], self.defect[idx],
                       [self.groups[i] for i in idx])

    @staticmethod
    def concat(parts: Sequence["CropSet"], size: int) -> "CropSet":
        parts = [p for p in parts if len(p)]
        if not parts:
            return CropSet(np.zeros((0, size, size), np.uint8), np.zeros((0, 4), np.float32), [], np.zeros(0, bool), [])
        return CropSet(np.concatenate([p.crops for p in parts]), np.concatenate([p.places for p in parts]),
                       [c for p in parts for c in p.classes], np.concatenate([p.defect for p in parts]),
                       [g for p in parts for g in p.groups])


def collect_crops(labelled: Sequence[Labelled], cfg: BoxCheckConfig, normals: Sequence[str] = (),
                  max_per_class: int | None = None, seed: int = 0, read: Callable[[str], np.ndarray] = read_grey,
                  progress: Callable[[int, int], None] | None = None) -> CropSet:
    """Positive and negative crops of labelled images: each kept box (at most `max_per_class`
    a class, seeded) on its image, and the same box on its template, or, for an image without
    one, at the same relative place on a seeded random image of `normals` (defect-free).
    With `cfg.frame` every image is `framed` first."""
    rng = np.random.default_rng(seed)
    keep = _cap_boxes(labelled, max_per_class, rng)
    if any(keep[i] and not item.template for i, item in enumerate(labelled)) and not normals:
        raise ValueError("images without a defect-free template need defect-free images (normals) for the negatives")
    parts, todo = [], [i for i in range(len(labelled)) if keep[i]]
    for n, i in enumerate(todo):
        item = labelled[i]
        image, boxes = framed(read(item.image), [item.boxes[k] for k in keep[i]], cfg.frame)
        pos, places = crop_boxes(image, boxes, cfg)
        if item.template:
            clean, neg_boxes = framed(read(item.template), (), cfg.frame)[0], boxes
        else:
            clean = framed(read(normals[int(rng.integers(len(normals)))]), (), cfg.frame)[0]
            H, W = image.shape[:2]
            neg_boxes = [moved_box(b, W, H, clean.shape[1], clean.shape[0]) for b in boxes]
        neg, neg_places = crop_boxes(clean, neg_boxes, cfg)
        names = [b.class_name for b in boxes]
        parts.append(CropSet(np.concatenate([pos, neg]), np.concatenate([places, neg_places]), names + names,
                             np.r_[np.ones(len(boxes), bool), np.zeros(len(boxes), bool)], [item.group] * (2 * len(boxes))))
        if progress:
            progress(n + 1, len(todo))
    return CropSet.concat(parts, cfg.crop_size)


def _cap_boxes(labelled: Sequence[Labelled], cap: int | None, rng: np.random.Generator) -> list[list[int]]:
    """Per image, the indices of the boxes kept: every box, or a seeded `cap` of each class."""
    where: dict[str, list[tuple[int, int]]] = {}
    for i, item in enumerate(labelled):
        for k, b in enumerate(item.boxes):
            where.setdefault(b.class_name, []).append((i, k))
    keep: list[list[int]] = [[] for _ in labelled]
    for name in sorted(where):
        spots = where[name]
        if cap is not None and len(spots) > cap:
            spots = [spots[j] for j in sorted(rng.choice(len(spots), cap, replace=False))]
        for i, k in spots:
            keep[i].append(k)
    return [sorted(k) for k in keep]


def labelled_set(ref: str, normal: Sequence[str] = (), group_by: str | None = None) -> tuple[list[str], list[Labelled], list[str]]:
    """(class names, labelled images, defect-free image URIs) of a labelled real set: a registry
    version `[ROOT/]NAME@VERSION` or a YOLO folder (URI), its train split only (val is evaluation
    data). Its templates (`templates/train/`) give the negatives where present; its train images
    without boxes and the `normal` folders/URIs/versions are the defect-free images otherwise.
    `group_by`: a regex whose first match in an image's file name is its group (else the name)."""
    import re

    from PIL import Image

    from factory.formats import parse_yolo_lines
    from factory.generators.references import background_uris, train_files, tree_uri
    from factory.storage.uri import join, read_bytes

    try:
        pattern = re.compile(group_by) if group_by else None
    except re.error as e:
        raise ValueError(f"group_by {group_by!r} is not a regular expression: {e}") from e
    tree = tree_uri(ref)
    names, files = train_files(tree)
    labelled, normals = [], []
    for f in files:
        uri = join(tree, f.image)
        if not f.labels.strip():
            normals.append(uri)
            continue
        with Image.open(io.BytesIO(read_bytes(uri))) as im:
            w, h = im.size
        try:
            boxes = parse_yolo_lines(f.labels, w, h, names)
        except ValueError as e:
            raise ValueError(f"{ref}: labels of {f.image}: {e}") from e
        name = f.image.rsplit("/", 1)[-1]
        m = pattern.search(name) if pattern else None
        labelled.append(Labelled(uri, boxes, join(tree, f.template) if f.template else None, m.group(0) if m else name))
    if not labelled:
        raise ValueError(f"{ref}: no labelled boxes in its train split")
    normals += background_uris(list(normal)) if normal else []
    return names, labelled, normals

