"""Detector retraining: matched step budgets through Ray Train on a few real
pv_vision images + a published synthetic version (steps read from what
ultralytics ran), `real_limit`, several seeds and their statistics; the publish
trigger and the watcher against a real Ray job server, with the command's
defaults; and nothing tries to reach the network."""

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

from factory.data.adapters import pv_vision_crack
from factory.data.realset import RealSet, write_yolo, write_yolo_arrays
from factory.generators.procedural import ProceduralELGenerator
from factory.planning.plan import plan
from factory.retrain import config as C
from factory.retrain import data as RD
from factory.retrain import launch as L
from factory.retrain import trigger as T
from factory.retrain.offline import network_attempts
from factory.spec.load import parse_spec, spec_from_dict
from factory.spec.retrain import RetrainSettings
from factory.storage.registry import Registry

SYN_SPEC = {
    "name": "syn-el", "version": 1, "seed": 3, "count": 8, "image": {"width": 64, "height": 64},
    "defects": [{"class": "crack"}, {"class": "dark_area"}, {"class": "black_spot"}],
}


@pytest.fixture
def offline(monkeypatch):
    """Record every attempt to reach beyond this machine, here and (via
    FACTORY_NO_NETWORK) inside the Ray Train workers, where it is an error."""
    monkeypatch.setenv("FACTORY_NO_NETWORK", "1")
    with network_attempts() as attempts:
        yield
    assert not attempts, f"tried to reach the network: {attempts}"


def test_network_guard_sees_attempts():
    with network_attempts() as attempts:
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


def test_selection_maps_classes_and_mixes(tmp_path, real_yolo):
    version = _publish_synthetic(tmp_path / "reg", SYN_SPEC)
    syn = Path(C.yolo_uri(version).removeprefix("file://"))
    s = RetrainSettings(synthetic_ratio=0.5, arms=["real", "mixed", "synthetic"])
    sel = RD.select(Path(real_yolo), Path(real_yolo), syn, s, seed=1)
    assert sel.class_names == ["crack", "cross_crack", "dark_area"]
    c = sel.counts["synthetic"]
    # black_spot is not a real class: its images are left out, not half-labelled
    assert c["class_mapping"] == {"crack": "crack", "dark_area": "dark_area", "black_spot": None}
    assert c["dropped_images"] > 0 and c["used_images"] == 3 == len(sel.synthetic)  # 0.5 x 6 real images
    assert [len(sel.train_items(a)) for a in ("real", "mixed", "synthetic")] == [6, 9, 3]
    data = yaml.safe_load(RD.write_arm(tmp_path / "w", sel, "mixed").read_text())
    assert data["names"] == sel.class_names and data["train"] == ["real/images", "synthetic/images"]
    for lab in (tmp_path / "w" / "synthetic" / "labels").glob("*.txt"):
        assert {line.split()[0] for line in lab.read_text().splitlines()} <= {"0", "2"}
    assert yaml.safe_load(RD.write_arm(tmp_path / "s", sel, "synthetic").read_text())["train"] == ["synthetic/images"]
    with pytest.raises(C.RetrainError, match="not a real class"):
        RD.select(Path(real_yolo), Path(real_yolo), syn, RetrainSettings(class_map={"black_spot": "blob"}), seed=0)


def _items(spec: list[set[int]]) -> list:
    return [(Path(f"img{i}.png"), [f"{c} 0.5 0.5 0.1 0.1" for c in sorted(cs)]) for i, cs in enumerate(spec)]


def test_real_limit_keeps_every_class_and_follows_the_seed():
    # 40 images: class 2 in only one of them, class 1 in two, many defect-free
    items = _items([{2}] + [{1}] * 2 + [{0}] * 12 + [set()] * 25)
    subsets = [RD.real_subset(items, 5, seed) for seed in range(6)]
    for sub in subsets:
        assert len(sub) == 5 and len({p for p, _ in sub}) == 5
        assert set().union(*(RD.classes_of(it) for it in sub)) == {0, 1, 2}
        assert {p for p, _ in sub} <= {p for p, _ in items}
    assert len({tuple(p for p, _ in sub) for sub in subsets}) > 1  # the seed picks the subset
    assert RD.real_subset(items, 5, 3) == subsets[3]  # and the same seed the same one
    with pytest.raises(C.RetrainError, match="real_limit: 2 images cannot show all 3 classes"):
        RD.real_subset(items, 2, 0)


