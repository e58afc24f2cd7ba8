"""Realism without downloaded weights: the classifier two-sample test, the in-domain
extractor for FID/KID, and `factory metrics --real` with neither Inception nor an
anomaly checkpoint."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from factory.quality.fidelity import fidelity
from factory.quality.realism import c2st, train_indomain_extractor


def _stripes(n, rng, period=6.0):
    yy, xx = np.mgrid[0:48, 0:48]
    return [np.clip(128 + 60 * np.sin(xx / period + rng.uniform(0, 6)) + rng.normal(0, 8, (48, 48)), 0, 255).astype(np.uint8)
            for _ in range(n)]


def _blobs(n, rng):
    return [np.clip(128 + 50 * np.exp(-((np.mgrid[0:48, 0:48] - rng.uniform(10, 38, (2, 1, 1))) ** 2).sum(0) / 60)
                    + rng.normal(0, 8, (48, 48)), 0, 255).astype(np.uint8) for _ in range(n)]


def test_c2st_separates_different_sets_and_not_same_ones():
    rng = np.random.default_rng(0)
    far = c2st(_blobs(40, rng), _stripes(40, rng), size=32, folds=4, epochs=8)
    same = c2st(_stripes(40, rng), _stripes(40, rng), size=32, folds=4, epochs=8)
    assert far["c2st_accuracy"] > 0.9, far
    assert same["c2st_accuracy"] < 0.75, same
    assert far["images_per_side"] == 40 and len(far["folds"]) == 4


def test_indomain_extractor_orders_kid(tmp_path):
    rng = np.random.default_rng(1)
    real = _stripes(60, rng)
    weights = train_indomain_extractor(real[:30], tmp_path / "x.pt", size=32, epochs=4)

    def files(images, tag):
        out = []
        for i, a in enumerate(images):
            out.append(str(tmp_path / f"{tag}{i}.png"))
            Image.fromarray(a).save(out[-1])
        return out

    ref = files(real[30:], "r")
    same = fidelity(files(_stripes(30, rng), "s"), ref, size=32, kid_subsets=5, indomain_weights=str(weights))
    far = fidelity(files(_blobs(30, rng), "b"), ref, size=32, kid_subsets=5, indomain_weights=str(weights))
    assert same["extractor"].startswith("indomain-rotnet")
    assert far["kid_mean"] > same["kid_mean"] and far["fid"] > same["fid"]


def test_metrics_cli_without_extractor_trains_its_own(ray_local, tmp_path):
    from factory.cli import app
    from factory.pipeline import RunOptions, run_dataset
    from factory.spec import spec_from_dict

    reg = (tmp_path / "reg").as_uri()
    spec = spec_from_dict({"name": "m", "seed": 1, "count": 12, "image": {"width": 64, "height": 64},
                           "defects": [{"class": "crack", "boxes": {"size": {"min": 0.2, "max": 0.3}}}],
                           "quality": {"duplicate_distance": -1}, "output": {"uri": reg, "shard_size": 6}})
    result = run_dataset(spec, RunOptions(actors=1, batch_size=6, report=False))
    real = tmp_path / "real"
    real.mkdir()
    for i, a in enumerate(_stripes(12, np.random.default_rng(2))):
        Image.fromarray(a).save(real / f"r{i}.png")
    res = CliRunner().invoke(app, ["metrics", f"{reg}/m@{result.version}", "--real", str(real), "--size", "32"])
    assert res.exit_code == 0, res.output
    assert "C2ST accuracy" in res.output and "indomain-rotnet" in res.output
    assert "FID, ImageNet features" in res.output and "efficientnet-lite-imagenet" in res.output
    out = json.loads((tmp_path / "reg" / "m" / "_extras" / f"v{result.version}" / "metrics" / "quality.json").read_text())  # beside the version
    assert 0.0 <= out["c2st"]["c2st_accuracy"] <= 1.0 and out["fidelity"]["kid_mean"] == out["fidelity"]["kid_mean"]
    assert out["fidelity_pretrained"]["fid"] >= 0 and "lite0" in out["fidelity_pretrained"]["extractor"]
    assert (tmp_path / "reg" / "m" / "_extras" / f"v{result.version}" / "metrics" / "realism.png").exists()
    assert "skipped" in out["c2st_box_crops"] and "C2ST box crops" in res.output  # plain images: no real boxes
    floor = out["real_floor"]  # the same measures between two halves of the real images, printed beside
    assert "floor: real vs real (6 a half)" in " ".join(res.output.split())
    assert floor["images_per_half"] == 6 and "at least 10 images per side" in floor["c2st"]["skipped"]
    assert floor["fidelity_pretrained"]["kid_mean"] == floor["fidelity_pretrained"]["kid_mean"]

    # a labelled real folder (YOLO: images/ + labels/): the C2ST also judges crops around the boxes
    (tmp_path / "yolo" / "images").mkdir(parents=True)
    (tmp_path / "yolo" / "labels").mkdir()
    for i, p in enumerate(sorted(real.iterdir())):
        p.rename(tmp_path / "yolo" / "images" / p.name)
        (tmp_path / "yolo" / "labels" / f"{p.stem}.txt").write_text("0 0.5 0.5 0.25 0.25\n0 0.25 0.3 0.2 0.1\n")
    res = CliRunner().invoke(app, ["metrics", f"{reg}/m@{result.version}", "--real", str(tmp_path / "yolo" / "images"),
                                   "--size", "32"])
    assert res.exit_code == 0, res.output
    out = json.loads((tmp_path / "reg" / "m" / "_extras" / f"v{result.version}" / "metrics" / "quality.json").read_text())
    crops = out["c2st_box_crops"]
    assert 0.0 <= crops["c2st_accuracy"] <= 1.0 and crops["images_per_side"] == 12  # 12 generated boxes, 24 real crops
    assert out["real_floor"]["c2st_box_crops"]["images_per_side"] == 12  # two halves of 6 images, 2 boxes each


def test_pretrained_kid_tells_a_different_set_from_a_like_one():
    """KID on the ImageNet EfficientNet-Lite features: two draws of one kind of image are
    closer than that kind and noise."""
    from factory.quality.fidelity import fidelity
    from factory.viz import png_bytes

    a = [png_bytes(x) for x in _stripes(16, np.random.default_rng(0))]
    b = [png_bytes(x) for x in _stripes(16, np.random.default_rng(1))]
    noise = [png_bytes(np.random.default_rng(i).integers(0, 255, (64, 64), dtype=np.uint8)) for i in range(16)]
    like = fidelity(a, b, size=64, kid_subsets=10, pretrained="lite0")
    unlike = fidelity(a, noise, size=64, kid_subsets=10, pretrained="lite0")
    assert "lite0" in like["extractor"] and like["kid_mean"] < unlike["kid_mean"] and like["fid"] < unlike["fid"]
