"""Real data sets -> one in-memory form (image file + boxes + split), and back out
as a YOLO tree, so every consumer (retraining, previews, the registry) reads one
format whatever the authors published.

- `pv_vision_crack`: RGB masks, channel 0: 1 dark area, 2 cross crack, 3 crack,
  4 busbar. The busbar spans every cell: it is structure, not a defect, so it
  gets no boxes.
- `magnetic_tile`: a PNG mask beside every JPG (anti-aliased, threshold 128),
  the class is the folder; `MT_Free` tiles are defect-free negatives. The set has
  no split, so a seeded per-class split is made (same seed, same split).
- `crackforest`: `image/*.jpg` + `groundTruth/*.mat` (`Segmentation == 2` is
  crack); one class, a seeded per-file split like magnetic_tile.
- `yolo`: a YOLO-layout set (e.g. neu_det) read as it is; its `data.yaml` `path:`
  is ignored (it points at the authors' machine) in favour of the yaml's folder.

Sets with masks also keep each box's exact pixels (`factory.data.instances`), so
the transplant generator can cut a defect along its outline.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import yaml
from PIL import Image

from factory.core import Box
from factory.data.folders import read_mask
from factory.data.instances import binary_instances, encode_map, instance_map, instance_mask_path, label_instances
from factory.data.vocab import MAGNETIC_TILE_CLASSES, PV_VISION_CLASSES, PV_VISION_VALUES
from factory.formats import IMAGE_SUFFIXES, label_path, parse_yolo_lines, read_data_yaml, yolo_lines
from factory.viz import png_bytes



@dataclass
class RealSample:
    image_path: Path
    split: str
    width: int
    height: int
    boxes: list[Box] = field(default_factory=list)
    instances: bytes | None = None  # PNG instance map (k = 1 + box index), for sets with masks

    @property
    def stem(self) -> str:
        return self.image_path.stem


@dataclass
class RealSet:
    name: str
    class_names: list[str]
    samples: list[RealSample]
    source: str
    settings: dict = field(default_factory=dict)

    def splits(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.samples:
            out[s.split] = out.get(s.split, 0) + 1
        return out

    def class_counts(self) -> dict[str, int]:
        out = {n: 0 for n in self.class_names}
        for s in self.samples:
            for b in s.boxes:
                out[b.class_name] += 1
        return out


def _need_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: not found ({what})")
    return path


def pv_vision_crack(
    root: str | Path, splits: tuple[str, ...] = ("train", "val"), min_area: int = 16, merge_gap: int = 2,
    limit: int | None = None,
) -> RealSet:
    """`limit`: at most that many images per split (the first, sorted by name), for quick subsets."""
    root = Path(root)
    classes = {v: (PV_VISION_CLASSES.index(n), n) for v, n in PV_VISION_VALUES.items()}
    samples = []
    for split in splits:
        img_dir = _need_dir(root / split / "img", f"pv_vision_crack split {split!r} images")
        ann_dir = _need_dir(root / split / "ann", f"pv_vision_crack split {split!r} masks")
        for img in sorted(p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]:
            ann = ann_dir / (img.stem + ".png")
            if not ann.exists():
                raise FileNotFoundError(f"{ann}: mask missing for {img.name}")
            mask = np.asarray(Image.open(ann))
            mask = mask[..., 0] if mask.ndim == 3 else mask
            h, w = mask.shape
            boxes, inst = label_instances(mask, classes, min_area=min_area, merge_gap=merge_gap)
            samples.append(RealSample(img, split, w, h, boxes, encode_map(inst)))
    return RealSet("pv_vision_crack", list(PV_VISION_CLASSES), samples, str(root),
                   {"min_area": min_area, "merge_gap": merge_gap, "mask_values": {str(k): v for k, v in PV_VISION_VALUES.items()}})


def _split_of(name: str, seed: int, val_fraction: float) -> str:
    """A stable per-file split: a hash of (seed, file name), so adding files
    never moves old ones between splits."""
    h = int(hashlib.sha256(f"{seed}:{name}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "val" if h < val_fraction else "train"


def magnetic_tile(
    root: str | Path, min_area: int = 16, merge_gap: int = 0, val_fraction: float = 0.2, seed: int = 0, negatives: bool = True
) -> RealSet:
    root = Path(root)
    _need_dir(root, "magnetic_tile root")
    samples = []
    folders = [(f"MT_{n.capitalize()}", n) for n in MAGNETIC_TILE_CLASSES] + ([("MT_Free", None)] if negatives else [])
    for folder, name in folders:
        img_dir = _need_dir(root / folder / "Imgs", f"magnetic_tile class folder {folder}")
        for img in sorted(p for p in img_dir.iterdir() if p.suffix.lower() == ".jpg"):
            mask_path = img.with_suffix(".png")
            if not mask_path.exists():
                raise FileNotFoundError(f"{mask_path}: mask missing for {img.name}")
            mask = np.asarray(Image.open(mask_path).convert("L"))
            h, w = mask.shape
            found = [] if name is None else binary_instances(
                mask >= 128, MAGNETIC_TILE_CLASSES.index(name), name, min_area=min_area, merge_gap=merge_gap)
            inst = encode_map(instance_map(mask.shape, [p for _, p in found]))
            samples.append(RealSample(img, _split_of(img.name, seed, val_fraction), w, h, [b for b, _ in found], inst))
    return RealSet("magnetic_tile", list(MAGNETIC_TILE_CLASSES), samples, str(root),
                   {"min_area": min_area, "merge_gap": merge_gap, "val_fraction": val_fraction, "seed": seed, "negatives": negatives})


def crackforest(root: str | Path, min_area: int = 16, merge_gap: int = 2, val_fraction: float = 0.2, seed: int = 0) -> RealSet:
    root = Path(root)
    img_dir = _need_dir(root / "image", "crackforest images")
    gt_dir = _need_dir(root / "groundTruth", "crackforest groundTruth (.mat)")
    samples = []
    for img in sorted(p for p in img_dir.iterdir() if p.suffix.lower() == ".jpg"):
        mat = gt_dir / f"{img.stem}.mat"
        if not mat.exists():
            raise FileNotFoundError(f"{mat}: ground truth missing for {img.name}")
        mask = read_mask(mat)
        h, w = mask.shape
        found = binary_instances(mask, 0, "crack", min_area=min_area, merge_gap=merge_gap)
        inst = encode_map(instance_map(mask.shape, [p for _, p in found]))
        samples.append(RealSample(img, _split_of(img.name, seed, val_fraction), w, h, [b for b, _ in found], inst))
    return RealSet("crackforest", ["crack"], samples, str(root),
                   {"min_area": min_area, "merge_gap": merge_gap, "val_fraction": val_fraction, "seed": seed})


def yolo_layout(root: str | Path) -> RealSet:
    yroot, names, splits = read_data_yaml(root)
    samples = []
    for split, files in splits.items():
        for img in files:
            w, h = Image.open(img).size  # reads the header only
            lab = label_path(img)
            boxes = parse_yolo_lines(lab.read_text(), w, h, names) if lab.exists() else []
            samples.append(RealSample(img, split, w, h, boxes))
    return RealSet(yroot.name, names, samples, str(yroot), {})


ADAPTERS: dict[str, Callable[..., RealSet]] = {
    "pv_vision_crack": pv_vision_crack,
    "magnetic_tile": magnetic_tile,
    "crackforest": crackforest,
    "yolo": yolo_layout,
}


def load_real(kind: str, root: str | Path, **options) -> RealSet:
    if kind not in ADAPTERS:
        raise ValueError(f"unknown real data set kind {kind!r}; known: {', '.join(ADAPTERS)}")
    return ADAPTERS[kind](root, **options)


def yolo_files(real: RealSet, split_names: dict[str, str] | None = None) -> dict[str, bytes]:
    """The YOLO tree of a set as {relative path: bytes}: images/<split>/, labels/<split>/,
    masks/<split>/ (instance maps, for sets with masks), data.yaml (no `path:` key,
    so ultralytics resolves splits next to the yaml) and import.json (where it came
    from, how masks became boxes)."""
    split_names = split_names or {}
    out: dict[str, bytes] = {}
    seen: set[str] = set()
    for s in real.samples:
        split = split_names.get(s.split, s.split)
        key = f"{split}/{s.stem}"
        if key in seen:
            raise ValueError(f"two images named {s.stem} in split {split}")
        seen.add(key)
        out[f"images/{split}/{s.image_path.name}"] = s.image_path.read_bytes()
        out[f"labels/{split}/{s.stem}.txt"] = ("\n".join(yolo_lines(s.boxes, s.width, s.height)) + "\n").encode() if s.boxes else b""
        if s.instances is not None:
            out[instance_mask_path(split, s.stem)] = s.instances
    splits = sorted({split_names.get(s.split, s.split) for s in real.samples})
    data = {split: f"images/{split}" for split in splits}
    data |= {"nc": len(real.class_names), "names": list(real.class_names)}
    out["data.yaml"] = yaml.safe_dump(data, sort_keys=False).encode()
    info = {"name": real.name, "source": real.source, "settings": real.settings, "splits": real.splits(),
            "class_counts": real.class_counts(), "instance_masks": any(s.instances is not None for s in real.samples)}
    out["import.json"] = json.dumps(info, indent=2).encode()
    return out


def write_yolo(real: RealSet, dest_uri: str) -> dict:
    """Write the set's YOLO tree under a URI (file:// or s3://); returns import.json's content."""
    from factory.storage.uri import join, write_bytes

    files = yolo_files(real)
    for rel, data in files.items():
        write_bytes(join(dest_uri, rel), data)
    return json.loads(files["import.json"])


def write_yolo_arrays(items, class_names: list[str], dest: str | Path, split: str = "train") -> Path:
    """Write in-memory images (HxW[xC] uint8) + boxes as a local YOLO tree; for
    benchmarks and tests that need a synthetic folder without a published version."""

    dest = Path(dest)
    (dest / "images" / split).mkdir(parents=True, exist_ok=True)
    (dest / "labels" / split).mkdir(parents=True, exist_ok=True)
    for i, (image, boxes) in enumerate(items):
        h, w = image.shape[:2]
        (dest / "images" / split / f"{i:06d}.png").write_bytes(png_bytes(image))
        text = "\n".join(yolo_lines(list(boxes), w, h))
        (dest / "labels" / split / f"{i:06d}.txt").write_text(text + "\n" if text else "")
    (dest / "data.yaml").write_text(yaml.safe_dump({split: f"images/{split}", "nc": len(class_names), "names": list(class_names)}, sort_keys=False))
    return dest


def publish_real(real: RealSet, root: str, name: str, version: int | None = None) -> str:
    """Publish a real set as a registry dataset (`yolo/` tree + manifest written
    last), so consumers read real and synthetic data the same way. Returns the
    version URI."""
    from factory.storage.registry import Registry, code_version

    reg = Registry(root)
    version = version or reg.next_version(name)
    files = yolo_files(real)
    info = json.loads(files["import.json"])
    manifest = {
        "kind": "real",
        "source": real.source,
        "adapter": real.name,
        "settings": real.settings,
        "code_version": code_version(),
        "classes": list(real.class_names),
        "counts": {"images": len(real.samples), "splits": info["splits"], "boxes_per_class": info["class_counts"],
                   "negatives": sum(1 for s in real.samples if not s.boxes)},
    }
    extra = {f"yolo/{k}" if k != "import.json" else k: v for k, v in files.items()}
    return reg.publish(name, version, [], extra, manifest)