def test_plan_arms_matches_steps_not_epochs():
    sel = RD.Selection(["a"], _items([{0}] * 10), _items([{0}] * 30), [])
    s = RetrainSettings(batch=4, epochs=3, arms=["real", "mixed", "synthetic"])
    plans = L.plan_arms(sel, s)  # mixed: 10 batches/epoch -> 30 steps at 3 epochs; real 3 batches, synthetic 8
    assert {a: p.stop_steps for a, p in plans.items()} == {"real": 30, "mixed": 30, "synthetic": 30}
    assert {a: p.epochs for a, p in plans.items()} == {"real": 10, "mixed": 3, "synthetic": 4}
    # the same warm-up in steps: 3 epochs of the mixed arm = 30 batches
    assert {a: round(p.warmup_epochs * n) for (a, p), n in zip(plans.items(), (3, 10, 8))} == {a: 30 for a in plans}
    assert L.plan_arms(sel, s.model_copy(update={"steps": 7}))["real"].stop_steps == 7
    by_epochs = L.plan_arms(sel, s.model_copy(update={"budget": "epochs"}))
    assert {p.epochs for p in by_epochs.values()} == {3} and {p.stop_steps for p in by_epochs.values()} == {None}


@pytest.mark.ray
def test_matched_steps_and_seeds_through_ray_train(tmp_path, real_yolo, ray_local, offline):
    version = _publish_synthetic(tmp_path / "reg", SYN_SPEC)
    # mixed: 6 real + 6 synthetic at batch 4 = 3 steps per epoch, real only 2: at 1 epoch of the
    # mixed arm, real only must run 1.5 epochs to get the same 3 optimizer steps
    s = RetrainSettings(epochs=1, imgsz=64, batch=4, workers=0, seeds=[0, 1], min_gain=0.5,
                        train_args={"plots": False})
    published = tmp_path / "reg" / "syn-el" / "v1"
    before = {p: p.read_bytes() for p in sorted(published.rglob("*")) if p.is_file()}
    c = L.retrain(version, real_yolo, real_yolo, s)
    assert c["skipped"] is False and c["seeds"] == [0, 1] and c["budget"] == "steps"
    assert {p: p.read_bytes() for p in sorted(published.rglob("*")) if p.is_file()} == before  # published = frozen
    out = tmp_path / "reg" / "syn-el" / "_extras" / "v1" / "retrain" / c["run_id"]
    saved = json.loads((out / "comparison.json").read_text())
    assert set(saved["arms"]) == {"real", "mixed"}
    for arm, a in saved["arms"].items():
        assert set(a["seeds"]) == {"0", "1"}
        for seed, r in a["seeds"].items():
            m = json.loads((out / arm / f"seed{seed}" / "metrics.json").read_text())
            assert m["steps"] == 3 == r["steps"]  # counted from the optimizer's own step calls
            assert m["network_attempts"] == [] and set(m["per_class"]) == {"crack", "cross_crack", "dark_area"}
            assert (out / arm / f"seed{seed}" / "weights" / "last.pt").stat().st_size > 100_000
            assert all(0.0 <= r[k] <= 1.0 for k in ("map50", "map50_95", "precision", "recall"))
            assert r["curve"]["steps"][-1] == 3
            assert [p["threads"] for p in m["phases"]] == [1]  # 2 runs at once on 2 CPUs: one each
        vals = [r["map50"] for r in a["seeds"].values()]
        assert a["summary"]["map50"]["mean"] == pytest.approx(sum(vals) / 2)
    assert saved["arms"]["real"]["seeds"]["0"]["epochs"] == 1.5 and saved["arms"]["mixed"]["seeds"]["0"]["epochs"] == 1.0
    assert saved["arms"]["real"]["seeds"]["0"]["images_seen"] == 6 + 4  # one epoch, then the first batch of the next
    g = saved["gains"]["mixed_vs_real"]["map50"]
    per_seed = [saved["arms"]["mixed"]["seeds"][k]["map50"] - saved["arms"]["real"]["seeds"][k]["map50"] for k in ("0", "1")]
    assert [g["per_seed"]["0"], g["per_seed"]["1"]] == pytest.approx(per_seed)
    assert g["mean"] == pytest.approx(sum(per_seed) / 2) and g["ci95"][0] <= g["mean"] <= g["ci95"][1]
    assert saved["steps_matched"] is True and "same number of optimizer steps (3)" in saved["budget_note"]
    assert saved["flagged"] is (g["mean"] < 0.5)
    html = (out / "report.html").read_text()
    assert "real + synthetic" in html and "mAP50 per epoch" in html and "data:image/png;base64," in html
    assert f'href="{c["run_id"]}/report.html"' in (out.parent / "index.html").read_text()
    assert L.cpus_per_run(s, 1) == 2 and L.cpus_per_run(s.model_copy(update={"gpus": 1}), 1) == 0  # a lone run: both

    # the same trigger again (here: the job's own command line, run in-process) does not train twice
    stamp = (out / "comparison.json").stat().st_mtime_ns
    argv = shlex.split(T.job_entrypoint(version, real_yolo, real_yolo, s, c["run_id"]))[3:]
    from factory.cli import app

    r = CliRunner().invoke(app, ["retrain", *argv])
    assert r.exit_code == 0, r.output
    assert "already finished" in r.output
    assert (out / "comparison.json").stat().st_mtime_ns == stamp

    # budget: epochs (the old behaviour), starting from the first run's own weights (a local .pt)
    pt = out / "real" / "seed0" / "weights" / "last.pt"
    e = L.retrain(version, real_yolo, real_yolo, s.model_copy(update={"model": str(pt), "budget": "epochs", "seeds": [0]}))
    assert {a: e["arms"][a]["seeds"]["0"]["steps"] for a in ("real", "mixed")} == {"real": 2, "mixed": 3}
    assert e["steps_matched"] is False and "different optimizer step counts" in e["budget_note"]
    assert e["gains"]["mixed_vs_real"]["map50"]["ci95"] is None and e["settings"]["model"] == str(pt.resolve())


