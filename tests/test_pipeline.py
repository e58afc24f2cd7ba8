"""The Ray Data job end to end on the session's embedded Ray: file:// and s3://
(moto's server on 127.0.0.1), exact counts, Parquet/YOLO/manifest agreement,
ultralytics loading the tree, immutability, resume after kill -9 of the driver,
top-up rounds and generator failures recorded as rejects."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from s3_server import s3_bucket, s3_server  # noqa: F401

from factory.pipeline import RunError, RunOptions, run_dataset
from factory.spec import load_spec
from factory.storage import PublishedError, Registry, open_dataset, read_table
from factory.storage import uri as U
from factory.storage.publish import read_file_list

REPO = Path(__file__).resolve().parents[1]


def tiny_spec(tmp_path: Path, count: int = 12, size: int = 64, shard: int = 5, name: str = "tiny", **extra) -> Path:
    spec = {
        "name": name, "seed": 3, "count": count, "image": {"width": size, "height": size, "channels": 1},
        "defects": [
            {"class": "crack", "weight": 1, "boxes": {"count": [1, 2], "size": {"min": 0.15, "max": 0.3}}},
            {"class": "black_spot", "weight": 1, "boxes": {"count": [1, 1], "size": {"min": 0.1, "max": 0.2}}},
        ],
        "negatives": 0.2, "output": {"shard_size": shard}, **extra,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def check_version(uri: str, count: int, class_names: list[str]) -> dict:
    """Parquet, YOLO and the manifest agree with each other and with `count`."""
    m = json.loads(U.read_bytes(U.join(uri, "manifest.json")))
    m["files"] = read_file_list(uri, m)  # the file list is its own file, files.jsonl
    files = set(U.list_files(uri)) - {"manifest.json", "files.jsonl"}
    assert files == set(m["files"]), "published files and manifest differ"
    for p, f in m["files"].items():
        assert hashlib.sha256(U.read_bytes(U.join(uri, p))).hexdigest() == f["sha256"], p
    parts = sorted(p for p in files if p.startswith("parquet/"))
    assert parts == [f"parquet/part-{i:05d}.parquet" for i in range(len(parts))]
    rows = [r for p in parts for r in pq.read_table(io.BytesIO(U.read_bytes(U.join(uri, p)))).to_pylist()]
    ids = [r["sample_id"] for r in rows]
    assert len(rows) == count == m["counts"]["accepted"] == m["count"]
    assert len(set(ids)) == count, "duplicate samples"
    assert all(r["item_id"] == r["sample_id"] and r["spec_hash"] == m["spec_hash"] for r in rows)
    labels = {p.split("/")[-1][:-4]: p for p in files if p.startswith("yolo/labels/")}
    images = {p.split("/")[-1][:-4] for p in files if p.startswith("yolo/images/")}
    assert set(labels) == images == set(ids)
    per_class = Counter()
    for r in rows:
        img = np.asarray(__import__("PIL.Image").Image.open(io.BytesIO(r["image"])))
        assert img.shape == (r["height"], r["width"])
        lines = U.read_bytes(U.join(uri, labels[r["sample_id"]])).decode().split()
        assert len(lines) == 5 * len(r["boxes"])
        for k, b in enumerate(r["boxes"]):
            cid, cx, cy, w, h = lines[5 * k: 5 * k + 5]
            assert int(cid) == b["class_id"] and class_names[b["class_id"]] == b["class_name"]
            assert abs(float(cx) - (b["x1"] + b["x2"]) / 2 / r["width"]) < 1e-5
            assert abs(float(w) - (b["x2"] - b["x1"]) / r["width"]) < 1e-5
        per_class.update(b["class_name"] for b in r["boxes"])
        assert r["scores"] and r["generator"] == "procedural"
    assert dict(per_class) == {k: v for k, v in m["counts"]["boxes_per_class"].items() if v}
    assert m["counts"]["negatives"] == sum(1 for r in rows if not r["boxes"])
    assert {"report.html", "grid.png", "yolo/data.yaml"} <= files
    assert m["spec"]["count"] == count and m["code_version"] and m["created_at"]
    return m


def check_ultralytics(data_yaml: Path, count: int) -> None:
    """ultralytics' own dataset check loads the tree as is (offline)."""
    cfg = data_yaml.parent.parent / "yolo-cfg"
    code = (
        "from factory.retrain.offline import setup_ultralytics_offline; "
        f"setup_ultralytics_offline({str(cfg)!r}); "
        "from ultralytics.data.utils import check_det_dataset; import glob, sys; "
        f"d = check_det_dataset({str(data_yaml)!r}, autodownload=False); "
        "n = sum(len(glob.glob(str(d[s]) + '/*.png')) for s in ('train', 'val') if d[s] != d['train'] or s == 'train'); "
        "print('NC', d['nc'], 'N', n)"
    )
    env = {**os.environ, "YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "0", "YOLO_CONFIG_DIR": str(cfg)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"NC 2 N {count}" in out.stdout


@pytest.mark.ray
def test_run_file_publishes_exact_count(ray_local, tmp_path):
    spec = load_spec(tiny_spec(tmp_path, count=12))
    r = run_dataset(spec, RunOptions(out=str(tmp_path / "reg"), actors=1))
    assert r.version == 1 and r.uri == f"file://{tmp_path}/reg/tiny/v1"
    m = check_version(r.uri, 12, spec.class_names)
    assert m["counts"]["rejected"] == 0 and {"sanity", "boxes"} <= set(m["gate"])
    check_ultralytics(tmp_path / "reg" / "tiny" / "v1" / "yolo" / "data.yaml", 12)
    assert open_dataset(f"{tmp_path}/reg/tiny@1").count() == 12
    # published versions are immutable: the same version is refused before any work
    with pytest.raises(PublishedError, match="tiny@1 is already published"):
        run_dataset(spec, RunOptions(out=str(tmp_path / "reg"), version=1))
    assert Registry(str(tmp_path / "reg")).next_version("tiny") == 2


@pytest.mark.ray
@pytest.mark.s3
def test_run_s3_and_pull(ray_local, s3_bucket, tmp_path):
    from typer.testing import CliRunner

    from factory.cli import app

    spec_path = tiny_spec(tmp_path, count=14, shard=4)
    root = f"s3://{s3_bucket}/datasets"
    res = CliRunner().invoke(app, ["run", str(spec_path), "--out", root, "--version", "3", "--actors", "1"])
    assert res.exit_code == 0, res.output[-3000:] + repr(res.exception)
    assert "published tiny@3" in res.output and "report: s3://" in res.output
    m = check_version(f"{root}/tiny/v3", 14, ["crack", "black_spot"])
    assert not U.list_files(f"{root}/tiny/_staging")
    ds = open_dataset(f"{root}/tiny@latest")
    assert sorted(ds.to_pandas()["sample_id"]) == sorted(read_table(f"{root}/tiny@3", columns=["sample_id"])["sample_id"].to_pylist())
    res = CliRunner().invoke(app, ["pull", f"{root}/tiny@3", "--format", "yolo", "--to", str(tmp_path / "pulled")])
    assert res.exit_code == 0, res.output
    assert "checksums ok" in res.output
    check_ultralytics(tmp_path / "pulled" / "data.yaml", 14)
    res = CliRunner().invoke(app, ["run", str(spec_path), "--out", root, "--version", "3"])
    assert res.exit_code == 1 and "already published" in res.output
    assert m["counts"]["splits"]["train"] + m["counts"]["splits"].get("val", 0) == 14


@pytest.mark.ray
def test_resume_after_kill_9(ray_local, tmp_path):
    """kill -9 the driver of a running `factory run`; --resume reuses its shards and
    publishes exactly `count`, each plan item once."""
    count = 160
    spec_path = tiny_spec(tmp_path, count=count, size=128, shard=8, name="killed")
    out = tmp_path / "reg"
    shards = out / "killed" / "_staging" / "v1" / "_shards"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "factory.cli", "run", str(spec_path), "--out", str(out), "--actors", "1"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (shards.exists() and len(list(shards.glob("*.json"))) >= 2):
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)  # the driver only
        proc.wait(10)
    finally:
        with_group = proc.pid
        try:  # then the embedded Ray it started (same session), so nothing is left running
            os.killpg(with_group, signal.SIGKILL)
        except ProcessLookupError:
            pass
    done_before = {p.name for p in shards.glob("*.json")}
    assert 2 <= len(done_before) < count // 8, "not killed mid-way"
    assert not (out / "killed" / "v1" / "manifest.json").exists()
    spec = load_spec(spec_path)
    with pytest.raises(RunError, match="--resume"):
        run_dataset(spec, RunOptions(out=str(out)))
    r = run_dataset(spec, RunOptions(out=str(out), resume=True, report=False))
    assert r.resumed_shards >= len(done_before)
    m = json.loads(U.read_bytes(U.join(r.uri, "manifest.json")))
    ids = read_table(f"{out}/killed@1", columns=["sample_id", "item_index"])
    assert ids.num_rows == count == m["counts"]["accepted"]
    assert len(set(ids["sample_id"].to_pylist())) == count
    assert m["duplicate_shards_skipped"] == 0


