"""One spec that mixes all three generator families runs through the real Ray Data
job: the pipeline never knows which family it drives. Tiny random models (the
code paths, not image quality, are under test)."""

from __future__ import annotations

import numpy as np
import pytest

from factory.spec import spec_from_dict


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    from PIL import Image

    from factory.generators.dg2gan.checkpoint import save_checkpoint
    from factory.generators.dg2gan.model import DG2GANConfig, build
    from factory.generators.pdig.base_model import write_tiny_base

    root = tmp_path_factory.mktemp("models")
    refs = root / "refs"
    refs.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):  # smooth textured "defect-free" references
        y, x = np.mgrid[0:80, 0:80]
        a = 120 + 40 * np.sin(x / (5 + i)) * np.cos(y / 7) + rng.normal(0, 3, (80, 80))
        Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(refs / f"ref{i}.png")
    cfg = DG2GANConfig(image_size=32, ngf=4, n_blocks=1, ndf=4, n_layers=2, class_name="crack")
    gens, _ = build(cfg, seed=3)
    save_checkpoint((root / "dg2gan" / "crack").as_uri(), 0, cfg, gens, train_config={"context": 1.5})
    base = write_tiny_base(root / "tiny-sd")
    return {"refs": refs, "dg2gan": root / "dg2gan", "base": base}


@pytest.mark.ray
def test_one_spec_drives_procedural_dg2gan_and_pdig(ray_local, tiny_models, tmp_path):
    from factory.pipeline import RunOptions, run_dataset
    from factory.storage.dataset import read_pandas

    spec = spec_from_dict({
        "name": "mixed", "seed": 4, "count": 9, "image": {"width": 64, "height": 64, "channels": 1},
        "domain": {"references": [tiny_models["refs"].as_uri()]},
        "defects": [{"class": "crack", "boxes": {"size": {"min": 0.25, "max": 0.4}}}],
        "generators": [
            {"kind": "procedural"},
            {"kind": "dg2gan", "checkpoint": tiny_models["dg2gan"].as_uri(), "params": {"threshold": 0.02}},
            {"kind": "pdig", "params": {"base": str(tiny_models["base"]), "steps": 2, "tidsc_steps": 1}},
        ],
        # random models make arbitrary images: this test is about the plumbing
        "quality": {"min_std": 0.0, "max_saturated": 1.0, "duplicate_distance": -1, "spillover_max": 1.0},
        "output": {"uri": (tmp_path / "reg").as_uri(), "shard_size": 4},
    })
    result = run_dataset(spec, RunOptions(actors=1, batch_size=3, report=False))
    m = result.manifest
    assert m["counts"]["accepted"] == 9
    df = read_pandas(f"{(tmp_path / 'reg').as_uri()}/mixed@{result.version}")
    assert len(df) == 9 and df["sample_id"].is_unique
    assert set(df["generator"]) == {"procedural", "dg2gan", "pdig"}, m["reject_reasons"]
    assert m["counts"]["per_generator"] == df["generator"].value_counts().to_dict()
    for _, row in df.iterrows():
        for b in row["boxes"]:
            assert 0 <= b["x1"] < b["x2"] <= 64 and 0 <= b["y1"] < b["y2"] <= 64
