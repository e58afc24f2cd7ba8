"""One shape per record: shard records (`ShardRecord`) and manifests (`Manifest`,
one schema for generated and imported versions), the commands that read them on
a registry holding both kinds, the one default root, and `factory submit` /
jobs/generate.py forwarding every option of `factory run`."""

from __future__ import annotations

import hashlib
import inspect
import json
import shlex
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from test_pipeline import tiny_spec
from typer.testing import CliRunner

from factory.cli import app
from factory.pipeline.records import RejectSummary, SampleSummary, ShardRecord
from factory.storage import Manifest, Registry


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _tiny_yolo(folder: Path) -> Path:
    """A two-class YOLO-layout set: 3 train images (one without boxes), 1 val image."""
    rng = np.random.default_rng(0)
    labels = {"train": {"a": "0 0.5 0.5 0.25 0.25\n1 0.2 0.2 0.1 0.1\n", "b": "0 0.4 0.6 0.2 0.3\n", "c": ""},
              "val": {"d": "1 0.5 0.5 0.3 0.3\n"}}
    for split, items in labels.items():
        (folder / "images" / split).mkdir(parents=True)
        (folder / "labels" / split).mkdir(parents=True)
        for stem, text in items.items():
            Image.fromarray(rng.integers(0, 255, (48, 48), dtype=np.uint8)).save(folder / "images" / split / f"{stem}.png")
            (folder / "labels" / split / f"{stem}.txt").write_text(text)
    (folder / "data.yaml").write_text(yaml.safe_dump({"train": "images/train", "val": "images/val", "nc": 2,
                                                      "names": ["crack", "spot"]}))
    return folder


@pytest.fixture(scope="module")
def both(ray_local, tmp_path_factory):
    """A registry holding a generated version (`factory run`) and an imported one (`factory data import`)."""
    from factory.pipeline import RunOptions, run_dataset
    from factory.spec import load_spec

    tmp = tmp_path_factory.mktemp("both")
    root = (tmp / "reg").as_uri()
    spec = load_spec(tiny_spec(tmp, count=12, name="gen"))
    r = run_dataset(spec, RunOptions(out=root, report=False))
    res = CliRunner().invoke(app, ["data", "import", "yolo", str(_tiny_yolo(tmp / "src")), "--root", root,
                                   "--name", "real-set"])
    assert res.exit_code == 0, res.output
    return root, r


# --- records ------------------------------------------------------------------------
def test_shard_record_round_trips_and_reads_the_older_rows():
    rec = ShardRecord("s0000000000", files=({"path": "parquet/s0.parquet", "sha256": "x", "bytes": 1},),
                      samples=(SampleSummary(0, "a", "train", "procedural", ((1, 2, 3, 4, 5),), phash=2**63 + 5),
                               SampleSummary(2, "c", "val", "procedural", ())),
                      rejects=(RejectSummary(1, "b", ("blank", "boxes")),), gate=("sanity",), node="n1")
    assert ShardRecord.of(rec.to_json()) == rec == ShardRecord.of(json.loads(rec.to_json()))
    assert rec.indices == [0, 1, 2]
    # the positional rows of records written before ShardRecord (five items: no hash)
    old = ShardRecord.of({"key": "s1", "files": [], "rejected_files": [], "rejects": [],
                          "samples": [[4, "d", "train", "procedural", [[0, 1, 1, 9, 9]]]]})
    assert old.samples[0] == SampleSummary(4, "d", "train", "procedural", ((0, 1, 1, 9, 9),), None)


def test_manifest_reads_old_and_new_and_gives_back_what_it_read():
    generated = {"format": "defect-factory/dataset-version/2", "name": "g", "version": 1, "spec_hash": "ab" * 32,
                 "counts": {"accepted": 3, "rejected": 1, "surplus": 0, "processed": 4, "pass_rate": 1.0,
                            "negatives": 0, "images_per_class": {"a": 3}, "boxes_per_class": {"a": 4},
                            "per_generator": {"procedural": 3}, "splits": {"train": 3}},
                 "seconds": 3, "spec": {"name": "g", "x": [1, 2.5]}, "something_new": {"k": 1}}
    m = Manifest.of(generated)
    assert m.kind == "generated" and m.counts.published == 3 and m.to_dict() == generated
    assert m["counts"]["accepted"] == 3 and m.get("something_new") == {"k": 1} and "kind" not in m
    real = Manifest.of({"kind": "real", "name": "r", "version": 2, "classes": ["a"],
                        "counts": {"images": 5, "splits": {"train": 5}, "boxes_per_class": {"a": 7}, "negatives": 1}})
    assert real.counts.published == 5 and real.counts.images_per_class is None and real.spec_hash is None


# --- the two crashes: a registry with a generated and an imported version ---------------
def test_datasets_list_shows_generated_and_imported_versions(both):
    root, _ = both
    res = CliRunner().invoke(app, ["datasets", "list", root])
    assert res.exit_code == 0, res.output
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[1:-1]]
            for line in res.output.splitlines() if line.count("│") > 5 and "name" not in line}
    assert rows["gen"][2:6] == ["published", "generated", "12", rows["gen"][5]] and rows["gen"][5].isdigit()
    assert rows["real-set"][2:6] == ["published", "real", "4", "-"]
    assert "crack, spot" in rows["real-set"][6]


