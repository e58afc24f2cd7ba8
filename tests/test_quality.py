"""Quality gate: UIIDD loss terms, heat-map localization, spillover, sanity and
duplicate checks, threshold rules, a tiny Ray Train run, and the spillover
estimate against procedural ground truth. All tiny and CPU-only."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from factory.core import Box, Sample, WorkItem
from factory.quality.anomaly.loss import (
    LossWeights,
    discriminator_loss,
    feature_matching,
    generator_ns_loss,
    l2_penalty,
    mdaae_loss,
)
from factory.quality.anomaly.model import ModelConfig, MultiLevelFusion, SelfAttention, UIIDDModel
from factory.quality.anomaly.thresholds import auroc, f1_max_threshold, recall_threshold, youden_threshold
from factory.quality.sanity import NearDuplicateScorer, SanityScorer, hamming, phash
from factory.quality.spillover import SpilloverScorer, extents_from_binary, spillover

torch.set_num_threads(1)  # 2 threads spin badly on a shared 2-core CPU


def _item(w=64, h=64, boxes=(), i=0):
    return WorkItem(f"t{i}", i, "procedural", None, w, h, 1, i, tuple(boxes))


def _box(x1, y1, x2, y2, k=0):
    return Box(k, "crack", x1, y1, x2, y2)


# --- loss terms -----------------------------------------------------------------


def test_mdaae_loss_terms():
    z = torch.randn(2, 4, 8, 8)
    h = torch.zeros(2, 3, 2, 2)
    assert mdaae_loss(z, z.clone(), h, None, sparse=0.1, l2=0.0) == 0
    # reconstruction: mean squared error; sparsity: mean |h|
    assert torch.isclose(mdaae_loss(z, z + 1, h, None, 0.0, 0.0), torch.tensor(1.0))
    assert torch.isclose(mdaae_loss(z, z, h + 2, None, 0.5, 0.0), torch.tensor(1.0))
    # L2 weight penalty: sum of squared weights (biases excluded)
    lin = torch.nn.Linear(2, 2)
    with torch.no_grad():
        lin.weight.fill_(1.0)
        lin.bias.fill_(5.0)
    assert torch.isclose(l2_penalty(lin), torch.tensor(4.0))
    assert torch.isclose(mdaae_loss(z, z, h, lin, 0.0, 0.25), torch.tensor(1.0))
    # the target carries no gradient
    zz = z.clone().requires_grad_(True)
    zh = torch.zeros_like(z).requires_grad_(True)
    mdaae_loss(zz, zh, h).backward()
    assert zz.grad is None and zh.grad is not None


def test_gan_loss_terms():
    logits = torch.tensor([0.0, 2.0, -1.0])
    assert torch.allclose(generator_ns_loss(logits), -torch.log(torch.sigmoid(logits)).mean())
    assert generator_ns_loss(torch.tensor([3.0])) < generator_ns_loss(torch.tensor([0.0]))  # fooling D lowers it
    zero = torch.zeros(4)
    assert math.isclose(float(discriminator_loss(zero, zero)), 2 * math.log(2), rel_tol=1e-6)
    assert discriminator_loss(torch.full((4,), 4.0), torch.full((4,), -4.0)) < 0.1  # a separating D
    lin = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        lin.weight.fill_(2.0)
    assert math.isclose(float(discriminator_loss(zero, zero, lin, 0.5)), 2 * math.log(2) + 2.0, rel_tol=1e-6)
    f = [torch.randn(2, 4, 8, 8), torch.randn(2, 8, 4, 4)]
    assert feature_matching(f, [t.clone() for t in f]) < 1e-10
    assert feature_matching(f, [torch.randn_like(t) for t in f]) > 0.5


def test_fusion_weights_and_self_attention():
    fusion = MultiLevelFusion([4, 8, 16], fused=8, tau=1.0)
    feats = [torch.rand(2, 4, 16, 16), torch.rand(2, 8, 8, 8), torch.rand(2, 16, 4, 4)]
    with torch.no_grad():
        for w in fusion.w:
            w.copy_(torch.linspace(-1, 1, len(w)))
    alpha = fusion.level_weights(feats)
    assert torch.allclose(alpha.sum(1), torch.ones(2))
    fusion.tau = 0.1  # a lower temperature sharpens the level weights (eq. 3)
    assert fusion.level_weights(feats).max() > alpha.max()
    z, _ = fusion(feats)
    assert z.shape == (2, 8, 16, 16)
    sa = SelfAttention(16, heads=2)
    x = torch.randn(2, 16, 4, 4)
    y, attn = sa(x)
    assert attn.shape == (2, 16, 16) and torch.allclose(attn.sum(-1), torch.ones(2, 16), atol=1e-5)
    assert torch.equal(y, x)  # gamma starts at 0 (eq. 12)


# --- heat map localizes a blob ---------------------------------------------------


def _flat(n, S=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (0.5 + 0.02 * torch.randn(n, 1, S, S, generator=g)).clamp(0, 1)


@pytest.fixture(scope="module")
def blob_detector():
    """A tiny UIIDD model trained for a few seconds on flat noisy backgrounds, calibrated."""
    from factory.quality.anomaly.calibrate import calibrate
    from factory.quality.anomaly.detector import AnomalyDetector, ScoreConfig
    from factory.quality.anomaly.preprocess import PreprocessConfig
    from factory.training.anomaly_steps import augment, train_step

    torch.manual_seed(0)
    S = 32
    model = UIIDDModel(ModelConfig(image_size=S, width=8, fused=8, bottleneck=4, heads=1))
    og = torch.optim.Adam(model.generator.parameters(), 2e-3, betas=(0.5, 0.999))
    od = torch.optim.Adam(model.discriminator.parameters(), 2e-4, betas=(0.5, 0.999))
    g = torch.Generator().manual_seed(0)
    for step in range(120):
        x_in, x_t = augment(_flat(8, S, step), 0.01, True, g)
        train_step(model.generator, model.discriminator, og, od, x_in, x_t, LossWeights())
    det = AnomalyDetector(model, PreprocessConfig(image_size=S), ScoreConfig(sigma=1.0))
    calibrate(det, _flat(16, S, 999))
    return det


def _blob_image(S=32, cy=10, cx=20, r=3, value=0.95):
    yy, xx = np.mgrid[0:S, 0:S]
    img = np.full((S, S), 0.5) + np.random.default_rng(3).normal(0, 0.02, (S, S))
    blob = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    img[blob] = value
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)[:, :, None], blob


def test_heat_map_localizes_bright_blob(blob_detector):
    img, blob = _blob_image()
    heat = blob_detector.heat_maps([img])[0]
    y, x = np.unravel_index(np.argmax(heat), heat.shape)
    assert abs(y - 10) <= 3 and abs(x - 20) <= 3, (y, x)
    assert heat[blob].mean() > heat[~blob].mean() + 3 * heat[~blob].std()
    flat = (np.clip(_flat(1, 32, 5)[0, 0].numpy(), 0, 1) * 255).astype(np.uint8)[:, :, None]
    assert blob_detector.image_scores([img])[0] > blob_detector.image_scores([flat])[0]


def test_gate_with_model_accepts_boxed_blob_rejects_misplaced_box(blob_detector):
    from factory.quality.gate import AnomalyGate

    img, _ = _blob_image()
    gate = AnomalyGate(blob_detector, spillover_max=0.3, rule="f1", margin=0.1)
    good = Sample(_item(32, 32, [_box(14, 4, 27, 17)]), img, [_box(14, 4, 27, 17)])
    wrong = Sample(_item(32, 32, [_box(0, 20, 10, 30)], 1), img, [_box(0, 20, 10, 30)])
    v_good, v_wrong = gate.score([good, wrong])
    assert v_good.accepted, v_good.reasons
    assert any(r.code == "no_defect" for r in v_wrong.reasons)
    assert any(r.code == "outside_anomaly" for r in v_wrong.reasons)


# --- spillover: exact on hand-made masks ------------------------------------------


def test_spillover_exact():
    m = np.zeros((20, 20), bool)
    m[5:10, 5:15] = True  # 50 px
    assert spillover(m, _box(5, 5, 15, 10)) == 0.0
    assert spillover(m, _box(5, 5, 10, 10)) == 0.5
    assert spillover(m, _box(0, 0, 5, 5)) == 1.0
    assert spillover(m, _box(5, 5, 15, 8)) == pytest.approx(20 / 50)
    assert math.isnan(spillover(np.zeros((20, 20), bool), _box(0, 0, 5, 5)))
    mask = np.zeros((20, 20), np.uint8)
    mask[2:4, 2:6] = 1  # box 0: 8 px, 2 outside its box
    mask[10:12, 10:12] = 2  # box 1: inside
    s = Sample(_item(20, 20), np.zeros((20, 20, 1), np.uint8), [_box(2, 2, 5, 4), _box(10, 10, 12, 12, 1)], mask=mask)
    v = SpilloverScorer(spillover_max=0.2).score([s])[0]
    assert v.scores["spillover.max"] == 0.25 and v.scores["spillover.mean"] == 0.125
    assert [str(r) for r in v.reasons] == ["spillover: 0.25 > 0.20"]
    assert SpilloverScorer(spillover_max=0.3).score([s])[0].accepted


def test_extents_from_heat_components():
    binary = np.zeros((30, 30), bool)
    binary[5:10, 5:10] = True  # touches box A
    binary[20:25, 20:25] = True  # touches nothing: stray
    extents, stray = extents_from_binary(binary, [_box(8, 8, 15, 15)], margin=0.0)
    assert extents[0].sum() == 25 and stray.sum() == 25
    assert spillover(extents[0], _box(8, 8, 15, 15)) == pytest.approx(21 / 25)


# --- gate on hand-made heat maps (no model) -----------------------------------------


class _StubDetector:
    """Just the parts of AnomalyDetector the gate's `assess` reads."""

    class _Pre:
        image_size = 40

    pre = _Pre()
    heat_tolerance_px = 0.0

    def __init__(self, outside_fractions=None):
        from factory.quality.anomaly.detector import Calibration

        self.calib = Calibration(outside_fractions=outside_fractions or {})

    def threshold(self, level, rule):
        return 1.0

    def image_score(self, heat):
        return float(np.max(heat))

    def image_px_per_model_px(self, height, width):
        return 1.0


