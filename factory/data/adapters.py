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
  Where `templates/<split>/` sits beside `images/<split>/`, each image's aligned
  defect-free twin (same stem) gives its instances (golden-template differences).
- `deeppcb`: DeepPCB's own layout (`*_test.jpg` with `*_temp.jpg` twins,
  `*_not/*.txt` boxes `x1,y1,x2,y2,type`, a list file such as `trainval.txt`);
  split by board group (`val_groups` held out whole), instances from the
  template differences.

Sets with masks also keep each box's exact pixels (`factory.data.instances`), so
the transplant generator can cut a defect along its outline. The in-memory form
(`RealSet`) and its way out (a YOLO tree, a registry version) are in
`factory.data.realset`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from factory.core import Box
from factory.data.folders import read_mask
from factory.data.instances import binary_instances, difference_instances, encode_map, instance_map, label_instances
from factory.data.realset import RealSample, RealSet
from factory.data.vocab import DEEPPCB_CLASSES, DEEPPCB_VAL_GROUPS, MAGNETIC_TILE_CLASSES, PV_VISION_CLASSES, PV_VISION_VALUES
from factory.formats import IMAGE_SUFFIXES, label_path, parse_yolo_lines, read_data_yaml


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


def _grey(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("L"))


def _twin(img: Path, boxes: list[Box], template: Path, threshold: int, min_area: int) -> bytes:
    """The instance map of an image from its golden template (`difference_instances`)."""
    return encode_map(difference_instances(_grey(img), _grey(template), boxes, threshold, min_area))


def yolo_layout(root: str | Path, threshold: int = 64, min_area: int = 4) -> RealSet:
    """`threshold`, `min_area`: how template differences become instances (sets with `templates/`)."""
    yroot, names, splits = read_data_yaml(root)
    samples = []
    for split, files in splits.items():
        for img in files:
            w, h = Image.open(img).size  # reads the header only
            lab = label_path(img)
            boxes = parse_yolo_lines(lab.read_text(), w, h, names) if lab.exists() else []
            twins = _twins_of(img)
            if twins is None:
                samples.append(RealSample(img, split, w, h, boxes))
                continue
            if not twins:
                raise FileNotFoundError(f"{img}: no defect-free twin {img.stem}.* in {_templates_dir(img)} "
                                        "(a set with templates/ needs one per image)")
            samples.append(RealSample(img, split, w, h, boxes, _twin(img, boxes, twins[0], threshold, min_area), twins[0]))
    has_templates = any(s.template for s in samples)
    return RealSet(yroot.name, names, samples, str(yroot),
                   {"threshold": threshold, "min_area": min_area} if has_templates else {})


def _templates_dir(img: Path) -> Path:
    """`.../templates/<split>/` for `.../images/<split>/<file>` (the YOLO convention for labels/)."""
    parts = list(img.parent.parts)
    i = len(parts) - 1 - parts[::-1].index("images") if "images" in parts else -1
    return Path(*parts[:i], "templates", *parts[i + 1:]) if i >= 0 else img.parent / "templates"


def _twins_of(img: Path) -> list[Path] | None:
    """The image's twins in its templates folder (None: the set has no templates/)."""
    d = _templates_dir(img)
    if not d.is_dir():
        return None
    return sorted(p for p in d.glob(f"{img.stem}.*") if p.suffix.lower() in IMAGE_SUFFIXES)


def _deeppcb_boxes(path: Path, width: int, height: int) -> list[Box]:
    boxes = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        parts = line.replace(",", " ").split()
        if not parts:
            continue
        if len(parts) != 5:
            raise ValueError(f"{path}: line {n}: expected x1,y1,x2,y2,type, got {line!r}")
        x1, y1, x2, y2, t = (int(float(v)) for v in parts)
        if not 1 <= t <= len(DEEPPCB_CLASSES):
            raise ValueError(f"{path}: line {n}: type {t} outside 1..{len(DEEPPCB_CLASSES)}")
        x1, x2 = sorted((min(max(x1, 0), width), min(max(x2, 0), width)))
        y1, y2 = sorted((min(max(y1, 0), height), min(max(y2, 0), height)))
        if x2 > x1 and y2 > y1:
            boxes.append(Box(t - 1, DEEPPCB_CLASSES[t - 1], x1, y1, x2, y2))
    return boxes


def deeppcb(root: str | Path, list_file: str = "trainval.txt", val_groups: tuple[str, ...] | list[str] = DEEPPCB_VAL_GROUPS,
            threshold: int = 64, min_area: int = 4) -> RealSet:
    """DeepPCB pairs listed in `list_file` (`groupG/G/NNNN.jpg groupG/G_not/NNNN.txt` per line):
    the tested board (`NNNN_test.jpg`) with its boxes, its golden template
    (`NNNN_temp.jpg`) and the instances that differ from it. Boards of
    `val_groups` form the val split, whole, so no board is in both splits."""
    root = Path(root)
    listing = root / list_file
    if not listing.is_file():
        raise FileNotFoundError(f"{listing}: not found (the DeepPCB list of image/annotation pairs)")
    samples, missing = [], []
    for n, line in enumerate(listing.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise ValueError(f"{listing}: line {n}: expected 'image annotation', got {line!r}")
        base = root / parts[0]
        test, temp = base.with_name(f"{base.stem}_test{base.suffix}"), base.with_name(f"{base.stem}_temp{base.suffix}")
        if not all(p.is_file() for p in (test, temp, root / parts[1])):
            missing.append(parts[0])  # the authors' trainval.txt lists one pair more than they ship
            continue
        w, h = Image.open(test).size
        boxes = _deeppcb_boxes(root / parts[1], w, h)
        split = "val" if parts[0].split("/")[0] in set(val_groups) else "train"
        samples.append(RealSample(test, split, w, h, boxes, _twin(test, boxes, temp, threshold, min_area), temp))
    if not samples:
        raise FileNotFoundError(f"{listing}: none of its pairs was found under {root}")
    return RealSet("deeppcb", list(DEEPPCB_CLASSES), samples, str(root),
                   {"list_file": list_file, "val_groups": list(val_groups), "threshold": threshold, "min_area": min_area,
                    "listed_but_missing": missing})


ADAPTERS: dict[str, Callable[..., RealSet]] = {
    "pv_vision_crack": pv_vision_crack,
    "magnetic_tile": magnetic_tile,
    "crackforest": crackforest,
    "yolo": yolo_layout,
    "deeppcb": deeppcb,
}


def load_real(kind: str, root: str | Path, **options) -> RealSet:
    if kind not in ADAPTERS:
        raise ValueError(f"unknown real data set kind {kind!r}; known: {', '.join(ADAPTERS)}")
    return ADAPTERS[kind](root, **options)

