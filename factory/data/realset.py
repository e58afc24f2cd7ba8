"""A real data set in memory (image files + boxes + splits + instance maps, whatever
layout its authors published; `factory.data.adapters` reads the layouts) and its way
out: a YOLO tree (`yolo_files`, `write_yolo`) or a registry version (`publish_real`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from factory.core import Box
from factory.data.instances import instance_mask_path, template_path
from factory.formats import yolo_lines
from factory.viz import png_bytes


@dataclass
class RealSample:
    image_path: Path
    split: str
    width: int
    height: int
    boxes: list[Box] = field(default_factory=list)
    instances: bytes | None = None  # PNG instance map (k = 1 + box index), for sets with masks
    template: Path | None = None  # the image's aligned defect-free twin (golden template), where the set has one

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
        if s.template is not None:
            out[template_path(split, s.image_path.name)] = s.template.read_bytes()
    splits = sorted({split_names.get(s.split, s.split) for s in real.samples})
    data = {split: f"images/{split}" for split in splits}
    data |= {"nc": len(real.class_names), "names": list(real.class_names)}
    out["data.yaml"] = yaml.safe_dump(data, sort_keys=False).encode()
    info = {"name": real.name, "source": real.source, "settings": real.settings, "splits": real.splits(),
            "class_counts": real.class_counts(), "instance_masks": any(s.instances is not None for s in real.samples),
            "templates": any(s.template is not None for s in real.samples)}
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
    from collections import Counter

    from factory.storage.manifest import Counts, Manifest
    from factory.storage.registry import Registry, code_version

    reg = Registry(root)
    version = version or reg.next_version(name)
    files = yolo_files(real)
    info = json.loads(files["import.json"])
    images_per_class = Counter(n for s in real.samples for n in {b.class_name for b in s.boxes})
    manifest = Manifest(  # the schema every reader of a version uses (storage/manifest.py)
        kind="real",
        source=real.source,
        adapter=real.name,
        settings=real.settings,
        code_version=code_version(),
        classes=list(real.class_names),
        formats=["yolo"],
        counts=Counts(images=len(real.samples), splits=info["splits"], boxes_per_class=info["class_counts"],
                      images_per_class={n: images_per_class[n] for n in real.class_names},
                      negatives=sum(1 for s in real.samples if not s.boxes)),
    )
    extra = {f"yolo/{k}" if k != "import.json" else k: v for k, v in files.items()}
    return reg.publish(name, version, [], extra, manifest)