def test_gate_rules_on_hand_made_heat():
    from factory.quality.gate import AnomalyGate

    gate = AnomalyGate(_StubDetector(), spillover_max=0.2, margin=0.2, min_area=1)
    heat = np.zeros((40, 40))
    heat[10:16, 10:16] = 3.0  # a defect
    inside = gate.assess(heat, [_box(8, 8, 18, 18)])
    assert inside.accepted and inside.scores["spillover.max"] == 0.0
    half = gate.assess(heat, [_box(13, 8, 23, 18)])  # half of it outside the box
    assert [str(r) for r in half.reasons] == ["spillover: 0.50 > 0.20"]
    elsewhere = gate.assess(heat, [_box(28, 28, 38, 38)])
    assert [r.code for r in elsewhere.reasons] == ["no_defect", "outside_anomaly"]
    assert gate.assess(heat, []).reasons[0].code == "anomalous_negative"
    assert gate.assess(np.zeros((40, 40)), []).accepted

    class MeanScore(_StubDetector):
        def image_score(self, heat):
            return float(np.mean(heat))

    speck = np.zeros((40, 40))
    speck[5, 5] = 3.0  # one hot pixel: the max-scoring detector calls it anomalous, the mean-scoring one not
    assert gate.assess(speck, []).reasons[0].code == "anomalous_negative"
    assert AnomalyGate(MeanScore(), spillover_max=0.2, margin=0.2, min_area=1).assess(speck, []).accepted
    # with a per-class box check judging the boxes, a cold box is its business, not the heat map's
    no_heat_rule = AnomalyGate(_StubDetector(), spillover_max=0.2, margin=0.2, min_area=1, box_heat=False)
    assert [r.code for r in no_heat_rule.assess(heat, [_box(28, 28, 38, 38)]).reasons] == ["outside_anomaly"]
    # the generator's exact mask overrides the heat map's extent
    mask_extent = np.zeros((40, 40), bool)
    mask_extent[10:16, 10:14] = True
    assert gate.assess(heat, [_box(10, 10, 14, 16)], [mask_extent]).scores["spillover.max"] == 0.0


