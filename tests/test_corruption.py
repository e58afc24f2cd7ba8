"""A damaged version is named, never read as if whole: flipped bytes in a Parquet
part make `show`, `pull` and `read_pandas` name the part (and a failed pull
leaves nothing), a truncated manifest.json is named by `show`, and `datasets
list` marks the broken version and lists the rest (and leftover staging of a
published version)."""

from __future__ import annotations

import json

import pytest
from test_pull_safety import everything, png, relist, tiny_version
from typer.testing import CliRunner

from factory.cli import app
from factory.storage import StorageError, read_pandas
from factory.storage import uri as U


def invoke(*args: str):
    res = CliRunner().invoke(app, list(args))
    return res.exit_code, res.output.replace("\n", "")


@pytest.fixture
def flipped(tmp_path):
    """A version whose second Parquet part has 60 bytes flipped inside one row's PNG:
    still a readable Parquet file, with an undecodable image in it."""
    reg = tiny_version(str(tmp_path / "reg"))
    part = U.local_path(reg.version_uri("toy", 1)) / "parquet/part-00001.parquet"
    data = bytearray(part.read_bytes())
    at = data.find(png(2)) + 8
    data[at:at + 60] = bytes(b ^ 0xFF for b in data[at:at + 60])
    part.write_bytes(bytes(data))
    return reg, "parquet/part-00001.parquet"


def test_read_pandas_names_a_corrupt_part(flipped):
    reg, part = flipped
    with pytest.raises(StorageError, match=f"{part}: sha256 differs from the version's file list"):
        read_pandas(f"{reg.root}/toy@1")


def test_show_names_a_corrupt_part_unless_told_not_to_verify(flipped):
    reg, part = flipped
    code, out = invoke("show", f"{reg.root}/toy@1")
    assert code == 1 and f"{part}: sha256 differs" in out, out
    code, out = invoke("show", f"{reg.root}/toy@1", "--no-verify")
    assert code == 0 and "toy@1" in out, out


def test_a_failed_pull_leaves_nothing_in_to(flipped, tmp_path):
    reg, part = flipped
    before = everything(tmp_path)
    code, out = invoke("pull", f"{reg.root}/toy@1", "--format", "parquet", "--to", str(tmp_path / "p"))
    assert code == 1 and part in out, out
    assert everything(tmp_path) == before  # no part, no manifest, no --to


@pytest.fixture
def two(tmp_path):
    """Two datasets under one root: `good`, and `bad` with its manifest.json cut short."""
    root = str(tmp_path / "reg")
    tiny_version(root, "good", parts=1)
    reg = tiny_version(root, "bad", parts=1)
    manifest = U.local_path(reg.version_uri("bad", 1)) / "manifest.json"
    manifest.write_bytes(manifest.read_bytes()[:11])
    return reg, manifest


def test_show_names_a_truncated_manifest(two):
    reg, manifest = two
    code, out = invoke("show", f"{reg.root}/bad@1")
    assert code == 1 and f"{manifest}: not valid JSON" in out, out


def test_datasets_list_marks_the_broken_version_and_lists_the_rest(two):
    reg, manifest = two
    res = CliRunner().invoke(app, ["datasets", "list", reg.root])
    assert res.exit_code == 1, res.output
    table = {cells[0]: cells for cells in ([c.strip() for c in line.split("│")[1:-1]] for line in res.output.splitlines()
                                           if line.count("│") > 5)}
    assert table["good"][1:3] == ["1", "published"] and table["bad"][1:3] == ["1", "broken"], res.output
    assert f"{manifest}: not valid JSON" in res.output.replace("\n", "")


def test_a_forged_file_list_that_is_not_json_is_named(tmp_path):
    reg = tiny_version(str(tmp_path / "reg"), parts=1)
    base = reg.version_uri("toy", 1)
    relist(reg, "toy", U.read_bytes(U.join(base, "files.jsonl")) + b'{"path": "yolo/x", "sha\n')
    code, out = invoke("show", f"{reg.root}/toy@1")
    assert code == 1 and f"{base}/files.jsonl: not a file list" in out, out


def test_datasets_list_shows_leftover_staging_of_a_published_version(tmp_path):
    reg = tiny_version(str(tmp_path / "reg"), parts=1)
    U.write_bytes(U.join(reg.staging_uri("toy", 1), "_run.json"), json.dumps({"started_at": 0}).encode())
    res = CliRunner().invoke(app, ["datasets", "list", reg.root])
    assert res.exit_code == 0, res.output
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in res.output.splitlines() if line.count("│") > 5]
    assert [r[:3] for r in rows] == [["toy", "1", "published"], ["toy", "1", "leftover staging"]], res.output
    assert f"{reg.staging_uri('toy', 1)}" in res.output.replace("\n", "") and "unfinished" not in res.output


def test_open_dataset_names_a_corrupt_part_before_ray_reads_it(flipped, monkeypatch):
    """Ray Data reads the parts on its workers; the check runs first, on the driver."""
    from factory.storage import dataset

    reg, part = flipped
    monkeypatch.setattr("factory.ray_runtime.ensure_ray", lambda *a, **k: pytest.fail("Ray started for a damaged version"))
    with pytest.raises(StorageError, match=f"{part}: sha256 differs from the version's file list"):
        dataset.open_dataset(f"{reg.root}/toy@1")
