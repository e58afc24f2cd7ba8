"""Bounded load test of the online generation API, with and without @serve.batch;
and (--costs) the procedural family's measured costs behind the work budget.

    python benchmarks/serve.py [--requests 200] [--concurrency 1,4,16] [--size 128]
    python benchmarks/serve.py --costs [--seeds 3]
    python benchmarks/serve.py --smoke [--costs]   # seconds: checks the script, numbers mean nothing

This process starts an embedded Ray + Serve on 127.0.0.1, deploys the app (batching
on, then off), and for each concurrency level runs the load from a *second process*
(this script with --client), so client and server do not share an interpreter.
Every loop is bounded by a request count and a wall-clock limit, and traffic goes
to 127.0.0.1 only. Prints a table naming the machine; --json writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from common import SMOKE_HELP, machine  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

HOST = "127.0.0.1"


def body(i: int, size: int) -> dict:
    s = size
    return {"generator": "procedural", "class": "crack", "boxes": [[s // 8, s // 4, s // 2, s // 2]],
            "image": {"width": s, "height": s, "channels": 1}, "seed": i}


# --- client (the second process) --------------------------------------------------------


def client(port: int, requests: int, concurrency: int, size: int, time_limit: float) -> dict:
    """Send `requests` requests with `concurrency` in flight; stop early at `time_limit` s."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    url = f"http://{HOST}:{port}/v1/generate"
    lat, errors, statuses = [], 0, {}
    lock = threading.Lock()
    deadline = time.monotonic() + time_limit
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    with httpx.Client(timeout=60, limits=limits) as http:
        for i in range(3):  # warm-up (model load, connections); not counted
            http.post(url, json=body(10_000_000 + i, size))

        def one(i: int) -> None:
            nonlocal errors
            if time.monotonic() > deadline:
                return
            t0 = time.perf_counter()
            try:
                r = http.post(url, json=body(i, size))
                ok = r.status_code == 200 and len(r.json()["images"]) == 1
                code = r.status_code
            except Exception as e:  # noqa: BLE001 - counted, reported
                ok, code = False, type(e).__name__
            dt = time.perf_counter() - t0
            with lock:
                statuses[str(code)] = statuses.get(str(code), 0) + 1
                if ok:
                    lat.append(dt)
                else:
                    errors += 1

        t0 = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(one, range(requests)))
        wall = time.perf_counter() - t0
    lat.sort()

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(round(p / 100 * (len(lat) - 1))))] * 1000 if lat else float("nan")

    return {"concurrency": concurrency, "sent": sum(statuses.values()), "ok": len(lat), "errors": errors,
            "statuses": statuses, "p50_ms": pct(50), "p95_ms": pct(95), "p99_ms": pct(99),
            "rps": len(lat) / wall if wall else 0.0, "wall_s": wall, "timed_out": sum(statuses.values()) < requests}


# --- the work budget's coefficients (serve/budget.py) -------------------------------------


def costs(seeds: int) -> list[dict]:
    """CPU seconds per megapixel of image (no boxes) and per megapixel of box for each
    procedural class, rendered in this process; median and spread over seeds."""
    import statistics

    sys.path[0] = str(Path(__file__).resolve().parents[1])
    from factory.core import Box, WorkItem
    from factory.generators.procedural.render import DEFECTS, render_el

    def seconds(side: int, boxes: tuple, seed: int) -> float:
        item = WorkItem("cost", 0, "procedural", None, side, side, 1, seed, boxes, {}, {}, "")
        t0 = time.process_time()  # CPU seconds: what a replica spends, and steady on a loaded machine
        render_el(item)
        return time.process_time() - t0

    seconds(64, (), 0)  # imports and first-call costs
    rows = []
    for side in (256, 512, 1024):
        per = [seconds(side, (), s) / (side * side / 1e6) for s in range(seeds)]
        rows.append({"what": f"image {side}x{side}, no boxes", "per": "image", "median": statistics.median(per), "min": min(per), "max": max(per)})
    side, box = 512, 256
    for name in DEFECTS:
        per = []
        for s in range(seeds):
            with_box = seconds(side, (Box(0, name, 0, 0, box, box),), s)
            per.append(max(0.0, with_box - seconds(side, (), s)) / (box * box / 1e6))
        rows.append({"what": f"{name} box {box}x{box} in {side}x{side}", "per": "box", "median": statistics.median(per), "min": min(per), "max": max(per)})
    return rows