@pytest.mark.ray
def test_split_scoring_pool_writes_the_same_shards(ray_local, tmp_path, monkeypatch):
    """The GPU layout (generator actors hand raw images to a scoring + writing pool)
    run on CPU through the real Ray Data graph: it publishes the very shards the
    fused layout does."""
    from factory.pipeline import graph

    spec = load_spec(tiny_spec(tmp_path, count=12))
    fused = run_dataset(spec, RunOptions(out=str(tmp_path / "fused"), actors=1, report=False))
    real = graph.plan_pools
    monkeypatch.setattr(graph, "plan_pools", lambda *a, **k: [dataclasses.replace(p, score_actors=1) for p in real(*a, **k)])
    split = run_dataset(spec, RunOptions(out=str(tmp_path / "split"), actors=1))
    check_version(split.uri, 12, spec.class_names)

    def parquet(uri: str) -> dict:
        m = json.loads(U.read_bytes(U.join(uri, "manifest.json")))
        m["files"] = read_file_list(uri, m)
        return {p: f["sha256"] for p, f in m["files"].items() if p.startswith(("parquet/", "yolo/images"))}

    assert parquet(split.uri) == parquet(fused.uri)


_RUN_THEN_COUNT_FREE_CPUS = r"""
import gc, sys, time
from pathlib import Path
import ray
from factory.pipeline import RunOptions, run_dataset
from factory.ray_runtime import ensure_ray
from factory.spec import load_spec
ensure_ray(num_cpus=2)
gc.disable()  # no collection but the run's own
for k in range(3):  # whether a run's last tasks are still in flight as it stops is a race: three tries
    run_dataset(load_spec(Path(sys.argv[1])), RunOptions(out=f"{sys.argv[2]}/{k}", overprovision=20))
    deadline = time.time() + 30  # actors die asynchronously
    while ray.available_resources().get("CPU", 0.0) < 2 and time.time() < deadline:
        time.sleep(0.2)
    print("FREE_CPUS", ray.available_resources().get("CPU", 0.0))
"""