def test_outside_limit_is_what_clean_calibration_images_show():
    from factory.quality.anomaly.calibrate import outside_fraction
    from factory.quality.gate import AnomalyGate

    maps = []
    for k in range(20):  # clean map k has a k x 2 px hot spot (k = 0, 1: none, or too small to count)
        h = np.zeros((20, 20))
        h[0:k, 0:2] = 1.0
        maps.append(h)
    shares = [2 * k / 400 if 2 * k >= 4 else 0.0 for k in range(20)]
    assert outside_fraction(maps, 0.5) == pytest.approx(float(np.quantile(shares, 0.95)))
    assert outside_fraction(maps, 2.0) == 0.0  # nothing reaches the threshold

    heat = np.zeros((40, 40))
    heat[10:16, 10:16] = 3.0  # the defect, in its box
    heat[30:34, 30:36] = 3.0  # 24 px = 1.5% of the image elsewhere: what clean images of this line show
    box = [_box(8, 8, 18, 18)]
    fixed = AnomalyGate(_StubDetector(), margin=0.2, min_area=1)
    assert [r.code for r in fixed.assess(heat, box).reasons] == ["outside_anomaly"]  # over the bare 0.5%
    calibrated = AnomalyGate(_StubDetector({"f1": 0.02}), margin=0.2, min_area=1)
    assert calibrated.max_outside_fraction == 0.02 and calibrated.assess(heat, box).accepted
    heat[0:8, 20:40] = 3.0  # 10% more: beyond the calibrated share too
    assert [r.code for r in calibrated.assess(heat, box).reasons] == ["outside_anomaly"]
    # a spec's larger limit still wins; an overriding pixel threshold is not the one calibrated
    assert AnomalyGate(_StubDetector({"f1": 0.02}), max_outside_fraction=0.3).max_outside_fraction == 0.3
    assert AnomalyGate(_StubDetector({"f1": 0.02}), pixel_threshold=2.0).max_outside_fraction == 0.005


