"""`benchmarks/gpu.sh --dry-run`: the GPU benchmark script runs end to end on the CPU at
tiny sizes and prints one table with every row it promises, none failed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_script_dry_run_prints_every_row(tmp_path):
    env = os.environ | {"GPU_BENCH_WORK": str(tmp_path / "work"), "PYTHONPATH": str(REPO)}
    t = time.perf_counter()
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu.sh"), "--dry-run"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    seconds = time.perf_counter() - t
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "work" / "rows.jsonl").read_text().splitlines()]
    pdig = {(r["variant"], r["batch"]) for r in rows if r["section"] == "pdig"}
    assert pdig == {(v, b) for v in ("diffusers-sd", "pdig", "pdig+tidsc") for b in (1, 2)}
    whats = [r["what"] for r in rows if r["section"] != "pdig"]
    assert whats == ["DG2GAN G, translation", "anomaly gate (UIIDD) heat maps", "trainer: DG2GAN", "trainer: UIIDD anomaly",
                     "trainer: PDIG (SCE + LISA)", "trainer: YOLO detector (ultralytics)",
                     "Ray Data job: pdig generator + anomaly gate"]
    assert all(r.get("s_per_image", 1) > 0 for r in rows)
    table = proc.stdout
    assert "| section | what | config | result |" in table and "--dry-run" in table and f"{len(rows)} rows, 0 failed" in table
    assert "TIDSC / no-TIDSC" in table and "GPU util n/a" in table
    print(f"dry run: {seconds:.0f} s")  # the goal is under 2 minutes on an idle 2-core machine


def test_gpu_rows_refuses_unknown_sections(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_rows.py"), "nosuch", "--work", str(tmp_path),
                           "--jsonl", str(tmp_path / "r.jsonl")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "unknown sections ['nosuch']" in proc.stderr