@pytest.mark.ray
def test_a_finished_run_gives_its_actors_resources_back(tmp_path):
    """Ray Data lets a finished pool's actors go by dropping its handles, which its
    executor keeps in reference cycles. A run must not leave them holding CPUs: in CI
    a Train run started next in the same process (benchmarks/value.py) waited for them
    until it timed out. Its own driver process, as there; planned far past `count`, so
    the run stops with generator tasks in flight, which is when the cycles form."""
    spec = tiny_spec(tmp_path, count=2, size=512, shard=1, name="free")
    env = os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-c", _RUN_THEN_COUNT_FREE_CPUS, str(spec), str(tmp_path / "reg")],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split().count("2.0") == 3, proc.stdout[-2000:]


@pytest.mark.ray
def test_worker_kill_9_mid_run_loses_nothing(ray_local, tmp_path):
    """kill -9 the generator actor's process while it writes shards: Ray restarts
    it, the range it held is redone (its shard rewritten whole, under the same key)
    and the run still publishes exactly `count`, each plan item once."""
    import threading

    import psutil

    count = 480
    spec = load_spec(tiny_spec(tmp_path, count=count, size=160, shard=8, name="wkill"))
    out = tmp_path / "reg"
    shards = out / "wkill" / "_staging" / "v1" / "_shards"
    result: dict = {}

    def run() -> None:
        try:
            result["r"] = run_dataset(spec, RunOptions(out=str(out), actors=1))
        except BaseException as e:  # noqa: BLE001 - re-raised below, in the test's thread
            result["e"] = e

    def generator_actors() -> list:
        found = []
        for p in psutil.Process().children(recursive=True):
            try:
                if "GenerateStage" in " ".join(p.cmdline()):
                    found.append(p)
            except psutil.Error:  # it ended meanwhile
                pass
        return found

    deadline = time.time() + 30  # an earlier test's actors die asynchronously after its run
    while generator_actors() and time.time() < deadline:
        time.sleep(0.2)
    assert not generator_actors(), "generator actors outlived the runs that made them"
    t = threading.Thread(target=run)
    t.start()
    deadline = time.time() + 120
    while time.time() < deadline and not (shards.exists() and len(list(shards.glob("*.json"))) >= 2):
        assert t.is_alive(), f"the run ended before a worker could be killed: {result}"
        time.sleep(0.01)
    workers = generator_actors()
    assert len(workers) == 1, [w.cmdline() for w in workers]
    done_at_kill = len(list(shards.glob("*.json")))
    workers[0].kill()  # SIGKILL
    t.join(180)
    assert not t.is_alive(), "the run hung after its worker was killed"
    if "e" in result:
        raise result["e"]
    assert done_at_kill < count // 8, "the worker was killed after the work was done"
    assert not workers[0].is_running()
    r = result["r"]
    m = check_version(r.uri, count, spec.class_names)
    assert m["duplicate_shards_skipped"] == 0
    ids = read_table(f"{out}/wkill@1", columns=["sample_id", "item_index"])
    assert sorted(ids["item_index"].to_pylist()) == sorted(set(ids["item_index"].to_pylist()))