# --- sanity and near-duplicates ------------------------------------------------------


def test_sanity_rejects_blank_saturated_wrong_size():
    rng = np.random.default_rng(0)
    ok = rng.integers(40, 200, (64, 64, 1), dtype=np.uint8)
    blank = np.full((64, 64, 1), 128, np.uint8)
    sat = np.where(rng.random((64, 64, 1)) < 0.5, 0, 255).astype(np.uint8)
    small = ok[:32]
    sc = SanityScorer(min_std=2.0, max_saturated=0.5)
    vs = sc.score([Sample(_item(i=i), im, []) for i, im in enumerate([ok, blank, sat, small])])
    assert vs[0].accepted
    assert vs[1].reasons[0].code == "blank"
    assert vs[2].reasons[0].code == "saturated"
    assert vs[3].reasons[0].code == "size"


def test_near_duplicates_by_phash():
    """The scorer only hashes (exact 32-bit halves in its scores); the index finds a
    noisy copy within 4 bits and leaves different images alone."""
    from factory.quality.sanity import NearDuplicateIndex, phash_of
    from factory.quality.validate import procedural_items, render

    imgs = [r[0] for r in render(procedural_items(3, 64, seed=4, with_defect=False))]
    noisy = np.clip(imgs[0].astype(int) + np.random.default_rng(1).integers(-3, 4, imgs[0].shape), 0, 255).astype(np.uint8)
    assert phash(imgs[0]) != phash(imgs[1])
    vs = NearDuplicateScorer(max_distance=4).score([Sample(_item(i=i), im, []) for i, im in enumerate([imgs[0], noisy])])
    assert all(v.accepted for v in vs) and phash_of(vs[0].scores) == phash(imgs[0])
    index = NearDuplicateIndex(4)
    for i in (0, 1):
        assert index.nearest(phash(imgs[i])) is None
        index.add(phash(imgs[i]), f"t{i}")
    near = index.nearest(phash(noisy))
    assert near is not None and near[0] == "t0" and near[1] == hamming(phash(imgs[0]), phash(noisy)) <= 4


