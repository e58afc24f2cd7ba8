"""Shard writers: the "sink" role, one class per output format. A sink

- `write`s one shard of sample rows under a prefix (a run's staging prefix) and
  says which files it wrote, with their sha256 (a per-sample file's entry names
  its `sample`), so publish can move exactly those files and list checksums;
- `publish_shard`: puts a written shard into the version being published (all of
  it, or only the samples in `keep` for the last, cut shard);
- `finalize`s the version with its own layout files (YOLO `data.yaml`, COCO
  annotation JSON), so publish knows nothing about any format.

Formats: Parquet (one file per shard, images as PNG bytes beside their boxes and
provenance), a YOLO tree, and COCO (images + one `instances_<split>.json` per
split). `SINKS` is the one list of them.

A sample row is a `SampleRow` (the columns of `SAMPLE_SCHEMA`); rejected
samples use the same row plus `reasons` and `error`.
"""

from __future__ import annotations

import hashlib
import io
import json
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NotRequired, Protocol, Sequence, TypedDict

import pyarrow as pa
import pyarrow.parquet as pq

from factory.core import Box, BoxRow
from factory.formats import yolo_data_yaml, yolo_seg_text, yolo_text
from factory.storage.uri import join, read_bytes, workers, write_bytes

BOX_TYPE = pa.struct(
    [
        ("class_id", pa.int32()),
        ("class_name", pa.string()),
        ("x1", pa.int32()),
        ("y1", pa.int32()),
        ("x2", pa.int32()),
        ("y2", pa.int32()),
    ]
)

SAMPLE_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("image", pa.binary()),  # PNG bytes
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("boxes", pa.list_(BOX_TYPE)),
        ("generator", pa.string()),
        ("checkpoint", pa.string()),
        ("seed", pa.int64()),
        ("item_id", pa.string()),
        ("item_index", pa.int64()),
        ("spec_hash", pa.string()),
        ("scores", pa.map_(pa.string(), pa.float64())),
        ("split", pa.string()),
        ("work_item", pa.string()),  # the full WorkItem as JSON: everything needed to remake the sample
        ("provenance", pa.string()),  # JSON: what the generator used (references, instances, placements); {} when it says nothing
    ]
)

REJECT_SCHEMA = SAMPLE_SCHEMA.append(pa.field("reasons", pa.list_(pa.string()))).append(pa.field("error", pa.string()))


class SampleRow(TypedDict):
    """One sample as the sinks take it: `SAMPLE_SCHEMA`'s columns, its boxes' outlines
    (`segments`, for the segmentation formats) and, for a rejected one, why."""

    sample_id: str
    image: bytes | None  # PNG; None when the generator failed
    width: int
    height: int
    boxes: list[BoxRow]  # BOX_TYPE's fields (Box.to_dict)
    generator: str
    checkpoint: str
    seed: int
    item_id: str
    item_index: int
    spec_hash: str
    scores: dict[str, float]
    split: str
    work_item: str
    provenance: str
    segments: NotRequired[list[list[list[float]]] | None]  # per box: its polygons
    reasons: NotRequired[list[str]]
    error: NotRequired[str | None]


class FileEntry(TypedDict):
    """A written file: its path (relative to the staging prefix or the version), its
    sha256 and size; a per-sample file also names its `sample`."""

    path: str
    sha256: str
    bytes: int
    sample: NotRequired[str]