def test_cpu_runs_share_the_cluster_but_fit_one_node(monkeypatch):
    """A CPU run's one worker lives on one node: its share of the cluster's CPUs is capped
    at the largest live node's (asking for more would wait forever)."""
    import ray

    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": {"CPU": 4.0}},
                                               {"Alive": True, "Resources": {"CPU": 4.0}},
                                               {"Alive": False, "Resources": {"CPU": 64.0}}])
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 8.0})
    s = RetrainSettings()
    assert L.cpus_per_run(s, 1) == 4  # one node's, not the cluster's 8
    assert [L.cpus_per_run(s, k) for k in (2, 3, 4, 16)] == [4, 2, 2, 1]
    assert L.cpus_per_run(s.model_copy(update={"gpus": 0.5}), 1) == 0


def test_publish_trigger_uses_the_commands_defaults(tmp_path, real_yolo):
    """The publish trigger submits the job with the spec's settings and, for the
    rest, exactly the defaults `factory retrain` uses: matched steps."""
    from factory.cli.retrain_cmds import _settings

    class Client:
        def __init__(self):
            self.jobs = []

        def submit_job(self, **kw):
            self.jobs.append(kw)
            return kw["submission_id"]

    spec = spec_from_dict({**SYN_SPEC, "retrain": {"real_train": real_yolo, "real_eval": real_yolo, "real_limit": 4}})
    version = _publish_synthetic(tmp_path / "reg", spec.model_dump(mode="json", by_alias=True))
    client = Client()
    job_id = T.on_publish(spec, version, client=client)
    assert len(client.jobs) == 1 and job_id == client.jobs[0]["submission_id"]
    argv = shlex.split(client.jobs[0]["entrypoint"])
    sent = json.loads(argv[argv.index("--config") + 1])
    assert sent == {**_settings(None).model_dump(mode="json"), "real_limit": 4}
    assert sent["budget"] == "steps" and sent["arms"] == ["real", "mixed"]
    assert T.on_publish(spec, version, client=client) == job_id and len(client.jobs) == 1  # once


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

    client = JobSubmissionClient(job_server)
    root = tmp_path / "reg"
    spec_dict = {**SYN_SPEC, "count": 4, "defects": SYN_SPEC["defects"][:2],
                 "retrain": {"on": "publish", "real_train": real_yolo, "real_eval": real_yolo, "epochs": 1, "imgsz": 64,
                             "address": job_server}}
    text = yaml.safe_dump(spec_dict).replace("'on':", "on:")
    spec = parse_spec(text)  # a bare `on:` key, as users write it (YAML 1.1 reads it as True)
    assert spec.retrain.on == "publish"

    uri = _publish_synthetic(root, spec.model_dump(mode="json", by_alias=True))
    notes = T.publish_hook(spec, uri)  # what the pipeline calls once the manifest is written
    jobs = _jobs(client)
    assert len(jobs) == 1, [j.submission_id for j in jobs]
    job_id = jobs[0].submission_id
    assert notes == [f"retrain: submitted Ray job {job_id} (results under {uri.replace('/v1', '/_extras/v1')}/retrain/)"]
    assert "jobs.retrain" in jobs[0].entrypoint and jobs[0].metadata["version"] == uri
    record = json.loads(next((root / "syn-el" / "_extras" / "v1" / "retrain").glob("*/trigger.json")).read_text())
    assert record["job_id"] == job_id and record["reason"] == "publish"
    assert T.on_publish(spec, uri) == job_id  # the same trigger again: no second job
    assert len(_jobs(client)) == 1

    # no retrain section: publishing submits nothing; the watcher picks the version up, once
    plain = {**SYN_SPEC, "name": "plain-el"}
    assert T.on_publish(spec_from_dict(plain), "unused") is None
    _publish_synthetic(root, plain)
    from factory.data.adapters import load_real
    from factory.data.realset import publish_real

    publish_real(load_real("yolo", real_yolo), str(root), "real-pv")  # real data in the same registry: not retrained
    cfg = RetrainSettings(epochs=1, imgsz=64)
    first = T.watch_once(str(root), real_yolo, real_yolo, cfg, address=job_server)
    assert [(Path(e["version"]).parent.name, e["submitted"]) for e in first] == [("plain-el", True)]
    assert T.watch_once(str(root), real_yolo, real_yolo, cfg, address=job_server)[0]["submitted"] is False
    assert len(_jobs(client)) == 2
    for j in _jobs(client):  # the training itself is covered above; do not spend the CPU twice
        client.stop_job(j.submission_id)