@pytest.mark.parametrize("max_distance", [0, 3, 12, 64])
def test_near_duplicate_index_matches_brute_force(max_distance):
    """The pigeonhole buckets find exactly what comparing with every kept hash finds."""
    from factory.quality.sanity import NearDuplicateIndex

    rng = np.random.default_rng(max_distance)
    base = [int(x) for x in rng.integers(0, 2**63, 40, dtype=np.int64)]
    hashes = base + [b ^ (1 << int(k)) ^ (1 << int(j)) for b, k, j in zip(base, rng.integers(0, 64, 40), rng.integers(0, 64, 40))]
    index, kept = NearDuplicateIndex(max_distance), []
    for n, h in enumerate(rng.permutation(hashes)):
        h = int(h)
        brute = min(((hamming(h, o), order, oid) for order, (o, oid) in enumerate(kept)), default=None)
        want = None if brute is None or brute[0] > max_distance else (brute[2], brute[0])
        assert index.nearest(h) == want
        if want is None:
            index.add(h, str(n))
            kept.append((h, str(n)))


# --- threshold rules --------------------------------------------------------------------


def test_threshold_rules_on_hand_made_scores():
    s = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    y = [0, 0, 0, 1, 0, 1, 1, 1]
    # F1 at 0.4: tp=4 fp=1 -> 8/9; at 0.6: tp=3 -> 6/7; at 0.3: 8/10
    assert f1_max_threshold(s, y) == 0.4
    # Youden at 0.4: 1 - 1/4 = 0.75; at 0.6: 0.75 - 0 = 0.75 -> first (highest) maximum is 0.6
    assert youden_threshold(s, y) == 0.6
    # recall >= 0.9 needs all 4 positives: thresholds <= 0.4; best precision 4/5 at 0.4
    assert recall_threshold(s, y, 0.9) == 0.4
    assert recall_threshold(s, y, 0.7) == 0.6  # 3/4 recall at 0.6 with precision 1
    assert auroc(s, y) == pytest.approx(15 / 16)
    with pytest.raises(ValueError):
        f1_max_threshold([0.1, 0.2], [0, 0])


def test_illumination_preprocessing():
    from factory.quality.anomaly.preprocess import homomorphic_filter, local_contrast_normalize

    yy, xx = np.mgrid[0:64, 0:64] / 63.0
    texture = 0.5 + 0.1 * np.sin(xx * 40)
    lit = texture * (0.3 + 0.7 * xx)  # strong illumination ramp
    left, right = lit[:, :16], lit[:, 48:]
    ratio_before = right.mean() / left.mean()
    h = homomorphic_filter(lit, sigma=0.05, gains=(0.3, 1.5))
    assert h[:, 48:].mean() / h[:, :16].mean() < ratio_before
    lcn = local_contrast_normalize(lit.astype(np.float32), 4.0)
    assert abs(lcn[:, 48:].mean() - lcn[:, :16].mean()) < 0.05


def test_quality_spec_defaults_and_unknown_keys():
    from pydantic import ValidationError

    from factory.spec.model import QualitySpec

    q = QualitySpec()
    assert q.spillover_max == 0.2 and q.anomaly_checkpoint is None and q.threshold_rule == "f1"
    with pytest.raises(ValidationError):
        QualitySpec(spilover_max=0.3)
    with pytest.raises(ValidationError):
        QualitySpec(threshold_rule="median")


