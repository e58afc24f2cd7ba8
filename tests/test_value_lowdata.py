"""Issue 25: benchmarks/value.py's low-data transplant arm is honest. With a real
limit N, the synthetic set of a seed is made from exactly the N labelled images the
retrain path trains on for that seed (`factory.retrain.data.real_subset`, from the
same item list), published as its own registry set; no pasted instance of the
generated version comes from outside it (each sample is remade from its Parquet
`work_item` with the version's own generator settings, its pixels must match, and
the instances it records must all be from the subset); its backgrounds are
defect-free images."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from factory.data.adapters import pv_vision_crack
from factory.data.realset import RealSet, write_yolo
from factory.retrain import data as RD
from factory.spec.retrain import RetrainSettings

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import value as V  # noqa: E402


@pytest.mark.ray
def test_low_data_transplant_uses_only_the_seeds_subset(tmp_path, shared_data, ray_local):
    from factory import read_pandas
    from factory.core import WorkItem
    from factory.generators.checks import check_spec
    from factory.generators.references import train_files, tree_uri
    from factory.generators.transplant import TransplantGenerator
    from factory.spec.load import spec_from_dict
    from factory.storage.registry import Registry

    real = pv_vision_crack(shared_data / "pv_vision_crack", limit=40)
    train = [s for s in real.samples if s.split == "train"]
    val = [s for s in real.samples if s.split == "val"]
    train_dir, val_dir = str(tmp_path / "real-train"), str(tmp_path / "real-val")
    write_yolo(RealSet("pv-train", real.class_names, train, real.source), train_dir)
    write_yolo(RealSet("pv-val", real.class_names, val, real.source), val_dir)
    train_set = RealSet(real.name, real.class_names, train, real.source, real.settings)
    n, seed = 8, 1

    subset = V.real_subset_samples(train_dir, val_dir, train_set, n, seed)
    sel = RD.select(Path(train_dir), Path(val_dir), None, RetrainSettings(real_limit=n), seed)  # what retrain trains on
    assert [s.image_path.name for s in subset] == [p.name for p, _ in sel.real] and len(subset) == n
    assert V.real_subset_samples(train_dir, val_dir, train_set, n, seed + 1) != subset  # per seed

    spec_file = str(REPO / "benchmarks" / "specs" / "value-transplant-pv.yaml")
    assert V.uses_real_source(spec_file, V.registry_name(train_set))
    uri = V.make_synthetic("transplant", spec_file, tmp_path / "work", val_dir, train_set, count=12, subset=subset,
                           tag=f"n{n}-s{seed}")
    root = str((tmp_path / "work" / "registry" / "transplant").resolve())
    reg = Registry(root)
    name = "value-transplant-pv-n8-s1"
    assert uri == reg.version_uri(name, 1)

    # the published subset is exactly the seed's N images, its train split the only thing a transplant reads
    sub_tree = tree_uri(f"{root}/pv-vision-crack-n8-s1@1")
    _, files = train_files(sub_tree)
    subset_names = {s.image_path.name for s in subset}
    assert {Path(f.image).name for f in files} == subset_names

    manifest = reg.manifest(name, 1)
    spec = check_spec(spec_from_dict(manifest["spec"]))
    params = spec.generators[0].params
    assert params["source"].endswith("/pv-vision-crack-n8-s1@1")
    gen = TransplantGenerator.load(None, params)
    # backgrounds: defect-free train images only
    free = {s.image_path.name for s in train if not s.boxes}
    assert gen.backgrounds and {Path(r).name for r in gen.backgrounds} <= free
    # the bank holds instances of the subset only
    assert {o.origin.split("#")[0].rsplit("/", 1)[-1] for pool in gen.bank.values() for o in pool} <= subset_names

    df = read_pandas(f"{root}/{name}@1")
    assert len(df) > 0
    origins = []
    for row in df.itertuples():
        item = WorkItem.from_row(json.loads(row.work_item))
        sample = gen.generate([item])[0]  # same item, same bytes: this is how the stored sample was made
        stored = np.asarray(Image.open(io.BytesIO(row.image)))
        assert np.array_equal(stored.reshape(sample.image.shape[:2] + (-1,)),
                              sample.image.reshape(sample.image.shape[:2] + (-1,))[..., : stored.reshape(
                                  sample.image.shape[:2] + (-1,)).shape[-1]])
        origins += sample.meta["instances"]
    assert origins, "no instance was pasted"
    for o in origins:  # "<image path in the source tree>#<box index>"
        path, _, k = o.partition("#")
        assert path.startswith("images/train/") and Path(path).name in subset_names and k.isdigit(), o
