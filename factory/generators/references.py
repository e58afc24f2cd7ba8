"""Real images a generator family reads, in one place: labelled sets and the
defect-free references of the target line.

- A labelled set is a YOLO tree written by `factory data import`: a registry version
  `[ROOT/]NAME@VERSION`, or the URI of a YOLO folder. Only its `train` split is ever
  read (`val` is evaluation data); instance maps (`masks/<split>/`) and golden
  templates (`templates/<split>/`) sit beside its images.
- References are defect-free images of the line: folders/URIs of images, or
  `NAME@VERSION` of an imported set, meaning its train images without boxes and its
  golden templates.

A bare `NAME@VERSION` resolves against the spec's registry (`output.uri`, where
`factory data import` also publishes by default): a family's `prepare_params`
rewrites it with `qualify` to `ROOT/NAME@VERSION` on the driver, so workers never
guess; outside a spec it resolves against `default_root()` ($FACTORY_ROOT).
Every family that takes references (procedural, DG2GAN, transplant) uses these.
"""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from factory.core import centre_crop
from factory.data.folders import image_uris, is_image_name
from factory.storage import default_root
from factory.storage import uri as U
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
    in the tree (val, test) is never listed: generators read only this."""
    return split_files(tree, TRAIN)


def split_files(tree: str, split: str) -> tuple[list[str], list[TrainFile]]:
    """(class names, one split's images with their labels) of a YOLO tree. Generators
    use `train_files`; evaluation (a gate's view of real held-out defects) reads `val`."""
    names = _names(tree)
    files = U.list_files(tree)
    have = set(files)
    prefix = f"images/{split}/"
    out = []
    for rel in files:
        if not rel.startswith(prefix) or not is_image_name(rel):
            continue
        stem_rel = rel[len(prefix):].rsplit(".", 1)[0]
        lab = f"labels/{split}/{stem_rel}.txt"
        text = U.read_bytes(U.join(tree, lab)).decode() if lab in have else ""
        inst = f"masks/{split}/{stem_rel}.png"
        twin = f"templates/{split}/{rel[len(prefix):]}"
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


MAX_REFERENCE_BYTES = 256 << 20  # a reference may name anything (/dev/zero, a disk image): reads are bounded
MAX_REFERENCE_PIXELS = 64 << 20  # 8192 x 8192; checked in the header, before the pixels are decoded


def read_grey(uri: str) -> np.ndarray:
    """HxW uint8 of an image at a URI (file:// or s3://) or path: a regular file of at
    most MAX_REFERENCE_BYTES whose header claims at most MAX_REFERENCE_PIXELS; else
    ValueError naming the URI."""
    from PIL import Image, UnidentifiedImageError

    data = _read_bounded(uri)
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > MAX_REFERENCE_PIXELS:
                raise ValueError(f"{uri}: {im.width}x{im.height} pixels; a reference image may have at most "
                                 f"{MAX_REFERENCE_PIXELS} pixels")
            return np.asarray(im.convert("L"))
    except Image.DecompressionBombError as e:  # PIL's own header check, at twice its MAX_IMAGE_PIXELS
        raise ValueError(f"{uri}: too many pixels for a reference image ({e})") from None
    except (UnidentifiedImageError, ImportError):  # (ultralytics wraps Image.open: an unknown format then
        # fails importing its optional HEIF plugin instead)
        raise ValueError(f"{uri}: not an image (PIL cannot identify it)") from None
    except (OSError, SyntaxError) as e:  # a truncated or corrupt image
        raise ValueError(f"{uri}: unreadable image ({e})") from None


def _check_file(uri: str) -> str:
    """The local path of a reference if it is a regular file of a readable size, else ValueError
    (a device such as /dev/zero never ends: its size says nothing)."""
    import os
    import stat

    path = os.fspath(U.local_path(uri))
    try:
        st = os.stat(path)
    except OSError as e:
        raise U.StorageError(f"{uri}: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{uri}: not a regular file (a device, pipe or folder), expected an image file")
    if st.st_size > MAX_REFERENCE_BYTES:
        raise ValueError(f"{uri}: {st.st_size} bytes; a reference image may be at most {MAX_REFERENCE_BYTES} bytes")
    return path


def _read_bounded(uri: str) -> bytes:
    if U.on_disk(uri) is None:
        data = U.read_bytes(uri)  # an object has the size its writer gave it: no device behind it
    else:
        with open(_check_file(uri), "rb") as f:
            data = f.read(MAX_REFERENCE_BYTES + 1)  # bounded even if the file grows meanwhile
    if len(data) > MAX_REFERENCE_BYTES:
        raise ValueError(f"{uri}: more than {MAX_REFERENCE_BYTES} bytes; a reference image may be at most that")
    return data


def frame_image(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """A uint8 image centre-cropped to width x height's aspect and resized to it (bicubic):
    how every generator frames a reference of another size (`Box.framed` moves its boxes)."""
    from PIL import Image

    im = Image.fromarray(image)
    left, top, cw, ch = centre_crop(*im.size, width, height)
    return np.asarray(im.crop((left, top, left + cw, top + ch)).resize((width, height), Image.BICUBIC))


@lru_cache(maxsize=128)
def load_background(uri: str, width: int, height: int) -> np.ndarray:
    """A reference, grey, framed to the item (`frame_image`; float32 0..255, read-only)."""
    a = frame_image(read_grey(uri), width, height).astype(np.float32)
    a.setflags(write=False)
    return a


def check_references(refs: str | list[str]) -> str | None:
    """Why these references give no defect-free images, or None."""
    try:
        uris = background_uris(refs)
        for uri in uris:  # a file named directly may be a device (/dev/zero): refuse it before any read
            if U.on_disk(uri) is not None:
                _check_file(uri)
    except (FileNotFoundError, ValueError, U.StorageError) as e:
        return str(e)
    if not uris:
        return (f"{refs}: no defect-free images (a NAME@VERSION reference contributes only train images "
                "without boxes; a folder all its images)")
    return None



def qualify_references(params: dict, root: str) -> dict:
    """`params["references"]` as a list with every bare `NAME@VERSION` qualified (a
    family's `prepare_params`)."""
    refs = params.get("references")
    if refs:
        params["references"] = [qualify(r, root) for r in ([refs] if isinstance(refs, str) else refs)]
    return params


def reference_problems(params: dict, spec, where: str) -> list[tuple[str, str]]:
    """`[(field, why)]` when `params["references"]` give no defect-free images; the field is
    `domain.references` where they came from there (`check_spec` fills them in)."""
    refs = params.get("references")
    why = check_references(refs) if refs else None
    if not why:
        return []
    domain_refs = [qualify(r, spec.output.uri) for r in spec.domain.references]
    return [("domain.references" if refs == domain_refs else f"{where}.params.references", why)]
