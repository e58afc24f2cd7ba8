"""Simulated anomalies, the discriminative head, patches, `evaluate` and the gate audit (tiny, plain torch)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from factory.core import Sample


def _flat(n, S=32, seed=0, level=0.5):
    return np.clip(level + np.random.default_rng(seed).normal(0, 0.02, (n, 1, S, S)), 0, 1).astype(np.float32)


# --- simulated anomalies -------------------------------------------------------------------------


def test_simulated_masks_are_where_the_image_changed():
    from factory.quality.anomaly.simulate import DefectBank, perlin_mask, simulate

    rng = np.random.default_rng(0)
    m = perlin_mask(64, 48, rng)
    assert m.shape == (64, 48) and 4 <= m.sum() < m.size
    x = _flat(64, 32, seed=1)
    defect = np.full((32, 32), 0.5, np.float32)
    dmask = np.zeros((32, 32), bool)
    dmask[10:14, 5:25] = True  # a dark line on a grey background
    defect[dmask] = 0.1
    bank = DefectBank.from_pairs([(defect, dmask)], max_side=32)
    assert len(bank) == 1 and bank.masks[0].shape == (4, 20) and np.allclose(bank.deviations[0][bank.masks[0]], -0.4)
    xa, masks = simulate(x, np.random.default_rng(2), bank)
    changed = np.abs(xa - x) > 0
    assert np.array_equal(changed, masks > 0)  # the target is exactly where pixels changed
    anomalous = masks.reshape(64, -1).any(1)
    assert 16 < anomalous.sum() < 48  # about half stay normal
    assert np.all(np.abs(xa - x)[masks > 0] >= 0.02 - 1e-6)


def test_discriminative_head_learns_a_trivial_anomaly():
    from factory.quality.anomaly.disc_head import DiscHead, head_loss
    from factory.quality.anomaly.thresholds import auroc

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    head = DiscHead(1, 8)
    opt = torch.optim.Adam(head.parameters(), 3e-3)

    def batch(n, seed):
        x = _flat(n, 24, seed)
        m = np.zeros_like(x)
        for i in range(n):
            y0, x0 = rng.integers(0, 18, 2)
            m[i, 0, y0 : y0 + 5, x0 : x0 + 5] = 1
        x = np.where(m > 0, 0.9, x)
        return torch.from_numpy(x), torch.from_numpy(m)

    for step in range(40):
        x, m = batch(8, step)
        loss = head_loss(head(x, torch.full_like(x, 0.5)), m)
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, m = batch(8, 999)
    with torch.no_grad():
        p = torch.sigmoid(head(x, torch.full_like(x, 0.5)))
    assert auroc(p.numpy().ravel(), m.numpy().ravel() > 0) > 0.95
    assert float(p[m > 0].mean()) > 0.5 > float(p[m == 0].mean())


def test_tiles_cover_the_image_and_stitch_back():
    from factory.quality.anomaly.patches import PatchConfig, rescale, stitch, tiles

    cfg = PatchConfig(size=16, scale=0.5)
    img = (np.random.default_rng(0).random((70, 90)) * 255).astype(np.uint8)
    x = rescale(img, cfg)
    assert x.shape == (35, 45)  # aspect kept
    t, pos = tiles(x, cfg)
    assert t.shape[1:] == (1, 16, 16) and max(p[0] for p in pos) == 35 - 16 and max(p[1] for p in pos) == 45 - 16
    assert np.allclose(stitch(t[:, 0], pos, x.shape), x)


# --- evaluate: the expected numbers by construction ------------------------------------------------


class _ThresholdDetector:
    """Heat map = the image's grey level / 255 (a bright spot is the anomaly); thresholds 0.6."""

    method = "test"

    def heat_maps(self, images, original_size=False):
        return [im[..., 0].astype(np.float32) / 255 if im.ndim == 3 else im.astype(np.float32) / 255 for im in images]

    def threshold(self, level, rule):
        return 0.6

    def image_score(self, heat):
        return float(heat.max())


def test_evaluate_counts_by_construction():
    from factory.quality.anomaly.evaluate import evaluate

    normal = [np.full((20, 20), 100, np.uint8) for _ in range(4)] + [np.full((20, 20), 200, np.uint8)]  # 1 false alarm
    defective, masks = [], []
    for i in range(3):
        im = np.full((20, 20), 100, np.uint8)
        m = np.zeros((20, 20), bool)
        m[5:10, 5:10] = True
        im[m] = 220
        defective.append(im)
        masks.append(m)
    defective.append(np.full((20, 20), 100, np.uint8))  # a defect the detector misses
    masks.append(None)
    res = evaluate(_ThresholdDetector(), normal, defective, masks)
    assert res["image"] == {"tp": 3, "fp": 1, "fn": 1, "tn": 4, "f1": 0.75}
    assert res["image_auroc"] == pytest.approx((3 * 5 + 0.5 * 4) / 20)  # 3 above all 5 normals; 1 tied with 4
    assert res["masked_defective"] == 3
    assert res["pixel"]["tp"] == 75 and res["pixel"]["fn"] == 0 and res["pixel"]["fp"] == 400  # the bright normal image
    assert res["pixel_auroc"] == 1.0  # every defect pixel (220) above every other pixel (<= 200)