def test_publish_without_a_job_server_is_a_note_not_a_failure(tmp_path, real_yolo):
    spec = spec_from_dict({**SYN_SPEC, "retrain": {"real_train": real_yolo, "real_eval": real_yolo,
                                                    "address": f"http://127.0.0.1:{_free_port()}"}})
    version = _publish_synthetic(tmp_path / "reg", spec.model_dump(mode="json", by_alias=True))
    notes = T.publish_hook(spec, version)
    assert len(notes) == 1 and "job not submitted" in notes[0] and "factory retrain" in notes[0]
    assert not list((tmp_path / "reg" / "syn-el" / "v1").glob("retrain/*/trigger.json"))  # the watcher can still pick it up


# --- issue 25: cheap, honest scoring; protocols -------------------------------------------

def test_retrain_settings_protocol_and_evals_fields():
    from pydantic import ValidationError

    s = RetrainSettings()
    assert (s.evals, s.schedule, s.finetune_fraction) == (5, "mix", 0.5)
    for bad, field in (({"evals": -1}, "evals"), ({"finetune_fraction": 0}, "finetune_fraction"),
                       ({"finetune_fraction": 1.5}, "finetune_fraction"), ({"schedule": "both"}, "schedule"),
                       ({"train_args": {"val": True}}, "train_args")):
        with pytest.raises(ValidationError) as e:
            RetrainSettings.model_validate(bad)
        assert [err["loc"][0] for err in e.value.errors()] == [field]
    assert RetrainSettings(evals=0).evals == 0
    # the spec's retrain: section and the publish trigger carry the same settings
    spec = spec_from_dict({**SYN_SPEC, "retrain": {"real_train": "/r", "real_eval": "/e", "schedule": "pretrain_finetune",
                                                    "finetune_fraction": 0.25, "evals": 2}})
    got = spec.retrain.settings()
    assert (got.schedule, got.finetune_fraction, got.evals) == ("pretrain_finetune", 0.25, 2)
    argv = shlex.split(T.job_entrypoint("file:///v", "/r", "/e", got, "rid"))
    sent = json.loads(argv[argv.index("--config") + 1])
    assert (sent["schedule"], sent["finetune_fraction"], sent["evals"]) == ("pretrain_finetune", 0.25, 2)
    with pytest.raises(ValueError, match="finetune_fraction"):
        spec_from_dict({**SYN_SPEC, "retrain": {"real_train": "/r", "real_eval": "/e", "finetune_fraction": 0}})


def test_eval_points_are_evenly_spaced_inside_the_run():
    from factory.retrain.arm import Evaluations, eval_points

    assert eval_points(600, 5) == [100, 200, 300, 400, 500]
    assert eval_points(600, 0) == [] and eval_points(None, 5) == []
    assert eval_points(3, 5) == [1, 2]  # tiny runs: fewer distinct points, never the end (the final score is)
    ev = Evaluations(eval_points(12, 5), 12)  # points 2, 4, 6, 8, 10
    assert [ev.due(n) for n in (3, 6, 9, 12)] == [True, True, True, False]  # several points in one epoch: once


