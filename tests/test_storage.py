"""Storage without Ray: registry publish/immutability, sinks, refs, and the errors
a missing bucket, bad credentials or an unreachable endpoint give (real HTTP to
moto's server on 127.0.0.1)."""

from __future__ import annotations

import hashlib
import json

import pyarrow.parquet as pq
import pytest
from s3_server import s3_bucket, s3_server, start_moto, stop_moto  # noqa: F401

from factory.core import Box
from factory.formats import yolo_text
from factory.storage import DatasetRef, PublishedError, Registry, StorageError, configure_storage, read_table
from factory.storage import uri as U
from factory.storage.shards import ParquetSink, YoloSink


def _row(i: int, boxes=None) -> dict:
    return {
        "sample_id": f"s-{i:03d}", "image": f"png{i}".encode(), "width": 100, "height": 50,
        "boxes": boxes if boxes is not None else [{"class_id": 1, "class_name": "b", "x1": 10, "y1": 5, "x2": 30, "y2": 25}],
        "generator": "procedural", "checkpoint": "", "seed": i, "item_id": f"s-{i:03d}", "item_index": i,
        "spec_hash": "h", "scores": {"image_std": 1.5}, "split": "train", "work_item": "{}",
    }


def _stage_and_publish(root: str, version: int = 1) -> Registry:
    reg = Registry(root)
    st = reg.staging_uri("toy", version)
    rows = [_row(i) for i in range(3)]
    entries = ParquetSink().write(st, "s0", rows) + YoloSink().write(st, "s0", rows)
    moves = [(e["path"], {**e, "path": e["path"].replace("s0", "part-00000")}) for e in entries]
    reg.publish("toy", version, moves, {"extra.txt": b"x"}, {"count": 3})
    return reg


def _check_published(reg: Registry, version: int = 1) -> None:
    m = reg.manifest("toy", version)
    base = reg.version_uri("toy", version)
    assert set(m["files"]) == set(U.list_files(base)) - {"manifest.json", "files.jsonl"}
    for path, f in m["files"].items():
        assert hashlib.sha256(U.read_bytes(U.join(base, path))).hexdigest() == f["sha256"]
    assert not U.list_files(reg.staging_uri("toy", version))  # staging is gone
    t = read_table(f"{reg.root}/toy@{version}")
    assert t.column("sample_id").to_pylist() == ["s-000", "s-001", "s-002"]
    assert t.column("boxes").to_pylist()[0][0]["x2"] == 30


def test_publish_file_is_immutable(tmp_path):
    reg = _stage_and_publish(str(tmp_path))
    _check_published(reg)
    assert reg.versions("toy") == [1] and reg.names() == ["toy"] and reg.next_version("toy") == 2
    with pytest.raises(PublishedError, match="toy@1 is already published"):
        reg.publish("toy", 1, [], {}, {})
    with pytest.raises(PublishedError, match=str(tmp_path)):
        reg.refuse_published("toy", 1)


def test_publish_s3(s3_bucket):
    reg = _stage_and_publish(f"s3://{s3_bucket}/reg")
    _check_published(reg)
    assert reg.versions("toy") == [1]
    with pytest.raises(PublishedError):
        _stage_and_publish(f"s3://{s3_bucket}/reg")


def test_unpublished_version_is_invisible(tmp_path):
    reg = Registry(str(tmp_path))
    ParquetSink().write(reg.version_uri("toy", 1), "part-00000", [_row(0)])  # files, but no manifest
    assert reg.versions("toy") == []
    with pytest.raises(StorageError, match="not published"):
        read_table(f"{tmp_path}/toy@1")


def test_refs():
    r = DatasetRef.parse("s3://bkt/data/demo-pv-el@3")
    assert (r.root, r.name, r.version) == ("s3://bkt/data", "demo-pv-el", 3)
    assert DatasetRef.parse("demo@latest", default_root="s3://b").version is None
    assert DatasetRef.parse("file:///x/demo@v2").root == "file:///x"
    with pytest.raises(ValueError, match="NAME@VERSION"):
        DatasetRef.parse("s3://b/Bad_Name@1")
    with pytest.raises(ValueError, match="no root"):
        DatasetRef.parse("demo@1")


