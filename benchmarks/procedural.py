"""Images/s of the procedural EL renderer on one core.

    python benchmarks/procedural.py [--seconds 5]
    python benchmarks/procedural.py --smoke   # seconds: checks the script, numbers mean nothing

Pins the process to one core and renders the demo spec's defect mix at 256x256
and 512x512 (grayscale and RGB), timing only generation (no encoding, no I/O).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SMOKE_HELP, machine, table  # noqa: E402

from factory.generators.procedural import ProceduralELGenerator  # noqa: E402
from factory.planning import iter_plan  # noqa: E402
from factory.spec import load_spec, spec_from_dict  # noqa: E402

DEMO = Path(__file__).resolve().parents[1] / "specs" / "demo-pv-el.yaml"


def rate(width: int, height: int, channels: int, seconds: float) -> tuple[float, int]:
    data = load_spec(DEMO).to_yaml_dict()
    data["image"] = {"width": width, "height": height, "channels": channels}
    spec = spec_from_dict(data)
    gen = ProceduralELGenerator()
    items = iter_plan(spec, 0, 10**9)
    gen.generate([next(items)])  # warm up
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        gen.generate([next(items)])
        n += 1
    return n / (time.perf_counter() - t0), n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=5.0, help="time per configuration")
    ap.add_argument("--smoke", action="store_true", help=SMOKE_HELP + "; 0.2 s per configuration")
    args = ap.parse_args()
    if args.smoke:
        args.seconds = 0.2
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    rows = []
    for w, h, c in [(256, 256, 1), (256, 256, 3), (512, 512, 1), (512, 512, 3)]:
        r, n = rate(w, h, c, args.seconds)
        rows.append([f"{w}x{h}x{c}", n, r, 1000 / r])
    print(f"procedural EL renderer, one core - {machine()}")
    print(table(["image", "images", "images/s", "ms/image"], rows))


if __name__ == "__main__":
    main()