def test_show_prints_both_kinds(both):
    root, _ = both
    res = CliRunner().invoke(app, ["show", f"{root}/real-set@1"])
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output and "real-set@1 (real)" in res.output
    assert "imported real data" in res.output and "formats yolo" in res.output
    crack = next(line for line in res.output.splitlines() if line.startswith("│ crack"))
    assert [c.strip() for c in crack.split("│")[1:-1]] == ["crack", "2", "2"]  # 2 images, 2 boxes
    res = CliRunner().invoke(app, ["show", f"{root}/gen@1"])
    assert res.exit_code == 0, res.output
    assert "gen@1" in res.output and "pass rate" in res.output and "gate:" in res.output


def test_pull_and_read_manifest_on_both_kinds(both, tmp_path):
    from factory.retrain.config import read_manifest

    root, r = both
    res = CliRunner().invoke(app, ["pull", f"{root}/real-set@1", "--format", "yolo", "--to", str(tmp_path / "y")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "y" / "data.yaml").is_file()
    res = CliRunner().invoke(app, ["pull", f"{root}/real-set@1", "--format", "parquet", "--to", str(tmp_path / "p")])
    assert res.exit_code == 1 and "no parquet files (formats: yolo)" in res.output
    reg = Registry(root)
    assert read_manifest(reg.version_uri("real-set", 1)).kind == "real"
    m = read_manifest(r.uri)
    stored = json.loads(Path(r.uri.removeprefix("file://"), "manifest.json").read_text())
    assert m.kind == "generated" and m.to_dict() == stored and "kind" not in stored  # generated manifests unchanged


# --- published means frozen ----------------------------------------------------------------
def test_metrics_real_leaves_every_file_of_the_version_as_it_was(both, tmp_path):
    """`factory metrics --real` (no Inception, no anomaly checkpoint: it trains its own
    extractor) writes everything under `_extras/`, nothing into the version."""
    root, r = both
    version = Path(r.uri.removeprefix("file://"))
    real = tmp_path / "real"
    real.mkdir()
    for i in range(12):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (64, 64), dtype=np.uint8)).save(real / f"r{i}.png")
    before = digests(version)
    res = CliRunner().invoke(app, ["metrics", f"{root}/gen@1", "--real", str(real), "--size", "32", "--json"])
    assert res.exit_code == 0, res.output
    assert digests(version) == before
    extras = version.parent / "_extras" / version.name / "metrics"
    assert (extras / "quality.json").is_file()


# --- one default root; the job and submit forward every option of `factory run` --------------
def test_one_default_root(monkeypatch):
    from factory.storage import default_root

    monkeypatch.delenv("FACTORY_ROOT", raising=False)
    assert default_root() == "file://./datasets"
    monkeypatch.setenv("FACTORY_ROOT", "s3://b/p")
    assert default_root() == "s3://b/p"


def test_submit_forwards_every_run_option(tmp_path, monkeypatch):
    from factory.cli import run_cmds

    sent = []

    class Client:
        def submit_job(self, **kw):
            sent.append(kw)
            return "job-1"

    monkeypatch.setattr(run_cmds, "job_client", lambda address: Client())
    run_opts = set(inspect.signature(run_cmds.run).parameters) - {"spec", "address"}
    assert run_opts == set(inspect.signature(run_cmds.submit).parameters) - {"spec", "address"}
    spec = tiny_spec(tmp_path)
    res = CliRunner().invoke(app, ["submit", str(spec), "--address", "http://h:8265", "--out", "s3://b/my root",
                                   "--version", "3", "--resume", "--restart", "--actors", "5",
                                   "--overprovision", "1.7", "--verbose"])
    assert res.exit_code == 0, res.output
    argv = shlex.split(sent[0]["entrypoint"])
    assert argv[:4] == ["python", "jobs/generate.py", "--spec-env", "FACTORY_SPEC_YAML"]
    assert argv[4:] == ["--out", "s3://b/my root", "--version", "3", "--resume", "--restart", "--actors", "5",
                        "--overprovision", "1.7", "--verbose"]
    assert {a.lstrip("-") for a in argv if a.startswith("--")} - {"spec-env"} == run_opts
    assert sent[0]["runtime_env"]["env_vars"]["FACTORY_SPEC_YAML"] == spec.read_text()


def test_job_entrypoint_runs_factory_run(tmp_path, monkeypatch):
    """jobs/generate.py is `factory run`: same options (a file or --spec-env), same checks."""
    import importlib.util

    spec_path = Path(__file__).resolve().parents[1] / "jobs" / "generate.py"
    mod = importlib.util.spec_from_file_location("jobs_generate", spec_path)
    job = importlib.util.module_from_spec(mod)
    mod.loader.exec_module(job)
    seen = []
    monkeypatch.setattr(job, "app", lambda argv, prog_name: seen.append((argv, Path(argv[1]).read_text())))
    monkeypatch.setenv("SPEC_YAML", "name: x\n")
    job.main(["--spec-env", "SPEC_YAML", "--overprovision", "1.5", "--address", "auto"])
    argv, text = seen[0]
    assert argv[0] == "run" and argv[1].endswith("SPEC_YAML.yaml") and text == "name: x\n"
    assert argv[2:] == ["--overprovision", "1.5", "--address", "auto"]
    (tmp_path / "s.yaml").write_text("name: y\n")
    job.main([str(tmp_path / "s.yaml"), "--actors", "2"])
    assert seen[1][0] == ["run", str(tmp_path / "s.yaml"), "--actors", "2"]
    with pytest.raises(SystemExit) as e:  # the real command line: an invalid spec exits 2, as `factory run` does
        monkeypatch.setattr(job, "app", app)
        (tmp_path / "bad.yaml").write_text("name: BAD\n")
        job.main([str(tmp_path / "bad.yaml")])
    assert e.value.code == 2
