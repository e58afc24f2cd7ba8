"""Every benchmark script runs as written: each one at its smallest setting (`--smoke`:
the same functions end to end, tiny sizes, few steps, Ray on 2 CPUs), in its own
process, so a broken benchmark fails CI; and every command BENCHMARKS.md shows still
parses with its script's own argparse.

`benchmarks/gpu.sh` and `benchmarks/gpu_rows.py` are run by tests/test_gpu_script.py
(`gpu.sh --dry-run`); they are listed here so that a new script without a smoke run
fails `test_every_benchmark_script_has_a_smoke_run`.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import SHARED_DATA

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"

# script -> (arguments after --smoke, data folders it needs under ../shared/data, what its table prints)
SMOKE = {
    "procedural.py": ([], [], "| image "),
    "pipeline.py": ([], [], "accepted images/s"),
    "outage.py": ([], [], "| phase "),
    "serve.py": ([], [], "| @serve.batch | concurrency |"),
    "serve.py --costs": (["--costs"], [], "| what | CPU s per megapixel of |"),
    "serve_probe.py": ([], [], "| probe "),
    "pdig.py": ([], [], "variant"),
    "gate_audit.py": (["--methods", "uiidd-disc"], [], "| method "),  # anomaly.py covers uiidd
    "anomaly.py": (["--datasets", "mt", "--methods", "uiidd"], ["magnetic_tile"], "| data "),
    "box_check.py": ([], ["deeppcb"], "| data "),
    "dg2gan.py": ([], ["crackforest"], "KID"),
    "realism.py": (["--domain", "pv"], ["pv_vision_crack"], "| arm "),
    "value.py": (["--arm", "procedural=benchmarks/specs/value-procedural-pv.yaml",
                  "--arm", "transplant=benchmarks/specs/value-transplant-pv.yaml", "--fit-boxes", "transplant"],
                 ["pv_vision_crack"], "| + transplant |"),
}
ELSEWHERE = {"gpu_rows.py": "tests/test_gpu_script.py", "gpu.sh": "tests/test_gpu_script.py"}
NOT_BENCHMARKS = {"common.py"}  # helpers shared by the scripts


def test_every_benchmark_script_has_a_smoke_run():
    scripts = {p.name for p in BENCH.iterdir() if p.suffix in (".py", ".sh")} - NOT_BENCHMARKS
    covered = {k.split()[0] for k in SMOKE} | set(ELSEWHERE)
    assert scripts == covered, f"give each new benchmark a --smoke entry in SMOKE: {sorted(scripts ^ covered)}"


def repo_files() -> set[str]:
    """The untracked and ignored files `git status` sees in the repository (bytecode caches left out)."""
    out = subprocess.run(["git", "status", "--porcelain", "--ignored"], cwd=REPO, capture_output=True, text=True).stdout
    return {line for line in out.splitlines()
            if line[:2] in ("??", "!!") and "__pycache__" not in line and ".pytest_cache" not in line}


@pytest.mark.parametrize("name", sorted(SMOKE))
def test_benchmark_smoke_run(name, tmp_path):
    extra, data, table_marker = SMOKE[name]
    script = name.split()[0]
    missing = [d for d in data if not (SHARED_DATA / d).exists()]
    if missing:
        pytest.skip(f"{script} --smoke needs the real data set(s) {missing} under {SHARED_DATA}")
    # scratch outputs go to tmp_path, never into the repository
    extra = list(extra) + {
        "realism.py": ["--data", str(SHARED_DATA), "--work", str(tmp_path / "work")],
        "value.py": ["--data", str(SHARED_DATA), "--work", str(tmp_path / "work"), "--out", str(tmp_path / "value.json")],
        "anomaly.py": ["--data", str(SHARED_DATA)],
        "dg2gan.py": ["--out", str(tmp_path / "out")],
    }.get(script, [])
    env = os.environ | {"PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": "", "FACTORY_SHARED_DATA": str(SHARED_DATA),
                        "YOLO_CONFIG_DIR": str(tmp_path / "yolo-config"), "MPLBACKEND": "Agg"}
    before = repo_files()
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, str(BENCH / script), "--smoke", *extra], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)  # a safety net on a loaded machine
    seconds = time.perf_counter() - t
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{name} --smoke failed (exit {proc.returncode}):\n{out[-4000:]}"
    assert table_marker in proc.stdout, f"{name}: no table in its output:\n{proc.stdout[-3000:]}"
    assert f"{os.cpu_count()} cores" in proc.stdout, f"{name}: does not say what machine it ran on"
    assert "error:" not in proc.stdout, f"{name}: a row failed:\n{proc.stdout[-3000:]}"
    after = repo_files()
    assert not after - before, f"{name} --smoke left files in the repository: {sorted(after - before)}"
    print(f"{name} --smoke: {seconds:.1f} s")


# --- BENCHMARKS.md's commands ------------------------------------------------------------

# Runs each script as __main__ with the command's arguments, but stops right after
# argparse has accepted them (nothing is measured); prints PARSED or the parser's error.
_PARSE_ONLY = r"""
import argparse, os, runpy, sys
class Parsed(BaseException):
    pass
def parse_only(self, args=None, namespace=None):
    ns = _orig(self, args, namespace)
    raise Parsed()
_orig = argparse.ArgumentParser.parse_args
argparse.ArgumentParser.parse_args = parse_only
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[0])))  # as when run as a script
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except Parsed:
    print("PARSED")
"""


def benchmark_commands() -> list[list[str]]:
    """Every `python benchmarks/X.py ...` command quoted in BENCHMARKS.md."""
    text = (REPO / "BENCHMARKS.md").read_text()
    return [shlex.split(c) for c in sorted(set(re.findall(r"`(python benchmarks/\w+\.py(?: [^`]*)?)`", text)))]


def test_benchmarks_md_lists_commands():
    scripts = {c[1] for c in benchmark_commands()}
    assert {"benchmarks/procedural.py", "benchmarks/pipeline.py", "benchmarks/serve.py"} <= scripts


@pytest.mark.parametrize("cmd", benchmark_commands(), ids=" ".join)
def test_benchmarks_md_command_parses(cmd):
    """The command's flags are the script's flags today (argparse accepts them)."""
    script, args = cmd[1], cmd[2:]
    assert (REPO / script).exists(), f"BENCHMARKS.md names {script}, which is gone"
    env = os.environ | {"PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-c", _PARSE_ONLY, script, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.stdout.strip().endswith("PARSED"), f"`{' '.join(cmd)}` no longer parses:\n{proc.stderr[-2000:]}"


def test_gpu_sh_commands_in_benchmarks_md_exist():
    text = (REPO / "BENCHMARKS.md").read_text()
    for cmd in set(re.findall(r"`bash (benchmarks/[^` ]+)", text)):
        assert (REPO / cmd).exists(), cmd