# --- driver logic without Ray workers -------------------------------------------
def test_top_up_rounds_until_exact_count(ray_local, tmp_path, monkeypatch):
    """A gate rejecting every third item: the job plans further rounds and still
    publishes exactly `count`, with the rejects counted by reason."""
    from factory.pipeline import job

    def fake_round(spec, o, staging, spec_hash, todo):
        todo = [i for a, b in todo for i in range(a, b)]  # runs of plan indices
        for k in range(0, len(todo), 4):
            chunk = todo[k: k + 4]
            rec = {"key": f"s{chunk[0]:010d}", "files": [], "rejected_files": [],
                   "samples": [[i, f"id{i}", "train", "procedural", []] for i in chunk if i % 3],
                   "rejects": [[i, f"id{i}", ["blank"]] for i in chunk if not i % 3]}
            U.write_bytes(U.join(staging, "_shards", rec["key"] + ".json"), json.dumps(rec).encode())
            yield rec

    monkeypatch.setattr(job, "run_round", fake_round)
    spec = load_spec(tiny_spec(tmp_path, count=30, shard=4))
    spec.output.formats = ["parquet"]
    r = run_dataset(spec, RunOptions(out=str(tmp_path), overprovision=1.0, report=False))
    c = r.manifest["counts"]
    assert r.manifest["rounds"] >= 2 and c["accepted"] == 30
    assert c["rejected"] == r.manifest["reject_reasons"]["blank"] >= 10


