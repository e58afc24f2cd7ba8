"""The transplant generator on tiny data made here: a pv_vision-layout set with
masks, imported into a registry; defect-free backgrounds in a folder."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from typer.testing import CliRunner

from factory.core import Sample
from factory.data.adapters import pv_vision_crack
from factory.data.realset import publish_real
from factory.generators.base import load_generator
from factory.generators.checks import check_spec
from factory.generators.transplant.bank import load_bank
from factory.generators.transplant.paste import HALO_MAX, margin
from factory.planning import plan
from factory.spec import SpecError, spec_from_dict

VAL_LEVEL = 251  # only the val split's defects have this value: it must never be cut


def _make_set(root, rng):
    """train: 4 cells with cracks (3) and dark areas (1), and a clean one (the last);
    val: 2 cells whose only defects are cross cracks (2), which train never has."""
    for split, n in (("train", 5), ("val", 2)):
        (root / split / "img").mkdir(parents=True)
        (root / split / "ann").mkdir(parents=True)
        for i in range(n):
            img = np.clip(rng.normal(170, 6, (48, 48)), 0, 255)
            m = np.zeros((48, 48), np.uint8)
            m[20, :] = 4  # busbar: structure
            if split == "train" and i == 4:
                pass
            elif split == "train":
                m[4 + i:14 + i, 8 + i] = 3
                m[5 + i:15 + i, 9 + i] = 3  # a 2-px wide crack
                m[30:40, 30 + i:42] = 1
                img[m == 3], img[m == 1] = 60, 90
            else:
                m[30:38, 10:18] = 2
                img[m == 2] = VAL_LEVEL
            Image.fromarray(img.astype(np.uint8)).save(root / split / "img" / f"{split}{i}.png")
            Image.fromarray(np.repeat(m[:, :, None], 3, 2)).save(root / split / "ann" / f"{split}{i}.png")


@pytest.fixture
def world(tmp_path):
    rng = np.random.default_rng(0)
    _make_set(tmp_path / "pv", rng)
    reg = (tmp_path / "reg").as_uri()
    publish_real(pv_vision_crack(tmp_path / "pv", min_area=4), reg, "tiny-pv", 1)
    publish_real(pv_vision_crack(tmp_path / "pv", min_area=4, limit=4), reg, "tiny-pv", 2)  # no clean cell
    refs = tmp_path / "clean"
    refs.mkdir()
    for i in range(3):
        yy, xx = np.mgrid[0:64, 0:64]
        Image.fromarray((120 + 40 * np.sin(xx / 5.0 + i) + 10 * np.cos(yy / 7.0)).astype(np.uint8)).save(refs / f"c{i}.png")
    return {"reg": reg, "refs": refs, "tmp": tmp_path}


def _spec(world, blend="alpha", classes=("crack", "dark_area"), source="tiny-pv@1", refs=None, **extra):
    return spec_from_dict({
        "name": "tp", "seed": 5, "count": 12, "image": {"width": 64, "height": 64, "channels": 1},
        "domain": {"references": refs if refs is not None else [world["refs"].as_uri()]},
        "defects": [{"class": c, "boxes": {"count": [1, 2], "size": {"min": 0.15, "max": 0.3}}} for c in classes],
        "generators": [{"kind": "transplant", "params": {"source": source, "blend": blend}}],
        "quality": {"duplicate_distance": -1},
        "output": {"uri": world["reg"], "shard_size": 4},  # bare NAME@VERSION resolves here
        **extra,
    })


def _generator(spec):
    g = check_spec(spec).generators[0]
    return load_generator(g.kind, None, g.params)


@pytest.mark.parametrize("blend", ["alpha", "poisson"])
def test_boxes_are_tight_on_pasted_masks_and_nothing_else_changes(world, blend):
    spec = _spec(world, blend)
    gen = _generator(spec)
    items = [it for it in plan(spec, n=12) if it.boxes]
    assert items
    for item, s in zip(items, gen.generate(items)):
        R = s.blend_px  # the feather's margin plus the halo a grey paste carries (at most HALO_MAX)
        assert margin(gen.p.feather) <= R <= margin(gen.p.feather) + HALO_MAX
        assert s.mask is not None and len(s.boxes) == int(s.mask.max()) >= 1
        for k, b in enumerate(s.boxes, start=1):
            ys, xs = np.nonzero(s.mask == k)
            assert (b.x1, b.y1, b.x2, b.y2) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        # the same item without boxes is its (augmented) background
        bg = gen.generate([dataclasses.replace(item, boxes=())])[0].image
        near = ndimage.binary_dilation(s.mask > 0, np.ones((3, 3), bool), iterations=R)
        assert np.array_equal(s.image[~near], bg[~near])
        assert not np.array_equal(s.image[near], bg[near])  # something was pasted


def test_same_spec_and_seed_give_identical_bytes(world):
    spec = _spec(world, "poisson", negatives=0.3)
    items = plan(spec, n=8)
    a = [s.image.tobytes() for s in _generator(spec).generate(items)]
    b = [s.image.tobytes() for s in _generator(spec).generate(items)]
    assert a == b


def test_negatives_are_augmented_never_copies(world):
    spec = _spec(world, negatives=1.0)
    gen = _generator(spec)
    refs = {np.asarray(Image.open(p)).tobytes() for p in world["refs"].iterdir()}
    for s in gen.generate(plan(spec, n=6)):
        assert not s.boxes and s.image[:, :, 0].tobytes() not in refs


def test_val_split_never_reaches_a_synthetic_image(world):
    bank = load_bank(f"{world['reg']}/tiny-pv@1")
    origins = [i.origin for pool in bank.values() for i in pool]
    assert origins and all(o.startswith("images/train/") for o in origins)
    assert "cross_crack" not in bank  # val's only class
    # the val set's imported images are also no background
    spec = _spec(world, refs=["tiny-pv@1"])
    gen = _generator(spec)
    assert len(gen.backgrounds) == 1 and gen.backgrounds[0].endswith("/images/train/train4.png")
    samples = gen.generate(plan(spec, n=12))
    assert all("images/train/" in o for s in samples for o in s.meta["instances"])
    assert not any((s.image == VAL_LEVEL).sum() > 20 for s in samples)


def test_validate_names_each_bad_field(world):
    def problems(spec):
        with pytest.raises(SpecError) as e:
            check_spec(spec)
        return dict(e.value.problems)

    p = problems(_spec(world, classes=("crack", "cross_crack")))
    assert "defects[1].class" in p and "cross_crack" in p["defects[1].class"]
    p = problems(_spec(world, source="nope@1"))
    assert "generators[0].params.source" in p
    p = problems(_spec(world, refs=[str(world["tmp"] / "missing")]))
    assert "domain.references" in p and "not found" in p["domain.references"]
    # only train cells with defects: an imported set with no defect-free train image
    p = problems(_spec(world, refs=["tiny-pv@2"]))
    assert "domain.references" in p and "defect-free" in p["domain.references"]
    check_spec(_spec(world, source="nope@1"), check_uris=False)  # skippable


def test_cli_validate_reports_field_and_no_check_uris(world, tmp_path):
    import yaml

    from factory.cli import app

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(_spec(world, source="nope@1").to_yaml_dict()))
    res = CliRunner().invoke(app, ["validate", str(path)])
    assert res.exit_code == 2 and "generators[0].params.source" in res.output
    assert CliRunner().invoke(app, ["validate", str(path), "--no-check-uris"]).exit_code == 0


def test_transplant_runs_through_the_ray_data_job(ray_local, world):
    from factory.pipeline import RunOptions, run_dataset
    from factory.storage.dataset import read_pandas

    spec = _spec(world, "poisson", negatives=0.2)
    result = run_dataset(spec, RunOptions(actors=1, batch_size=4, report=False))
    df = read_pandas(f"{world['reg']}/tp@{result.version}")
    assert len(df) == 12 and set(df["generator"]) == {"transplant"}
    assert sum(len(b) for b in df["boxes"]) > 0


# --- the procedural renderer fitted to the line, and drawing on its references ------------


def _rendered_refs(folder, busbars=5, brightness=0.75, n=6):
    """Defect-free cells rendered with a known style, as reference images."""
    from factory.core import WorkItem
    from factory.generators.procedural.render import render_el

    folder.mkdir()
    for i in range(n):
        item = WorkItem(f"r{i}", i, "procedural", None, 256, 256, 1, seed=100 + i,
                        style={"brightness": brightness, "contrast": 1.0, "grid_pitch": 8.0, "busbars": busbars})
        Image.fromarray(render_el(item)[0][:, :, 0]).save(folder / f"ref{i}.png")
    return folder


def test_style_fit_recovers_the_references_style_and_travels_with_the_spec(tmp_path):
    refs = _rendered_refs(tmp_path / "refs")
    data = {"name": "fit", "count": 4, "image": {"width": 128, "height": 128},
            "domain": {"style": "fit", "references": [refs.as_uri()]}, "defects": [{"class": "crack"}]}
    spec = check_spec(spec_from_dict(data))
    d = spec.domain
    assert d.busbars == (5, 5)
    assert 0.6 <= d.brightness[0] <= d.brightness[1] <= 0.85, d.brightness
    assert {"busbar_width", "noise", "tex_std", "tex_a0", "tex_q4"} <= set(d.fitted)
    dumped = spec.to_yaml_dict()["domain"]  # what the manifest's `spec` carries
    assert dumped["style"] == "fit" and dumped["fitted"] == d.fitted
    item = plan(spec, n=1)[0]
    assert item.style["busbar_width"] == d.fitted["busbar_width"]
    again = check_spec(spec_from_dict(data))  # same references, same fit, same hash
    assert again.spec_hash() == spec.spec_hash()
    plain = spec_from_dict({k: v for k, v in data.items() if k != "domain"})  # no fit: the style keys of old
    assert plan(plain, n=1)[0].style.keys() == {"brightness", "contrast", "grid_pitch", "busbars", "reference"}


def test_style_fit_without_references_names_the_field(tmp_path):
    with pytest.raises(SpecError) as e:
        check_spec(spec_from_dict({"name": "fit", "count": 4, "domain": {"style": "fit"}, "defects": [{"class": "crack"}]}))
    assert "domain.references" in dict(e.value.problems)


def test_plan_shows_the_fitted_style(tmp_path):
    import yaml

    from factory.cli import app

    refs = _rendered_refs(tmp_path / "refs", n=3)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "fit", "count": 4, "image": {"width": 64, "height": 64},
                                    "domain": {"style": "fit", "references": [refs.as_uri()]},
                                    "defects": [{"class": "crack", "boxes": {"size": {"min": 0.2, "max": 0.3}}}]}))
    res = CliRunner().invoke(app, ["plan", str(path)])
    assert res.exit_code == 0, res.output
    assert "style fitted" in res.output and "busbar_width" in res.output


def test_procedural_draws_on_reference_backgrounds(world):
    data = {"name": "pr", "seed": 2, "count": 4, "image": {"width": 64, "height": 64},
            "domain": {"references": [world["refs"].as_uri()]},
            "defects": [{"class": "crack", "boxes": {"size": {"min": 0.2, "max": 0.3}}}],
            "generators": [{"kind": "procedural", "params": {"background": "references"}}]}
    spec = spec_from_dict(data)
    gen = _generator(spec)
    refs = [np.asarray(Image.open(p), np.float32) for p in sorted(world["refs"].iterdir())]
    for s in gen.generate(plan(spec, n=4)):
        img = s.image[:, :, 0].astype(np.float32)
        ref = np.asarray(Image.open(s.meta["reference"]), np.float32)
        flips = [ref, ref[:, ::-1], ref[::-1], ref[::-1, ::-1]]
        outside = s.mask == 0
        assert min(np.abs(img - f)[outside].mean() for f in flips) < 6  # the reference plus sensor noise
        assert s.boxes and s.meta["reference"].endswith(".png") and len(refs) == 3
    with pytest.raises(SpecError) as e:
        check_spec(spec_from_dict({**data, "domain": {}}))
    assert "domain.references" in dict(e.value.problems)


def test_import_keeps_each_boxes_exact_pixels(world):
    from factory.data.instances import decode_map
    from factory.formats import parse_yolo_lines

    tree = world["tmp"] / "reg" / "tiny-pv" / "v1" / "yolo"
    n = 0
    for lab in sorted((tree / "labels" / "train").glob("*.txt")):
        boxes = parse_yolo_lines(lab.read_text(), 48, 48, ["crack", "cross_crack", "dark_area"])
        inst = decode_map((tree / "masks" / "train" / f"{lab.stem}.png").read_bytes())
        assert int(inst.max()) == len(boxes)
        for k, b in enumerate(boxes, start=1):
            ys, xs = np.nonzero(inst == k)
            assert (b.x1, b.y1, b.x2, b.y2) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            n += 1
    assert n == 8  # 4 cells x (crack + dark area); the busbar is structure


def test_box_only_source_gives_feathered_box_instances(world, tmp_path):
    from factory.core import Box
    from factory.data.realset import write_yolo_arrays

    rng = np.random.default_rng(3)
    items = []
    for i in range(3):
        img = np.clip(rng.normal(120, 5, (40, 40)), 0, 255).astype(np.uint8)
        img[10:20, 12:26] = 40
        items.append((img, [Box(0, "scratch", 12, 10, 26, 20)]))
    yolo = write_yolo_arrays(items, ["scratch"], tmp_path / "yolo")
    bank = load_bank(yolo.as_uri())
    assert [i.exact for i in bank["scratch"]] == [False] * 3
    a = bank["scratch"][0].alpha
    assert a.max() == 1.0 and 0 < a[a > 0].min() < 1  # soft edge
    spec = _spec(world, classes=("scratch",), source=yolo.as_uri())
    s = _generator(spec).generate([it for it in plan(spec, n=4) if it.boxes])[0]
    assert s.boxes and s.mask.max() == len(s.boxes)


@pytest.mark.parametrize("blend", ["mixed", "poisson"])
def test_exact_outside_test_passes_every_transplant_and_catches_a_changed_pixel(world, blend):
    """Transplant knows its background: outside the boxes (+ the blend margin) every
    pixel equals it, for every sample (issue 27, item 4). One changed pixel far from
    the boxes is rejected as `outside_changed`; the anomaly gate then leaves the
    outside to this test (it turns no outside heat into a reason)."""
    from factory.quality import OutsideExactScorer

    spec = _spec(world, blend)
    gen = _generator(spec)
    items = [it for it in plan(spec, n=12) if it.boxes]
    samples = gen.generate(items)
    bg_only = gen.generate([dataclasses.replace(items[0], boxes=())])[0].image
    assert np.array_equal(samples[0].background, bg_only)  # the background is the item drawn without its boxes
    verdicts = OutsideExactScorer().score(samples)
    assert [v.reasons for v in verdicts] == [[]] * len(samples)
    s = samples[0]
    far = np.ones(s.image.shape[:2], bool)
    for b in s.boxes:
        far[max(0, b.y1 - s.blend_px - 1): b.y2 + s.blend_px + 1, max(0, b.x1 - s.blend_px - 1): b.x2 + s.blend_px + 1] = False
    y, x = np.argwhere(far)[0]
    broken = dataclasses.replace(s, image=s.image.copy())
    broken.image[y, x] ^= 0x40
    (v,) = OutsideExactScorer().score([broken])
    assert [r.code for r in v.reasons] == ["outside_changed"] and v.scores["outside.changed_px"] == 1
    assert OutsideExactScorer().score([dataclasses.replace(broken, background=None)])[0].reasons == []  # unknown: no verdict


class _GateDetector:
    """The gate's view of a detector: thresholds, the heat maps' scale, and cold maps (counted)."""

    calib = type("C", (), {"outside_fractions": {}})()
    heat_tolerance_px = 0.0

    def __init__(self):
        self.mapped = 0

    def threshold(self, kind, rule):
        return 0.5

    def image_score(self, heat):
        return float(heat.max())

    def image_px_per_model_px(self, H, W):
        return 1.0

    def heat_maps(self, images, original_size=True):
        self.mapped += len(images)
        return [np.zeros(im.shape[:2], np.float32) for im in images]


def test_anomaly_gate_leaves_the_outside_and_the_cold_box_to_the_exact_tests():
    """With the background known, heat outside the boxes and a box whose heat stays below
    the threshold (a small defect on a coarse map) are the exact tests' to judge."""
    from factory.core import Box
    from factory.quality.gate import AnomalyGate

    gate = AnomalyGate(_GateDetector(), max_outside_fraction=0.0)
    heat = np.zeros((32, 32), np.float32)
    heat[4:8, 4:8] = 1.0  # the defect, in its box
    heat[20:30, 20:30] = 1.0  # heat far outside it
    box = [Box(0, "crack", 3, 3, 9, 9)]
    assert "outside_anomaly" in [r.code for r in gate.assess(heat, box).reasons]
    assert "outside_anomaly" not in [r.code for r in gate.assess(heat, box, background_known=True).reasons]
    cold = np.zeros((32, 32), np.float32)
    cold[5:7, 5:7] = 0.4  # a defect the map barely sees
    assert [r.code for r in gate.assess(cold, box).reasons] == ["no_defect"]
    assert gate.assess(cold, box, background_known=True).reasons == []


