"""The generator families describe themselves: `check_spec` refuses unknown kinds,
mistyped params, classes a family cannot draw and missing references, naming the
field; a third-party package adds a family through an entry point."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import yaml

from factory.generators import base as gb
from factory.generators.checks import check_spec
from factory.spec import SpecError, spec_from_dict

BASE = {
    "name": "t",
    "count": 10,
    "defects": [{"class": "crack", "boxes": {"size": {"min": 0.1, "max": 0.2}}}],
}


def problems(data, check_uris: bool = True) -> list[tuple[str, str]]:
    with pytest.raises(SpecError) as e:
        check_spec(spec_from_dict(data, "s.yaml"), "s.yaml", check_uris=check_uris)
    return e.value.problems


def with_generators(gens, **extra):
    return copy.deepcopy(BASE) | {"generators": gens} | extra


def test_unavailable_and_unknown_generator_kinds():
    found = problems(with_generators([{"kind": "stylegan"}]))
    assert found[0][0] == "generators[0].kind" and "unknown generator kind 'stylegan'" in found[0][1]


def test_procedural_refuses_classes_it_cannot_draw():
    d = copy.deepcopy(BASE)
    d["defects"][0]["class"] = "blowhole"
    found = problems(d)
    assert found[0][0] == "defects[0].class" and "cannot draw 'blowhole'" in found[0][1]


def test_dg2gan_takes_domain_references_or_refuses():
    d = with_generators([{"kind": "dg2gan", "checkpoint": "file:///models/dg2gan"}])
    found = problems(d, check_uris=False)
    assert found[0][0] == "domain.references" and "translates real defect-free images" in found[0][1]
    d["domain"] = {"references": ["file:///data/MT_Free"]}
    assert check_spec(spec_from_dict(d), check_uris=False).generators[0].params["references"] == ["file:///data/MT_Free"]
    d["generators"][0]["params"] = {"references": "file:///elsewhere"}
    assert check_spec(spec_from_dict(d), check_uris=False).generators[0].params["references"] == ["file:///elsewhere"]  # one reference or a list: a list


@pytest.mark.parametrize("gen, loc, fragment", [
    ({"kind": "pdig", "params": {"stepz": 3}}, "generators[0].params.stepz", "unknown key 'stepz' (did you mean 'steps'?)"),
    ({"kind": "pdig", "params": {"steps": "many"}}, "generators[0].params.steps", "expected an integer, got 'many'"),
    ({"kind": "pdig", "params": {"steps": 10, "tidsc_steps": 20}}, "generators[0].params", "tidsc_steps must be in [0, steps]"),
    ({"kind": "procedural", "params": {"noise": 1}}, "generators[0].params.noise", "unknown key 'noise'"),
    ({"kind": "dg2gan", "params": {"references": "file:///r", "threshold": 2}}, "generators[0].params.threshold", "must be < 1"),
])
def test_params_are_validated_naming_the_field(gen, loc, fragment):
    d = with_generators([{"kind": "procedural"}, gen], domain={"references": ["file:///r"]})
    found = problems(d, check_uris=False)
    assert [p[0] for p in found] == [loc.replace("generators[0]", "generators[1]")], found
    assert fragment in found[0][1]


def test_cli_validate_names_a_mistyped_param(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(with_generators([{"kind": "pdig", "params": {"stepz": 3}}])))
    r = subprocess.run([sys.executable, "-m", "factory.cli", "validate", str(bad)], capture_output=True, text=True)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "generators[0].params.stepz: unknown key 'stepz'" in " ".join(r.stderr.split())


def test_every_family_describes_itself():
    for kind in gb.available_kinds():
        cls = gb.generator_class(kind)
        assert cls.kind == kind
        assert cls.classes is None or all(isinstance(c, str) for c in cls.classes)
        assert isinstance(cls.uses_references, bool) and isinstance(cls.wants_gpu, bool)
        assert issubclass(cls.Params, gb.GeneratorParams)


def test_a_package_adds_a_family_through_an_entry_point(tmp_path, monkeypatch):
    """A real distribution on sys.path with a `factory.generators` entry point."""
    (tmp_path / "toyfam.py").write_text(
        "from factory.generators.base import NoParams\n"
        "class Toy:\n"
        "    kind = 'toy'; classes = ('crack',); uses_references = False; wants_gpu = False; Params = NoParams\n"
    )
    dist = tmp_path / "toyfam-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toyfam\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[factory.generators]\ntoy = toyfam:Toy\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    gb.registered_kinds.cache_clear()
    try:
        assert "toy" in gb.available_kinds() and gb.generator_class("toy").__name__ == "Toy"
        check_spec(spec_from_dict(with_generators([{"kind": "toy"}])))
    finally:
        gb.registered_kinds.cache_clear()


def test_validate_checks_named_checkpoints_and_bases_before_any_worker_starts(tmp_path):
    d = with_generators([{"kind": "dg2gan", "checkpoint": (tmp_path / "none").as_uri()},
                         {"kind": "pdig", "checkpoint": (tmp_path / "none").as_uri(), "params": {"base": str(tmp_path)}}],
                        domain={"references": [str(tmp_path)]})
    found = dict(problems(d))
    assert "no DG2GAN run (latest.json)" in found["generators[0].checkpoint"] and "factory train dg2gan" in found["generators[0].checkpoint"]
    assert "pdig_config.json" in found["generators[1].checkpoint"]
    assert "unet/config.json" in found["generators[1].params.base"]
    check_spec(spec_from_dict(d), check_uris=False)  # --no-check-uris: a cluster may see what this machine does not
