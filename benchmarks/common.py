"""Shared by the benchmark scripts: say what machine the numbers come from, and print tables."""

from __future__ import annotations

import os
import platform
import subprocess


def machine() -> str:
    """One line: CPU model, cores, memory, GPU (if any), Python, load average now."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        with open("/proc/meminfo") as f:
            mem = f"{int(next(l for l in f if l.startswith('MemTotal')).split()[1]) / 2**20:.0f} GiB"
    except (OSError, StopIteration):
        mem = "?"
    gpu = "no GPU"
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=5)
        if out.returncode == 0 and out.stdout.strip():
            gpu = out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.TimeoutExpired):
        pass
    load = "/".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{cpu}, {os.cpu_count()} cores, {mem} RAM, {gpu}, Python {platform.python_version()}, load average {load}"


def table(headers: list[str], rows: list[list[object]]) -> str:
    """A Markdown table (pastes straight into BENCHMARKS.md)."""
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells[1:])])


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


SMOKE_HELP = ("smallest setting: the same code path end to end at tiny sizes, in seconds, on the CPU, "
              "Ray limited to 2 CPUs (tests/test_benchmarks.py runs it; its numbers mean nothing)")


def smoke_ray() -> None:
    """Start this process's embedded Ray with 2 CPUs before the benchmark's own (idempotent)
    `ensure_ray()`/`ray.init` would take every core of the machine."""
    from factory.ray_runtime import ensure_ray

    ensure_ray(num_cpus=2)
