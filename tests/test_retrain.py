"""Detector retraining: a 1-epoch, 64 px retrain through Ray Train on a few real
pv_vision images + a published synthetic version; the publish trigger and the
watcher against a real Ray job server; and nothing tries to reach the network."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from factory.data.adapters import RealSet, pv_vision_crack, write_yolo, write_yolo_arrays
from factory.generators.procedural import ProceduralELGenerator
from factory.planning.plan import plan
from factory.spec.load import parse_spec, spec_from_dict
from factory.storage.registry import Registry
from factory.training import detector as D

SYN_SPEC = {
    "name": "syn-el", "version": 1, "seed": 3, "count": 8, "image": {"width": 64, "height": 64},
    "defects": [{"class": "crack"}, {"class": "dark_area"}, {"class": "black_spot"}],
}


@pytest.fixture
def offline(monkeypatch):
    """Record every attempt to reach beyond this machine, here and (via
    FACTORY_NO_NETWORK) inside the Ray Train workers, where it is an error."""
    monkeypatch.setenv("FACTORY_NO_NETWORK", "1")
    with D.network_attempts() as attempts:
        yield
    assert not attempts, f"tried to reach the network: {attempts}"


def test_network_guard_sees_attempts():
    with D.network_attempts() as attempts:
        with pytest.raises(OSError):
            socket.getaddrinfo("example.invalid", 443)  # offline: fails, but it was an attempt
        with socket.create_connection(("127.0.0.1", _listening_port()), timeout=1):
            pass  # loopback is fine
    assert attempts == ["resolve 'example.invalid'"]


def _listening_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    _listening_port.keep = s  # keep it open for the connect
    return s.getsockname()[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def real_yolo(shared_data, tmp_path_factory) -> str:
    """6 train + 3 val real pv_vision cells with defects, as a YOLO folder."""
    real = pv_vision_crack(shared_data / "pv_vision_crack", limit=40)
    pos = [s for s in real.samples if s.boxes]
    train = [s for s in pos if s.split == "train"][:6]
    val = [s for s in pos if s.split == "val"][:3]
    out = tmp_path_factory.mktemp("real") / "pv"
    write_yolo(RealSet("pv", real.class_names, train + val, real.source), str(out))
    return str(out)


def _publish_synthetic(root: Path, spec_dict: dict) -> str:
    """A published version: the procedural generator's YOLO tree + manifest, via the registry."""
    spec = spec_from_dict(spec_dict)
    samples = ProceduralELGenerator().generate(plan(spec))
    tmp = Path(tempfile.mkdtemp(prefix="syn-"))
    write_yolo_arrays([(s.image, s.boxes) for s in samples], spec.class_names, tmp)
    extra = {f"yolo/{p.relative_to(tmp)}": p.read_bytes() for p in sorted(tmp.rglob("*")) if p.is_file()}
    manifest = {"spec_hash": spec.spec_hash(), "classes": spec.class_names, "spec": spec.to_yaml_dict()}
    return Registry(str(root)).publish(spec.name, spec.version, [], extra, manifest)


def test_prepare_datasets_maps_classes_and_mixes(tmp_path, real_yolo):
    version = _publish_synthetic(tmp_path / "reg", SYN_SPEC)
    syn = Path(D.yolo_uri(version).removeprefix("file://"))
    cfg = D.RetrainConfig(synthetic_ratio=0.5, seed=1)
    data_yaml, counts = D.prepare_datasets(tmp_path / "w", Path(real_yolo), Path(real_yolo), syn, cfg)
    data = yaml.safe_load(data_yaml.read_text())
    assert data["names"] == ["crack", "cross_crack", "dark_area"]
    assert data["train"] == ["real/images", "synthetic/images"]
    s = counts["synthetic"]
    # black_spot is not a real class: its images are left out, not half-labelled
    assert s["class_mapping"] == {"crack": "crack", "dark_area": "dark_area", "black_spot": None}
    assert s["dropped_images"] > 0 and s["used_images"] == 3  # 0.5 x 6 real images
    for lab in (tmp_path / "w" / "synthetic" / "labels").glob("*.txt"):
        assert {line.split()[0] for line in lab.read_text().splitlines()} <= {"0", "2"}
    with pytest.raises(D.RetrainError, match="not a real class"):
        D.prepare_datasets(tmp_path / "w2", Path(real_yolo), Path(real_yolo), syn,
                           D.RetrainConfig(class_map={"black_spot": "blob"}))