def costs_table(rows: list[dict], seeds: int, where: str) -> str:
    lines = [f"Machine: {where}", f"Procedural render_el, CPU seconds (process_time), {seeds} seeds per row", "",
             "| what | CPU s per megapixel of | median | min | max |", "|---|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['what']} | {r['per']} | {r['median']:.3f} | {r['min']:.3f} | {r['max']:.3f} |")
    return "\n".join(lines)


# --- server side (this process) ---------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def run_all(args: argparse.Namespace) -> list[dict]:
    # this file is named serve.py: put the repository root, not benchmarks/, first on the
    # path (Ray hands the driver's path to the replicas, which import the `serve` package)
    sys.path[0] = str(Path(__file__).resolve().parents[1])
    import ray
    from ray import serve

    from serve.app import build_app

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=args.cpus, include_dashboard=False, configure_logging=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": HOST, "port": port})
    rows = []
    try:
        for batching in (True, False):
            app_args = {
                "serve_all_kinds": False,
                "generators": {"procedural": {}},
                "defaults": {"batching": batching, "autoscaling": None, "num_replicas": 1,
                             "max_batch_size": 16, "batch_wait_timeout_s": args.batch_wait},
            }
            serve.run(build_app(app_args), name="factory", route_prefix="/")
            for c in args.concurrency:
                cmd = [sys.executable, __file__, "--client", "--port", str(port), "--requests", str(args.requests),
                       "--concurrency", str(c), "--size", str(args.size), "--time-limit", str(args.time_limit)]
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.time_limit + 120)
                if out.returncode != 0:
                    raise RuntimeError(f"client failed: {out.stderr[-2000:]}")
                row = json.loads(out.stdout.strip().splitlines()[-1])
                row["batching"] = batching
                rows.append(row)
                print(f"batching={batching} concurrency={c}: {row['ok']}/{args.requests} ok, "
                      f"p50 {row['p50_ms']:.1f} ms, {row['rps']:.1f} req/s, errors {row['errors']}", flush=True)
            serve.delete("factory")
    finally:
        serve.shutdown()
        ray.shutdown()
    return rows


def table(rows: list[dict], args: argparse.Namespace, where: str) -> str:
    lines = [
        f"Machine: {where}",
        f"Load: {args.requests} requests per row, {args.size}x{args.size}x1 procedural images, 1 box, "
        f"1 generator replica, client in a second process on 127.0.0.1",
        "",
        "| @serve.batch | concurrency | ok | errors | p50 ms | p95 ms | p99 ms | requests/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {'on' if r['batching'] else 'off'} | {r['concurrency']} | {r['ok']} | {r['errors']} | "
                     f"{r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['p99_ms']:.1f} | {r['rps']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--concurrency", default="1,4,16", help="comma-separated levels")
    p.add_argument("--size", type=int, default=128, help="image side in pixels")
    p.add_argument("--time-limit", type=float, default=180.0, help="seconds per row at most")
    p.add_argument("--batch-wait", type=float, default=0.01, help="batch_wait_timeout_s when batching")
    p.add_argument("--cpus", type=int, default=2, help="CPUs for the embedded Ray")
    p.add_argument("--json", type=Path, help="also write the rows here")
    p.add_argument("--costs", action="store_true", help="measure the work budget's coefficients instead")
    p.add_argument("--seeds", type=int, default=3, help="seeds per row of --costs")
    p.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--smoke", action="store_true", help=SMOKE_HELP + "; 4 requests of 32x32 at concurrency 1 "
                   "(with --costs: 1 seed)")
    args = p.parse_args()
    if args.smoke:
        args.requests, args.concurrency, args.size, args.time_limit, args.cpus, args.seeds = 4, "1", 32, 60.0, 2, 1
    if not (0 < args.requests <= 5000):
        p.error("--requests must be in 1..5000")
    if args.client:
        print(json.dumps(client(args.port, args.requests, int(args.concurrency), args.size, args.time_limit)))
        return
    if args.costs:
        if not 1 <= args.seeds <= 20:
            p.error("--seeds must be in 1..20")
        print(costs_table(costs(args.seeds), args.seeds, machine()))
        return
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    if not all(1 <= c <= 64 for c in args.concurrency):
        p.error("--concurrency levels must be in 1..64")
    where = machine()
    rows = run_all(args)
    print()
    print(table(rows, args, where))
    errors = sum(r["errors"] for r in rows)
    if args.json:
        args.json.write_text(json.dumps({"machine": where, "rows": rows}, indent=2))
    if errors or any(r["timed_out"] for r in rows):
        sys.exit(f"{errors} errors; timed out rows: {[r['concurrency'] for r in rows if r['timed_out']]}")


if __name__ == "__main__":
    main()
