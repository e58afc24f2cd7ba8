"""Spec validation: every error class gives `file: field.path: reason`, and the CLI exits 2."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from factory.spec import SpecError, load_spec, parse_spec, spec_from_dict

BASE = {
    "name": "t",
    "count": 10,
    "defects": [{"class": "crack", "boxes": {"size": {"min": 0.1, "max": 0.2}}}],
}


def problems(data) -> list[tuple[str, str]]:
    with pytest.raises(SpecError) as e:
        spec_from_dict(data, "s.yaml")
    return e.value.problems


def with_(path: str, value):
    """BASE with one field set by a dotted path (list indexes as numbers)."""
    d = copy.deepcopy(BASE)
    parts = path.split(".")
    cur = d
    for p in parts[:-1]:
        cur = cur[int(p)] if p.isdigit() else cur.setdefault(p, {})
    cur[parts[-1]] = value
    return d


def test_demo_spec_is_valid(demo_spec_path):
    s = load_spec(demo_spec_path)
    assert s.name == "demo-pv-el" and s.count > 0
    assert s.class_names[:2] == ["crack", "black_spot"]


def test_minimal_spec_gets_defaults():
    s = spec_from_dict(BASE)
    assert s.image.width == 256 and s.generators[0].kind == "procedural"
    assert s.output.formats == ["parquet", "yolo"]


def test_message_shape_names_file_field_and_reason():
    d = with_("defects.0.boxes.size.max", 1.5)
    d["defects"].insert(0, copy.deepcopy(BASE["defects"][0]) | {"class": "scratch"})
    with pytest.raises(SpecError) as e:
        spec_from_dict(d, "specs/x.yaml")
    assert "specs/x.yaml: defects[1].boxes.size.max: must be <= 1, got 1.5" in str(e.value).splitlines()


@pytest.mark.parametrize(
    "path, value, loc, fragment",
    [
        ("count", 0, "count", "must be > 0, got 0"),
        ("count", "many", "count", "expected an integer, got 'many'"),
        ("image.width", 8, "image.width", "must be >= 32, got 8"),
        ("image.channels", 2, "image.channels", "must be 1 or 3, got 2"),
        ("domain.brightness", [0.8, 0.2], "domain.brightness", "lo must be <= hi, got [0.8, 0.2]"),
        ("domain.busbars", [3], "domain.busbars", "must be a [lo, hi] pair"),
        ("negatives", 1.5, "negatives", "must be <= 1, got 1.5"),
        ("defects.0.boxes.count", [3, 1], "defects[0].boxes.count", "lo must be <= hi"),
        ("defects.0.boxes.size.dist", "gamma", "defects[0].boxes.size.dist", "must be 'uniform', 'loguniform', 'normal' or 'lognormal'"),
        ("defects.0.boxes.overlap", "sometimes", "defects[0].boxes.overlap", "expected true or false"),
        ("output.shard_size", -1, "output.shard_size", "must be > 0, got -1"),
        ("output.formats", ["parquet", "tiff"], "output.formats[1]", "must be 'parquet', 'yolo', 'yolo_seg' or 'coco'"),
        ("output.uri", "gs://bucket/x", "output.uri", "scheme must be file:// or s3://"),
        ("output.val_fraction", 1, "output.val_fraction", "must be < 1, got 1"),
        ("output.val_fraction", -0.1, "output.val_fraction", "must be >= 0, got -0.1"),
    ],
)
def test_field_errors(path, value, loc, fragment):
    found = problems(with_(path, value))
    assert any(l == loc and fragment in m for l, m in found), found


def test_unknown_keys_are_refused_with_a_hint():
    found = problems(with_("defects.0.boxes.sise", {"min": 0.1, "max": 0.2}))
    assert ("defects[0].boxes.sise", "unknown key 'sise' (did you mean 'size'?)") in found
    found = problems(with_("colour", "red"))
    assert found[0][0] == "colour" and found[0][1].startswith("unknown key 'colour'")


def test_missing_fields():
    d = copy.deepcopy(BASE)
    del d["count"]
    assert ("count", "required field is missing") in problems(d)


def test_yaml_syntax_error_names_line():
    with pytest.raises(SpecError) as e:
        parse_spec("name: x\ncount: [1, 2\n", "bad.yaml")
    assert str(e.value).startswith("bad.yaml: YAML syntax error at line")


@pytest.mark.parametrize("text", ["", "   \n# only a comment\n"])
def test_empty_file(text):
    with pytest.raises(SpecError, match="empty.yaml: file is empty"):
        parse_spec(text, "empty.yaml")


def test_missing_file(tmp_path):
    with pytest.raises(SpecError, match="nope.yaml: file not found"):
        load_spec(tmp_path / "nope.yaml")


def test_top_level_must_be_a_mapping():
    with pytest.raises(SpecError, match="the top level must be a mapping"):
        parse_spec("- a\n- b\n", "l.yaml")


def test_weights_all_zero():
    d = with_("defects.0.weight", 0)
    assert ("defects", "weights are all zero: at least one class needs weight > 0") in problems(d)
    d = with_("generators", [{"kind": "procedural", "weight": 0}])
    assert any(l == "generators" and "weights are all zero" in m for l, m in problems(d))
    assert any(l == "defects[0].weight" and "must be >= 0" in m for l, m in problems(with_("defects.0.weight", -1)))


def test_duplicate_class_names():
    d = copy.deepcopy(BASE)
    d["defects"].append(copy.deepcopy(d["defects"][0]))
    assert ("defects[1].class", "duplicate class name 'crack'") in problems(d)


def test_boxes_that_cannot_fit():
    # too small in pixels
    d = with_("defects.0.boxes.size", {"min": 0.001, "max": 0.01})
    assert any(l == "defects[0].boxes.size.min" and "need >= 2 px" in m for l, m in problems(d))
    # too wide for the image at the smallest size
    d = with_("defects.0.boxes.aspect", {"min": 1.0, "max": 150.0})
    assert any(l == "defects[0].boxes.aspect" and "wider or taller than the image" in m for l, m in problems(d))
    # too many non-overlapping boxes
    d = with_("defects.0.boxes", {"count": [10, 20], "size": {"min": 0.3, "max": 0.4}})
    assert any(l == "defects[0].boxes.count" and "overlap: true" in m for l, m in problems(d))
    d["defects"][0]["boxes"]["overlap"] = True
    spec_from_dict(d)  # overlapping boxes are fine


@pytest.mark.parametrize("name", ["../etc", "a/b", "Upper", "-lead", "a" * 64, "x y", "a\\b"])
def test_names_that_could_escape_a_folder(name):
    found = problems(with_("name", name))
    assert found[0][0] == "name" and "it becomes a folder name" in found[0][1]


def test_class_names_that_could_escape_a_folder():
    found = problems(with_("defects.0.class", "../../x"))
    assert found[0][0] == "defects[0].class"


def test_spec_hash_ignores_version_only():
    a = spec_from_dict(BASE)
    assert a.spec_hash() == spec_from_dict(BASE | {"version": 3}).spec_hash()
    assert a.spec_hash() != spec_from_dict(BASE | {"seed": 1}).spec_hash()


def test_cli_validate_exit_codes(tmp_path, demo_spec_path):
    ok = subprocess.run([sys.executable, "-m", "factory.cli", "validate", str(demo_spec_path)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(with_("defects.0.boxes.size.max", 1.5)))
    r = subprocess.run([sys.executable, "-m", "factory.cli", "validate", str(bad)], capture_output=True, text=True)
    assert r.returncode == 2
    assert "defects[0].boxes.size.max: must be <= 1, got 1.5" in " ".join(r.stderr.split())
    assert "Traceback" not in r.stderr


def test_every_example_spec_validates():
    from factory.generators.checks import check_spec

    # the transplant examples name real sets that exist after `factory data import`:
    # their data checks are tested in test_transplant.py
    for path in sorted(Path(__file__).resolve().parents[1].joinpath("specs").glob("*.yaml")):
        check_spec(load_spec(path), str(path), check_uris=False)


# --- bounded, finite parsing (reproducers of the reliability probe) -------------------
def _bomb(levels: int) -> str:
    """A billion-laughs YAML: 10**levels strings from a few hundred bytes."""
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels + 1):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("text, loc, fragment", [
    ("domain:\n  contrast: [.nan, .nan]\n", "domain.contrast[0]", "finite number"),
    ("defects:\n  - class: crack\n    weight: .inf\n", "defects[0].weight", "finite number"),
    ("defects:\n  - class: crack\n    boxes: {size: {mean: .nan}}\n", "defects[0].boxes.size.mean", "finite number"),
    ("seed: 123456789012345678901234567890\n", "seed", "integer too large"),
])
def test_non_finite_and_huge_numbers_are_field_errors(text, loc, fragment):
    head = "name: t\ncount: 10\n" + ("" if "defects" in text else "defects:\n  - class: crack\n")
    with pytest.raises(SpecError) as e:
        parse_spec(head + text, "s.yaml")
    assert any(p[0] == loc and fragment in p[1] for p in e.value.problems), e.value.problems


def test_duplicate_keys_are_refused_naming_the_key():
    with pytest.raises(SpecError, match="duplicate key 'count'"):
        parse_spec("name: t\ncount: 10\ndefects:\n  - class: crack\ncount: 20\n", "s.yaml")


@pytest.mark.parametrize("where", ["top", "params"])
def test_alias_bombs_are_refused_quickly_with_a_short_message(where):
    bomb = _bomb(7)  # 10**7 strings once expanded; 2.4 KB of YAML
    text = bomb + "name: t\ncount: 10\ndefects:\n  - class: crack\n"
    if where == "params":
        text += "generators:\n  - kind: procedural\n    params: {x: *l7}\n"
    with pytest.raises(SpecError) as e:
        parse_spec(text, "s.yaml")
    assert "expands to more than" in str(e.value) and len(str(e.value)) < 300


def test_deep_nesting_and_giant_values_are_refused_without_a_traceback():
    deep = "name: t\ncount: 10\ndefects:\n  - class: crack\ngenerators:\n  - kind: procedural\n    params: " + "[" * 2000 + "]" * 2000
    with pytest.raises(SpecError, match="nested too deeply"):
        parse_spec(deep, "s.yaml")
    with pytest.raises(SpecError, match="unreadable value"):
        parse_spec("name: t\ncount: 10\nseed: " + "9" * 5000 + "\ndefects:\n  - class: crack\n", "s.yaml")
    with pytest.raises(SpecError) as e:
        parse_spec("name: " + "x" * 1_000_000 + "\ncount: 10\ndefects:\n  - class: crack\n", "s.yaml")
    assert len(str(e.value)) < 400


def test_cli_prints_markup_like_text_verbatim(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text('name: "[/x]"\ncount: 10\ndefects:\n  - class: crack\n')
    r = subprocess.run([sys.executable, "-m", "factory.cli", "validate", str(bad)], capture_output=True, text=True)
    assert r.returncode == 2 and "'[/x]'" in r.stderr and "MarkupError" not in r.stderr, r.stderr


def test_help_shows_no_type_after_plain_flags():
    r = subprocess.run([sys.executable, "-m", "factory.cli", "run", "--help"], capture_output=True, text=True,
                       env={"COLUMNS": "120", "PATH": ""})
    assert r.returncode == 0 and "--resume" in r.stdout
    assert "<bool>" not in r.stdout and "<int" in r.stdout, r.stdout


def test_every_sink_format_is_accepted_by_the_spec():
    from factory.storage.shards import SINKS

    s = parse_spec("name: t\ncount: 10\ndefects:\n  - class: crack\noutput:\n  formats: [" + ", ".join(SINKS) + "]\n", "s.yaml")
    assert s.output.formats == list(SINKS)


def test_val_fraction_defaults_to_the_old_split_and_keeps_old_hashes():
    """`output.val_fraction` (issue 16): the default is the split versions were published
    with before the field existed (every tenth plan index), and leaves the spec hash as it was."""
    from factory.pipeline.stages import split_of

    spec = spec_from_dict(BASE)
    assert spec.output.val_fraction == 0.1
    assert spec_from_dict(with_("output.val_fraction", 0.1)).spec_hash() == spec.spec_hash()
    assert spec_from_dict(with_("output.val_fraction", 0.2)).spec_hash() != spec.spec_hash()
    assert [split_of(i, 0.1) for i in range(20)] == ["val" if i % 10 == 9 else "train" for i in range(20)]
    for f, n in [(0.0, 0), (0.25, 12), (0.3, 30), (0.5, 50)]:
        first = [split_of(i, f) for i in range(100 if f != 0.25 else 48)]
        assert first.count("val") == n