# --- gate audit ------------------------------------------------------------------------------------


def _procedural_samples(n, size=64):
    from factory.quality.validate import procedural_items, render

    return [Sample(it, img, list(boxes), mask) for it, (img, boxes, mask) in
            zip(procedural_items(n, size, seed=3), render(procedural_items(n, size, seed=3)))]


def test_broken_variants_erase_and_move_the_defect():
    from factory.quality.audit import broken_variants

    s = _procedural_samples(1)[0]
    b = s.boxes[0]
    v = broken_variants(s, np.random.default_rng(0))
    assert set(v) == {"good", "erased", "moved", "blank", "saturated"} and all(x.mask is None for x in v.values())
    m = s.mask == 1
    diff_in_mask = lambda a: np.abs(a.astype(float) - s.image.astype(float))[..., 0][m].mean()  # noqa: E731
    assert diff_in_mask(v["erased"].image) > 5  # the defect pixels were replaced
    moved = v["moved"].image
    changed = np.abs(moved.astype(int) - v["erased"].image.astype(int))[..., 0] > 0
    assert changed.any() and not changed[b.y1 : b.y2, b.x1 : b.x2].any()  # pasted only outside the box
    assert v["blank"].image.std() == 0 and (v["saturated"].image == 255).all()


def test_clean_renders_erase_exactly_the_defect():
    """A generator that draws the item without boxes into the same image outside them gives
    the truest erased variant; a sample that differs outside its boxes falls back to inpainting."""
    from factory.quality.audit import broken_variants, clean_renders

    samples = _procedural_samples(3)
    samples[2] = Sample(samples[2].item, samples[2].image.copy(), samples[2].boxes, samples[2].mask)
    samples[2].image[0, 0] ^= 64  # not what its generator draws: its clean render cannot be trusted
    clean = clean_renders(samples)
    assert clean[0] is not None and clean[1] is not None and clean[2] is None
    for s, c in zip(samples[:2], clean):
        outside = np.ones(s.image.shape[:2], bool)
        for b in s.boxes:
            outside[b.y1 : b.y2, b.x1 : b.x2] = False
        assert (c[outside] == s.image[outside]).all() and (c[s.mask > 0] != s.image[s.mask > 0]).any()
        v = broken_variants(s, np.random.default_rng(0), c)
        assert (v["erased"].image == c).all()
        moved = v["moved"].image
        assert (moved[s.mask == 0] == c[s.mask == 0]).sum() > 0.9 * (s.mask == 0).sum()  # the defect, pasted on the clean render


def test_clean_renders_allow_the_generators_own_blend_margin():
    """A generator may change pixels up to `blend_px` outside a box (a transplant's feather
    and halo): a difference there still leaves the clean render usable, one farther not."""
    from dataclasses import replace

    from factory.quality.audit import clean_renders

    s = _procedural_samples(1)[0]
    b = s.boxes[0]
    y, x = b.y1 + (b.y2 - b.y1) // 2, b.x2 + 7  # 8 px right of the box: outside the default 4 px
    if x >= s.image.shape[1]:
        y, x = b.y1 + (b.y2 - b.y1) // 2, b.x1 - 8
    image = s.image.copy()
    image[y, x] ^= 64
    assert clean_renders([replace(s, image=image)])[0] is None
    assert clean_renders([replace(s, image=image, blend_px=8)])[0] is not None


def test_audit_without_anomaly_model_counts_by_construction():
    """Without an anomaly checkpoint only sanity catches anything: blank and saturated are
    rejected, erased and moved defects pass (the reason the gate needs the anomaly model)."""
    from factory.quality.audit import audit
    from factory.quality.validate import CLASSES
    from factory.spec.model import DatasetSpec

    spec = DatasetSpec(name="t", count=4, image={"width": 64, "height": 64}, defects=[{"class": c} for c in CLASSES],
                       quality={"duplicate_distance": -1})
    res = audit(spec, None, samples=_procedural_samples(4))
    rows = res["variants"]
    assert rows["good"]["n"] == 4 and rows["good"]["kept_rate"] == 1.0
    assert rows["blank"]["rejected_rate"] == 1.0 and rows["saturated"]["rejected_rate"] == 1.0
    assert rows["erased"]["rejected"] == 0 and rows["moved"]["rejected"] == 0
    assert rows["erased"]["erased_by"] == {"clean render": 4, "inpainting": 0}
    assert res["broken_rejected_rate"] == pytest.approx(8 / (8 + rows["moved"]["n"] + 4))