def test_anomaly_gate_maps_only_the_samples_its_heat_can_judge():
    """In the pipeline's gate (mask spillover left to its own check) a sample with boxes, a
    known background and a mask gets no heat map (the gate's cost) and no verdict from it;
    one without a background, and a negative, are mapped and judged."""
    from factory.core import Box, WorkItem
    from factory.quality.gate import AnomalyGate

    img = np.full((32, 32, 1), 90, np.uint8)
    box = Box(0, "crack", 3, 3, 9, 9)
    mask = np.zeros((32, 32), np.uint8)
    mask[4:8, 4:8] = 1
    item = WorkItem("i", 0, "transplant", None, 32, 32, 1, 0, (box,))
    known = Sample(item, img, [box], mask, background=img)
    unknown = Sample(item, img, [box], mask)
    negative = Sample(dataclasses.replace(item, boxes=()), img, [], background=img)
    det = _GateDetector()
    v = AnomalyGate(det, mask_spillover_reasons=False).score([known, unknown, negative])
    assert det.mapped == 2 and v[0].scores == {} and v[0].reasons == []
    assert [r.code for r in v[1].reasons] == ["no_defect"] and "anomaly.image_score" in v[2].scores
    det = _GateDetector()
    AnomalyGate(det).score([known])  # a standalone gate judges mask spillover itself: mapped
    assert det.mapped == 1


def test_jpeg_quality_gives_pastes_the_codec_noise_and_keeps_the_outside_exact(world):
    """`jpeg_quality`: the finished image goes through JPEG at the line's quality, so the
    pasted pixels carry its noise as the background does; 8x8 blocks without a change
    decode as the background's own, so the exact outside test still holds."""
    from factory.quality import OutsideExactScorer

    spec = _spec(world, "mixed")
    spec.generators[0].params["jpeg_quality"] = 75
    gen = _generator(spec)
    items = [it for it in plan(spec, n=12) if it.boxes]
    samples = gen.generate(items)
    plain = _generator(_spec(world, "mixed")).generate(items)
    assert any(not np.array_equal(a.image, b.image) for a, b in zip(samples, plain))
    assert [v.reasons for v in OutsideExactScorer().score(samples)] == [[]] * len(samples)
    assert np.array_equal(gen.generate(items[:1])[0].image, samples[0].image)  # deterministic
