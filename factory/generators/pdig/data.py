"""Training examples for PDIG: images with class-labelled boxes, from class-valued
masks (connected components per value) or YOLO label files.

Layouts: `*/img/X.jpg` + `*/ann/X.png` (pv_vision; channel 0), `X.jpg` + `X.png`
beside it, and YOLO `images/X.jpg` + `labels/X.txt` (+ data.yaml names). Mask class
values differ per data set, so the caller names them (`mask_classes`, e.g. pv_vision:
{1: "dark", 2: "cross_crack", 3: "crack"}; 4 is the busbar structure, not a defect).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from factory.training.images import IMAGE_SUFFIXES

PV_VISION_CLASSES = {1: "dark", 2: "cross_crack", 3: "crack"}


LABEL_DIRS = {"ann", "labels", "masks"}


@dataclass(frozen=True)
class Example:
    image: Path
    boxes: tuple[tuple[str, int, int, int, int], ...]  # (class, x1, y1, x2, y2) pixels, x2/y2 exclusive


def mask_boxes(mask: np.ndarray, mask_classes: dict[int, str], min_area: int = 16) -> list[tuple[str, int, int, int, int]]:
    """Boxes of the connected components of each class value (8-connectivity), as
    (class, x1, y1, x2, y2): the shared masks -> boxes converter, in this loader's tuple form."""
    from factory.data.masks import mask_to_boxes

    classes = {value: (i, name) for i, (value, name) in enumerate(sorted(mask_classes.items()))}
    return [(b.class_name, b.x1, b.y1, b.x2, b.y2) for b in mask_to_boxes(mask, classes, min_area=min_area)]


def _yolo_names(root: Path) -> dict[int, str] | None:
    import yaml

    for p in (root / "data.yaml", root.parent / "data.yaml"):
        if p.is_file():
            names = yaml.safe_load(p.read_text()).get("names")
            return dict(enumerate(names)) if isinstance(names, list) else {int(k): v for k, v in names.items()}
    return None


def _yolo_label(image: Path) -> Path | None:
    p = image.parent.parent / "labels" / f"{image.stem}.txt"
    return p if p.is_file() else None


def read_image(path: str | Path) -> np.ndarray:
    """HxWx3 uint8."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _find_mask(image: Path) -> Path | None:
    for c in (image.parent.parent / "ann" / f"{image.stem}.png", image.parent.parent / "masks" / f"{image.stem}.png",
              image.with_suffix(".png") if image.suffix.lower() != ".png" else None):
        if c is not None and c.is_file():
            return c
    return None


def _images(root: Path) -> list[Path]:
    if not root.exists():
        raise FileNotFoundError(f"training data folder not found: {root}")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    files = [p for p in files if not (LABEL_DIRS & set(p.relative_to(root).parts[:-1]))]
    jpg_stems = {(p.parent, p.stem) for p in files if p.suffix.lower() != ".png"}
    return [p for p in files if not (p.suffix.lower() == ".png" and (p.parent, p.stem) in jpg_stems)]


def load_examples(root: str | Path, mask_classes: dict[int, str] | None = None, min_area: int = 16, limit: int | None = None) -> list[Example]:
    """Examples with at least one box, sorted by path."""
    from PIL import Image

    root = Path(root)
    names = _yolo_names(root)
    out = []
    for image in _images(root):
        label, mask = _yolo_label(image), _find_mask(image)
        if label is not None:
            with Image.open(image) as im:
                w, h = im.size
            boxes = []
            for line in label.read_text().split("\n"):
                f = line.split()
                if len(f) >= 5:
                    c, cx, cy, bw, bh = int(f[0]), *map(float, f[1:5])
                    boxes.append(((names or {}).get(c, f"class{c}"), int((cx - bw / 2) * w), int((cy - bh / 2) * h),
                                  int(np.ceil((cx + bw / 2) * w)), int(np.ceil((cy + bh / 2) * h))))
        elif mask is not None:
            if mask_classes is None:
                raise ValueError(f"{mask}: masks need a value -> class mapping (mask_classes)")
            with Image.open(mask) as im:
                m = np.asarray(im)
            boxes = mask_boxes(m[..., 0] if m.ndim == 3 else m, mask_classes, min_area)
        else:
            continue
        if boxes:
            out.append(Example(image, tuple(boxes)))
        if limit and len(out) >= limit:
            break
    if not out:
        raise ValueError(f"no images with defect boxes found under {root}")
    return out
