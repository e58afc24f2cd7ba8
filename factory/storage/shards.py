"""Shard writers: the "sink" role. A sink writes one shard of sample rows under a
prefix (the staging prefix of a run) and says which files it wrote, with their
sha256, so the registry can publish exactly those files and the manifest can list
their checksums. Two formats: Parquet (one file per shard, images as PNG bytes
beside their boxes and provenance) and a YOLO tree (one PNG and one label file
per sample, `data.yaml` written once at publish time).

A sample row is a plain dict (see `SAMPLE_SCHEMA` for the keys); rejected
samples use the same row plus `reasons` and `error`.
"""

from __future__ import annotations

import hashlib
import io
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, Sequence

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from factory.storage.uri import is_s3, join, write_bytes

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
    ]
)

REJECT_SCHEMA = SAMPLE_SCHEMA.append(pa.field("reasons", pa.list_(pa.string()))).append(pa.field("error", pa.string()))

FileEntry = dict[str, Any]  # {"path": relative path, "sha256": hex, "bytes": int}


def file_entry(path: str, data: bytes) -> FileEntry:
    return {"path": path, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


class ShardSink(Protocol):
    """Writes one shard of rows under `prefix`; returns the files written (paths relative to prefix)."""

    format: str

    def write(self, prefix: str, shard: str, rows: Sequence[dict[str, Any]]) -> list[FileEntry]: ...


def rows_to_table(rows: Sequence[dict[str, Any]], schema: pa.Schema = SAMPLE_SCHEMA) -> pa.Table:
    cols = {}
    for f in schema:
        values = [r.get(f.name) for r in rows]
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


class ParquetSink:
    """`<subdir>/<shard>.parquet`: one file per shard, rows in the given schema."""

    format = "parquet"

    def __init__(self, subdir: str = "parquet", schema: pa.Schema = SAMPLE_SCHEMA):
        self.subdir = subdir
        self.schema = schema

    def write(self, prefix: str, shard: str, rows: Sequence[dict[str, Any]]) -> list[FileEntry]:
        if not rows:
            return []
        data = table_bytes(rows_to_table(rows, self.schema))
        path = f"{self.subdir}/{shard}.parquet"
        write_bytes(join(prefix, path), data)
        return [file_entry(path, data)]


class YoloSink:
    """`yolo/images/<split>/<id>.png` + `yolo/labels/<split>/<id>.txt` (class cx cy w h,
    normalized; an empty file for a defect-free image, which YOLO reads as background)."""

    format = "yolo"

    def write(self, prefix: str, shard: str, rows: Sequence[dict[str, Any]]) -> list[FileEntry]:
        files: list[tuple[str, bytes]] = []
        for r in rows:
            split, sid = r["split"], r["sample_id"]
            files.append((f"yolo/images/{split}/{sid}.png", r["image"]))
            files.append((f"yolo/labels/{split}/{sid}.txt", yolo_label(r["boxes"], r["width"], r["height"]).encode()))
        # one small object per file: on S3 each is a request, so overlap them
        with ThreadPoolExecutor(max_workers=8 if is_s3(prefix) else 1) as pool:
            list(pool.map(lambda f: write_bytes(join(prefix, f[0]), f[1]), files))
        return [file_entry(path, data) for path, data in files]


def yolo_label(boxes: Sequence[dict[str, Any]], width: int, height: int) -> str:
    lines = []
    for b in boxes:
        cx = (b["x1"] + b["x2"]) / 2 / width
        cy = (b["y1"] + b["y2"]) / 2 / height
        w = (b["x2"] - b["x1"]) / width
        h = (b["y2"] - b["y1"]) / height
        lines.append(f"{b['class_id']} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}")
    return "\n".join(lines) + ("\n" if lines else "")


def yolo_data_yaml(class_names: Sequence[str], splits: Sequence[str]) -> bytes:
    """data.yaml with no `path`: ultralytics then resolves the splits next to the
    file itself, so the tree works wherever it is pulled to."""
    data: dict[str, Any] = {s: f"images/{s}" for s in splits}
    data["names"] = {i: n for i, n in enumerate(class_names)}
    return yaml.safe_dump(data, sort_keys=False).encode()


def sinks_for(formats: Sequence[str]) -> list[ShardSink]:
    """The sinks for a spec's `output.formats` (accepted samples)."""
    known = {"parquet": ParquetSink, "yolo": YoloSink}
    return [known[f]() for f in formats]
