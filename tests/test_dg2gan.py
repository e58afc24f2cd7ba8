"""DG2GAN: networks, eq. 1-6 on hand-made inputs, training, checkpoints, box-targeted generation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from factory.core import Box, WorkItem
from factory.data.folders import scan
from factory.generators.base import CheckpointError
from factory.generators.dg2gan import DG2GANGenerator
from factory.generators.dg2gan import losses as L
from factory.generators.dg2gan.boxes import feather, plan_crop
from factory.generators.dg2gan.checkpoint import find_runs, load_generators, resolve, save_checkpoint
from factory.generators.dg2gan.model import DG2GANConfig, build
from factory.generators.dg2gan.steps import fit_local, lr_factor
from factory.generators.dg2gan.train import TrainConfig
from factory.training.images import clean_crops, defect_crops, load_crops

torch.set_num_threads(2)
TINY = dict(ngf=4, n_blocks=1, ndf=4, n_layers=2)
WORKERS = 1


def tiny_cfg(**kw) -> DG2GANConfig:
    return DG2GANConfig(image_size=32, **{**TINY, **kw})


# --- networks -------------------------------------------------------------------


def test_shapes():
    cfg = tiny_cfg(channels=3)
    gens, discs = build(cfg, seed=0)
    n, d = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    out = gens(n, d)
    assert {k: tuple(v.shape) for k, v in out.items()} == {k: (2, 3, 32, 32) for k in ("fake_d", "fake_n", "rec_n", "rec_d")}
    assert out["fake_d"].abs().max() <= 1.0  # tanh output
    scores = discs(n, out["fake_n"], d, out["fake_d"])
    real, fake = scores["D1d"]
    assert real.shape == fake.shape and real.shape[:2] == (2, 1) and real.shape[2] > 1  # a grid of patch logits
    assert scores["T2d"][0].shape[:2] == (2, 1) and scores["T2d"][0].shape[2] > 1  # DJS critic per feature patch
    assert scores["T2n"] is not None
    g1 = n[:, :1]
    assert build(tiny_cfg(use_djs=False))[1](g1, g1, g1, g1)["T2n"] is None  # no-DJS: no critic head


# --- losses on hand-made inputs ----------------------------------------------------


def test_cycle_loss_eq1():
    n, d = torch.zeros(1, 1, 4, 4), torch.ones(1, 1, 4, 4)
    assert L.cycle_loss(n, n + 0.5, d, d - 0.25).item() == pytest.approx(0.75)
    assert L.cycle_loss(n, n, d, d).item() == 0.0


def test_adversarial_terms_eq3_eq4_eq5():
    zero = torch.zeros(3)
    big = torch.full((3,), 30.0)
    # D outputs 0.5 everywhere: each expectation is log(1/2)
    assert L.l_gan1(zero, zero).item() == pytest.approx(2 * math.log(0.5))
    assert L.l_gan2(zero, zero).item() == pytest.approx(2 * math.log(0.5))
    # eq. 3 is maximal (0) when D1 says real=1, generated=0; eq. 4 when D2 says the opposite
    assert L.l_gan1(big, -big).item() == pytest.approx(0.0, abs=1e-6)
    assert L.l_gan1(-big, big).item() < -50
    assert L.l_gan2(-big, big).item() == pytest.approx(0.0, abs=1e-6)
    assert L.l_gan2(big, -big).item() < -50
    # D(x) = 0.8 on real, 0.3 on generated: hand-computed expectations
    r, f = torch.tensor([math.log(0.8 / 0.2)]), torch.tensor([math.log(0.3 / 0.7)])
    assert L.l_gan1(r, f).item() == pytest.approx(math.log(0.8) + math.log(0.7))
    assert L.l_gan2(r, f).item() == pytest.approx(math.log(0.3) + math.log(0.2))
    eq5 = L.dg2_adversarial(r, f, r, f, lambda_=0.8, beta=0.5).item()
    assert eq5 == pytest.approx(0.8 * (math.log(0.8) + math.log(0.7)) + 0.5 * (math.log(0.3) + math.log(0.2)))


def test_djs_estimate_and_eq2():
    z = torch.zeros(4)
    assert L.djs_estimate(z, z).item() == pytest.approx(0.0, abs=1e-7)
    assert L.djs_estimate(torch.full((4,), 40.0), torch.full((4,), -40.0)).item() == pytest.approx(math.log(2), abs=1e-6)
    r, f, tr, tf = torch.tensor([0.3]), torch.tensor([-1.2]), torch.tensor([2.0]), torch.tensor([-1.0])
    with_djs = L.d2_loss(r, f, tr, tf, mu=0.05, use_djs=True).item()
    without = L.d2_loss(r, f, mu=0.05, use_djs=False).item()
    assert without == pytest.approx(-L.l_gan2(r, f).item())
    assert with_djs - without == pytest.approx(0.05 * L.djs_estimate(tr, tf).item(), abs=1e-6)
    with pytest.raises(ValueError, match="critic"):
        L.d2_loss(r, f, use_djs=True)


def test_djs_head_ascends_while_trunk_descends():
    """Eq. 2 is minimized by D2's trunk, but the DJS critic head must maximize the bound
    (it is a supremum over critics): its gradient is reversed."""
    _, discs = build(tiny_cfg(), seed=0)
    d2 = discs.D2d
    x_real, x_fake = torch.randn(2, 1, 32, 32), torch.randn(2, 1, 32, 32) + 1
    _, t_real = d2.forward_with_critic(x_real)
    _, t_fake = d2.forward_with_critic(x_fake)
    djs = L.djs_estimate(t_real, t_fake)
    g_head, g_trunk = torch.autograd.grad(djs, [d2.djs_head.weight, d2.trunk[0].weight])
    # the same quantity through an ordinary (non-reversed) head
    h_r, h_f = d2.trunk(x_real), d2.trunk(x_fake)
    plain = L.djs_estimate(torch.nn.functional.conv2d(h_r, d2.djs_head.weight, d2.djs_head.bias), torch.nn.functional.conv2d(h_f, d2.djs_head.weight, d2.djs_head.bias))
    p_head, p_trunk = torch.autograd.grad(plain, [d2.djs_head.weight, d2.trunk[0].weight])
    assert torch.allclose(g_head, -p_head) and g_head.abs().sum() > 0
    assert torch.allclose(g_trunk, p_trunk)


def test_no_djs_switch_changes_objective():
    cfg_on, cfg_off = tiny_cfg(use_djs=True), tiny_cfg(use_djs=False)
    gens, d_on = build(cfg_on, seed=0)
    _, d_off = build(cfg_off, seed=0)
    missing = d_off.load_state_dict(d_on.state_dict(), strict=False)
    assert all("djs_head" in k for k in missing.unexpected_keys) and missing.unexpected_keys
    n, d = torch.randn(2, 1, 32, 32), torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        fk = gens(n, d)
        lon = L.discriminator_losses(d_on(n, fk["fake_n"], d, fk["fake_d"]), cfg_on)
        loff = L.discriminator_losses(d_off(n, fk["fake_n"], d, fk["fake_d"]), cfg_off)
    assert lon["D1n"].item() == pytest.approx(loff["D1n"].item())  # D1 untouched
    assert "DJSd" not in loff
    diff = lon["D"].item() - loff["D"].item()
    assert diff == pytest.approx(0.05 * (lon["DJSn"].item() + lon["DJSd"].item()), abs=1e-6)
    assert diff != 0.0


def test_generator_losses_use_lambda_beta():
    cfg = tiny_cfg(lambda_=0.8, beta=0.5)
    x = torch.zeros(1, 1, 4, 4)
    fakes = {"rec_n": x, "rec_d": x}
    zero = torch.zeros(1, 1, 2, 2)
    g = L.generator_losses(fakes, {"D1d": zero, "D2d": zero, "D1n": zero, "D2n": zero}, x, x, cfg)
    assert g["adv_G"].item() == pytest.approx((0.8 + 0.5) * math.log(2))  # non-saturating, D = 1/2
    assert g["G"].item() == pytest.approx(2 * (0.8 + 0.5) * math.log(2))


def test_generator_terms_have_the_right_direction_per_discriminator():
    """Logits where the two directions differ: D(G(n)) = 3/4 on every patch.
    G wants D1 to call its output real (-log D1 = log 4/3) and D2, which rewards
    generated images (eq. 4), to call it real too (-log(1 - D2) = log 4). A sign
    slip on either term swaps log 4/3 and log 4."""
    cfg = tiny_cfg(lambda_=0.8, beta=0.5, cycle_weight=10.0)
    three_quarters = torch.full((2, 1, 3, 3), math.log(3.0))  # sigmoid(log 3) = 3/4
    quarter = -three_quarters  # sigmoid(-log 3) = 1/4
    n, d = torch.zeros(2, 1, 4, 4), torch.ones(2, 1, 4, 4)
    fakes = {"rec_n": n + 0.25, "rec_d": d - 0.5}  # eq. 1: 0.25 + 0.5
    scores = {"D1d": three_quarters, "D2d": three_quarters, "D1n": quarter, "D2n": three_quarters}
    g = L.generator_losses(fakes, scores, n, d, cfg)
    assert g["adv_G"].item() == pytest.approx(0.8 * math.log(4 / 3) + 0.5 * math.log(4))
    # F: D1n says 1/4 -> -log(1/4) = log 4; D2n says 3/4 -> -log(1/4) = log 4
    assert g["adv_F"].item() == pytest.approx(0.8 * math.log(4) + 0.5 * math.log(4))
    assert g["cycle"].item() == pytest.approx(0.75)
    assert g["G"].item() == pytest.approx(g["adv_G"].item() + g["adv_F"].item() + 10.0 * 0.75)
    # The generator's gradient lowers D2d on its output (eq. 4 rewards D2 for calling it generated)
    # and raises D1d on it: opposite signs for equal logits.
    d1, d2 = three_quarters.clone().requires_grad_(True), three_quarters.clone().requires_grad_(True)
    adv = L.generator_losses(fakes, {**scores, "D1d": d1, "D2d": d2}, n, d, cfg)["adv_G"]
    g1, g2 = torch.autograd.grad(adv, [d1, d2])
    assert (g1 < 0).all() and (g2 > 0).all()
    # Eq. 5's exact value for reporting: lambda (log D1(real) + log(1 - D1(fake))) + beta (log D2(fake) + log(1 - D2(real)))
    v = L.dg2_adversarial(three_quarters, quarter, quarter, three_quarters, 0.8, 0.5)
    assert v.item() == pytest.approx(0.8 * 2 * math.log(3 / 4) + 0.5 * 2 * math.log(3 / 4))


def test_lr_schedule_constant_then_linear_to_zero():
    assert [lr_factor(e, 2, 4) for e in range(7)] == [1.0, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0]
    assert TrainConfig("a", "b", "c", epoch_scale=0.05).epochs == (5, 5)


# --- data -------------------------------------------------------------------------


def test_crops_around_and_away_from_defects():
    img = np.zeros((100, 120, 1), np.uint8)
    img[40:50, 60:80] = 255
    mask = np.zeros((100, 120), bool)
    mask[40:50, 60:80] = True
    crops = defect_crops(img, mask, 32, context=1.5)
    assert len(crops) == 1 and crops[0].shape == (32, 32, 1)
    assert crops[0].mean() > 255 * 0.15  # the defect fills a good share of the crop
    clean = clean_crops(img, mask, 16, 5, np.random.default_rng(0))
    assert len(clean) == 5 and all(c.max() == 0 for c in clean)  # never touches the defect


def test_scan_finds_masks_of_real_sets(shared_data):
    mt = scan(shared_data / "magnetic_tile" / "MT_Fray")
    assert len(mt) == 32 and all(r.mask is not None and r.mask.suffix == ".png" for r in mt)
    crops = load_crops(mt[:3], "defective", 32)
    assert crops.shape[1:] == (32, 32, 1) and len(crops) >= 3
    cf = scan(shared_data / "crackforest")
    with_mask = [r for r in cf if r.mask is not None]
    assert len(cf) == 155 and len(with_mask) == 118 and all(r.mask.suffix == ".mat" for r in with_mask)
    no_mask = next(r for r in cf if r.mask is None)
    free = load_crops([no_mask, *with_mask[:2]], "defect-free", 32, crops_per_image=2)
    assert free.shape == (4, 32, 32, 1)  # the unmasked image is skipped: it may hold cracks


# --- training -----------------------------------------------------------------------


def test_tiny_overfit_lowers_cycle_loss(shared_data):
    torch.manual_seed(0)
    recs = scan(shared_data / "magnetic_tile" / "MT_Fray")[:4]
    d = load_crops(recs, "defective", 32)
    n = load_crops(recs, "defect-free", 32, crops_per_image=1)  # crops away from the masked defects
    tc = TrainConfig("", "", "", image_size=32, batch_size=4, lr=1e-3, **TINY)
    _, _, hist = fit_local(tc, n, d, steps=16)
    first = np.mean([h["cycle"] for h in hist[:4]])
    last = np.mean([h["cycle"] for h in hist[-4:]])
    assert last < 0.7 * first, (first, last)
    assert all(np.isfinite(h["D"]) and np.isfinite(h["G"]) for h in hist)


def test_checkpoint_round_trip(tmp_path):
    cfg = tiny_cfg(class_name="Crack")
    gens, discs = build(cfg, seed=1)
    out = (tmp_path / "run").as_uri()
    save_checkpoint(out, 0, cfg, gens, discs, {"epoch": 0}, {"context": 1.5})
    ck = save_checkpoint(out, 1, cfg, gens, discs, {"epoch": 1}, {"context": 1.5})
    assert resolve(out) == ck
    cfg2, gens2, config = load_generators(out)
    assert cfg2 == cfg and config["epoch"] == 1 and config["train"]["context"] == 1.5
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(gens.eval().G(x), gens2.G(x))
    assert find_runs((tmp_path).as_uri()) == {"run": (tmp_path / "run").as_uri()}
    with pytest.raises(CheckpointError, match="factory train dg2gan"):
        load_generators((tmp_path / "nothing").as_uri())
    with pytest.raises(CheckpointError, match="factory train dg2gan"):
        DG2GANGenerator.load(None, {"references": str(tmp_path)})


# --- box-targeted generation ----------------------------------------------------


@pytest.fixture
def generator(tmp_path):
    from PIL import Image

    refs = tmp_path / "refs"
    refs.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):  # smooth textured "defect-free" references
        y, x = np.mgrid[0:80, 0:100]
        a = 120 + 40 * np.sin(x / (5 + i)) * np.cos(y / 7) + rng.normal(0, 3, (80, 100))
        Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(refs / f"ref{i}.png")
    cfg = tiny_cfg(class_name="Crack")
    gens, _ = build(cfg, seed=3)
    save_checkpoint((tmp_path / "ck" / "Crack").as_uri(), 0, cfg, gens, train_config={"context": 1.5})
    return DG2GANGenerator.load((tmp_path / "ck").as_uri(), {"references": str(refs), "threshold": 0.05})


def _item(seed, boxes, ref=0.0, w=96, h=64, channels=1):
    return WorkItem("i", 0, "dg2gan", None, w, h, channels, seed, tuple(boxes), {"reference": ref})


def test_generation_is_deterministic_by_seed(generator):
    boxes = [Box(0, "Crack", 10, 10, 30, 26), Box(0, "Crack", 60, 30, 80, 50)]
    a, b = generator.generate([_item(7, boxes), _item(7, boxes)])
    assert np.array_equal(a.image, b.image) and a.boxes == b.boxes
    c = generator.generate([_item(8, boxes, ref=1.0)])[0]
    assert not np.array_equal(a.image, c.image)
    assert a.image.shape == (64, 96, 1) and a.image.dtype == np.uint8


def test_box_targeted_generation_is_local_and_measured(generator):
    from factory.generators.dg2gan import _reference

    boxes = [Box(0, "Crack", 10, 10, 30, 26), Box(0, "Crack", 60, 30, 80, 50)]
    s = generator.generate([_item(5, boxes, ref=2.0)])[0]
    ref = _reference(generator.references[2], 96, 64, 1)
    crops = [r["crop"] for r in s.meta["requests"]]
    inside = np.zeros((64, 96), bool)
    for x1, y1, x2, y2 in crops:
        inside[y1:y2, x1:x2] = True
    assert inside.sum() < inside.size / 2
    assert np.array_equal(s.image[~inside], ref[~inside])  # untouched outside the blended crops
    assert not np.array_equal(s.image[inside], ref[inside])  # and changed inside them
    assert len(s.boxes) == 2 and s.meta["unchanged_requests"] == 0
    for box, (x1, y1, x2, y2) in zip(s.boxes, crops):
        assert x1 <= box.x1 < box.x2 <= x2 and y1 <= box.y1 < box.y2 <= y2
        assert box.class_name == "Crack"
    assert set(np.unique(s.mask)) <= {0, 1, 2} and not s.mask[~inside].any()
    # RGB items from a grayscale model work too
    rgb = generator.generate([_item(5, boxes, ref=2.0, channels=3)])[0]
    assert rgb.image.shape == (64, 96, 3)


def test_feather_is_one_on_box_and_fades_to_crop_edge():
    plan = plan_crop(Box(0, "c", 20, 20, 30, 30), 100, 100, context=2.0)
    w = feather(plan)
    assert (plan.x2 - plan.x1, plan.y2 - plan.y1) == (20, 20)
    by, bx = 20 - plan.y1, 20 - plan.x1
    assert np.all(w[by : by + 10, bx : bx + 10] == 1.0)
    assert w[0, 0] < 0.1 and w[-1, -1] < 0.1


def test_unknown_class_is_a_checkpoint_error(generator):
    with pytest.raises(CheckpointError, match="Blowhole"):
        generator.generate([_item(1, [Box(1, "Blowhole", 5, 5, 20, 20)])])


# --- Ray Train ---------------------------------------------------------------------------


def test_ray_train_checkpoints_and_resumes(ray_local, shared_data, tmp_path, monkeypatch):
    """Also: a relative `--out` (as the README writes it) lands beside the caller,
    not in the Ray workers' own working directory."""
    from factory.generators.dg2gan.train import train

    monkeypatch.chdir(tmp_path)
    tc = TrainConfig(
        defect_free=str(shared_data / "magnetic_tile" / "MT_Fray"),  # masks beside: defect-free crops away from defects
        defective=str(shared_data / "magnetic_tile" / "MT_Fray"),
        out="file://./Fray", class_name="Fray", image_size=32, batch_size=4, max_images=4,
        epochs_constant=1, epochs_decay=1, max_steps_per_epoch=2, num_workers=WORKERS, **TINY,
    )
    r = train(tc, storage_path=str(tmp_path / "ray"))
    assert r["trained"] and r["epoch"] == 1 and np.isfinite(r["metrics"]["cycle"])
    again = train(tc, storage_path=str(tmp_path / "ray"))
    assert not again["trained"] and again["checkpoint"] == r["checkpoint"]
    gen = DG2GANGenerator.load(tmp_path.as_uri(), {"references": str(shared_data / "magnetic_tile" / "MT_Fray")})
    s = gen.generate([_item(0, [Box(0, "Fray", 20, 20, 40, 40)])])[0]
    assert s.meta["checkpoint"].endswith("Fray")


