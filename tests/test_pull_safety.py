"""`factory pull` writes only inside `--to`, and all or nothing: a version whose
file list names a path that leaves its format folder (`yolo/../../../x`,
`yolo//abs/path`, `/abs`) or that holds a symlink is refused whole, naming the
entry, and nothing is written anywhere (on disk and on S3: moto's server on
127.0.0.1). The versions are tiny real ones (Parquet + YOLO, no Ray), forged
afterwards the way an attacker would: files.jsonl edited and the manifest's list
hash updated to match."""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image
from s3_server import s3_bucket, s3_server  # noqa: F401
from typer.testing import CliRunner

from factory.cli import app
from factory.storage import Registry
from factory.storage import uri as U
from factory.storage.shards import ParquetSink, YoloSink


def png(i: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(i).integers(0, 255, (8, 8), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def row(i: int) -> dict:
    return {"sample_id": f"s-{i:03d}", "image": png(i), "width": 8, "height": 8,
            "boxes": [{"class_id": 0, "class_name": "crack", "x1": 1, "y1": 1, "x2": 5, "y2": 5}],
            "generator": "procedural", "checkpoint": "", "seed": i, "item_id": f"s-{i:03d}", "item_index": i,
            "spec_hash": "h", "scores": {}, "split": "train", "work_item": "{}", "provenance": "{}"}


def tiny_version(root: str, name: str = "toy", parts: int = 2, rows: int = 2) -> Registry:
    """Publish `name@1`: `parts` Parquet parts and a YOLO tree of `parts * rows` 8x8 images."""
    reg = Registry(root)
    st = reg.staging_uri(name, 1)
    moves = []
    for k in range(parts):
        batch = [row(k * rows + i) for i in range(rows)]
        moves += [(e["path"], {**e, "path": f"parquet/part-{k:05d}.parquet"}) for e in ParquetSink().write(st, f"s{k}", batch)]
        moves += [(e["path"], e) for e in YoloSink().write(st, f"s{k}", batch)]
    n = parts * rows
    manifest = {"classes": ["crack"], "formats": ["parquet", "yolo"], "spec_hash": "0" * 64, "gate": ["sanity"],
                "code_version": "test", "counts": {"accepted": n, "rejected": 0, "surplus": 0, "negatives": 0,
                                                   "images_per_class": {"crack": n}, "boxes_per_class": {"crack": n}}}
    reg.publish(name, 1, moves, {"yolo/data.yaml": b"path: .\ntrain: images/train\nval: images/train\nnames: [crack]\n"},
                manifest)
    return reg


def forge(reg: Registry, name: str, entries: dict[str, bytes]) -> None:
    """List `entries` (path -> the bytes it should hash to) in the version's files.jsonl,
    replacing or adding lines, and update the manifest's list hash so the check passes."""
    base = reg.version_uri(name, 1)
    lines = [json.loads(x) for x in U.read_bytes(U.join(base, "files.jsonl")).splitlines() if x.strip()]
    lines = [e for e in lines if e["path"] not in entries]
    lines += [{"path": p, "sha256": hashlib.sha256(d).hexdigest(), "bytes": len(d)} for p, d in entries.items()]
    relist(reg, name, b"".join(json.dumps(e).encode() + b"\n" for e in lines))


def relist(reg: Registry, name: str, listing: bytes) -> None:
    """Replace the version's files.jsonl with `listing`, and the manifest's list hash to match."""
    base = reg.version_uri(name, 1)
    U.write_bytes(U.join(base, "files.jsonl"), listing)
    m = json.loads(U.read_bytes(U.join(base, "manifest.json")))
    m["file_list"].update(sha256=hashlib.sha256(listing).hexdigest(), bytes=len(listing))
    U.write_bytes(U.join(base, "manifest.json"), json.dumps(m).encode())


def everything(folder: Path) -> set[str]:
    """Every file, folder and link under `folder` (links not followed)."""
    out = set()
    for d, dirs, files in os.walk(folder):
        out |= {os.path.relpath(os.path.join(d, x), folder) for x in dirs + files}
    return out


def pull(ref: str, to: Path, fmt: str = "yolo"):
    return CliRunner().invoke(app, ["pull", ref, "--format", fmt, "--to", str(to)])


def local_attacks(tmp: Path) -> list[tuple[str, dict[str, bytes], Callable[[str], None]]]:
    """(the entry pull must name, the forged file list entries, how to plant the bytes)
    for each crafted version on disk. Every target the old code wrote lies under
    `tmp`, so counting new files under it counts them all."""
    abs_target = str(tmp / "abs" / "x")

    def plant(path: str):
        return lambda base: U.write_bytes(U.join(base, path), b"evil")

    def link_file(base: str) -> None:
        (tmp / "secret").write_bytes(b"secret")
        f = U.local_path(base) / "yolo/images/train/s-000.png"
        f.unlink()
        f.symlink_to(tmp / "secret")

    def link_dir(base: str) -> None:  # the same labels behind a link: no hash changes at all
        labels = U.local_path(base) / "yolo/labels"
        labels.rename(tmp / "labels-elsewhere")
        labels.symlink_to(tmp / "labels-elsewhere")

    return [
        ("yolo/../../../x", {"yolo/../../../x": b"evil"}, plant("yolo/../../../x")),
        ("yolo/" + abs_target, {"yolo/" + abs_target: b"evil"}, plant("yolo/" + abs_target)),
        (abs_target, {abs_target: b"evil"}, plant(abs_target)),
        ("yolo/images/train/s-000.png", {"yolo/images/train/s-000.png": b"secret"}, link_file),
        ("yolo/labels", {}, link_dir),
    ]


def attack(tmp: Path, case: int):
    """Pull crafted version `case` into a fresh --to under `tmp`: (entry, result, new
    paths under `tmp` outside --to, --to left behind, every new path)."""
    entry, entries, plant = local_attacks(tmp)[case]
    reg = tiny_version(str(tmp / "reg"))
    plant(reg.version_uri("toy", 1))
    forge(reg, "toy", entries)
    to = tmp / "out" / "a" / "b" / "to"  # deep enough that ../../../x stays under tmp
    to.parent.mkdir(parents=True)
    before = everything(tmp)
    res = pull(f"{reg.root}/toy@1", to)
    new = everything(tmp) - before
    return entry, res, [p for p in new if not (tmp / p).is_relative_to(to)], to.exists(), new


@pytest.mark.parametrize("case", range(5), ids=["dotdot", "double-slash", "absolute", "file-link", "folder-link"])
def test_pull_refuses_a_crafted_version_and_writes_nothing(tmp_path, case):
    entry, res, _, _, new = attack(tmp_path, case)
    assert res.exit_code == 1, res.output
    assert entry in res.output.replace("\n", "") and "Traceback" not in res.output
    assert not new  # nothing outside --to, nothing inside (no --to at all), no staging folder beside it


def test_probe_counts_no_file_written_outside_to(tmp_path):
    """The probe: over every crafted version, the files written outside --to (goal 0),
    and the --to folders left behind (goal 0: a refused pull leaves nothing)."""
    outside = left = 0
    for case in range(len(local_attacks(tmp_path))):
        (tmp_path / str(case)).mkdir()
        _, _, written, to_exists, _ = attack(tmp_path / str(case), case)
        outside, left = outside + len(written), left + to_exists
    assert (outside, left) == (0, 0)


@pytest.mark.s3
@pytest.mark.parametrize("entry", ["yolo/../../../x", "yolo//{tmp}/abs/x", "/abs/x"])
def test_pull_refuses_traversal_on_s3(s3_bucket, tmp_path, entry):
    entry = entry.format(tmp=str(tmp_path).strip("/"))
    root = f"s3://{s3_bucket}/reg"
    reg = tiny_version(root)
    U.write_bytes(U.join(reg.version_uri("toy", 1), entry), b"evil")  # the key, literally
    forge(reg, "toy", {entry: b"evil"})
    to = tmp_path / "out" / "a" / "b" / "to"
    to.parent.mkdir(parents=True)
    before = everything(tmp_path)
    res = pull(f"{reg.root}/toy@1", to)
    assert res.exit_code == 1, res.output
    assert entry in res.output.replace("\n", "")
    assert everything(tmp_path) == before and not to.exists()


def test_a_failed_pull_removes_the_folders_it_made(tmp_path):
    reg = tiny_version(str(tmp_path / "reg"))
    forge(reg, "toy", {"yolo/../x": b"evil"})
    before = everything(tmp_path)
    res = pull(f"{reg.root}/toy@1", tmp_path / "new" / "deep" / "to")
    assert res.exit_code == 1 and everything(tmp_path) == before


def test_a_manifest_pointing_its_file_list_outside_is_refused(tmp_path):
    reg = tiny_version(str(tmp_path / "reg"), parts=1)
    base = reg.version_uri("toy", 1)
    U.write_bytes(U.join(base, "../../files.jsonl"), U.read_bytes(U.join(base, "files.jsonl")))  # a copy, outside
    m = json.loads(U.read_bytes(U.join(base, "manifest.json")))
    m["file_list"]["path"] = "../../files.jsonl"
    U.write_bytes(U.join(base, "manifest.json"), json.dumps(m).encode())
    before = everything(tmp_path)
    res = pull(f"{reg.root}/toy@1", tmp_path / "to")
    assert res.exit_code == 1 and "file_list.path '../../files.jsonl'" in res.output.replace("\n", ""), res.output
    assert everything(tmp_path) == before


def test_pull_writes_every_file_of_the_format_and_the_manifest(tmp_path):
    reg = tiny_version(str(tmp_path / "reg"), parts=1)
    to = tmp_path / "to"
    to.mkdir()  # an empty folder is as good as none
    res = pull(f"{reg.root}/toy@1", to)
    assert res.exit_code == 0, res.output
    assert sorted(everything(to)) == sorted(
        ["data.yaml", "images", "images/train", "labels", "labels/train", "manifest.json"]
        + [f"{d}/train/s-00{i}.{ext}" for d, ext in (("images", "png"), ("labels", "txt")) for i in range(2)])
    assert (to / "images/train/s-001.png").read_bytes() == png(1)
    assert not [p for p in everything(tmp_path) if ".pull" in p]  # no staging folder left beside --to
    res = pull(f"{reg.root}/toy@1", to, fmt="parquet")  # into a folder that has files: they stay
    assert res.exit_code == 0 and "(parquet, 1 file, checksums ok)" in res.output
    assert (to / "part-00000.parquet").is_file() and (to / "data.yaml").is_file()


def test_pull_never_writes_through_a_link_in_to(tmp_path):
    reg = tiny_version(str(tmp_path / "reg"), parts=1)
    to = tmp_path / "to"
    (to / "images").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (to / "images" / "train").symlink_to(tmp_path / "elsewhere")
    res = pull(f"{reg.root}/toy@1", to)
    assert res.exit_code == 1 and "images/train" in res.output.replace("\n", "")
    assert not list((tmp_path / "elsewhere").iterdir()) and everything(to) == {"images", "images/train"}


def test_pull_of_a_missing_format_says_how_to_get_it(tmp_path):
    reg = tiny_version(str(tmp_path / "reg"), parts=1)
    res = pull(f"{reg.root}/toy@1", tmp_path / "c", fmt="coco")
    assert res.exit_code == 1
    assert "no coco files (formats: parquet, yolo)" in res.output and "add coco to the spec's output.formats" in res.output
    assert not (tmp_path / "c").exists()


def test_datasets_list_takes_the_root_either_way(tmp_path):
    reg = tiny_version(str(tmp_path / "reg"), parts=1)
    for args in ([reg.root], ["--root", reg.root]):
        res = CliRunner().invoke(app, ["datasets", "list", *args])
        assert res.exit_code == 0 and "toy" in res.output, res.output
    res = CliRunner().invoke(app, ["datasets", "list", reg.root, "--root", str(tmp_path)])
    assert res.exit_code == 2 and "give the root once" in res.output
