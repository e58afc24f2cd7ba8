"""Fuzzing the spec path: a few hundred seeded mutations of the example specs.
Every mutated spec is either refused with a `SpecError` (field: reason) or plans
and renders a first item; nothing else may escape (no traceback for any input)."""

from __future__ import annotations

import copy
import math
import random
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from factory.cli import app
from factory.generators.base import generator_class
from factory.generators.checks import check_spec
from factory.planning import plan
from factory.spec import SpecError, spec_from_dict

SPECS = sorted((Path(__file__).resolve().parents[1] / "specs").glob("*.yaml"))
VALUES = [math.nan, math.inf, -math.inf, -1, 0, 1, 0.5, 2, 1e9, 10**30, -10**30, "", "x", "[/x]", "../..", True,
          None, [], [0], [1, 0], [0.5, 0.5], [math.nan, 1], {}, {"a": 1}, "crack", 64, 4096, 5000, 1e-9,
          1e308, -1e308, 5e-324, [1e308, 1e308], "1:30", "s3:/b/x", "k" * 1000]


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


# --- the YAML text itself, through `factory validate` and `factory plan` (issue 28, item 7) ------
TEXT_VALUES = ["1e308", "-1e308", ".inf", "-.inf", ".nan", "1e-320", "1e400", "1:30", "1:30:00", "017", "0o17",
               "0x1F", "0b101", "1_000", "yes", "no", "on", "off", "~", "2024-01-01", "[1e308, 1e308]", "[.nan, 1]",
               "{min: 1e308, max: .inf}", "{dist: normal, min: 0.1, max: 0.2, mean: 1e308, std: 1e308}",
               "s3:/my-bucket/x", "k" * 1000, "[" + "1, " * 500 + "1]"]
VALID_VALUES = {"count": ["10000000", "0x10", "1e2"], "seed": ["0x1F", "0o17", "-1", "1e3"],  # extreme, yet valid
                "weight": ["1e-320", "1e9", "0o7", "0"], "negatives": ["1e-1", ".5", "1"], "uri": ["out/x", "'a b'"]}
TEXT_KEYS = ["? [a, b]\n: 1", "? {a: 1}\n: 1", "[a, b]: 1", "k" * 1000 + ": 1", "017: x", "1:30: x", "~: 1",
             "yes: 1", "? |\n  a\n: 1"]
_KEY_LINE = re.compile(r"^(?P<indent> *)(?P<item>- )?(?P<key>[A-Za-z_]+):(?P<value> *[^#\s][^#]*?)?(?P<note> *#.*)?$")
MAX_LINE = 300


def _mutate_text(lines: list[str], rng: random.Random) -> str:
    """1-2 of: a value replaced by an extreme valid one, or by a hostile one; a hostile
    key inserted beside another; a key renamed."""
    lines = list(lines)
    for _ in range(rng.randint(1, 2)):
        keyed = [(i, m) for i, m in ((i, _KEY_LINE.match(line)) for i, line in enumerate(lines)) if m]
        op = rng.random()
        if op < 0.3:
            i, m = rng.choice([(i, m) for i, m in keyed if m["key"] in VALID_VALUES and m["value"]])
            value = rng.choice(VALID_VALUES[m["key"]])
        else:
            i, m = rng.choice(keyed)
            value = rng.choice(TEXT_VALUES)
        if op < 0.6 and m["value"]:
            lines[i] = f"{m['indent']}{m['item'] or ''}{m['key']}: {value}"
        elif op < 0.85:
            indent = m["indent"] + ("  " if m["item"] else "")  # a sibling: after a list item's first key, else before
            lines.insert(i + bool(m["item"]), "\n".join(indent + part for part in rng.choice(TEXT_KEYS).split("\n")))
        else:
            lines[i] = lines[i].replace(m["key"] + ":", rng.choice(["k" * 1000, "017", "on", "1:30"]) + ":", 1)
    return "\n".join(lines) + "\n"


def test_mutated_yaml_through_the_cli_is_refused_or_planned_in_short_lines(tmp_path, monkeypatch):
    """Complex keys, huge and non-finite numbers, long keys, YAML 1.1 sexagesimal and
    octal values: `validate` and `plan` exit 0 or 2 (never a crash, exit 1), and every
    line they print is under 300 characters."""
    monkeypatch.chdir(tmp_path)  # a relative output.uri is resolved (never written) here
    lines = (Path(__file__).resolve().parents[1] / "specs" / "demo-pv-el.yaml").read_text().splitlines()
    rng = random.Random("text-fuzz")
    path = tmp_path / "fuzz.yaml"
    outcomes = {"refused": 0, "ok": 0}
    for n in range(80):
        path.write_text(_mutate_text(lines, rng))
        for command in ("validate", "plan"):
            r = CliRunner().invoke(app, [command, str(path)], terminal_width=200)
            where = f"spec {n}, {command}:\n{path.read_text()[:3000]}\n{r.output[-3000:]}"
            assert r.exit_code in (0, 2) and isinstance(r.exception, (SystemExit, type(None))), where
            assert all(len(line) < MAX_LINE for line in r.output.splitlines()), where
        outcomes["ok" if r.exit_code == 0 else "refused"] += 1
    assert outcomes["refused"] and outcomes["ok"], outcomes
