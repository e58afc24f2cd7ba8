"""Training examples for PDIG: images with class-labelled boxes, from class-valued
masks (connected components per value) or YOLO label files.

Layouts: `*/img/X.jpg` + `*/ann/X.png` (pv_vision; channel 0), `X.jpg` + `X.png`
beside it, and YOLO `images/X.jpg` + `labels/X.txt` (+ data.yaml names). Mask class
values differ per data set, so the caller names them (`mask_classes`, e.g. pv_vision:
`factory.data.vocab.PV_VISION_VALUES`; 4 is the busbar structure, not a defect).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from factory.data.folders import scan
from factory.formats import label_path, parse_yolo_lines


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
    try:
        p = label_path(image)
    except ValueError:  # not in an images/ folder
        return None
    return p if p.is_file() else None


def read_image(path: str | Path) -> np.ndarray:
    """HxWx3 uint8."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def load_examples(root: str | Path, mask_classes: dict[int, str] | None = None, min_area: int = 16, limit: int | None = None) -> list[Example]:
    """Examples with at least one box, sorted by path."""
    from PIL import Image

    root = Path(root)
    names = _yolo_names(root)
    out = []
    if not root.exists():
        raise FileNotFoundError(f"training data folder not found: {root}")
    for rec in scan(root):
        image, mask = rec.image, rec.mask
        label = _yolo_label(image)
        if label is not None:
            with Image.open(image) as im:
                w, h = im.size
            vocab = [(names or {}).get(c, f"class{c}") for c in range(max(names or {0: ""}) + 1)]
            boxes = [(b.class_name, b.x1, b.y1, b.x2, b.y2) for b in parse_yolo_lines(label.read_text(), w, h, vocab)]
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
