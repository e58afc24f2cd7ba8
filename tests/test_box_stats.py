"""Box distributions fitted from labelled images (`factory.data.box_stats`): the
numbers are the images' own, the result is a valid spec whose planned boxes follow
them, and a class with too few boxes is left to the spec."""

from __future__ import annotations

import numpy as np
import yaml

from factory.core import Box
from factory.data.box_stats import MIN_BOXES, defects_yaml, fitted_boxes
from factory.data.realset import RealSample
from factory.planning import plan
from factory.spec import spec_from_dict


def _samples(rng, n=60):
    out = []
    for i in range(n):
        boxes = []
        for _ in range(int(rng.integers(1, 3))):  # "scratch": about 40 px on a 400 x 200 image, twice as wide as high
            side = rng.normal(40, 4)
            w, h = side * np.sqrt(2), side / np.sqrt(2)
            boxes.append(Box(0, "scratch", 10, 10, 10 + int(round(w)), 10 + int(round(h))))
        if i < MIN_BOXES - 1:  # "dent": too few to fit
            boxes.append(Box(1, "dent", 0, 0, 20, 20))
        out.append(RealSample(image_path=None, split="train", width=400, height=200, boxes=boxes))
    return out


def test_fitted_boxes_are_the_images_own():
    samples = _samples(np.random.default_rng(0))
    fit = fitted_boxes(samples, order=["dent", "scratch"])
    assert list(fit) == ["scratch"]  # dent has MIN_BOXES - 1 boxes: the spec keeps its own
    sides = [np.sqrt(b.width * b.height / (400 * 200)) for s in samples for b in s.boxes if b.class_name == "scratch"]
    size = fit["scratch"]["size"]
    logs = np.log(sides)
    assert size["dist"] == "lognormal" and abs(size["mean"] - np.mean(logs)) < 1e-4 and abs(size["std"] - np.std(logs)) < 1e-4
    assert size["min"] == round(float(np.percentile(sides, 5)), 4) and size["max"] == round(float(np.percentile(sides, 95)), 4)
    aspect = fit["scratch"]["aspect"]  # (w / W) / (h / H) = 2 * 200 / 400 = 1, up to rounding the pixels
    assert 0.85 < aspect["min"] <= aspect["max"] < 1.15
    assert fit["scratch"]["count"] == [1, 2]


def test_fitted_boxes_in_a_frame_are_what_the_framed_images_show():
    """A 400 x 200 image framed to 100 x 100 keeps its centre 200 x 200 at half size: a box outside it is
    dropped, a box inside it halves and its size is relative to the frame, not to the wide image."""
    boxes = [Box(0, "scratch", 10, 10, 50, 30), Box(0, "scratch", 180, 80, 220, 100)]  # the first is cropped away
    samples = [RealSample(image_path=None, split="train", width=400, height=200, boxes=boxes)] * MIN_BOXES
    plain, framed = fitted_boxes(samples), fitted_boxes(samples, frame=(100, 100))
    assert framed["scratch"]["count"] == [1, 1] and plain["scratch"]["count"] == [1, 2]
    assert framed["scratch"]["size"]["mean"] == round(float(np.log(np.sqrt(20 * 10 / 100**2))), 4)
    assert plain["scratch"]["size"]["mean"] == round(float(np.log(np.sqrt(40 * 20 / (400 * 200)))), 4)
    assert framed["scratch"]["aspect"]["min"] == 2.0 and plain["scratch"]["aspect"]["min"] == 1.0


def test_a_spec_with_fitted_boxes_validates_and_plans_boxes_of_those_sizes():
    fit = fitted_boxes(_samples(np.random.default_rng(1)))
    block = yaml.safe_load(defects_yaml(fit))
    spec = spec_from_dict({"name": "fitted", "seed": 3, "count": 200, "image": {"width": 400, "height": 200},
                           "negatives": 0.0, "generators": [{"kind": "procedural"}], **block})
    size = fit["scratch"]["size"]
    sides = [np.sqrt(b.width * b.height / (400 * 200)) for item in plan(spec, n=200) for b in item.boxes]
    assert len(sides) >= 200
    assert size["min"] - 0.01 <= min(sides) and max(sides) <= size["max"] + 0.01  # clipped to the 5-95% range
    assert abs(np.mean(np.log(sides)) - size["mean"]) < 0.05


def test_data_import_prints_the_train_splits_box_distributions(tmp_path):
    from PIL import Image
    from typer.testing import CliRunner

    from factory.cli import app

    src = tmp_path / "src"
    for split in ("train", "val"):
        (src / "images" / split).mkdir(parents=True)
        (src / "labels" / split).mkdir(parents=True)
    for i in range(6):  # "crack": 6 train boxes, 0.2 of the side; "spot": one, too few to fit
        Image.fromarray(np.zeros((40, 40), np.uint8)).save(src / "images" / "train" / f"t{i}.png")
        (src / "labels" / "train" / f"t{i}.txt").write_text("0 0.5 0.5 0.2 0.2\n" + ("1 0.2 0.2 0.1 0.1\n" if i == 0 else ""))
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(src / "images" / "val" / "v.png")
    (src / "labels" / "val" / "v.txt").write_text("0 0.5 0.5 0.6 0.6\n" * 9)  # val boxes never enter the fit
    (src / "data.yaml").write_text(yaml.safe_dump({"train": "images/train", "val": "images/val", "nc": 2,
                                                   "names": ["crack", "spot"]}))
    r = CliRunner().invoke(app, ["data", "import", "yolo", str(src), "--out", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    block = yaml.safe_load(r.output[r.output.index("defects:"):])
    assert [d["class"] for d in block["defects"]] == ["crack"]
    assert block["defects"][0]["boxes"]["size"]["mean"] == round(float(np.log(0.2)), 4)  # lognormal: ln of the side
    r = CliRunner().invoke(app, ["data", "import", "yolo", str(src), "--out", str(tmp_path / "out2"), "--frame", "40x20"])
    assert r.exit_code == 0 and "in 40x20 images" in r.output, r.output  # the centre half: 8 x 8 px of 40 x 20
    fit = yaml.safe_load(r.output[r.output.index("defects:"):])["defects"][0]["boxes"]
    assert fit["size"]["mean"] == round(float(np.log(np.sqrt(8 * 8 / (40 * 20)))), 4) and fit["aspect"]["min"] == 0.5
    bad = CliRunner().invoke(app, ["data", "import", "yolo", str(src), "--out", str(tmp_path / "out3"), "--frame", "40"])
    assert bad.exit_code == 2 and "WIDTHxHEIGHT" in bad.output