@pytest.mark.ray
def test_near_duplicates_are_dataset_wide_and_independent_of_actors(ray_local, tmp_path):
    """A spec whose images repeat each other (one flat style, a loose duplicate
    distance): 1 and 2 actors publish the same samples byte for byte (the Parquet
    parts group them by range, and ranges follow the number of actors), no two
    published images are within the distance, and the dropped ones are counted."""
    from PIL import Image

    from factory.quality.sanity import hamming, phash

    path = tiny_spec(tmp_path, count=16, size=48, shard=3, name="dups",
                     domain={"name": "flat", "brightness": [0.4, 0.4], "grid_pitch": [12, 12], "contrast": [0.1, 0.1]},
                     negatives=0.5, quality={"duplicate_distance": 14})
    results = [run_dataset(load_spec(path), RunOptions(out=str(tmp_path / f"a{n}"), actors=n, report=False))
               for n in (1, 2)]
    files = [{p: f["sha256"] for p, f in read_file_list(r.uri, r.manifest).items() if not p.startswith("parquet/")}
             for r in results]
    tables = [read_table(f"{r.name}@{r.version}", root=str(tmp_path / f"a{n}")).sort_by("sample_id") for n, r in zip((1, 2), results)]
    assert files[0] == files[1] and tables[0].equals(tables[1])
    m = results[0].manifest
    assert m["reject_reasons"]["near_duplicate"] >= 2 and m["counts"]["rejected"] >= 2
    same = ("accepted", "negatives", "images_per_class", "boxes_per_class", "splits")  # not the shard-sized tallies
    assert [m["counts"][k] for k in same] == [results[1].manifest["counts"][k] for k in same]
    rows = tables[0].to_pylist()
    hashes = [phash(np.asarray(Image.open(io.BytesIO(r["image"])))) for r in rows]
    assert len(rows) == 16
    assert min(hamming(a, b) for i, a in enumerate(hashes) for b in hashes[i + 1:]) > 14


def test_select_cuts_last_shard_and_skips_duplicates():
    from factory.pipeline.publish import select
    from factory.pipeline.rounds import Shard
    from factory.pipeline.rounds import missing as _missing

    recs = [
        {"key": "s0000000004", "samples": [[4, "d", "", "", []], [5, "e", "", "", []]], "rejects": [[6, "f", ["x"]]]},
        {"key": "s0000000000", "samples": [[0, "a", "", "", []], [2, "c", "", "", []], [1, "b", "", "", []]], "rejects": []},
        {"key": "s0000000005", "samples": [[5, "e", "", "", []]], "rejects": []},  # repeats index 5
        {"key": "s0000000009", "samples": [[9, "j", "", "", []], [11, "l", "", "", []]], "rejects": []},
    ]
    shards = [Shard.of(r) for r in recs]
    assert shards[0].runs == [(4, 7)] and shards[0].reasons == {"x": 1} and shards[3].runs == [(9, 10), (11, 12)]
    chosen, surplus, dup = select(shards, 4)
    assert [(s.key, t) for s, t in chosen] == [("s0000000000", 3), ("s0000000004", 1)]
    assert surplus == 1 + 2 and [d.key for d in dup] == ["s0000000005"]
    # what a resumed run still has to make: the gaps, as runs
    assert _missing(shards, 14) == [(3, 4), (7, 9), (10, 11), (12, 14)]
    assert _missing([], 5) == [(0, 5)] and _missing(shards[1:2], 3) == []


