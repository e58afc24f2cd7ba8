"""What people read: the version's report.html (written by `factory run`) and a retrain
run's report.html, opened in headless Chromium (it renders, every image loads, no
console error); and `factory metrics` as tables, `--json` for machines.

The browser tests need a `chromium` binary (`.ci/run` installs Debian's package) and
the `websockets` package (test extra); without them they skip and say why."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from browser import check_page, chromium
from test_pipeline import tiny_spec
from test_retrain import SYN_SPEC, _publish_synthetic, real_yolo  # noqa: F401  (real_yolo: a fixture)
from typer.testing import CliRunner

from factory.cli import app


def _need_browser() -> None:
    if chromium() is None:
        pytest.skip("no chromium binary on PATH (apt-get install chromium; .ci/run does)")
    pytest.importorskip("websockets", reason="the websockets package (test extra) talks to Chromium's DevTools")


def _assert_renders(path: Path, min_images: int) -> None:
    page = check_page(path)
    assert not page.errors, f"{path}: errors in the browser: {page.errors}"
    assert page.title and page.text_chars > 100, f"{path}: renders nearly empty ({page})"
    assert len(page.images) >= min_images, f"{path}: {len(page.images)} images, expected at least {min_images}"
    assert not page.broken_images, f"{path}: images that did not load: {page.broken_images}"


@pytest.fixture(scope="module")
def published(ray_local, tmp_path_factory) -> tuple[Path, str]:
    """A tiny version published by `factory run` (report on): (registry folder, NAME@VERSION ref)."""
    tmp = tmp_path_factory.mktemp("published")
    res = CliRunner().invoke(app, ["run", str(tiny_spec(tmp, count=10, shard=5)), "--out", str(tmp / "reg"), "--actors", "1"])
    assert res.exit_code == 0, res.output[-3000:] + repr(res.exception)
    return tmp / "reg", f"{(tmp / 'reg').as_uri()}/tiny@1"


def test_page_check_sees_broken_images_and_errors(tmp_path):
    """The checker itself: a missing image, console.error and an uncaught exception are all caught."""
    _need_browser()
    page = tmp_path / "bad.html"
    page.write_text('<!doctype html><html><head><title>bad</title></head><body><p>text</p><img src="missing.png" alt="x">'
                    '<script>console.error("boom"); nosuchfunction();</script></body></html>')
    r = check_page(page)
    assert [i["alt"] for i in r.broken_images] == ["x"]
    assert any("boom" in e for e in r.errors) and any("nosuchfunction" in e for e in r.errors)
    assert any("missing.png" in e for e in r.errors)


def test_version_report_renders_in_chromium(published):
    _need_browser()
    reg, _ = published
    report = reg / "tiny" / "v1" / "report.html"
    assert report.is_file()
    _assert_renders(report, min_images=2)  # box histograms + accepted samples (rejected only when any)


def test_retrain_report_renders_in_chromium(tmp_path, real_yolo, ray_local, monkeypatch):  # noqa: F811
    """A real (tiny) retrain run: one seed, real only vs mixed, one epoch at 64 px; its report.html."""
    _need_browser()
    from factory.retrain import launch as L
    from factory.spec.retrain import RetrainSettings

    monkeypatch.setenv("FACTORY_NO_NETWORK", "1")
    version = _publish_synthetic(tmp_path / "reg", SYN_SPEC)
    c = L.retrain(version, real_yolo, real_yolo, RetrainSettings(epochs=1, imgsz=64, batch=4, workers=0, seeds=[0],
                                                                 train_args={"plots": False}))
    out = tmp_path / "reg" / "syn-el" / "_extras" / "v1" / "retrain"
    _assert_renders(out / c["run_id"] / "report.html", min_images=1)
    _assert_renders(out / "index.html", min_images=0)


# --- factory metrics ------------------------------------------------------------------------


def test_metrics_prints_tables_and_json(published):
    reg, ref = published
    res = CliRunner().invoke(app, ["metrics", ref])
    assert res.exit_code == 0, res.output
    out = res.output
    assert "{'" not in out and "{}" not in out, f"raw Python dicts in the output:\n{out}"
    assert "tiny@1" in out and "pass rate 100.0%" in out and "spillover rate" in out
    assert "accepted samples per class" in out and "crack" in out and "black_spot" in out
    assert "no sample was rejected" in out and "wrote file://" in out
    res = CliRunner().invoke(app, ["metrics", ref, "--json"])
    assert res.exit_code == 0, res.output
    m = json.loads(res.output)
    assert m["dataset"] == "tiny@1" and m["samples"] == 10 == m["accepted"] and m["pass_rate"] == 1.0
    assert set(m["images_per_class"]) <= {"crack", "black_spot", "(negative)"}
    assert m["written_to"].endswith("/tiny/_extras/v1/metrics/quality.json")
