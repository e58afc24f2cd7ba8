"""Small things a new user meets in the first hour (issue 28, item 12)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from typer.testing import CliRunner

from factory.cli import app

REPO = Path(__file__).resolve().parents[1]


def test_ctrl_c_says_how_to_resume_at_once(monkeypatch, tmp_path):
    """The hint comes with the interrupt, not after Ray has wound down."""
    import factory.pipeline

    def interrupted_run(spec, options, on_progress=None):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)
        raise AssertionError("SIGINT did not interrupt")

    monkeypatch.setattr(factory.pipeline, "run_dataset", interrupted_run)
    before = signal.getsignal(signal.SIGINT)
    try:
        r = CliRunner().invoke(app, ["run", str(REPO / "specs" / "demo-pv-el.yaml"), "--out", str(tmp_path / "reg")])
    finally:
        signal.signal(signal.SIGINT, before)
    assert r.exit_code == 130, r.output
    assert "interrupted: nothing new is published" in r.output
    assert f"factory run {REPO / 'specs' / 'demo-pv-el.yaml'} --out {tmp_path / 'reg'} --resume" in " ".join(r.output.split())


def test_retrain_help_shows_the_defaults():
    from factory.spec.retrain import RetrainSettings

    r = CliRunner().invoke(app, ["retrain", "--help"], env={"COLUMNS": "400", "TERM": "dumb"})
    rows = {ln.strip("│ ").split()[0]: ln for ln in r.output.splitlines() if ln.strip("│ ").startswith("--")}
    d = RetrainSettings()
    for option, value in [("--imgsz", d.imgsz), ("--batch", d.batch), ("--epochs", d.epochs), ("--evals", d.evals),
                          ("--schedule", d.schedule), ("--finetune-fraction", d.finetune_fraction),
                          ("--synthetic-ratio", d.synthetic_ratio), ("--model", d.model)]:
        assert f"[default: ({value})]" in rows[option], rows[option]


def test_counts_of_one_are_singular(tmp_path):
    spec = tmp_path / "one.yaml"
    spec.write_text("name: one\ncount: 1\nimage: {width: 64, height: 64}\ndefects: [{class: crack}]\n")
    r = CliRunner().invoke(app, ["validate", str(spec)])
    assert r.exit_code == 0, r.output
    assert "1 image" in r.output and "1 images" not in r.output