# --- Ray Train, checkpoint, build_scorers ----------------------------------------------------


@pytest.mark.ray
def test_train_anomaly_under_ray_train(ray_local, tmp_path):
    from PIL import Image

    from factory.generators.base import CheckpointError
    from factory.quality import build_scorers
    from factory.quality.anomaly.detector import AnomalyDetector
    from factory.quality.validate import procedural_items, render
    from factory.spec.model import DatasetSpec
    from factory.training.anomaly import AnomalyTrainConfig, train_anomaly

    normal = tmp_path / "normal"
    normal.mkdir()
    for i, (img, _, _) in enumerate(render(procedural_items(10, 48, seed=2, with_defect=False))):
        Image.fromarray(img[:, :, 0]).save(normal / f"{i}.png")
    cfg = AnomalyTrainConfig(method="uiidd-disc", patch_size=32, patches_per_image=2, width=4, fused=8, bottleneck=4, heads=1, head_width=4,
                             epochs=2, batch_size=4, threads=1)
    out = tmp_path / "ckpt"
    summary = train_anomaly(str(normal), f"file://{out}", cfg, storage_path=str(tmp_path / "ray"))
    assert (out / "model.pt").exists() and (out / "config.json").exists()
    assert summary["train_images"] == 8 and summary["val_images"] == 2
    assert summary["metrics"]["epoch"] == 1
    det = AnomalyDetector.load(str(out))
    assert set(det.calib.pixel_thresholds) == {"f1", "youden", "recall90"} == set(det.calib.outside_fractions)
    assert all(0 <= v <= 1 for v in det.calib.outside_fractions.values())
    assert det.calib.source.startswith("simulated")
    spec = DatasetSpec(name="t", count=2, image={"width": 48, "height": 48}, defects=[{"class": "crack"}],
                       quality={"anomaly_checkpoint": str(out)})
    scorers = build_scorers(spec)
    assert [s.name for s in scorers] == ["sanity", "boxes", "spillover", "outside", "near_duplicate", "anomaly"]
    img, boxes, mask = render(procedural_items(1, 48, seed=3))[0]
    v = scorers[-1].score([Sample(_item(48, 48, boxes), img, boxes, mask)])[0]
    assert "anomaly.image_score" in v.scores and v.scores["spillover.from_mask"] == 1.0
    with pytest.raises(CheckpointError, match="factory train anomaly"):
        AnomalyDetector.load(str(tmp_path / "missing"))
    # FID/KID through torch-fidelity with the checkpoint's backbone as the registered extractor
    from factory.quality.fidelity import fidelity

    pngs = sorted(str(p) for p in normal.glob("*.png"))
    same = fidelity(pngs[:5], pngs[5:], size=32, extractor_checkpoint=str(out), kid_subsets=5)
    blank = tmp_path / "blank.png"
    Image.fromarray(np.zeros((48, 48), np.uint8)).save(blank)
    noise = []
    for i in range(5):
        noise.append(str(tmp_path / f"noise{i}.png"))
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (48, 48), dtype=np.uint8)).save(noise[-1])
    far = fidelity(noise, pngs[5:], size=32, extractor_checkpoint=str(out), kid_subsets=5)
    assert same["extractor"].startswith("uiidd-backbone") and far["fid"] > same["fid"]
    with pytest.raises(ValueError, match="feature extractor"):
        fidelity(pngs[:5], pngs[5:])


def test_gate_summary_counts():
    from factory.quality.metrics import gate_summary

    acc = [{"boxes": [{"class_name": "crack"}, {"class_name": "crack"}], "scores": {"spillover.max": 0.1}},
           {"boxes": [], "scores": {}}]
    rej = [{"boxes": [{"class_name": "black_spot"}], "scores": {"spillover.max": 0.5},
            "reasons": ["spillover: 0.50 > 0.20", "no_defect: box 0 0.1 < 1.0"]},
           {"boxes": [], "scores": {}, "reasons": ["blank: std 0.00 < 2.00"]}]
    s = gate_summary(acc, rej)
    assert s["pass_rate"] == 0.5 and s["spillover_rate"] == 0.25 and s["spillover_mean"] == pytest.approx(0.3)
    assert s["reject_reasons"] == {"spillover": 1, "no_defect": 1, "blank": 1}
    assert s["boxes_per_class"] == {"crack": 2} and s["images_per_class"] == {"(negative)": 1, "crack": 1}


