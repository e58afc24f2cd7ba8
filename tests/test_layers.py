"""The import contracts (pyproject.toml [tool.importlinter]), the lint (ruff) and the
types (mypy): lower layers never import higher ones, and no generator family imports
another. Checked on the tree as it is, and the contracts shown to fail on copies that
break each."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINT = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"]


def _lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(LINT, cwd=root, capture_output=True, text=True, env={"PYTHONPATH": str(root), "PATH": ""})


def _copy_tree(dst: Path) -> Path:
    for pkg in ("factory", "serve", "jobs"):
        shutil.copytree(REPO / pkg, dst / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", dst / "pyproject.toml")
    return dst


def test_the_tree_keeps_its_layers(tmp_path):
    r = _lint(_copy_tree(tmp_path))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "2 kept, 0 broken" in r.stdout


def test_a_lower_layer_importing_a_higher_one_breaks_the_contract(tmp_path):
    root = _copy_tree(tmp_path)
    core = root / "factory" / "core.py"
    core.write_text(core.read_text() + "\nfrom factory.pipeline import job  # noqa: E402\n")
    r = _lint(root)
    assert r.returncode != 0 and "factory.core is not allowed to import factory.pipeline" in r.stdout, r.stdout[-3000:]


def test_a_family_importing_another_breaks_the_contract(tmp_path):
    root = _copy_tree(tmp_path)
    init = root / "factory" / "generators" / "procedural" / "__init__.py"
    init.write_text(init.read_text() + "\nfrom factory.generators.transplant import sources  # noqa: E402\n")
    r = _lint(root)
    assert r.returncode != 0 and "families BROKEN" in r.stdout, r.stdout[-3000:]


def test_ruff_finds_nothing():
    """The lint settings in pyproject.toml ([tool.ruff]: pyflakes, the error-prone
    pycodestyle checks, sorted imports) hold for the whole tree."""
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff, "ruff is not installed (pip install -e '.[test]')"
    r = subprocess.run([ruff, "check", "--no-cache", "."], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-1000:]


def test_mypy_strict_on_the_core_layers():
    """The type settings in pyproject.toml ([tool.mypy]: strict on factory.core, spec,
    planning, storage and pipeline) hold. Not incremental and no cache written: a cold
    run takes about 10 s, and nothing is left in the tree."""
    mypy = shutil.which("mypy", path=str(Path(sys.executable).parent)) or shutil.which("mypy")
    assert mypy, "mypy is not installed (pip install -e '.[test]')"
    r = subprocess.run([mypy, "--no-incremental", "--cache-dir", os.devnull], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-1000:]