def test_two_ray_train_workers_train_to_the_end_on_equal_shards(ray_local, shared_data, tmp_path):
    """DDP over 2 CPU workers, each on its Ray Data shard of the crops, same steps per epoch."""
    from factory.generators.dg2gan.train import train

    tc = TrainConfig(
        defect_free=str(shared_data / "magnetic_tile" / "MT_Fray"), defective=str(shared_data / "magnetic_tile" / "MT_Fray"),
        out=(tmp_path / "Fray2").as_uri(), class_name="Fray", image_size=32, batch_size=4, max_images=4,
        epochs_constant=1, epochs_decay=1, max_steps_per_epoch=2, num_workers=2, cpus_per_worker=0.5, **TINY,
    )
    r = train(tc, storage_path=str(tmp_path / "ray"))
    assert r["trained"] and r["epoch"] == 1 and r["metrics"]["steps"] == 2 and np.isfinite(r["metrics"]["cycle"])


def test_cli_registers_train_dg2gan():
    from typer.testing import CliRunner

    from factory.cli import app

    r = CliRunner().invoke(app, ["train", "dg2gan", "--help"])
    assert r.exit_code == 0 and "--defect-free" in r.output and "--no-djs" in r.output


def test_registered_as_a_generator_kind(generator):
    from factory.generators.base import Generator, generator_class

    assert generator_class("dg2gan") is DG2GANGenerator
    assert isinstance(generator, Generator)


