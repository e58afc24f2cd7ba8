"""Reliability: `factory run` rides out an S3 outage during generation and during publish.

    python benchmarks/outage.py [--trials 2] [--outage 30] [--count 32]
    python benchmarks/outage.py --smoke   # 1 trial per phase, a 1 s outage, 8 images: checks the script

Issue 28's goal: "a 30 s outage during generation and during publish at default
concurrency (ridden out every time)". Each trial runs the real CLI, `factory run`
on the demo spec (specs/demo-pv-el.yaml, `count` reduced, output on
s3://outage/<phase>-<trial>), as a subprocess whose S3 endpoint (AWS_ENDPOINT_URL;
the embedded Ray cluster's workers inherit it) is a TCP proxy in front of a local
moto server (tests/s3_server.py `FlakyProxy`). The retry deadline is the default
(FACTORY_S3_RETRY_SECONDS unset: 120 s); the generator actors are the default
(every core), publish moves files with its default 16 threads. The script watches
the bucket on moto directly (not through the proxy) and takes the endpoint down
for `--outage` seconds (every open connection reset, every new one refused) at:

- generation: the first shard file under the version's staging prefix
  (`<name>/_staging/v1/`, anything but the run lock `_run.json`): the actors are
  writing shards;
- publish: the first file moved into the version folder `v1/`. Publishing
  (factory/pipeline/publish.py, then storage/publish.py) first reads the shard
  records, stages a cut shard, data.yaml and the report under
  `_staging/v1/_publish/out/` and seals its plan (`_publish/plan.jsonl`, then
  `head.json`), one request at a time; then it moves every file into `v1/` (a
  server-side copy and a delete each, 16 threads), writes `v1/files.jsonl`,
  creates `v1/manifest.json` (the commit) and deletes the staging prefix. The
  first object in `v1/` is the first move: an outage from there hits the
  concurrent moves, the commit and the cleanup (an outage at the first
  `_publish/` file would mostly fall on building the report, CPU work, and then
  hold up the one sequential seal request: the moves would start after it).

Per trial: the exit code, seconds, when the outage began (seconds into the run),
connections the outage reset (0: it hit no request, the trial says nothing),
whether the version is complete (manifest.json present, every file its
files.jsonl lists present with its sha256, `count` images) and whether any
staging is left. Ridden out = exit 0, complete, no staging left, and the outage
reset at least one connection. Exits 1 if any trial was not ridden out (its run's
output is printed).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import machine, table  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

BUCKET = "outage"
NAME = "demo-pv-el"
PHASES = ("generation", "publish")


def write_spec(tmp: Path, count: int, root: str) -> Path:
    import yaml

    spec = yaml.safe_load((REPO / "specs" / "demo-pv-el.yaml").read_text())
    spec["count"] = count
    spec["output"]["uri"] = root
    path = tmp / f"spec-{root.rsplit('/', 1)[-1]}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def marker(phase: str, key: str, prefix: str) -> bool:
    """Does `key` (a key under the trial's root) mark the phase's start?"""
    staging = f"{prefix}/{NAME}/_staging/v1/"
    if phase == "generation":
        return key.startswith(staging) and key != staging + "_run.json"
    return key.startswith(f"{prefix}/{NAME}/v1/")


class Watcher(threading.Thread):
    """Lists the trial's keys on moto itself, every 20 ms, until the phase's marker
    appears; then takes the proxy down for `seconds`."""

    def __init__(self, moto, proxy, phase: str, prefix: str, seconds: float, t0: float):
        super().__init__(daemon=True)
        self.moto, self.proxy, self.phase, self.prefix, self.seconds, self.t0 = moto, proxy, phase, prefix, seconds, t0
        self.at: float | None = None  # outage start, seconds into the run
        self.key = ""
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                pages = self.moto.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=self.prefix + "/")
                keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
            except Exception:  # noqa: BLE001 - moto busy: look again
                keys = []
            hit = next((k for k in keys if marker(self.phase, k, self.prefix)), None)
            if hit:
                self.proxy.outage(self.seconds)
                self.at, self.key = time.time() - self.t0, hit
                return
            self.stop.wait(0.02)


def check_version(root: str, count: int) -> tuple[str, bool]:
    """(what is wrong with the published version or "ok", whether staging is left), read on moto directly."""
    from factory.storage import uri as U
    from factory.storage.registry import Registry, check_files
    from factory.storage.uri import StorageError

    reg = Registry(root)
    staging_left = bool(U.list_files(U.join(reg.dataset_uri(NAME), "_staging")))
    try:
        m = reg.manifest(NAME, 1)  # manifest.json, and files.jsonl checked against it
    except StorageError as e:
        return f"no version ({e})", staging_left
    present = set(U.list_files(reg.version_uri(NAME, 1)))
    missing = sorted(set(m.files or {}) - present)
    if missing:
        return f"{len(missing)} listed files missing ({missing[0]}, ...)", staging_left
    bad = list(check_files(reg.version_uri(NAME, 1), m).values())
    if bad:
        return f"{len(bad)} files differ from their sha256 ({bad[0]}, ...)", staging_left
    if m.counts.accepted != count:
        return f"{m.counts.accepted} images, expected {count}", staging_left
    return "ok", staging_left


def trial(phase: str, i: int, a, moto, proxy, tmp: Path) -> dict:
    prefix = f"{phase}-{i}"
    root = f"s3://{BUCKET}/{prefix}"
    spec = write_spec(tmp, a.count, root)
    logs = tmp / f"logs-{prefix}"
    env = {k: v for k, v in os.environ.items() if k not in ("FACTORY_S3_RETRY_SECONDS", "AWS_ENDPOINT_URL_S3", "RAY_ADDRESS")}
    env |= {"AWS_ENDPOINT_URL": proxy.url, "FACTORY_LOG_DIR": str(logs), "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "factory.cli", "run", str(spec), *(["--actors", str(a.actors)] if a.actors else [])]
    resets0 = proxy.resets
    t0 = time.time()
    with open(tmp / f"out-{prefix}.txt", "w") as out:
        proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=out, stderr=subprocess.STDOUT)
        w = Watcher(moto, proxy, phase, prefix, a.outage, t0)
        w.start()
        try:
            rc = proc.wait(timeout=a.timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            rc = "timeout"
        seconds = time.time() - t0
        w.stop.set()
        w.join()
    proxy.down_until = 0.0  # (an outage that outlived the run must not hit the checks or the next trial)
    what, staging_left = check_version(root, a.count)
    resets = proxy.resets - resets0
    ok = rc == 0 and what == "ok" and not staging_left and resets > 0
    verdict = "yes" if ok else ("no: the outage hit no request" if rc == 0 and what == "ok" and not staging_left
                                else "NO")
    return {"phase": phase, "trial": i + 1, "exit": rc, "seconds": seconds,
            "outage_at": "never" if w.at is None else f"{w.at:.1f} s", "resets": resets,
            "complete": what, "staging_left": "yes" if staging_left else "no", "ridden_out": verdict, "ok": ok,
            "out": tmp / f"out-{prefix}.txt", "logs": logs, "key": w.key}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=2, help="trials per phase")
    ap.add_argument("--outage", type=float, default=30.0, help="seconds the endpoint is down")
    ap.add_argument("--count", type=int, default=32, help="images per run (the demo spec's count, reduced)")
    ap.add_argument("--actors", type=int, default=None, help="generator actors (default: the factory's own, every core)")
    ap.add_argument("--phases", nargs="+", choices=PHASES, default=list(PHASES))
    ap.add_argument("--timeout", type=float, default=None, help="seconds a run may take (default 600 + the outage)")
    ap.add_argument("--smoke", action="store_true",
                    help="smallest setting: 1 trial per phase, a 1 s outage, 8 images, 2 generator actors "
                         "(tests/test_benchmarks.py runs it; its numbers mean nothing)")
    a = ap.parse_args()
    if a.smoke:
        a.trials, a.outage, a.count, a.actors = 1, 1.0, 8, 2
    a.timeout = a.timeout or 600 + a.outage
    for k, v in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
                 "AWS_EC2_METADATA_DISABLED": "true", "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}.items():
        os.environ.setdefault(k, v)

    import boto3
    from s3_server import FlakyProxy, start_moto, stop_moto

    from factory.storage import configure_storage

    print(f"machine: {machine()}")
    print(f"job: factory run specs/demo-pv-el.yaml, count {a.count}, Parquet + YOLO on s3:// (moto on 127.0.0.1 "
          f"behind a resetting proxy), {a.actors or 'default'} generator actors, FACTORY_S3_RETRY_SECONDS default; "
          f"{a.outage:g} s outage, {a.trials} trial(s) per phase", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-outage-"))
    proc, url = start_moto()
    rows, failed = [], []
    try:
        proxy = FlakyProxy(url)
        moto = boto3.client("s3", endpoint_url=url, region_name="us-east-1")
        moto.create_bucket(Bucket=BUCKET)
        configure_storage(endpoint_url=url)  # this process checks the versions on moto directly
        for phase in a.phases:
            for i in range(a.trials):
                r = trial(phase, i, a, moto, proxy, tmp)
                print(f"{phase} trial {r['trial']}: exit {r['exit']}, {r['seconds']:.1f} s, outage at {r['outage_at']} "
                      f"(on {r['key'] or '-'}), {r['resets']} resets, ridden out: {r['ridden_out']}", flush=True)
                rows.append([r["phase"], r["trial"], r["exit"], f"{r['seconds']:.1f}", r["outage_at"], r["resets"],
                             r["complete"], r["staging_left"], r["ridden_out"]])
                if not r["ok"]:
                    failed.append(r)
        proxy.close()
    finally:
        stop_moto(proc)
    print()
    print(table(["phase", "trial", "exit", "seconds", f"{a.outage:g} s outage began at", "connections reset",
                 "version complete", "staging left", "ridden out"], rows))
    for r in failed:
        print(f"\n--- {r['phase']} trial {r['trial']} (not ridden out): the run's output, last 60 lines ---")
        print("\n".join(r["out"].read_text(errors="replace").splitlines()[-60:]))
        print(f"(Ray's log of the run: {r['logs']})")
    print(f"\nload average at the end: {'/'.join(f'{x:.1f}' for x in os.getloadavg())}")
    if failed:
        print(f"{len(failed)} of {len(rows)} trials not ridden out; their files: {tmp}")
        sys.exit(1)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
