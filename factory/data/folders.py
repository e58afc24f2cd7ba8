"""Image folders of real data: find images and the defect mask beside each.

Masks are found beside the image in the layouts of the real data sets here:
- `X.jpg` + `X.png` in the same folder (magnetic tile; anti-aliased, >= 128 is defect),
- `../groundTruth/X.mat` (CrackForest; `Segmentation == 2` is crack),
- `../ann/X.png` (pv_vision; channel 0, values chosen with `defect_values`),
- `../masks/X.png`.
Mask folders and a PNG beside a same-named JPG are never listed as images. This is
the one place that knows these layouts: training, generators and the CLI all list
folders through `scan` / `list_images`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image

from factory.formats import IMAGE_SUFFIXES

MASK_DIRS = {"groundTruth", "ann", "seg", "masks", "labels"}


@dataclass(frozen=True)
class ImageRecord:
    image: Path
    mask: Path | None = None


def list_images(root: str | Path) -> list[Path]:
    """All images under a local folder (recursively, sorted), masks left out."""
    return [r.image for r in scan(root)]


def is_image_name(name: str) -> bool:
    return "." in name and "." + name.rsplit(".", 1)[-1].lower() in IMAGE_SUFFIXES


def scan(root: str | Path) -> list[ImageRecord]:
    """All images under a local folder (recursively, sorted), each with its mask if one exists."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"image folder not found: {root}")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    files = [p for p in files if not (MASK_DIRS & set(p.relative_to(root).parts[:-1]))]
    stems = {(p.parent, p.stem) for p in files if p.suffix.lower() != ".png"}
    records = []
    for p in files:
        if p.suffix.lower() == ".png" and (p.parent, p.stem) in stems:
            continue  # the mask of a JPG beside it
        records.append(ImageRecord(p, find_mask(p)))
    return records


def find_mask(image: Path) -> Path | None:
    """The defect mask of an image in one of the layouts above, or None."""
    candidates = [
        image.with_suffix(".png") if image.suffix.lower() != ".png" else None,
        image.parent.parent / "groundTruth" / f"{image.stem}.mat",
        image.parent.parent / "ann" / f"{image.stem}.png",
        image.parent.parent / "masks" / f"{image.stem}.png",
    ]
    return next((c for c in candidates if c is not None and c.exists()), None)


def read_image(path: str | Path, channels: int = 1) -> np.ndarray:
    """HxWxC uint8."""
    with Image.open(path) as im:
        a = np.asarray(im.convert("L" if channels == 1 else "RGB"))
    return a[:, :, None] if a.ndim == 2 else a


def read_mask(path: str | Path, defect_values: Iterable[int] | None = None) -> np.ndarray:
    """HxW bool defect map."""
    path = Path(path)
    if path.suffix == ".mat":
        import scipy.io

        seg = scipy.io.loadmat(path)["groundTruth"][0, 0]["Segmentation"]
        return np.asarray(seg) == 2
    with Image.open(path) as im:
        a = np.asarray(im)
    if a.ndim == 3:
        a = a[:, :, 0]
    if defect_values is not None:
        return np.isin(a, list(defect_values))
    return a >= 128 if a.max() > 8 else a > 0


def image_uris(location: str) -> list[str]:
    """The images at a location: an image file or URI itself, or every image under a
    folder / `file://` / `s3://` prefix (sorted; masks beside JPGs left out)."""
    from factory.storage import uri as U  # storage pulls in its S3 and Arrow readers

    location = str(location)
    if is_image_name(location.rsplit("/", 1)[-1]):
        return [location]
    if U.on_disk(location) is None:  # an object store's prefix: list it
        names = [n for n in U.list_files(location) if is_image_name(n) and not (MASK_DIRS & set(n.split("/")[:-1]))]
        jpg_stems = {n.rsplit(".", 1)[0] for n in names if not n.lower().endswith(".png")}
        return [U.join(location, n) for n in names if not (n.lower().endswith(".png") and n.rsplit(".", 1)[0] in jpg_stems)]
    path = U.local_path(location)
    if not path.exists():
        raise FileNotFoundError(f"{location}: not found")
    return [str(p) for p in list_images(path)] if path.is_dir() else [str(path)]