@pytest.mark.ray
def test_one_epoch_retrain_through_ray_train(tmp_path, real_yolo, ray_local, offline):
    version = _publish_synthetic(tmp_path / "reg", SYN_SPEC)
    cfg = D.RetrainConfig(epochs=1, imgsz=64, batch=4, workers=0, seed=0, min_gain=0.5)
    c = D.retrain(version, real_yolo, real_yolo, cfg)
    assert c["skipped"] is False
    out = tmp_path / "reg" / "syn-el" / "v1" / "retrain" / c["run_id"]
    saved = json.loads((out / "comparison.json").read_text())
    assert set(saved["arms"]) == {"real_only", "real_plus_synthetic"}
    for arm, m in saved["arms"].items():
        assert (out / arm / "weights" / "last.pt").stat().st_size > 100_000
        assert (out / arm / "train" / "results.csv").exists() and (out / arm / "eval" / "BoxPR_curve.png").exists()
        assert all(0.0 <= m[k] <= 1.0 for k in ("map50", "map50_95", "precision", "recall"))
        assert set(m["per_class"]) == {"crack", "cross_crack", "dark_area"}
        assert m["network_attempts"] == []
    mixed = saved["arms"]["real_plus_synthetic"]["data"]
    assert mixed["synthetic"]["used_images"] > 0 and "synthetic" not in saved["arms"]["real_only"]["data"]
    assert saved["arms"]["real_only"]["data"]["real_train"]["images"] == 6
    arms = saved["arms"]
    assert saved["gain"]["map50"] == pytest.approx(arms["real_plus_synthetic"]["map50"] - arms["real_only"]["map50"])
    assert saved["flagged"] is (saved["gain"]["map50"] < 0.5)
    html = (out / "report.html").read_text()
    assert "real + synthetic" in html and "Learning curves" in html and "data:image/png;base64," in html
    assert f'href="{c["run_id"]}/report.html"' in (out.parent / "index.html").read_text()

    # the same trigger again (here: the job's own command line, run in-process) does not train twice
    stamp = (out / "comparison.json").stat().st_mtime_ns
    argv = shlex.split(D.job_entrypoint(version, real_yolo, real_yolo, cfg, c["run_id"]))[3:]
    from factory.cli import app

    t0 = time.time()
    r = CliRunner().invoke(app, ["retrain", *argv])
    assert r.exit_code == 0, r.output
    assert "already finished" in r.output and time.time() - t0 < 10
    assert (out / "comparison.json").stat().st_mtime_ns == stamp


