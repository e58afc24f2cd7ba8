"""Issue 16, item 6: the spec is honoured exactly, as a user sees it through the CLI.
`factory plan` shows the exact class mix; `factory run` publishes it, with boxes
that are the planned ones, the requested val share, and a report that sets
requested against published box sizes."""

from __future__ import annotations

import io
import json

import pyarrow.parquet as pq
import yaml
from test_publish import no_ray  # noqa: F401 - the fixture: rounds in this process, no Ray
from typer.testing import CliRunner

from factory.cli import app
from factory.planning import plan
from factory.spec import load_spec
from factory.storage import uri as U


def spec_file(tmp_path, count=48, **extra):
    spec = {
        "name": "exact", "seed": 9, "count": count, "image": {"width": 64, "height": 64, "channels": 1},
        "negatives": 0.1,
        "defects": [
            {"class": "crack", "weight": 2, "boxes": {"size": {"min": 0.15, "max": 0.35}, "aspect": {"min": 0.5, "max": 2}}},
            {"class": "black_spot", "weight": 1, "boxes": {"size": {"min": 0.1, "max": 0.2}}},
        ],
        "output": {"shard_size": 8}, **extra,
    }
    path = tmp_path / "exact.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_factory_plan_shows_the_exact_mix(tmp_path):
    """48 images at negatives 0.1 and weights 2:1 -> 5 negatives (4.8), 29 cracks (28.8), 14 spots (14.4)."""
    res = CliRunner().invoke(app, ["plan", str(spec_file(tmp_path))], terminal_width=200)
    assert res.exit_code == 0, res.output
    assert "48 items" in res.output and "5 negatives" in res.output
    rows = {line.split("│")[1].strip(): line.split("│")[2].strip() for line in res.output.splitlines()
            if line.count("│") >= 4 and line.split("│")[1].strip() in ("crack", "black_spot")}
    assert rows == {"crack": "29", "black_spot": "14"}


def test_factory_run_publishes_the_spec_exactly(tmp_path, no_ray):  # noqa: F811
    path = spec_file(tmp_path, count=20, output={"shard_size": 8, "val_fraction": 0.25})
    root = str(tmp_path / "reg")
    res = CliRunner().invoke(app, ["run", str(path), "--out", root, "--version", "1"], terminal_width=200)
    assert res.exit_code == 0, res.output[-3000:] + repr(res.exception)
    uri = U.join(U.to_uri(root), "exact/v1")
    m = json.loads(U.read_bytes(U.join(uri, "manifest.json")))
    c = m["counts"]
    assert c["rejected"] == 0  # exactness is promised while the gate rejects nothing
    assert c["negatives"] == 2 and c["images_per_class"] == {"crack": 12, "black_spot": 6}
    assert c["splits"] == {"train": 15, "val": 5}
    # the published (tight) boxes are the planned boxes: the renderer drew each defect to span its box
    spec = load_spec(path)
    planned = {it.index: [(b.class_id, b.x1, b.y1, b.x2, b.y2) for b in it.boxes] for it in plan(spec)}
    rows = [r for p in sorted(U.list_files(uri)) if p.startswith("parquet/")
            for r in pq.read_table(io.BytesIO(U.read_bytes(U.join(uri, p)))).to_pylist()]
    assert len(rows) == 20
    for r in rows:
        assert [(b["class_id"], b["x1"], b["y1"], b["x2"], b["y2"]) for b in r["boxes"]] == planned[r["item_index"]]
        assert r["split"] == ("val" if r["item_index"] % 4 == 3 else "train")
    html = U.read_bytes(U.join(uri, "report.html")).decode()
    assert "Requested (the spec, and the boxes planned for the first 20 plan items)" in html
    assert "uniform 0.15..0.35" in html and "uniform 0.5..2" in html
