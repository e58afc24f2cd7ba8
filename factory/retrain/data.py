"""Each arm's training set, laid out for ultralytics.

One deterministic selection per (inputs, settings, seed): the driver makes it to
size the step budget, each training worker makes the same one again from the
same URIs to lay out its arm. Class ids are the eval set's (that is what the
detector is judged on). The real eval split is only ever scored on: the
`real_limit` subset and everything else that trains comes from the train split
and the synthetic version.
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import NotRequired, TypedDict

import numpy as np
import yaml

from factory.formats import label_path, read_data_yaml
from factory.retrain.config import RetrainError, RetrainSettings

Item = tuple[Path, list[str]]  # an image and its YOLO label lines (eval-set class ids)


class SplitCounts(TypedDict):
    """What a selection took from one source (after the class mapping)."""

    images: int
    dropped_images: int  # left out: a box of a class that maps to nothing
    boxes_per_class_id: dict[int, int]
    limit: NotRequired[int]  # real train: `real_limit`
    used_images: NotRequired[int]
    images_with_boxes: NotRequired[int]
    class_mapping: NotRequired[dict[str, str | None]]  # synthetic: its class -> the real class


class SelectionCounts(TypedDict):
    class_names: list[str]
    real_train: SplitCounts
    real_eval: SplitCounts
    synthetic: NotRequired[SplitCounts]


@dataclass
class Selection:
    """What each arm trains on and what every arm is scored on."""

    class_names: list[str]
    real: list[Item]
    synthetic: list[Item]
    eval: list[Item]
    counts: SelectionCounts = field(default_factory=dict)

    def train_items(self, arm: str) -> list[Item]:
        return {"real": self.real, "mixed": self.real + self.synthetic, "synthetic": self.synthetic}[arm]

    def batches_per_epoch(self, arm: str, batch: int) -> int:
        return math.ceil(len(self.train_items(arm)) / batch)


def _remapped(images: list[Path], names: list[str], target: dict[str, int | None]) -> tuple[list[Item], SplitCounts]:
    """Rewrite label class ids through a name mapping. An image with any box of a
    dropped class is left out (its defect would be an unlabeled positive)."""
    items, dropped_images, boxes = [], 0, {}
    for img in images:
        lab = label_path(img)
        lines, drop = [], False
        for line in (lab.read_text().splitlines() if lab.exists() else []):
            parts = line.split()
            if not parts:
                continue
            new = target.get(names[int(float(parts[0]))])
            if new is None:
                drop = True
                break
            lines.append(" ".join([str(new), *parts[1:5]]))
            boxes[new] = boxes.get(new, 0) + 1
        if drop:
            dropped_images += 1
        else:
            items.append((img, lines))
    return items, {"images": len(items), "dropped_images": dropped_images, "boxes_per_class_id": boxes}


def classes_of(item: Item) -> set[int]:
    return {int(line.split()[0]) for line in item[1]}


def real_subset(items: list[Item], limit: int, seed: int) -> list[Item]:
    """A seeded subset of `limit` images in which every class of `items` appears:
    one image per class first (rarest class first), the rest drawn at random."""
    if limit >= len(items):
        return list(items)
    present = sorted({c for it in items for c in classes_of(it)},
                     key=lambda c: (sum(c in classes_of(it) for it in items), c))
    if limit < len(present):
        raise RetrainError(f"real_limit: {limit} images cannot show all {len(present)} classes of the real train split")
    order = np.random.default_rng(seed).permutation(len(items)).tolist()
    chosen: list[int] = []
    for c in present:
        if not any(c in classes_of(items[i]) for i in chosen):
            chosen.append(next(i for i in order if c in classes_of(items[i])))
    chosen += [i for i in order if i not in chosen][: limit - len(chosen)]
    return [items[i] for i in sorted(chosen)]


def _pick_split(splits: dict[str, list[Path]], wanted: tuple[str, ...], uri: str) -> list[Path]:
    for s in wanted:
        if splits.get(s):
            return splits[s]
    raise RetrainError(f"{uri}: its data.yaml has no {' or '.join(wanted)} split with images")


def select(real_train: Path, real_eval: Path, synthetic: Path | None, s: RetrainSettings, seed: int,
           uris: tuple[str, str, str] = ("", "", "")) -> Selection:
    """The deterministic selection of one seed's training and eval images."""
    train_uri, eval_uri, syn_uri = (u or str(p) for u, p in zip(uris, (real_train, real_eval, synthetic)))
    _, eval_names, eval_splits = read_data_yaml(real_eval)
    ident = {n: i for i, n in enumerate(eval_names)}
    eval_items, eval_counts = _remapped(_pick_split(eval_splits, ("val", "test"), eval_uri), eval_names, dict(ident))

    _, train_names, train_splits = read_data_yaml(real_train)
    missing = [n for n in train_names if n not in ident]
    if missing:
        raise RetrainError(f"{train_uri}: classes {missing} are not in the eval set's classes {eval_names}")
    real_items, real_counts = _remapped(_pick_split(train_splits, ("train",), train_uri), train_names,
                                        {n: ident[n] for n in train_names})
    if s.real_limit is not None:
        real_items = real_subset(real_items, s.real_limit, seed)
        real_counts["limit"] = s.real_limit
    real_counts["used_images"] = len(real_items)
    real_counts["images_with_boxes"] = sum(1 for it in real_items if it[1])
    counts: SelectionCounts = {"class_names": eval_names, "real_train": real_counts, "real_eval": eval_counts}

    syn_items: list[Item] = []
    if synthetic is not None:
        _, syn_names, syn_splits = read_data_yaml(synthetic)
        target: dict[str, int | None] = {}
        for n in syn_names:
            mapped = s.class_map.get(n, n)
            if mapped is not None and mapped not in ident:
                if n in s.class_map:
                    raise RetrainError(f"class_map sends synthetic {n!r} to {mapped!r}, which is not a real class {eval_names}")
                mapped = None  # a synthetic-only class: its images are left out
            target[n] = None if mapped is None else ident[mapped]
        if not any(v is not None for v in target.values()):
            raise RetrainError(f"{syn_uri}: none of its classes {syn_names} maps onto the real classes {eval_names}; set class_map")
        syn_imgs = sorted({p for files in syn_splits.values() for p in files})
        syn_items, syn_counts = _remapped(syn_imgs, syn_names, target)
        want = max(1, round(s.synthetic_ratio * len(real_items)))
        if len(syn_items) > want:  # a seeded subset: every arm of a seed sees the same images
            keep = np.random.default_rng(seed).choice(len(syn_items), size=want, replace=False)
            syn_items = [syn_items[i] for i in sorted(keep)]
        syn_counts["used_images"] = len(syn_items)
        syn_counts["class_mapping"] = {n: (None if v is None else eval_names[v]) for n, v in target.items()}
        counts["synthetic"] = syn_counts
    return Selection(eval_names, real_items, syn_items, eval_items, counts)


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.symlink(src.resolve(), dst)
    except OSError:
        shutil.copy(src, dst)


def _write_split(dst_root: Path, items: list[Item]) -> None:
    for i, (img, lines) in enumerate(items):
        name = f"{i:06d}_{img.name}"  # unique even when two sources share a file name
        _link(img, dst_root / "images" / name)
        lab = dst_root / "labels" / Path(name).with_suffix(".txt")
        lab.parent.mkdir(parents=True, exist_ok=True)
        lab.write_text("".join(line + "\n" for line in lines))


def write_arm(work: Path, sel: Selection, arm: str) -> Path:
    """Lay out one arm's train set and the eval set under `work`; returns its data.yaml."""
    dirs = []
    if arm in ("real", "mixed"):
        _write_split(work / "real", sel.real)
        dirs.append("real/images")
    if arm in ("mixed", "synthetic"):
        if not sel.synthetic:
            raise RetrainError(f"arm {arm!r} needs synthetic images, and none were selected")
        _write_split(work / "synthetic", sel.synthetic)
        dirs.append("synthetic/images")
    _write_split(work / "eval", sel.eval)
    data = {"path": str(work), "train": dirs, "val": "eval/images", "nc": len(sel.class_names), "names": sel.class_names}
    (work / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return work / "data.yaml"