def test_a_box_equal_to_its_background_is_rejected_exactly():
    """Hand-made: a box that differs from the known background by no more than a few grey
    levels (noise, JPEG) is `box_unchanged`; one visibly changed pixel is enough to pass."""
    from factory.core import Box, WorkItem
    from factory.quality import OutsideExactScorer

    bg = np.full((32, 32, 1), 100, np.uint8)
    box = Box(0, "crack", 8, 8, 16, 16)
    item = WorkItem("i", 0, "procedural", None, 32, 32, 1, 0, (box,))
    faint, drawn = bg.copy(), bg.copy()
    faint[10, 10], drawn[10, 10] = 108, 109  # 8 levels: within the limit; 9: drawn
    verdicts = OutsideExactScorer().score([Sample(item, img, [box], background=bg) for img in (faint, drawn)])
    assert [[r.code for r in v.reasons] for v in verdicts] == [["box_unchanged"], []]
    assert [v.scores["outside.unchanged_boxes"] for v in verdicts] == [1.0, 0.0]


def test_audit_as_generated_judges_a_known_background_exactly():
    """`as_generated`: the procedural samples keep the background their generator reports, so
    the exact tests reject the erased defect (its box equals the background) and the moved one
    (pixels changed outside the boxes) without any model; stripped to pixels (the default)
    the same samples pass both without an anomaly model."""
    from factory.generators.procedural import CLASSES, ProceduralELGenerator
    from factory.planning import plan
    from factory.quality.audit import audit
    from factory.spec.model import DatasetSpec

    spec = DatasetSpec(name="t", count=8, seed=2, image={"width": 64, "height": 64}, defects=[{"class": c} for c in CLASSES],
                       quality={"duplicate_distance": -1})
    samples = ProceduralELGenerator().generate([it for it in plan(spec, n=8) if it.boxes])
    exact = audit(spec, None, samples=samples, as_generated=True)
    rows = exact["variants"]
    assert exact["as_generated"] and rows["good"]["kept_rate"] == 1.0 and rows["erased"]["erased_by"]["inpainting"] == 0
    assert rows["erased"]["rejected_rate"] == 1.0 and rows["erased"]["reasons"]["box_unchanged"] == rows["erased"]["n"]
    assert rows["moved"]["n"] > 0 and rows["moved"]["rejected_rate"] == 1.0 and "outside_changed" in rows["moved"]["reasons"]
    assert exact["broken_rejected_rate"] == 1.0
    pixels = audit(spec, None, samples=samples)["variants"]
    assert pixels["erased"]["rejected"] == 0 and pixels["moved"]["rejected"] == 0


def test_evaluate_command_on_a_saved_checkpoint(tmp_path):
    """`factory quality evaluate --json` on a (random, untrained) uiidd-disc checkpoint: the
    plumbing (weights_only load, folders, masks beside images, counts) end to end."""
    import json

    from PIL import Image
    from typer.testing import CliRunner

    from factory.cli import app
    from factory.quality.anomaly.detector import AnomalyDetector, Calibration, ScoreConfig
    from factory.quality.anomaly.disc_head import DiscHead
    from factory.quality.anomaly.model import ModelConfig, UIIDDModel
    from factory.quality.anomaly.patches import PatchConfig
    from factory.quality.anomaly.preprocess import PreprocessConfig

    torch.manual_seed(0)
    thr = {"f1": 0.5, "youden": 0.5, "recall90": 0.5}
    det = AnomalyDetector(UIIDDModel(ModelConfig(image_size=16, width=4, fused=8, bottleneck=4, heads=1)),
                          PreprocessConfig(image_size=16), ScoreConfig(sigma=1.0, normalize="global"),
                          Calibration(image_thresholds=thr, pixel_thresholds=thr), head=DiscHead(1, 4),
                          patch=PatchConfig(size=16, scale=1.0))
    det.save(str(tmp_path / "ckpt"))
    (tmp_path / "ok").mkdir()
    (tmp_path / "bad").mkdir()
    for i in range(3):
        Image.fromarray(np.full((24, 30), 120, np.uint8)).save(tmp_path / "ok" / f"{i}.jpg")
        Image.fromarray(np.full((24, 30), 200, np.uint8)).save(tmp_path / "bad" / f"{i}.jpg")
    m = np.zeros((24, 30), np.uint8)
    m[5:9, 5:9] = 255
    Image.fromarray(m).save(tmp_path / "bad" / "0.png")  # a mask beside one defect image
    r = CliRunner().invoke(app, ["quality", "evaluate", str(tmp_path / "ckpt"), "--normal", str(tmp_path / "ok"),
                                 "--defective", str(tmp_path / "bad"), "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    assert res["normal"] == 3 and res["defective"] == 3 and res["masked_defective"] == 1 and res["method"] == "uiidd-disc"
    i = res["image"]
    assert i["tp"] + i["fn"] == 3 and i["fp"] + i["tn"] == 3
    assert res["pixel"]["tp"] + res["pixel"]["fn"] == 16  # the mask's 4 x 4 defect pixels
