"""Where the transplant generator's real parts come from.

- The defect source: a labelled YOLO tree written by `factory data import` (a
  registry version `[ROOT/]NAME@VERSION`, or the URI of a YOLO folder). Only its
  `train` split is ever read: `val` is evaluation data. Instance maps beside the
  labels (`masks/<split>/<stem>.png`) give each box's exact pixels; a box-only set
  gives box crops.
- The backgrounds: defect-free images of the target line: folders/URIs of images,
  or `NAME@VERSION` of an imported set, meaning its train images without boxes.

A bare `NAME@VERSION` resolves against the spec's registry (`output.uri`, where
`factory data import` also publishes by default); `check_spec` rewrites it to
`ROOT/NAME@VERSION` on the driver, so workers never guess. Outside a spec it
resolves against `$FACTORY_ROOT` (default `file://./datasets`).
"""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from factory.core import Box
from factory.data.folders import image_uris, is_image_name
from factory.storage import uri as U
from factory.storage import default_root
from factory.storage.registry import DatasetRef, Registry

TRAIN = "train"  # the only split a transplant ever cuts from or paints on


def is_version_ref(text: str) -> bool:
    return "@" in str(text).rstrip("/").rpartition("/")[2]


def qualify(text: str, root: str) -> str:
    """`ROOT/NAME@VERSION` for a bare `NAME@VERSION` (absolute root); anything else as it is."""
    text = str(text)
    if is_version_ref(text) and "/" not in text:
        return f"{U.to_uri(root)}/{text}"
    return text


def tree_uri(text: str) -> str:
    """The URI of the YOLO tree behind a source: a registry version's `yolo/`, or the folder itself."""
    if is_version_ref(text):
        ref = DatasetRef.parse(text, default_root=default_root())
        reg = Registry(ref.root)
        name, version = reg.resolve(ref)
        if not reg.is_published(name, version):
            raise FileNotFoundError(f"{text}: {name}@{version} is not published under {reg.root} "
                                    f"(import it with `factory data import ... --root {reg.root}`)")
        return U.join(reg.version_uri(name, version), "yolo")
    uri = U.to_uri(text)
    if U.exists(U.join(uri, "yolo", "data.yaml")):
        return U.join(uri, "yolo")
    if not U.exists(U.join(uri, "data.yaml")):
        raise FileNotFoundError(f"{text}: no data.yaml (expected a YOLO folder from `factory data import` or NAME@VERSION)")
    return uri


@dataclass(frozen=True)
class TrainFile:
    image: str  # path relative to the tree
    labels: str  # YOLO label text ("" when none)
    instances: str | None  # relative path of its instance map, when the set has masks
    template: str | None = None  # relative path of its aligned defect-free twin, when the set has templates


def _names(tree: str) -> list[str]:
    import yaml

    data = yaml.safe_load(U.read_bytes(U.join(tree, "data.yaml"))) or {}
    names = data.get("names") or []
    if isinstance(names, dict):
        names = [names[k] for k in sorted(names, key=int)]
    return [str(n) for n in names]


def train_files(tree: str) -> tuple[list[str], list[TrainFile]]:
    """(class names, the train split's images with their labels) of a YOLO tree.

    The split is `images/train/` as `factory data import` writes it; anything else
    in the tree (val, test) is never listed."""
    names = _names(tree)
    files = U.list_files(tree)
    have = set(files)
    prefix = f"images/{TRAIN}/"
    out = []
    for rel in files:
        if not rel.startswith(prefix) or not is_image_name(rel):
            continue
        stem_rel = rel[len(prefix):].rsplit(".", 1)[0]
        lab = f"labels/{TRAIN}/{stem_rel}.txt"
        text = U.read_bytes(U.join(tree, lab)).decode() if lab in have else ""
        inst = f"masks/{TRAIN}/{stem_rel}.png"
        twin = f"templates/{TRAIN}/{rel[len(prefix):]}"
        out.append(TrainFile(rel, text, inst if inst in have else None, twin if twin in have else None))
    return names, out


