"""Publish as a resumable state machine, atomic locks and commits, runs that fail
before their first shard, versions without a pinned number, the COCO sink and
the post-publish callback.

The pipeline tests here run the real shard writer (`GenerateStage`: plan,
generate, score, PNG, sinks) in this process instead of on Ray actors
(`job.run_round` replaced), so they take seconds; tests/test_pipeline.py runs
the same job through Ray."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from s3_server import s3_bucket, s3_server  # noqa: F401
from test_pipeline import REPO, check_version, tiny_spec

from factory.core import GeneratorRef
from factory.pipeline import RunError, RunOptions, graph, job, run_dataset
from factory.pipeline.stages import GenerateStage, ShardTarget
from factory.spec import load_spec
from factory.storage import PublishedError, Registry
from factory.storage import uri as U
from factory.storage.publish import read_file_list


class Crash(BaseException):
    """A simulated kill -9 at a chosen point (BaseException: nothing catches it)."""


def in_process_round(spec, o, staging, spec_hash, todo):
    """`run_round` without Ray: the same ranges and the same stage, one range at a time."""
    stage = GenerateStage(spec, GeneratorRef("procedural"), "cpu", 0,
                          ShardTarget(staging, spec_hash, tuple(spec.output.formats)))
    for r in graph.ranges(todo, spec, 1, o.shard_max_bytes):
        for rec in stage({"start": np.array([r["start"]]), "stop": np.array([r["stop"]])})["record"]:
            yield json.loads(rec)


@pytest.fixture
def no_ray(monkeypatch):
    monkeypatch.setattr(job, "run_round", in_process_round)
    monkeypatch.setattr(job, "ensure_ray", lambda address=None: None)


def crash_after(monkeypatch, name: str, n: int) -> None:
    """Make `U.<name>` raise Crash on its (n+1)-th call."""
    real, calls = getattr(U, name), [0]

    def wrapped(*a, **k):
        calls[0] += 1
        if calls[0] > n:
            raise Crash(f"{name} #{calls[0]}")
        return real(*a, **k)

    monkeypatch.setattr(U, name, wrapped)


def _files(uri: str) -> dict[str, str]:
    m = json.loads(U.read_bytes(U.join(uri, "manifest.json")))
    return {p: f["sha256"] for p, f in read_file_list(uri, m).items()}


# --- 17.1 resumable publish ------------------------------------------------------
@pytest.mark.parametrize("where", ["file", "s3"])
def test_crash_anywhere_in_publish_is_finished_by_resume(where, tmp_path, no_ray, monkeypatch, request):
    """Kill the publish after each of its file moves, at the file list, at the
    manifest and at the cleanup: a plain run refuses, `--resume` finishes it without
    generating again, and the version equals an uncrashed run's byte for byte.
    Nothing is visible before the manifest."""
    root = str(tmp_path / "reg") if where == "file" else f"s3://{request.getfixturevalue('s3_bucket')}/reg"
    spec = load_spec(tiny_spec(tmp_path, count=7, shard=4))
    spec.output.formats = ["parquet", "yolo"]
    ref = run_dataset(spec, RunOptions(out=str(tmp_path / "ref"), report=False))
    want = _files(ref.uri)
    points = [("move", k) for k in range(0, len(want) + 1, 1 if where == "file" else 5)]
    # the plan's upload (before the seal), the file list, the manifest, the cleanup after it
    points += [("write_file", 0), ("write_file", 1), ("create_exclusive", 1), ("delete_prefix", 1)]
    for version, (fn, n) in enumerate(points, start=1):
        opts = RunOptions(out=root, version=version, report=False)
        with monkeypatch.context() as m:
            crash_after(m, fn, n)
            try:
                run_dataset(spec, opts)
                crashed = False
            except Crash:
                crashed = True
        reg = Registry(root)
        assert crashed or (fn, n) == ("move", len(want)), f"no crash at {fn} #{n + 1}"
        resume = RunOptions(out=root, version=version, report=False, resume=True)
        with monkeypatch.context() as m:
            m.setattr(job, "run_round", lambda *a: pytest.fail("--resume generated again"))
            if not crashed:  # published and cleaned up: a rerun refuses
                with pytest.raises(PublishedError):
                    run_dataset(spec, resume)
            elif fn == "delete_prefix":  # committed: a plain rerun cleans up, then refuses; --resume says it is done
                r = run_dataset(spec, resume)
                assert r.version == version and "published" in r.notes[0] and "no new version" in r.notes[0]
            else:
                assert version not in reg.versions(spec.name), f"visible before its manifest ({fn} #{n + 1})"
                with pytest.raises(RunError, match="--resume"):
                    run_dataset(spec, opts)
                run_dataset(spec, resume)
        assert _files(reg.version_uri(spec.name, version)) == want, f"crash at {fn} #{n + 1}"
        assert not U.list_files(reg.staging_uri(spec.name, version)) and reg.staged(spec.name) == []


@pytest.mark.parametrize("where", ["file", "s3"])
def test_every_kill_on_an_unpinned_spec_ends_with_one_version(where, tmp_path, no_ray, monkeypatch, request):
    """A spec without `version`: after a kill anywhere in publish, past the manifest
    included, `--resume` finishes that run's version: exactly one version, no
    staging left (it used to publish a duplicate v2 and leave v1's staging)."""
    bucket = request.getfixturevalue("s3_bucket") if where == "s3" else None
    spec = load_spec(tiny_spec(tmp_path, count=5, shard=4))
    spec.version = None
    points = [("move", 0), ("move", 3), ("write_file", 0), ("write_file", 1), ("create_exclusive", 1),
              ("delete_prefix", 1)]
    for i, (fn, n) in enumerate(points):
        root = str(tmp_path / f"reg{i}") if where == "file" else f"s3://{bucket}/reg{i}"
        with monkeypatch.context() as m:
            crash_after(m, fn, n)
            with pytest.raises(Crash):
                run_dataset(spec, RunOptions(out=root, report=False))
        reg = Registry(root)
        with monkeypatch.context() as m:
            m.setattr(job, "run_round", lambda *a: pytest.fail("--resume generated again"))
            r = run_dataset(spec, RunOptions(out=root, report=False, resume=True))
        assert (r.version, reg.versions(spec.name)) == (1, [1]), f"kill at {fn} #{n + 1}"
        assert reg.staged(spec.name, published=True) == [], f"staging left after a kill at {fn} #{n + 1}"
        assert not U.list_files(U.join(reg.dataset_uri(spec.name), "_staging"))


# --- 17.6 atomic locks and commits --------------------------------------------
def _race(fn, n: int = 8) -> list:
    out, barrier = [None] * n, threading.Barrier(n)

    def one(i: int) -> None:
        barrier.wait()
        out[i] = fn(i)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


@pytest.mark.parametrize("where", ["file", "s3"])
def test_exclusive_create_has_one_winner(where, tmp_path, request):
    root = str(tmp_path) if where == "file" else f"s3://{request.getfixturevalue('s3_bucket')}"
    for k in range(20 if where == "file" else 5):
        uri = U.join(U.to_uri(root), f"lock{k}.json")
        won = _race(lambda i: U.create_exclusive(uri, f"writer {i}".encode()))
        assert won.count(True) == 1, won
        assert U.read_bytes(uri) == f"writer {won.index(True)}".encode()  # the winner's whole content
    # same-name writes never share a temp file (they used to: "_run.json: not found")
    uri = U.join(U.to_uri(root), "state.json")
    _race(lambda i: [U.write_bytes(uri, b"x" * i) for _ in range(10)])
    assert not [f for f in U.list_files(U.to_uri(root)) if f.endswith(".tmp")]


@pytest.mark.parametrize("where", ["file", "s3"])
def test_second_run_of_a_version_stops_at_the_lock(where, tmp_path, no_ray, request):
    """A run that finds the version's lock taken writes nothing and leaves the
    holder's staging alone; a version published meanwhile is never written into."""
    spec = load_spec(tiny_spec(tmp_path, count=5, shard=4))
    root = str(tmp_path / "reg") if where == "file" else f"s3://{request.getfixturevalue('s3_bucket')}/reg"
    reg = Registry(root)
    holder = {"spec_hash": spec.spec_hash(), "planned_until": 0, "rounds": 0, "run_id": "other"}
    assert reg.claim(spec.name, 1, holder) and not reg.claim(spec.name, 1, {**holder, "run_id": "late"})
    assert reg.claim(spec.name, 1, holder)  # the same claim again (its answer lost in an outage): still the holder's
    before = U.list_files(reg.staging_uri(spec.name, 1))
    with pytest.raises(RunError, match="holds this version .*--resume.*--restart"):
        run_dataset(spec, RunOptions(out=root, version=1))
    assert U.list_files(reg.staging_uri(spec.name, 1)) == before == ["_run.json"]
    assert reg.run_state(spec.name, 1)["run_id"] == "other"
    # the holder publishes; the loser's retry is refused before any work
    reg.discard_staging(spec.name, 1)
    r = run_dataset(spec, RunOptions(out=root, version=1, report=False))
    published = _files(r.uri)
    with pytest.raises(PublishedError):
        run_dataset(spec, RunOptions(out=root, version=1))
    # a publication sealed for a version someone else committed: refused, nothing moved in
    pub = reg.begin(spec.name, 2)
    pub.put("x.txt", b"mine")
    U.create_exclusive(U.join(reg.version_uri(spec.name, 2), "manifest.json"), b'{"publication": "theirs"}')
    with pytest.raises(PublishedError):
        pub.commit({"count": 0})
    assert _files(r.uri) == published and not U.exists(U.join(reg.version_uri(spec.name, 2), "x.txt"))


# --- 16.2 nothing left behind by a failed start; --restart --------------------
def test_failed_start_leaves_no_staging_and_restart_discards(tmp_path, no_ray, monkeypatch):
    spec = load_spec(tiny_spec(tmp_path, count=6, shard=4))
    root = str(tmp_path / "reg")
    reg = Registry(root)

    def broken(*a, **k):
        raise RuntimeError("generator failed to load")
        yield  # pragma: no cover

    monkeypatch.setattr(job, "run_round", broken)
    with pytest.raises(RuntimeError, match="failed to load"):
        run_dataset(spec, RunOptions(out=root))
    assert not U.list_files(U.join(reg.dataset_uri(spec.name), "_staging"))
    # shards written, then a crash: kept, and the next plain run names both ways out
    monkeypatch.setattr(job, "run_round", in_process_round)
    with monkeypatch.context() as m:
        crash_after(m, "move", 0)
        with pytest.raises(Crash):
            run_dataset(spec, RunOptions(out=root))
    assert reg.staged(spec.name) == [1]
    with pytest.raises(RunError, match="--restart"):
        run_dataset(spec, RunOptions(out=root))
    from typer.testing import CliRunner

    from factory.cli import app

    res = CliRunner().invoke(app, ["datasets", "list", root])
    assert res.exit_code == 0 and "unfinished" in res.output and "--resume" in res.output, res.output
    r = run_dataset(spec, RunOptions(out=root, restart=True, report=False))
    assert r.version == 1 and r.resumed_shards == 0
    assert reg.staged(spec.name) == [] and reg.versions(spec.name) == [1]


# --- 16.3 versions -----------------------------------------------------------
def test_unpinned_spec_publishes_next_version_with_identical_images(tmp_path, no_ray, demo_spec_path):
    assert load_spec(demo_spec_path).version is None  # the README's commands run in any order, any number of times
    spec = load_spec(tiny_spec(tmp_path, count=6, shard=4))
    assert spec.version is None
    root = str(tmp_path / "reg")
    a = run_dataset(spec, RunOptions(out=root, report=False))
    b = run_dataset(spec, RunOptions(out=root, report=False))
    assert (a.version, b.version) == (1, 2)
    fa, fb = _files(a.uri), _files(b.uri)
    assert fa == fb and any(p.endswith(".png") for p in fa)  # byte-identical images, labels and shards


# --- the COCO sink -------------------------------------------------------------
def test_coco_sink_publishes_and_pulls(tmp_path, no_ray):
    """`output.formats: [parquet, coco]` with a cut last shard: one COCO JSON per
    split that agrees with the Parquet rows; `factory pull --format coco`."""
    import pyarrow.parquet as pq
    from typer.testing import CliRunner

    from factory.cli import app
    from factory.storage import read_table

    spec = load_spec(tiny_spec(tmp_path, count=11, shard=4))
    spec.output.formats = ["parquet", "coco"]  # (the spec model's format list must learn "coco": see the report)
    root = str(tmp_path / "reg")
    r = run_dataset(spec, RunOptions(out=root, report=False))
    files = _files(r.uri)
    rows = read_table(f"{root}/{spec.name}@1").to_pylist()
    assert len(rows) == 11 and not any(p.startswith("yolo/") for p in files)
    images, anns = {}, []
    for split in ("train", "val"):
        p = f"coco/annotations/instances_{split}.json"
        if p in files:
            doc = json.loads(U.read_bytes(U.join(r.uri, p)))
            assert [c["name"] for c in doc["categories"]] == spec.class_names
            images.update({im["id"]: im for im in doc["images"]})
            anns += doc["annotations"]
    assert set(images) == {row["item_index"] for row in rows}
    assert len({a["id"] for a in anns}) == len(anns) == sum(len(row["boxes"]) for row in rows)
    for row in rows:
        im = images[row["item_index"]]
        assert im["file_name"] == f"{row['split']}/{row['sample_id']}.png" and (im["width"], im["height"]) == (64, 64)
        png = U.read_bytes(U.join(r.uri, "coco/images", im["file_name"]))
        assert png == row["image"]
        got = sorted((a["category_id"] - 1, *a["bbox"]) for a in anns if a["image_id"] == row["item_index"])
        assert got == sorted((b["class_id"], b["x1"], b["y1"], b["x2"] - b["x1"], b["y2"] - b["y1"]) for b in row["boxes"])
    assert not any("_parts" in p for p in files)
    res = CliRunner().invoke(app, ["pull", f"{root}/{spec.name}@1", "--format", "coco", "--to", str(tmp_path / "c")])
    assert res.exit_code == 0 and "checksums ok" in res.output, res.output
    assert (tmp_path / "c" / "annotations" / "instances_train.json").exists()
    assert len(list((tmp_path / "c" / "images").rglob("*.png"))) == 11
    parts = sorted((Path(U.local_path(r.uri)) / "parquet").glob("*.parquet"))
    assert sum(pq.read_table(p).num_rows for p in parts) == 11


# --- the post-publish callback --------------------------------------------------
def test_on_publish_runs_after_the_manifest(tmp_path, no_ray):
    spec = load_spec(tiny_spec(tmp_path, count=4, shard=4))
    seen = []

    def hook(s, uri):
        seen.append((s.name, uri, U.exists(U.join(uri, "manifest.json"))))
        return ["retrain: submitted"]

    r = run_dataset(spec, RunOptions(out=str(tmp_path / "reg"), report=False, on_publish=hook))
    assert seen == [(spec.name, r.uri, True)] and r.notes == ["retrain: submitted"]


def test_pipeline_does_not_import_training():
    code = ("import sys, factory.pipeline, factory.pipeline.publish, factory.pipeline.graph; "
            "bad = [m for m in sys.modules if m.startswith('factory.training')]; print(bad); sys.exit(bool(bad))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_manifest_lists_files_in_files_jsonl(tmp_path, no_ray):
    spec = load_spec(tiny_spec(tmp_path, count=5, shard=4))
    r = run_dataset(spec, RunOptions(out=str(tmp_path / "reg")))
    m = json.loads(U.read_bytes(U.join(r.uri, "manifest.json")))
    assert "files" not in m and m["file_list"]["path"] == "files.jsonl"
    data = U.read_bytes(U.join(r.uri, "files.jsonl"))
    assert hashlib.sha256(data).hexdigest() == m["file_list"]["sha256"]
    assert m["file_list"]["files"] == len(data.splitlines()) == len(U.list_files(r.uri)) - 2
    check_version(r.uri, 5, spec.class_names)
    html = U.read_bytes(r.report_uri).decode()
    assert "<h1>tiny</h1>" in html and "data:image/png;base64," in html


# --- 17.8 shards bounded by bytes as well as rows ------------------------------------
def test_shards_are_cut_by_bytes_whatever_shard_size_says(tmp_path, no_ray):
    """`shard_size: 100000` with a budget of 3 images' raw pixels: no shard holds
    more than 3 samples (what an actor holds before writing stays bounded), and
    the version is still exactly `count`."""
    spec = load_spec(tiny_spec(tmp_path, count=40, shard=100_000))
    per_image = 64 * 64
    big = graph.ranges([(0, 10_000_000)], spec, 2, 256 * 2**20)
    assert {r["stop"] - r["start"] for r in big[:-1]} == {min(100_000, 256 * 2**20 // per_image)}
    r = run_dataset(spec, RunOptions(out=str(tmp_path / "reg"), report=False, shard_max_bytes=3 * per_image))
    files = _files(r.uri)
    parts = [p for p in files if p.startswith("parquet/")]
    assert len(parts) >= 40 // 3
    import pyarrow.parquet as pq

    rows = [pq.read_table(Path(U.local_path(r.uri)) / p).num_rows for p in parts]
    assert max(rows) <= 3 and sum(rows) == 40


# --- 17.10 credentials never travel as task or actor arguments --------------------------
def test_shard_target_carries_no_credentials(monkeypatch):
    import pickle

    from factory.storage import configure_storage

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIASECRETSECRET0001")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-key-value")
    before = U.storage_config()
    configure_storage(endpoint_url="http://127.0.0.1:9", access_key="AKIAEXPLICIT00000001", secret_key="explicit-secret")
    try:
        spec = load_spec(REPO / "specs" / "demo-pv-el.yaml")
        blob = pickle.dumps(graph._shard_target("s3://b/x/_staging/v1", "h", spec))
    finally:
        U.set_storage_config(before)
    for secret in (b"AKIASECRETSECRET0001", b"very-secret-key-value", b"AKIAEXPLICIT00000001", b"explicit-secret"):
        assert secret not in blob
    assert b"http://127.0.0.1:9" in blob  # the endpoint is not a secret: workers need it


# --- masks out: segmentation labels --------------------------------------------
def test_yolo_seg_and_coco_carry_the_generators_exact_outlines(tmp_path, no_ray):
    """`output.formats: [yolo_seg, coco]`: each box's polygon comes from the generator's
    own mask (the procedural renderer returns exact masks): filled back in, it covers
    the mask's pixels, and it stays inside its box."""
    import cv2
    from typer.testing import CliRunner

    from factory.cli import app
    from factory.core import WorkItem
    from factory.generators.base import load_generator

    spec = load_spec(tiny_spec(tmp_path, count=6, shard=4))
    spec.output.formats = ["parquet", "yolo_seg", "coco"]
    root = str(tmp_path / "reg")
    r = run_dataset(spec, RunOptions(out=root, report=False))
    files = _files(r.uri)
    assert "yolo_seg/data.yaml" in files and not any(p.startswith("yolo/") for p in files)
    from factory.storage import read_table

    rows = read_table(f"{root}/{spec.name}@1").to_pylist()
    anns = [a for split in ("train", "val") if f"coco/annotations/instances_{split}.json" in files
            for a in json.loads(U.read_bytes(U.join(r.uri, f"coco/annotations/instances_{split}.json")))["annotations"]]
    checked = 0
    for row in rows:
        item = WorkItem.from_row(json.loads(row["work_item"]))
        sample = load_generator(item.generator, None, item.params).generate([item])[0]
        text = U.read_bytes(U.join(r.uri, f"yolo_seg/labels/{row['split']}/{row['sample_id']}.txt")).decode()
        lines = text.splitlines()
        assert len(lines) == len(row["boxes"])
        for k, (line, b) in enumerate(zip(lines, row["boxes"]), start=1):
            cls, *xy = line.split()
            assert int(cls) == b["class_id"] and len(xy) >= 6 and len(xy) % 2 == 0
            pts = np.array([float(v) for v in xy]).reshape(-1, 2) * [row["width"], row["height"]]
            assert (pts[:, 0] >= b["x1"]).all() and (pts[:, 0] <= b["x2"]).all()
            assert (pts[:, 1] >= b["y1"]).all() and (pts[:, 1] <= b["y2"]).all()
            filled = np.zeros((row["height"], row["width"]), np.uint8)
            cv2.fillPoly(filled, [np.round(pts - 0.5).astype(np.int32)], 1)
            mask = sample.mask == k
            if mask.sum() >= 20:  # the largest piece's outline covers most of the instance
                assert (filled.astype(bool) & mask).sum() >= 0.6 * mask.sum()
                checked += 1
        mine = [a for a in anns if a["image_id"] == row["item_index"]]
        assert all(a["segmentation"] and len(a["segmentation"][0]) >= 6 for a in mine)
    assert checked
    res = CliRunner().invoke(app, ["pull", f"{root}/{spec.name}@1", "--format", "yolo_seg", "--to", str(tmp_path / "s")])
    assert res.exit_code == 0 and (tmp_path / "s" / "data.yaml").exists(), res.output


def test_report_links_to_where_retraining_is_written(tmp_path, no_ray):
    """The version report's "Detector retraining" link leads to `_extras/v<N>/retrain/`,
    where `factory retrain` and the publish trigger write (a version never changes)."""
    import re

    spec = load_spec(tiny_spec(tmp_path, count=3, shard=4))
    r = run_dataset(spec, RunOptions(out=str(tmp_path / "reg"), report=True))
    report = U.local_path(r.report_uri)
    href = re.search(r'<a href="([^"]*retrain[^"]*)"', report.read_text()).group(1)
    want = U.local_path(U.join(Registry(str(tmp_path / "reg")).extras_uri(spec.name, r.version), "retrain", "index.html"))
    assert (report.parent / href).resolve() == want.resolve()


@pytest.mark.slow  # starts Ray in a subprocess
def test_python_api_is_as_quiet_as_the_cli(tmp_path, no_ray):
    """`factory.open_dataset` starts Ray the CLI's way: no Ray INFO/WARNING lines on the
    console and nothing written under ~/.ray (it printed ~15 lines and wrote an auth token)."""
    spec = load_spec(tiny_spec(tmp_path, count=3, shard=4))
    run_dataset(spec, RunOptions(out=str(tmp_path / "reg"), report=False))
    home = tmp_path / "home"
    home.mkdir()
    code = f"import factory; print('rows', factory.open_dataset({str(tmp_path / 'reg') + '/' + spec.name + '@1'!r}).count())"
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("RAY_")}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                       env={**env, "HOME": str(home)})
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip().splitlines() == ["rows 3"]
    assert [ln for ln in p.stderr.splitlines() if ln.strip()] == []
    assert not (home / ".ray").exists()
