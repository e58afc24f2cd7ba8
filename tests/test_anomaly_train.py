"""The anomaly trainer under Ray Train: 2 CPU workers to the end, a checkpoint per epoch,
resume from the latest one, and a weights_only checkpoint the gate loads."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image


def _normal_folder(root, n=6, size=(40, 56)):
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        img = np.clip(128 + rng.normal(0, 6, size), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / f"{i}.png")
    return root


TINY = dict(patch_size=16, patches_per_image=8, width=4, fused=8, bottleneck=4, heads=1, head_width=4, batch_size=4,
            threads=1, sigma=1.0)


@pytest.mark.ray
def test_uiidd_disc_two_workers_checkpoint_and_resume(ray_local, tmp_path):
    from factory.quality.anomaly.detector import AnomalyDetector
    from factory.training.anomaly import AnomalyTrainConfig, train_anomaly

    normal = _normal_folder(tmp_path / "normal")
    cfg = AnomalyTrainConfig(method="uiidd-disc", epochs=2, cpus_per_worker=0.5, **TINY)
    out = tmp_path / "ckpt"
    storage = str(tmp_path / "ray")
    res = train_anomaly(str(normal), f"file://{out}", cfg, num_workers=2, storage_path=storage, run_name="gate")
    # 5 training images x 8 patches = 40 patches -> 20 per worker -> 5 batches of 4 on each rank
    assert res["train_images"] == 5 and res["metrics"]["epoch"] == 1 and res["metrics"]["steps"] == 5
    assert (out / "model.pt").exists() and json.loads((out / "config.json").read_text())["method"] == "uiidd-disc"
    weights = torch.load(out / "model.pt", weights_only=True)  # plain state dicts only
    assert set(weights) == {"uiidd", "head"}
    det = AnomalyDetector.load(str(out))
    assert det.method == "uiidd-disc" and det.patch.size == 16
    heat = det.heat_maps([np.full((30, 50), 128, np.uint8)], original_size=True)[0]
    assert heat.shape == (30, 50) and 0 <= heat.min() and heat.max() <= 1  # probabilities, stitched to the image

    # the same run name resumes from the epoch-1 checkpoint: only epoch 2 is trained
    cfg3 = AnomalyTrainConfig(method="uiidd-disc", epochs=3, cpus_per_worker=0.5, **TINY)
    res3 = train_anomaly(str(normal), None, cfg3, num_workers=2, storage_path=storage, run_name="gate")
    assert res["metrics"]["first_epoch"] == 0
    assert res3["metrics"]["epoch"] == 2 and res3["metrics"]["first_epoch"] == 2  # one epoch, not three


@pytest.mark.ray
def test_uiidd_method_trains_and_scores_in_patches(ray_local, tmp_path):
    from factory.training.anomaly import AnomalyTrainConfig, train_anomaly

    normal = _normal_folder(tmp_path / "normal", n=4)
    cfg = AnomalyTrainConfig(method="uiidd", epochs=1, **TINY)
    res = train_anomaly(str(normal), None, cfg, storage_path=str(tmp_path / "ray"))
    det = res["detector"]
    assert det.method == "uiidd" and det.head is None and res["source"] == "simulated"
    assert set(det.calib.image_thresholds) == {"f1", "youden", "recall90"}
    assert det.heat_maps([np.full((20, 70), 100, np.uint8)], original_size=True)[0].shape == (20, 70)


def test_config_errors_name_the_field():
    from factory.training.anomaly import AnomalyTrainConfig

    with pytest.raises(ValueError, match="method"):
        AnomalyTrainConfig(method="draem")
    with pytest.raises(ValueError, match="patch_size"):
        AnomalyTrainConfig(patch_size=30)


@pytest.mark.ray
def test_train_command_takes_labelled_defects_from_a_spec(ray_local, tmp_path):
    """`--defects-from SPEC`: the spec's own generators draw labelled defects for the head's
    simulated anomalies, and the checkpoint records where they came from."""
    from pathlib import Path

    from typer.testing import CliRunner

    from factory.cli import app

    spec = Path(__file__).resolve().parents[1] / "specs" / "demo-pv-el.yaml"
    normal = _normal_folder(tmp_path / "normal", n=5, size=(48, 48))
    out = tmp_path / "gate"
    args = ["train", "anomaly", "--method", "uiidd-disc", "--normal", str(normal), "--out", f"file://{out}", "--patch-size", "16", "--scale", "0.5",
            "--patches-per-image", "4", "--epochs", "1", "--width", "4", "--batch-size", "4"]
    both = CliRunner().invoke(app, args + ["--defects", str(normal), "--defects-from", str(spec)])
    assert both.exit_code != 0 and "not both" in both.output
    res = CliRunner().invoke(app, args + ["--defects-from", str(spec), "--n-defects", "3"])
    assert res.exit_code == 0, res.output
    meta = json.loads((out / "config.json").read_text())["meta"]
    assert meta["defect_source"].startswith("3 labelled samples drawn by the generators of spec demo-pv-el")
