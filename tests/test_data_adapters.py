"""Real-data adapters: masks -> boxes on hand-made masks, the three layouts, and
the import into a registry dataset that ultralytics-style readers understand."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from factory.core import Box
from factory.data.adapters import load_real, magnetic_tile, pv_vision_crack, yolo_layout
from factory.data.masks import binary_to_boxes, mask_to_boxes
from factory.data.realset import publish_real, write_yolo
from factory.data.vocab import PV_VISION_CLASSES
from factory.formats import label_path, parse_yolo_lines, read_data_yaml, yolo_lines
from factory.retrain.offline import network_attempts
from factory.storage.registry import Registry


@pytest.fixture(autouse=True)
def _offline():
    with network_attempts() as attempts:
        yield
    assert not attempts, f"tried to reach the network: {attempts}"


def test_components_become_tight_boxes_and_specks_are_dropped():
    m = np.zeros((20, 30), np.uint8)
    m[2:5, 3:9] = 3  # 18 px crack
    m[10:16, 20:22] = 3  # 12 px crack
    m[18, 0] = 3  # a 1 px speck
    m[7:9, 10:14] = 1  # dark area, 8 px
    m[:, 25] = 4  # busbar: structure, not in the class map
    boxes = mask_to_boxes(m, {3: (0, "crack"), 1: (2, "dark_area")}, min_area=4)
    assert boxes == [
        Box(0, "crack", 3, 2, 9, 5),
        Box(2, "dark_area", 10, 7, 14, 9),
        Box(0, "crack", 20, 10, 22, 16),
    ]
    assert all(b.x2 <= 25 or b.x1 > 25 for b in boxes)  # nothing from the busbar column


def test_diagonal_pixels_are_one_component_and_merge_gap_bridges_cuts():
    d = np.eye(6, dtype=bool)
    assert binary_to_boxes(d, 0, "crack") == [Box(0, "crack", 0, 0, 6, 6)]  # 8-connected
    cut = np.zeros((10, 20), bool)
    cut[5, 0:8] = True
    cut[5, 10:20] = True  # a crack cut by a 2-px busbar
    assert len(binary_to_boxes(cut, 0, "crack")) == 2
    merged = binary_to_boxes(cut, 0, "crack", merge_gap=1)
    assert merged == [Box(0, "crack", 0, 5, 20, 6)]  # one box, tight on the original pixels
    assert binary_to_boxes(np.zeros((4, 4), bool), 0, "x") == []
    with pytest.raises(ValueError):
        binary_to_boxes(np.zeros((4, 4, 3), bool), 0, "x")


def test_yolo_lines_round_trip():
    boxes = [Box(1, "b", 10, 20, 30, 60), Box(0, "a", 0, 0, 100, 50)]
    lines = yolo_lines(boxes, 100, 80)
    assert lines[0] == "1 0.200000 0.500000 0.200000 0.500000"
    assert parse_yolo_lines("\n".join(lines), 100, 80, ["a", "b"]) == boxes
    with pytest.raises(ValueError, match="class id 5"):
        parse_yolo_lines("5 0.5 0.5 0.1 0.1", 100, 80, ["a", "b"])


def _fake_pv(root):
    """pv_vision layout: img/*.jpg + ann/*.png RGB masks (value in every channel)."""
    for split in ("train", "val"):
        (root / split / "img").mkdir(parents=True)
        (root / split / "ann").mkdir(parents=True)
        m = np.zeros((40, 40), np.uint8)
        m[10:12, :] = 4  # busbar across the cell
        m[2:8, 5:6] = 3  # crack
        m[20:30, 20:30] = 1  # dark area
        m[30:33, 2:5] = 2  # cross crack
        Image.fromarray(np.repeat(m[:, :, None], 3, 2)).save(root / split / "ann" / f"cell_{split}.png")
        Image.fromarray(np.full((40, 40), 128, np.uint8)).save(root / split / "img" / f"cell_{split}.jpg")


def test_pv_vision_adapter_ignores_busbars(tmp_path):
    _fake_pv(tmp_path)
    real = pv_vision_crack(tmp_path, min_area=4)
    assert real.class_names == PV_VISION_CLASSES == ["crack", "cross_crack", "dark_area"]
    assert real.splits() == {"train": 1, "val": 1}
    s = real.samples[0]
    assert sorted((b.class_name, b.x1, b.y1, b.x2, b.y2) for b in s.boxes) == [
        ("crack", 5, 2, 6, 8), ("cross_crack", 2, 30, 5, 33), ("dark_area", 20, 20, 30, 30)]


def test_magnetic_tile_thresholds_antialiased_masks(tmp_path):
    for folder in ("MT_Blowhole", "MT_Break", "MT_Crack", "MT_Fray", "MT_Uneven", "MT_Free"):
        (tmp_path / folder / "Imgs").mkdir(parents=True)
    mask = np.zeros((30, 50), np.uint8)
    mask[5:10, 5:15] = 255
    mask[4, 5:15] = 100  # anti-aliased rim below the 128 threshold
    mask[20:25, 30:40] = 200
    Image.fromarray(mask).save(tmp_path / "MT_Crack" / "Imgs" / "t1.png")
    Image.fromarray(np.zeros((30, 50), np.uint8)).save(tmp_path / "MT_Crack" / "Imgs" / "t1.jpg")
    Image.fromarray(np.zeros((30, 50), np.uint8)).save(tmp_path / "MT_Free" / "Imgs" / "f1.png")
    Image.fromarray(np.zeros((30, 50), np.uint8)).save(tmp_path / "MT_Free" / "Imgs" / "f1.jpg")
    real = magnetic_tile(tmp_path, min_area=4)
    crack = next(s for s in real.samples if s.stem == "t1")
    assert [(b.class_name, b.x1, b.y1, b.x2, b.y2) for b in crack.boxes] == [("crack", 5, 5, 15, 10), ("crack", 30, 20, 40, 25)]
    free = next(s for s in real.samples if s.stem == "f1")
    assert free.boxes == []  # defect-free tiles are negatives
    assert magnetic_tile(tmp_path, min_area=4).splits() == real.splits()  # the split is seeded, not random


def test_neu_det_is_read_as_it_is(shared_data):
    real = yolo_layout(shared_data / "neu_det")
    assert real.class_names[0] == "crazing" and len(real.class_names) == 6
    assert real.splits() == {"train": 1440, "val": 360}
    s = real.samples[0]
    lines = label_path(s.image_path).read_text().split()
    assert int(lines[0]) == s.boxes[0].class_id


def test_real_pv_masks_give_boxes_for_every_defect_class(shared_data):
    real = pv_vision_crack(shared_data / "pv_vision_crack", splits=("val",))
    counts = real.class_counts()
    assert len(real.samples) == 172
    assert all(counts[c] > 0 for c in PV_VISION_CLASSES), counts
    for s in real.samples:
        assert all(0 <= b.x1 < b.x2 <= s.width and 0 <= b.y1 < b.y2 <= s.height for b in s.boxes)


def test_write_yolo_and_publish_as_registry_dataset(tmp_path):
    _fake_pv(tmp_path / "src")
    real = pv_vision_crack(tmp_path / "src", min_area=4)
    folder = tmp_path / "yolo"
    write_yolo(real, str(folder))
    root, names, splits = read_data_yaml(folder)
    assert names == PV_VISION_CLASSES and {k: len(v) for k, v in splits.items()} == {"train": 1, "val": 1}
    assert "path" not in yaml.safe_load((folder / "data.yaml").read_text())
    assert len(label_path(splits["train"][0]).read_text().splitlines()) == 3

    uri = publish_real(real, f"file://{tmp_path}/reg", "pv-test")
    assert uri.endswith("/pv-test/v1")
    manifest = Registry(f"file://{tmp_path}/reg").manifest("pv-test", 1)  # (its file list: files.jsonl)
    assert manifest["kind"] == "real" and manifest["classes"] == PV_VISION_CLASSES
    assert "yolo/data.yaml" in manifest["files"]
    assert load_real("yolo", tmp_path / "reg" / "pv-test" / "v1" / "yolo").class_counts() == real.class_counts()


def test_cli_data_import(tmp_path):
    from factory.cli import app

    _fake_pv(tmp_path / "src")
    r = CliRunner().invoke(app, ["data", "import", "pv_vision_crack", str(tmp_path / "src"), "--root",
                                 str(tmp_path / "reg"), "--name", "pv", "--min-area", "4"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "reg" / "pv" / "v1" / "manifest.json").exists()
    bad = CliRunner().invoke(app, ["data", "import", "nope", str(tmp_path / "src"), "--out", str(tmp_path / "o")])
    assert bad.exit_code == 2 and "unknown real data set kind" in bad.output