def test_dedupe_is_decided_in_plan_order_whatever_order_shards_arrive():
    """Shards arriving in any order (several actors) give the same duplicates, the
    same kept count, and `select` leaves the duplicates out of the published count."""
    import itertools

    from factory.pipeline.publish import select
    from factory.pipeline.rounds import Dedupe, Shard

    h = 0xF0F0_F0F0_F0F0_F0F0
    recs = [
        {"key": "s0000000000", "samples": [[0, "a", "", "", [], h], [1, "b", "", "", [], h ^ 0b111]], "rejects": []},
        {"key": "s0000000002", "samples": [[3, "d", "", "", [], ~h & (2**64 - 1)]], "rejects": [[2, "c", ["blank"]]]},
        {"key": "s0000000004", "samples": [[4, "e", "", "", [], h ^ 1], [5, "f", "", "", [], None]], "rejects": []},
        {"key": "s0000000004", "samples": [[4, "e", "", "", [], h ^ 1], [5, "f", "", "", [], None]], "rejects": []},  # retried
    ]
    outcomes = set()
    for order in itertools.permutations(recs):
        d = Dedupe(4)
        found = sum(d.add(r) for r in order)
        shards = [Shard.of(r) for r in order]
        chosen, surplus, _ = select(shards, 3, d)
        outcomes.add((found, d.kept, d.frontier, tuple(sorted(d.duplicates.items())),
                      tuple((s.key, t) for s, t in chosen), surplus))
    assert outcomes == {(2, 3, 6, (("b", "a"), ("e", "a")), (("s0000000000", 1), ("s0000000002", 1), ("s0000000004", 1)), 0)}
    # a hole holds the judgement back: nothing after a missing index is judged
    d = Dedupe(4)
    d.add(recs[2])
    assert (d.frontier, d.kept, d.duplicates) == (0, 0, {})
    # -1 disables it
    d = Dedupe(-1)
    assert sum(d.add(r) for r in recs) == 0 and d.kept == 5


def test_generator_failures_become_rejects(tmp_path, monkeypatch):
    """A generator that fails once for every batch and always for one item: the
    retries recover the rest and the bad item is a reject with its error. The
    fused stage (CPU generators) and the split one (GPU generator -> scoring pool)
    write the same shard."""
    import factory.generators.base as gb
    from factory.core import GeneratorRef
    from factory.pipeline.stages import GenerateStage, ScoreWriteStage, ShardTarget

    spec = load_spec(tiny_spec(tmp_path, count=6))
    real = gb.load_generator("procedural", None, {})

    class Flaky:
        calls = 0

        def generate(self, items):
            Flaky.calls += 1
            if Flaky.calls == 1 or any(it.index == 3 for it in items):
                raise RuntimeError("CUDA out of memory (simulated)")
            return real.generate(items)

    from factory.pipeline import stages

    monkeypatch.setattr(stages, "load_generator", lambda *a, **k: Flaky())
    key, rng = GeneratorRef("procedural"), {"start": np.array([0]), "stop": np.array([6])}
    fused = ShardTarget(U.to_uri(tmp_path / "fused"), spec.spec_hash(), ("parquet", "yolo"))
    rec = json.loads(GenerateStage(spec, key, "cpu", retries=1, target=fused, batch_size=4)(rng)["record"][0])
    assert [s[0] for s in rec["samples"]] == [0, 1, 2, 4, 5]
    assert [r[0] for r in rec["rejects"]] == [3]
    assert rec["rejects"][0][2] == ["generator_error"]
    t = pq.read_table(tmp_path / "fused" / rec["rejected_files"][0]["path"])
    assert t.column("reasons")[0].as_py()[0].startswith("generator_error: RuntimeError: CUDA out of memory")
    assert "CUDA out of memory" in t.column("error")[0].as_py()

    Flaky.calls = 0
    split = ShardTarget(U.to_uri(tmp_path / "split"), spec.spec_hash(), ("parquet", "yolo"))
    raw = GenerateStage(spec, key, "cpu", retries=1)(rng)
    assert raw["image"].shape == (6, 64, 64, 1)
    rec2 = json.loads(ScoreWriteStage(spec, split)(raw)["record"][0])
    assert rec2["samples"] == rec["samples"] and rec2["rejects"] == rec["rejects"]
    same = [f["sha256"] for f in rec["files"]] == [f["sha256"] for f in rec2["files"]]
    assert same, "the fused and the split path wrote different shards"


