"""Annotation file formats, in one place: YOLO label lines and `data.yaml`.

Pure functions on `factory.core.Box` (no I/O beyond reading a data.yaml), at the
bottom of the import graph so the shard sinks, the real-data adapters, the
retraining and the generators' loaders all read and write YOLO the same way
(same rounding, same layout rules).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import yaml

from factory.core import Box

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def yolo_lines(boxes: Sequence[Box], width: int, height: int) -> list[str]:
    """YOLO label lines: `class cx cy w h`, normalized to the image size."""
    lines = []
    for b in boxes:
        cx, cy = (b.x1 + b.x2) / 2 / width, (b.y1 + b.y2) / 2 / height
        lines.append(f"{b.class_id} {cx:.6f} {cy:.6f} {b.width / width:.6f} {b.height / height:.6f}")
    return lines


def parse_yolo_lines(text: str, width: int, height: int, names: list[str]) -> list[Box]:
    """The inverse of yolo_lines (pixel boxes, edges rounded to the nearest pixel)."""
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 5:
            raise ValueError(f"line {n}: expected 5 numbers (class cx cy w h), got {len(parts)}")
        c = int(float(parts[0]))
        if not 0 <= c < len(names):
            raise ValueError(f"line {n}: class id {c} outside 0..{len(names) - 1}")
        cx, cy, w, h = (float(p) for p in parts[1:])
        x1 = max(0, round((cx - w / 2) * width))
        y1 = max(0, round((cy - h / 2) * height))
        x2 = min(width, round((cx + w / 2) * width))
        y2 = min(height, round((cy + h / 2) * height))
        out.append(Box(c, names[c], x1, y1, max(x2, x1 + 1), max(y2, y1 + 1)))
    return out


def yolo_text(boxes: Sequence[Box], width: int, height: int) -> str:
    """A label file's text: one line per box, newline-terminated ('' for a negative)."""
    return "".join(line + "\n" for line in yolo_lines(boxes, width, height))


def yolo_data_yaml(class_names: Sequence[str], splits: Sequence[str]) -> bytes:
    """data.yaml with no `path`: ultralytics then resolves the splits next to the
    file itself, so the tree works wherever it is pulled to."""
    data: dict[str, Any] = {s: f"images/{s}" for s in splits}
    data["names"] = {i: n for i, n in enumerate(class_names)}
    return yaml.safe_dump(data, sort_keys=False).encode()


def read_data_yaml(path: str | Path) -> tuple[Path, list[str], dict[str, list[Path]]]:
    """A YOLO data.yaml -> (root folder, class names, {split: image files}).
    Split entries may be folders, lists of folders, or .txt lists of images."""
    path = Path(path)
    if path.is_dir():
        path = path / "data.yaml"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no data.yaml (a YOLO-layout folder needs one)")
    data = yaml.safe_load(path.read_text()) or {}
    root = path.parent
    names = data.get("names")
    if isinstance(names, dict):
        names = [names[k] for k in sorted(names, key=int)]
    if not names:
        raise ValueError(f"{path}: no class `names`")
    splits: dict[str, list[Path]] = {}
    for split in ("train", "val", "test"):
        entry = data.get(split)
        if not entry:
            continue
        files: list[Path] = []
        for e in entry if isinstance(entry, list) else [entry]:
            p = root / e
            if p.suffix == ".txt" and p.is_file():
                files += [(root / line.strip()) if not Path(line.strip()).is_absolute() else Path(line.strip())
                          for line in p.read_text().splitlines() if line.strip()]
            elif p.is_dir():
                files += sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES)
            else:
                raise FileNotFoundError(f"{path}: {split}: {p} not found")
        splits[split] = files
    return root, [str(n) for n in names], splits


def label_path(image: Path) -> Path:
    """Where YOLO keeps an image's labels: the last /images/ becomes /labels/."""
    parts = list(image.parts)
    if "images" not in parts:
        raise ValueError(f"{image}: not inside an images/ folder, cannot find its labels")
    i = len(parts) - 1 - parts[::-1].index("images")
    parts[i] = "labels"
    return Path(*parts).with_suffix(".txt")


def box_polygon(b: Box) -> list[float]:
    """A box as a polygon [x1, y1, x2, y1, x2, y2, x1, y2] (an outline where no mask is known)."""
    return [b.x1, b.y1, b.x2, b.y1, b.x2, b.y2, b.x1, b.y2]


def mask_polygons(mask, k: int, box: Box | None = None) -> list[list[float]]:
    """The outlines of instance `k` of an instance map (HxW, k = 1 + box index) as
    polygons [x1, y1, x2, y2, ...] through the centres of its boundary pixels, largest
    first; a piece too thin for a polygon becomes its pixels' rectangle. No pixels:
    the box's rectangle, or [] without a box."""
    import cv2
    import numpy as np

    m = (np.asarray(mask) == k).astype(np.uint8)
    if not m.any():
        return [] if box is None else [box_polygon(box)]
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polys = []
    for c in sorted(contours, key=lambda c: (-cv2.contourArea(c), -len(c))):
        pts = c.reshape(-1, 2).astype(np.float64) + 0.5
        if len(pts) < 3:  # a line or a point: its pixels' rectangle
            (x1, y1), (x2, y2) = pts.min(0) - 0.5, pts.max(0) + 0.5
            pts = np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]])
        polys.append([round(float(v), 2) for v in pts.ravel()])
    return polys


def yolo_seg_text(boxes: Sequence[Box], polygons: Sequence[Sequence[Sequence[float]]], width: int, height: int) -> str:
    """YOLO segmentation label lines: `class x1 y1 x2 y2 ...` normalized, one line per
    box with its largest polygon (its box's rectangle when it has none)."""
    lines = []
    for b, polys in zip(boxes, polygons):
        poly = polys[0] if polys else box_polygon(b)
        xy = " ".join(f"{v / (width if i % 2 == 0 else height):.6f}" for i, v in enumerate(poly))
        lines.append(f"{b.class_id} {xy}\n")
    return "".join(lines)


def yolo_label_boxes(image: Path, width: int, height: int) -> list[Box] | None:
    """The pixel boxes of an image's YOLO label file (class ids kept, no names), or None
    when it has none (a folder of plain images)."""
    try:
        lab = label_path(Path(image))
    except ValueError:
        return None
    if not lab.exists():
        return None
    out = []
    for line in lab.read_text().splitlines():
        parts = line.split()
        if len(parts) == 5:
            c, cx, cy, w, h = int(float(parts[0])), *(float(v) for v in parts[1:])
            x1, y1 = max(0, round((cx - w / 2) * width)), max(0, round((cy - h / 2) * height))
            x2, y2 = min(width, round((cx + w / 2) * width)), min(height, round((cy + h / 2) * height))
            out.append(Box(c, str(c), x1, y1, max(x2, x1 + 1), max(y2, y1 + 1)))
    return out
