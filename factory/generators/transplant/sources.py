"""Where the transplant generator's real parts come from, beyond the shared
`factory.generators.references`: the defect source's classes, and labelled train
images used as backgrounds (their boxes kept).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np

from factory.core import Box, centre_crop
from factory.generators.references import (
    TRAIN,
    class_counts,
    load_background,
    read_grey,
    split_files,
    train_files,
    tree_uri,
)
from factory.storage import uri as U

__all__ = ["Labelled", "check_source", "labelled_backgrounds", "load_labelled", "TRAIN"]


@dataclass(frozen=True)
class Labelled:
    """A labelled train image of the source used as a background: its defects stay, with their boxes."""

    uri: str
    labels: str  # its YOLO label text (the source's class ids)
    instances: str | None  # URI of its instance map, when the source has one


def labelled_backgrounds(source: str, classes: list[str], split: str = TRAIN) -> tuple[list[str], list[Labelled]]:
    """(the source's class names, its labelled train images whose every box is of a class in `classes`).
    Generators read only the train split; the gate audit reads `val` (real held-out defects)."""
    tree = tree_uri(source)
    names, files = split_files(tree, split)
    out = []
    for f in files:
        ids = {int(line.split()[0]) for line in f.labels.splitlines() if line.strip()}
        if ids and all(names[i] in classes for i in ids):
            out.append(Labelled(U.join(tree, f.image), f.labels, U.join(tree, f.instances) if f.instances else None))
    return names, out


@lru_cache(maxsize=32)
def load_labelled(bg: Labelled, names: tuple[str, ...], classes: tuple[str, ...], width: int,
                  height: int) -> tuple[np.ndarray, tuple[Box, ...], np.ndarray]:
    """A labelled background cropped and resized as `load_background` does, its boxes and
    instance map moved with it (k = 1 + index in the returned boxes; a box without
    mask pixels fills its rectangle). Class ids are the spec's (`classes`); a box
    the crop cuts keeps its visible part."""
    from PIL import Image

    from factory.data.instances import decode_map
    from factory.formats import parse_yolo_lines

    grey = read_grey(bg.uri)
    H, W = grey.shape
    left, top, cw, ch = centre_crop(W, H, width, height)
    image = load_background(bg.uri, width, height)
    src = decode_map(U.read_bytes(bg.instances)) if bg.instances else None
    if src is not None:
        crop = np.ascontiguousarray(src[top:top + ch, left:left + cw].astype(np.int32))
        src = np.asarray(Image.fromarray(crop).resize((width, height), Image.NEAREST))
    boxes, inst = [], np.zeros((height, width), np.uint16)
    for k, b in enumerate(parse_yolo_lines(bg.labels, W, H, list(names))):
        moved = b.framed(W, H, width, height)
        if moved is None:
            continue
        box = replace(moved, class_id=classes.index(b.class_name))
        pixels = np.zeros((height, width), bool)
        pixels[box.y1:box.y2, box.x1:box.x2] = True
        if src is not None and (src[pixels] == k + 1).any():
            pixels &= src == k + 1
        boxes.append(box)
        inst[pixels & (inst == 0)] = len(boxes)
    inst.setflags(write=False)
    return image, tuple(boxes), inst


def check_source(text: str, classes: list[str]) -> tuple[str | None, dict[str, str]]:
    """(why `text` is unusable, or None; {class it lacks: why})."""
    try:
        names, files = train_files(tree_uri(text))
    except (FileNotFoundError, ValueError, U.StorageError) as e:
        return str(e), {}
    if not files:
        return f"{text}: its train split has no images", {}
    if any(f.template for f in files):
        lone = [f.image for f in files if f.labels.strip() and not f.template]
        if lone:
            return (f"{text}: {len(lone)} labelled train images have no defect-free twin in templates/ "
                    f"(first: {lone[0]}); a set with templates needs one per image"), {}
    counts = class_counts(names, files)
    have = ", ".join(f"{c} ({n})" for c, n in sorted(counts.items())) or "none"
    return None, {c: f"the transplant source {text} has no {c!r} instances in its train split; it has: {have}"
                  for c in classes if counts.get(c, 0) == 0}