def test_yolo_label_and_rejected_schema(tmp_path):
    assert yolo_text([Box(2, "c", 0, 0, 50, 25)], 100, 50) == "2 0.250000 0.250000 0.500000 0.500000\n"
    assert yolo_text([], 100, 50) == ""  # a defect-free image: empty label file
    from factory.storage.shards import REJECT_SCHEMA

    entry = ParquetSink("rejected", REJECT_SCHEMA).write(str(tmp_path), "s0", [{**_row(0), "image": None, "reasons": ["blank: x"], "error": ""}])
    t = pq.read_table(tmp_path / entry[0]["path"])
    assert t.column("reasons").to_pylist() == [["blank: x"]] and t.column("image").to_pylist() == [None]


# --- errors name the URI ------------------------------------------------------
def test_missing_bucket_names_uri(s3_server):
    uri = "s3://no-such-bucket-here/datasets"
    with pytest.raises(StorageError, match=r"s3://no-such-bucket-here/datasets: bucket 'no-such-bucket-here' does not exist"):
        U.check_root(uri)
    with pytest.raises(StorageError, match="s3://no-such-bucket-here/x.json"):
        U.read_bytes("s3://no-such-bucket-here/x.json")


def test_unreachable_endpoint_names_uri(s3_server):
    from s3_server import free_port

    configure_storage(endpoint_url=f"http://127.0.0.1:{free_port()}", retry_seconds=0.5)  # (keeps trying for half a second)
    try:
        with pytest.raises(StorageError, match=r"s3://bkt/root: cannot reach the S3 endpoint http://127\.0\.0\.1:\d+"):
            U.check_root("s3://bkt/root")
    finally:
        configure_storage(endpoint_url=s3_server)


def test_bad_credentials_name_uri(monkeypatch, s3_server):
    # a second server that checks credentials (moto's IAM auth on from the first request)
    proc, url = start_moto({"INITIAL_NO_AUTH_ACTION_COUNT": "0"})
    try:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG1")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
        configure_storage(endpoint_url=url)
        with pytest.raises(StorageError, match=r"s3://bkt/root: .*(bad credentials|access denied)"):
            U.check_root("s3://bkt/root")
        with pytest.raises(StorageError, match=r"s3://bkt/root/a.txt: .*(bad credentials|access denied)"):
            U.write_bytes("s3://bkt/root/a.txt", b"x")
    finally:
        configure_storage(endpoint_url=s3_server)
        stop_moto(proc)


def test_cli_run_missing_bucket(s3_server, demo_spec_path):
    """`factory run --out s3://missing` fails before any work, with one line naming the URI."""
    from typer.testing import CliRunner

    from factory.cli import app

    res = CliRunner().invoke(app, ["run", str(demo_spec_path), "--out", "s3://missing-bucket-x/ds"])
    assert res.exit_code == 1
    assert "s3://missing-bucket-x/ds: bucket 'missing-bucket-x' does not exist" in res.output.replace("\n", "")


def test_datasets_list_and_show(tmp_path):
    from typer.testing import CliRunner

    from factory.cli import app

    reg = _stage_and_publish(str(tmp_path))
    m = reg.manifest("toy", 1).to_dict()
    m.update(name="toy", classes=["a", "b"], spec_hash="0" * 64, code_version="t", formats=["parquet"], gate=["x"],
             counts={"accepted": 3, "rejected": 0, "surplus": 0, "negatives": 0,
                     "images_per_class": {"a": 0, "b": 3}, "boxes_per_class": {"a": 0, "b": 3}},
             reject_reasons={})
    # rewrite the manifest as a full one (the toy publish above wrote a minimal one)
    U.write_bytes(U.join(reg.version_uri("toy", 1), "manifest.json"), json.dumps(m).encode())
    res = CliRunner().invoke(app, ["datasets", "list", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "toy" in res.output and "a, b" in res.output
    res = CliRunner().invoke(app, ["show", f"{tmp_path}/toy@1"])
    assert res.exit_code == 0, res.output
    assert "published" in res.output and "toy@1" in res.output
