"""Published means frozen: what is computed after publishing (metrics, retraining
runs) lands beside the version (`<name>/_extras/v<N>/`), never inside it."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from test_pipeline import tiny_spec

from factory.pipeline import RunOptions, run_dataset
from factory.spec import load_spec
from factory.storage.registry import Registry, extras_for


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_metrics_never_write_into_a_published_version(ray_local, tmp_path):
    from factory.quality.metrics import dataset_metrics

    spec = load_spec(tiny_spec(tmp_path, count=6, name="frozen"))
    spec.output.formats = ["parquet"]
    r = run_dataset(spec, RunOptions(out=str(tmp_path / "ds"), report=False))
    version = Path(r.uri.removeprefix("file://"))
    before = digests(version)
    out = dataset_metrics(f"frozen@{r.version}", root=(tmp_path / "ds").as_uri())
    assert digests(version) == before
    extras = Registry((tmp_path / "ds").as_uri()).extras_uri("frozen", r.version)
    assert extras == extras_for(r.uri) and out["written_to"] == extras + "/metrics/quality.json"
    assert (tmp_path / "ds" / "frozen" / "_extras" / f"v{r.version}" / "metrics" / "quality.json").is_file()


def test_extras_for_refuses_what_is_not_a_version_folder():
    assert extras_for("s3://b/root/name/v12") == "s3://b/root/name/_extras/v12"
    with pytest.raises(ValueError, match="not a version folder"):
        extras_for("s3://b/root/name")