@pytest.fixture(scope="module")
def job_server():
    """A second, real Ray cluster with its job server (dashboard) on 127.0.0.1:
    the session's embedded cluster runs without one. `ray start --block` so that
    every port can be chosen free (other Ray clusters share this machine) and
    SIGTERM takes the whole cluster down."""
    gcs, dash, agent, client_port = (_free_port() for _ in range(4))
    # its own temp dir: `ray start` records "the current cluster" there, and in the
    # shared /tmp/ray every other ray.init() on this machine would join it
    temp = tempfile.mkdtemp(prefix="rjs", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled")
    ray_cli = str(Path(sys.executable).parent / "ray")
    proc = subprocess.Popen(
        [ray_cli, "start", "--head", "--block", "--num-cpus=1", f"--port={gcs}", "--include-dashboard=true",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--dashboard-agent-listen-port={agent}",
         f"--ray-client-server-port={client_port}", f"--temp-dir={temp}", "--disable-usage-stats"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    address = f"http://127.0.0.1:{dash}"
    try:
        from ray.job_submission import JobSubmissionClient

        deadline = time.time() + 120
        while True:
            try:
                JobSubmissionClient(address)
                break
            except Exception:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail(f"the Ray job server did not start (exit code {proc.poll()})")
                time.sleep(0.5)
        yield address
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(temp, ignore_errors=True)


def _jobs(client, prefix: str = "retrain-"):
    return [j for j in client.list_jobs() if (j.submission_id or "").startswith(prefix)]


@pytest.mark.ray
def test_publish_submits_exactly_one_job_and_the_watcher_fills_in(tmp_path, real_yolo, ray_local, job_server, offline):
    from ray.job_submission import JobSubmissionClient

    from factory.pipeline import RunOptions, run_dataset

    client = JobSubmissionClient(job_server)
    root = tmp_path / "reg"
    spec_dict = {**SYN_SPEC, "count": 4, "defects": SYN_SPEC["defects"][:2], "output": {"shard_size": 4},
                 "retrain": {"on": "publish", "real_train": real_yolo, "real_eval": real_yolo, "epochs": 1, "imgsz": 64,
                             "address": job_server}}
    text = yaml.safe_dump(spec_dict).replace("'on':", "on:")
    spec = parse_spec(text)  # a bare `on:` key, as users write it (YAML 1.1 reads it as True)
    assert spec.retrain.on == "publish"

    # the real publish step, with the hook the CLI passes (the pipeline itself never imports training)
    result = run_dataset(spec, RunOptions(out=str(root), actors=1, report=False, on_publish=D.publish_hook))
    jobs = _jobs(client)
    assert len(jobs) == 1, [j.submission_id for j in jobs]
    job_id = jobs[0].submission_id
    assert result.notes == [f"retrain: submitted Ray job {job_id} (results under {result.uri}/retrain/)"]
    assert "jobs.retrain" in jobs[0].entrypoint and jobs[0].metadata["version"] == result.uri
    record = json.loads(next((root / "syn-el" / "v1" / "retrain").glob("*/trigger.json")).read_text())
    assert record["job_id"] == job_id and record["reason"] == "publish"
    assert D.on_publish(spec, result.uri, result.manifest) == job_id  # the same trigger again: no second job
    assert len(_jobs(client)) == 1

    # no retrain section: publishing submits nothing; the watcher picks the version up, once
    plain = {**SYN_SPEC, "name": "plain-el"}
    assert D.on_publish(spec_from_dict(plain), "unused", {}) is None
    _publish_synthetic(root, plain)
    from factory.data.adapters import load_real, publish_real

    publish_real(load_real("yolo", real_yolo), str(root), "real-pv")  # real data in the same registry: not retrained
    cfg = D.RetrainConfig(epochs=1, imgsz=64)
    first = D.watch_once(str(root), real_yolo, real_yolo, cfg, address=job_server)
    assert [(Path(e["version"]).parent.name, e["submitted"]) for e in first] == [("plain-el", True)]
    assert D.watch_once(str(root), real_yolo, real_yolo, cfg, address=job_server)[0]["submitted"] is False
    assert len(_jobs(client)) == 2
    for j in _jobs(client):  # the training itself is covered above; do not spend the CPU twice
        client.stop_job(j.submission_id)


def test_publish_without_a_job_server_is_a_note_not_a_failure(tmp_path, real_yolo):
    spec = spec_from_dict({**SYN_SPEC, "retrain": {"real_train": real_yolo, "real_eval": real_yolo,
                                                    "address": f"http://127.0.0.1:{_free_port()}"}})
    version = _publish_synthetic(tmp_path / "reg", spec.model_dump(mode="json", by_alias=True))
    notes = D.publish_hook(spec, version)
    assert len(notes) == 1 and "job not submitted" in notes[0] and "factory retrain" in notes[0]
    assert not list((tmp_path / "reg" / "syn-el" / "v1").glob("retrain/*/trigger.json"))  # the watcher can still pick it up