def test_missing_data_folder_fails_before_ray(tmp_path):
    from factory.generators.dg2gan.train import check_sources

    with pytest.raises(FileNotFoundError, match="defective images"):
        check_sources(TrainConfig(str(tmp_path), str(tmp_path / "missing"), str(tmp_path / "out")))


def test_a_missing_name_at_version_reference_fails_validate_naming_the_field(tmp_path):
    """DG2GAN resolves `NAME@VERSION` references in the spec's registry like every
    family that takes references: a missing one is a validate error, not a worker's."""
    from factory.generators.checks import check_spec
    from factory.spec import SpecError, spec_from_dict

    spec = spec_from_dict({
        "name": "d", "count": 4, "image": {"width": 64, "height": 64},
        "domain": {"references": ["pv-vision-crack@1"]},
        "defects": [{"class": "crack"}],
        "generators": [{"kind": "dg2gan", "checkpoint": (tmp_path / "run").as_uri()}],
        "output": {"uri": (tmp_path / "reg").as_uri()},
    })
    with pytest.raises(SpecError) as e:
        check_spec(spec)
    fields = [f for f, _ in e.value.problems]
    assert "domain.references" in fields, e.value.problems
    why = dict(e.value.problems)["domain.references"]
    assert "pv-vision-crack@1" in why and str(tmp_path / "reg") in why