# --- the spillover estimate against procedural ground truth -------------------------------------


@pytest.fixture(scope="module")
def procedural_detector():
    """A small uiidd-disc gate trained (plain torch, 200 steps on 32 px patches) on defect-free
    procedural EL cells, calibrated on held-out cells with simulated anomalies.

    This used to be a UIIDD-only model (eq. 15 heat map, 64 px) and the test failed at
    r = 0.476, deterministically (the same number on every run and thread count: not
    training noise). The cause was the heat map, not the estimator: on those 40 images the
    map's peak fell inside the true defect mask in only 35% of them (the reconstruction error
    is highest on busbars and fingers), and no setting of the estimator's margin, half-max
    level, tolerance or threshold rule lifted r above 0.54. The discriminative head's map
    peaks inside the defect in 82% of them, and the same estimator gives r ~ 0.69."""
    from factory.quality.anomaly.calibrate import calibrate_patches
    from factory.quality.anomaly.detector import AnomalyDetector, ScoreConfig
    from factory.quality.anomaly.disc_head import DiscHead
    from factory.quality.anomaly.patches import PatchConfig, random_patches, rescale
    from factory.quality.anomaly.preprocess import PreprocessConfig
    from factory.quality.validate import procedural_items, render
    from factory.training.anomaly import AnomalyTrainConfig
    from factory.training.anomaly_steps import disc_batch, head_step, train_step

    torch.manual_seed(0)
    P = 32
    patch = PatchConfig(size=P, scale=1.0)
    imgs = [rescale(r[0], patch) for r in render(procedural_items(72, 64, seed=5, with_defect=False))]
    x = torch.from_numpy(random_patches(imgs[:56], 8, P, np.random.default_rng(0))).float() / 255
    cfg = AnomalyTrainConfig(method="uiidd-disc", patch_size=P, width=8, fused=16, bottleneck=8, heads=1, head_width=8, noise_std=0.01)
    model, head = UIIDDModel(cfg.model_config()), DiscHead(1, cfg.head_width)
    og = torch.optim.Adam(model.generator.parameters(), 2e-3, betas=(0.5, 0.999))
    od = torch.optim.Adam(model.discriminator.parameters(), 2e-4, betas=(0.5, 0.999))
    oh = torch.optim.Adam(head.parameters(), 2e-3)
    g, rng = torch.Generator().manual_seed(0), np.random.default_rng(0)
    for step in range(PROCEDURAL_STEPS):
        idx = torch.randint(0, len(x), (8,), generator=g)
        x_in, x_t, m = disc_batch(x[idx], cfg, g, rng, None)
        _, x_hat = train_step(model.generator, model.discriminator, og, od, x_in, x_t, LossWeights())
        head_step(head, oh, x_in, x_hat, m)
    det = AnomalyDetector(model, PreprocessConfig(image_size=P), ScoreConfig(sigma=1.0, normalize="global"), head=head, patch=patch)
    calibrate_patches(det, imgs[56:])
    return det


PROCEDURAL_STEPS = 200


def test_spillover_estimate_matches_ground_truth(procedural_detector):
    from factory.quality.gate import AnomalyGate
    from factory.quality.validate import validate_spillover

    gate = AnomalyGate(procedural_detector, use_sample_masks=False)
    res = validate_spillover(gate, n=40, size=64, seed=11)
    # a ~20 s model measures spillover coarsely; these bounds still fail for an estimator
    # that does not follow the truth (r ~ 0) or a map that does not find the defect (r 0.48)
    assert res["mae"] < 0.3, res
    assert res["corr"] > 0.5, res