def class_counts(names: list[str], files: list[TrainFile]) -> Counter:
    counts: Counter = Counter()
    for f in files:
        for line in f.labels.splitlines():
            if line.strip():
                counts[names[int(line.split()[0])]] += 1
    return counts


def background_uris(refs: str | list[str]) -> list[str]:
    """Defect-free image URIs from folders/URIs/image files and `NAME@VERSION` refs (sorted, per ref)."""
    out: list[str] = []
    for r in [refs] if isinstance(refs, str) else list(refs):
        r = str(r)
        if is_version_ref(r):
            tree = tree_uri(r)
            _, files = train_files(tree)
            out += [U.join(tree, f.image) for f in files if not f.labels.strip()]
            out += [U.join(tree, f.template) for f in files if f.template]  # golden templates are defect-free
        else:
            out += image_uris(r)
    return out


def read_grey(uri: str) -> np.ndarray:
    """HxW uint8 of an image at a URI (file:// or s3://) or path."""
    from PIL import Image

    with Image.open(io.BytesIO(U.read_bytes(uri))) as im:
        return np.asarray(im.convert("L"))


def _centre_crop(w: int, h: int, width: int, height: int) -> tuple[int, int, int, int]:
    """(left, top, crop width, crop height): the centred crop of a w x h image to the item's aspect."""
    scale = min(w / width, h / height)
    cw, ch = round(width * scale), round(height * scale)
    return (w - cw) // 2, (h - ch) // 2, cw, ch


@lru_cache(maxsize=128)
def load_background(uri: str, width: int, height: int) -> np.ndarray:
    """A reference, grey, centre-cropped to the item's aspect and resized (float32 0..255, read-only)."""
    from PIL import Image

    im = Image.fromarray(read_grey(uri))
    left, top, cw, ch = _centre_crop(*im.size, width, height)
    a = np.asarray(im.crop((left, top, left + cw, top + ch)).resize((width, height), Image.BICUBIC), np.float32)
    a.setflags(write=False)
    return a


@dataclass(frozen=True)
class Labelled:
    """A labelled train image of the source used as a background: its defects stay, with their boxes."""

    uri: str
    labels: str  # its YOLO label text (the source's class ids)
    instances: str | None  # URI of its instance map, when the source has one


def labelled_backgrounds(source: str, classes: list[str]) -> tuple[list[str], list[Labelled]]:
    """(the source's class names, its labelled train images whose every box is of a class in `classes`)."""
    tree = tree_uri(source)
    names, files = train_files(tree)
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
    left, top, cw, ch = _centre_crop(W, H, width, height)
    sx, sy = width / cw, height / ch
    image = load_background(bg.uri, width, height)
    src = decode_map(U.read_bytes(bg.instances)) if bg.instances else None
    if src is not None:
        crop = np.ascontiguousarray(src[top:top + ch, left:left + cw].astype(np.int32))
        src = np.asarray(Image.fromarray(crop).resize((width, height), Image.NEAREST))
    boxes, inst = [], np.zeros((height, width), np.uint16)
    for k, b in enumerate(parse_yolo_lines(bg.labels, W, H, list(names))):
        x1, x2 = max(0.0, (b.x1 - left) * sx), min(float(width), (b.x2 - left) * sx)
        y1, y2 = max(0.0, (b.y1 - top) * sy), min(float(height), (b.y2 - top) * sy)
        if x2 - x1 < 1 or y2 - y1 < 1:
            continue
        box = Box(classes.index(b.class_name), b.class_name, int(x1), int(y1), int(np.ceil(x2)), int(np.ceil(y2)))
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


def check_references(refs: str | list[str]) -> str | None:
    """Why these references give no defect-free images, or None."""
    try:
        uris = background_uris(refs)
    except (FileNotFoundError, ValueError, U.StorageError) as e:
        return str(e)
    if not uris:
        return (f"{refs}: no defect-free images (a NAME@VERSION reference contributes only train images "
                "without boxes; a folder all its images)")
    return None