def file_entry(path: str, data: bytes) -> FileEntry:
    return {"path": path, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def rows_to_table(rows: Sequence[SampleRow], schema: pa.Schema = SAMPLE_SCHEMA) -> pa.Table:
    cols = {}
    for f in schema:
        values: list[Any] = [r.get(f.name) for r in rows]
        if pa.types.is_map(f.type):
            values = [None if v is None else list(v.items()) for v in values]
        cols[f.name] = pa.array(values, type=f.type)
    return pa.table(cols, schema=schema)


def table_bytes(table: pa.Table) -> bytes:
    """Parquet bytes of a table; the PNG column is stored uncompressed (it is compressed already)."""
    buf = io.BytesIO()
    compression = {name: ("NONE" if name == "image" else "ZSTD") for name in table.column_names}
    pq.write_table(table, buf, compression=compression, row_group_size=max(1, table.num_rows))
    return buf.getvalue()


class Output(Protocol):
    """Where a sink puts files of the version being published (storage.publish.Publication)."""

    def move(self, moves: Sequence[tuple[str, FileEntry]]) -> None: ...
    def put(self, path: str, data: bytes) -> None: ...
    def put_file(self, path: str, local: str | Path) -> None: ...


class Sink:
    """The base: per-sample files (entries with a `sample`) are published as they were
    staged, only the kept ones for a cut shard; `finalize` writes nothing."""

    format = ""

    def write(self, prefix: str, shard: str, rows: Sequence[SampleRow]) -> list[FileEntry]:
        raise NotImplementedError

    def publish_shard(self, out: Output, staging: str, files: Sequence[FileEntry], keep: set[str] | None,
                      part: int) -> None:
        out.move([(f["path"], f) for f in files if "sample" in f and (keep is None or f["sample"] in keep)])

    def finalize(self, out: Output, class_names: Sequence[str], splits: Counter[str]) -> None:
        """Write the version's layout files once every shard is in."""

    def _write_files(self, prefix: str, files: list[tuple[str, str, bytes]]) -> list[FileEntry]:
        """(sample id, path, bytes) -> written; on S3 each is a request, so overlap them."""
        with ThreadPoolExecutor(max_workers=workers(prefix, 8)) as pool:
            list(pool.map(lambda f: write_bytes(join(prefix, f[1]), f[2]), files))
        return [{**file_entry(path, data), "sample": sid} for sid, path, data in files]


class ParquetSink(Sink):
    """`<subdir>/<shard>.parquet`: one file per shard, rows in the given schema;
    published as `<subdir>/part-<n>.parquet`."""

    format = "parquet"

    def __init__(self, subdir: str = "parquet", schema: pa.Schema = SAMPLE_SCHEMA):
        self.subdir = subdir
        self.schema = schema

    def write(self, prefix: str, shard: str, rows: Sequence[SampleRow]) -> list[FileEntry]:
        if not rows:
            return []
        data = table_bytes(rows_to_table(rows, self.schema))
        path = f"{self.subdir}/{shard}.parquet"
        write_bytes(join(prefix, path), data)
        return [file_entry(path, data)]

    def publish_shard(self, out: Output, staging: str, files: Sequence[FileEntry], keep: set[str] | None,
                      part: int) -> None:
        dst = f"{self.subdir}/part-{part:05d}.parquet"
        for f in files:
            if keep is None:
                out.move([(f["path"], {**f, "path": dst})])
                continue
            table = pq.read_table(io.BytesIO(read_bytes(join(staging, f["path"]))))
            rows = [r for r in table.to_pylist() if r["sample_id"] in keep]
            for r in rows:
                r["scores"] = dict(r["scores"] or [])
            out.put(dst, table_bytes(rows_to_table(rows, self.schema)))


class YoloSink(Sink):
    """`yolo/images/<split>/<id>.png` + `yolo/labels/<split>/<id>.txt` (class cx cy w h,
    normalized; an empty file for a defect-free image, which YOLO reads as
    background), and `yolo/data.yaml` at publish."""

    format = "yolo"

    def label(self, r: SampleRow) -> str:
        return yolo_text([Box.from_dict(b) for b in r["boxes"]], r["width"], r["height"])

    def write(self, prefix: str, shard: str, rows: Sequence[SampleRow]) -> list[FileEntry]:
        files: list[tuple[str, str, bytes]] = []
        for r in rows:
            split, sid = r["split"], r["sample_id"]
            files.append((sid, f"{self.format}/images/{split}/{sid}.png", _png(r)))
            files.append((sid, f"{self.format}/labels/{split}/{sid}.txt", self.label(r).encode()))
        return self._write_files(prefix, files)

    def publish_shard(self, out: Output, staging: str, files: Sequence[FileEntry], keep: set[str] | None,
                      part: int) -> None:
        # records written before entries named their sample: the id is the file's stem
        super().publish_shard(out, staging, [f if "sample" in f else {**f, "sample": f["path"].rsplit("/", 1)[-1][:-4]}
                                             for f in files], keep, part)

    def finalize(self, out: Output, class_names: Sequence[str], splits: Counter[str]) -> None:
        data_yaml = yolo_data_yaml(class_names, ["train", "val"] if splits["val"] else ["train"])
        if not splits["val"]:  # ultralytics needs a val split: point it at train, and say so
            data_yaml += b"val: images/train  # no sample fell in the val split\n"
        out.put(f"{self.format}/data.yaml", data_yaml)


class YoloSegSink(YoloSink):
    """The same tree under `yolo_seg/` with segmentation labels: `class x1 y1 x2 y2 ...`
    (normalized) per box, its outline from the generator's exact mask (the box's
    rectangle where it has none); ultralytics' segmentation models and copy-paste
    augmentation read it as is."""

    format = "yolo_seg"

    def label(self, r: SampleRow) -> str:
        boxes = [Box.from_dict(b) for b in r["boxes"]]
        return yolo_seg_text(boxes, r.get("segments") or [[] for _ in boxes], r["width"], r["height"])


class CocoSink(Sink):
    """COCO detection JSON: `coco/images/<split>/<id>.png` and, at publish,
    `coco/annotations/instances_<split>.json` (file_name relative to
    `coco/images/`, image id = plan index, bbox = [x, y, w, h] in pixels,
    category id = class id + 1). Each shard's annotations wait in staging as
    `coco/_parts/<shard>.json` until `finalize` joins the published ones in plan
    order, streamed through local files (memory flat in the number of images)."""

    format = "coco"

    def __init__(self) -> None:
        self._parts: list[tuple[str, set[str] | None]] = []  # staged part, kept samples (None: all)

    def write(self, prefix: str, shard: str, rows: Sequence[SampleRow]) -> list[FileEntry]:
        if not rows:
            return []
        files = [(r["sample_id"], f"coco/images/{r['split']}/{r['sample_id']}.png", _png(r)) for r in rows]
        part = [{"sample": r["sample_id"], "index": r["item_index"], "split": r["split"], "width": r["width"],
                 "height": r["height"], "boxes": [[b["class_id"], b["x1"], b["y1"], b["x2"], b["y2"]] for b in r["boxes"]],
                 **({"segments": r["segments"]} if r.get("segments") is not None else {})}
                for r in rows]
        data = json.dumps(part).encode()
        write_bytes(join(prefix, f"coco/_parts/{shard}.json"), data)
        return self._write_files(prefix, files) + [file_entry(f"coco/_parts/{shard}.json", data)]

    def publish_shard(self, out: Output, staging: str, files: Sequence[FileEntry], keep: set[str] | None,
                      part: int) -> None:
        super().publish_shard(out, staging, files, keep, part)
        self._parts += [(join(staging, f["path"]), keep) for f in files if f["path"].startswith("coco/_parts/")]

    def finalize(self, out: Output, class_names: Sequence[str], splits: Counter[str]) -> None:
        import shutil

        with tempfile.TemporaryDirectory(prefix="coco-") as tmp:
            spools: dict[str, _Spool] = {}  # split -> its images and annotations so far
            ann_id = 0
            for where, keep in self._parts:
                for s in json.loads(read_bytes(where)):
                    if keep is not None and s["sample"] not in keep:
                        continue
                    if s["split"] not in spools:
                        stem = Path(tmp) / s["split"]
                        spools[s["split"]] = _Spool(open(f"{stem}.img", "w+"), open(f"{stem}.ann", "w+"))
                    sp = spools[s["split"]]
                    sp.images.write((",\n" if sp.n_images else "") + json.dumps(
                        {"id": s["index"], "file_name": f"{s['split']}/{s['sample']}.png", "width": s["width"],
                         "height": s["height"]}))
                    sp.n_images += 1
                    for j, (cid, x1, y1, x2, y2) in enumerate(s["boxes"]):
                        ann_id += 1
                        ann = {"id": ann_id, "image_id": s["index"], "category_id": cid + 1,
                               "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0}
                        if "segments" in s:  # the exact outline: COCO polygons (several for a split instance)
                            ann["segmentation"] = s["segments"][j]
                        sp.anns.write((",\n" if sp.n_anns else "") + json.dumps(ann))
                        sp.n_anns += 1
            categories = json.dumps([{"id": i + 1, "name": n} for i, n in enumerate(class_names)])
            for split in sorted(spools):
                images, anns = spools[split].images, spools[split].anns
                dest = Path(tmp) / f"instances_{split}.json"
                with open(dest, "w") as f:
                    f.write('{"info": {"description": "defect-factory"}, "categories": ' + categories + ',\n"images": [\n')
                    images.seek(0)
                    shutil.copyfileobj(images, f)
                    f.write('\n],\n"annotations": [\n')
                    anns.seek(0)
                    shutil.copyfileobj(anns, f)
                    f.write("\n]}\n")
                images.close()
                anns.close()
                out.put_file(f"coco/annotations/instances_{split}.json", dest)


def _png(r: SampleRow) -> bytes:
    """An accepted sample's image (only a rejected one has none)."""
    if r["image"] is None:
        raise ValueError(f"sample {r['sample_id']}: no image to write (a rejected sample?)")
    return r["image"]


@dataclass
class _Spool:
    """One split's COCO images and annotations, spooled to local files as JSON lists' items."""

    images: IO[str]
    anns: IO[str]
    n_images: int = 0
    n_anns: int = 0


SINKS: dict[str, type[Sink]] = {"parquet": ParquetSink, "yolo": YoloSink, "yolo_seg": YoloSegSink, "coco": CocoSink}


def sinks_for(formats: Sequence[str]) -> list[Sink]:
    """The sinks for a spec's `output.formats` (accepted samples)."""
    unknown = [f for f in formats if f not in SINKS]
    if unknown:
        raise ValueError(f"output.formats: unknown format {unknown[0]!r} (known: {', '.join(SINKS)})")
    return [SINKS[f]() for f in formats]