def test_plan_pools_fuses_on_cpu_and_splits_for_gpus(tmp_path):
    """Which actor pools a round starts: CPU generators score and write in their own
    actor; a GPU generator gets a CPU scoring pool; a GPU-hungry gate gets GPU
    scoring actors only where the generators leave GPU free."""
    from factory.pipeline import plan_pools
    from factory.spec import spec_from_dict

    base = {"name": "p", "count": 4, "image": {"width": 64, "height": 64, "channels": 1},
            "domain": {"references": [tmp_path.as_uri()]},
            "defects": [{"class": "crack", "boxes": {"size": {"min": 0.2, "max": 0.3}}}]}
    both = [{"kind": "procedural"}, {"kind": "dg2gan", "checkpoint": (tmp_path / "g").as_uri()}]
    gate = {"anomaly_checkpoint": (tmp_path / "a").as_uri(), "gpus": 0.5}
    procedural = spec_from_dict(base)
    mixed = spec_from_dict({**base, "generators": both})
    gated = spec_from_dict({**base, "generators": both, "quality": gate})

    (p,) = plan_pools(procedural, cpus=8, gpus=0)
    assert (p.actors, p.gpu, p.score_actors) == (8, False, 0)  # fused: one actor does all
    cpu, gpu = plan_pools(mixed, cpus=8, gpus=2)
    assert (cpu.actors, cpu.gpu, cpu.score_actors) == (4, False, 0)
    assert (gpu.actors, gpu.gpu, gpu.score_gpus) == (2, True, 0.0) and gpu.score_actors >= 1
    cpu, gpu = plan_pools(mixed, cpus=8, gpus=0)  # no GPU: dg2gan runs on CPU, fused
    assert not gpu.gpu and gpu.score_actors == 0
    # the gate's GPU share: none free while the generators hold both GPUs ...
    assert all(p.score_gpus == 0 for p in plan_pools(gated, cpus=8, gpus=2))
    # ... one GPU left over -> scoring actors of half a GPU, for every pool
    pools = plan_pools(gated, cpus=8, gpus=2, actors=1)
    assert all(p.score_gpus == 0.5 and 1 <= p.score_actors <= 2 for p in pools)
    assert plan_pools(procedural, cpus=8, gpus=1)[0].score_gpus == 0  # no gate, no GPU scoring


@pytest.mark.ray
def test_progress_reaches_the_driver_per_shard(ray_local, tmp_path):
    """Each shard's record is reported as it arrives (one update per shard, spread
    over the run), not in a few bursts at the end."""
    spec = load_spec(tiny_spec(tmp_path, count=24, size=96, shard=4, name="prog"))
    marks: list[tuple[float, int]] = []
    r = run_dataset(spec, RunOptions(out=str(tmp_path / "reg"), actors=1, report=False),
                    on_progress=lambda p: marks.append((time.perf_counter(), p.accepted)))
    updates = [(t, n) for (t, n), (_, before) in zip(marks[1:], marks) if n != before]
    shards = len([p for p in read_file_list(r.uri, r.manifest) if p.startswith("parquet/")])
    assert len(updates) >= shards >= 6  # the last shard may be cut: at least one update per published shard
    times = sorted(t for t, _ in updates)
    assert len({round(t, 3) for t in times}) >= len(times) // 2, "updates arrived in bursts"
