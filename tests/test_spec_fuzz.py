"""Fuzzing the spec path: a few hundred seeded mutations of the example specs.
Every mutated spec is either refused with a `SpecError` (field: reason) or plans
and renders a first item; nothing else may escape (no traceback for any input)."""

from __future__ import annotations

import copy
import math
import random
from pathlib import Path

import pytest
import yaml

from factory.generators.base import generator_class
from factory.generators.checks import check_spec
from factory.planning import plan
from factory.spec import SpecError, spec_from_dict

SPECS = sorted((Path(__file__).resolve().parents[1] / "specs").glob("*.yaml"))
VALUES = [math.nan, math.inf, -math.inf, -1, 0, 1, 0.5, 2, 1e9, 10**30, -10**30, "", "x", "[/x]", "../..", True,
          None, [], [0], [1, 0], [0.5, 0.5], [math.nan, 1], {}, {"a": 1}, "crack", 64, 4096, 5000, 1e-9]


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


def _mutate(data, rng: random.Random):
    data = copy.deepcopy(data)
    for _ in range(rng.randint(1, 3)):
        paths = [p for p in _paths(data) if p]
        path = rng.choice(paths)
        parent = data
        for part in path[:-1]:
            parent = parent[part]
        op = rng.random()
        if op < 0.15 and isinstance(parent, dict):
            del parent[path[-1]]
        elif op < 0.25 and isinstance(parent, list):
            parent.append(copy.deepcopy(parent[path[-1]]))
        else:
            parent[path[-1]] = copy.deepcopy(rng.choice(VALUES))
    return data


@pytest.mark.parametrize("spec_path", SPECS, ids=lambda p: p.stem)
def test_mutated_specs_are_refused_or_run(spec_path):
    base = yaml.safe_load(spec_path.read_text())
    rng = random.Random(f"fuzz-{spec_path.stem}")
    outcomes = {"refused": 0, "planned": 0}
    for _ in range(150):
        data = _mutate(base, rng)
        try:
            spec = check_spec(spec_from_dict(data, "fuzz.yaml"), "fuzz.yaml", check_uris=False)
        except SpecError as e:
            assert e.problems and all(isinstance(m, str) and len(m) < 500 for _, m in e.problems), e.problems
            outcomes["refused"] += 1
            continue
        spec.image.width, spec.image.height = min(spec.image.width, 96), min(spec.image.height, 96)
        items = plan(spec, n=2)
        assert len(items) == 2
        outcomes["planned"] += 1
        if items[0].generator == "procedural":  # the one family that needs no weights or data
            sample = generator_class("procedural").load(None, {}).generate(items[:1])[0]
            assert sample.image.shape[:2] == (items[0].height, items[0].width)
    assert outcomes["refused"] and outcomes["planned"], outcomes