def test_plan_pretrain_finetune_matches_the_real_arms_steps():
    sel = RD.Selection(["a"], _items([{0}] * 10), _items([{0}] * 30), [])
    s = RetrainSettings(batch=4, steps=40, arms=["real", "mixed"], schedule="pretrain_finetune", finetune_fraction=0.25)
    plans = L.plan_arms(sel, s)
    ph = plans["mixed"].phases
    assert [p["data"] for p in ph] == ["synthetic", "real"]
    assert [p["stop_steps"] for p in ph] == [30, 10] and sum(p["stop_steps"] for p in ph) == plans["real"].stop_steps == 40
    assert ph[0]["epochs"] == 4 and ph[1]["epochs"] == 4  # 8 and 3 batches per epoch
    assert ph[0]["close_mosaic"] == 0 and ph[1]["close_mosaic"] > 0  # the mosaic-free tail ends the run
    assert plans["real"].phases is None and plans["mixed"].total_steps == 40
    # a real-only run plans like the real arm of a joint run (warm-up from the mixed arm's epochs)
    assert L.plan_arms(sel, s.model_copy(update={"arms": ["real"]}))["real"] == plans["real"]
    with pytest.raises(C.RetrainError, match="at least 2"):
        L.plan_arms(sel, s.model_copy(update={"steps": 1}))


def test_validations_are_capped_and_counted_from_ultralytics(tmp_path, real_yolo, offline):
    """A run validates at most `evals` times while training plus the final score,
    counted by the validator's own on_val_start callback (what ultralytics ran);
    on the CPU it trains with the CPUs its worker holds, not ultralytics' one thread on 2 cores."""
    from factory.retrain.arm import train_arm

    s = RetrainSettings(steps=12, imgsz=64, batch=2, workers=0, evals=5, arms=["real"], train_args={"plots": False})
    sel = RD.select(Path(real_yolo), Path(real_yolo), None, s, 0)
    plan = L.plan_arms(sel, s)["real"]  # 6 images, batch 2: 3 steps per epoch, 4 epochs
    m = train_arm("real", 0, tmp_path / "w", sel, s, plan, cpus=2)
    assert [p["threads"] for p in m["phases"]] == [2]
    v = m["validations"]
    assert m["steps"] == 12 and v["points"] == [2, 4, 6, 8, 10]
    assert v["total"] <= s.evals + 1 and v["final"] == 1
    # epochs end at steps 3, 6, 9, 12: points 2 | 4, 6 | 8 each once; 10 is covered by the final score
    assert v["during_training"] == 3 and m["curve"]["steps"] == [3, 6, 9, 12]
    assert m["curve"]["phase"][-1] == "final" and m["curve"]["map50"][-1] == m["map50"]
    assert m["train_seconds"] > 0 and m["val_seconds"] > 0


def test_pretrain_finetune_same_steps_and_no_real_image_in_pretraining(tmp_path, real_yolo, offline):
    from factory.retrain.arm import train_arm

    version = _publish_synthetic(tmp_path / "reg", SYN_SPEC)
    syn = Path(C.yolo_uri(version).removeprefix("file://"))
    s = RetrainSettings(steps=6, imgsz=64, batch=2, workers=0, evals=0, arms=["real", "mixed"], schedule="pretrain_finetune",
                        train_args={"plots": False})
    sel = RD.select(Path(real_yolo), Path(real_yolo), syn, s, 0)
    plans = L.plan_arms(sel, s)
    mixed = train_arm("mixed", 0, tmp_path / "m", sel, s, plans["mixed"])
    real = train_arm("real", 0, tmp_path / "r", sel, s, plans["real"])
    assert mixed["steps"] == real["steps"] == 6 and [p["steps"] for p in mixed["phases"]] == [3, 3]
    pre, fine = mixed["phases"]
    assert pre["train_dirs"] == ["synthetic/images"] and fine["train_dirs"] == ["real/images"]
    # what ultralytics loaded, by the file each laid-out image points at
    assert pre["loaded"] == {"real": 0, "synthetic": len(sel.synthetic), "other": 0}
    assert fine["loaded"] == {"real": len(sel.real), "synthetic": 0, "other": 0}
    assert mixed["schedule"] == "pretrain_finetune" and mixed["validations"] == {
        "during_training": 0, "final": 1, "total": 1, "points": [], "limit": 1}
    from factory.retrain.compare import compare

    c = compare({"real": {0: real}, "mixed": {0: mixed}}, s)
    assert c["schedule"] == "pretrain_finetune" and "synthetic images only for 50%" in c["protocol"]
    assert c["steps_matched"] is True and c["convergence"]["converged"] is None
    from factory.retrain.report import render_report

    c.update(run_id="r1", version="v", real_train="t", real_eval="e", settings=s.model_dump(mode="json"),
             data={"0": sel.counts})
    html = render_report(c)
    assert html.index("Converged") < html.index("Paired gain") < html.index("Arms (mean")
    assert "pretrain_finetune" in html and "synthetic, then real" in html
