"""Benchmark of the Ray Data job against plain single-process code.

    python benchmarks/pipeline.py [--count 1200] [--size 256] [--shard 64]
    python benchmarks/pipeline.py --smoke   # 160 images of 64x64 in shards of 8, memory at 100/200: checks the script
    python benchmarks/pipeline.py --gate patchcore   # the Ray rows again with the anomaly gate on

1. Accepted images/s: the full job (`run_dataset`: plan, generate, score, PNG,
   Parquet + YOLO shards, publish) with 1 and 2 generator actors, against a plain
   loop doing the same work in one process (and the bare generator, for scale).
   "steady" is the rate and CPU per image between shard records (from the one by
   which every actor has delivered a shard, to the last), without the fixed start-up (actor processes, imports, the first
   shard) and publish; the start-up is reported on its own.
   With `--gate METHOD`: a gate of that method is trained first on 200 of the spec's own
   defect-free renders (`factory train anomaly`), and the Ray rows run again with it as
   `quality.anomaly_checkpoint`: images/s per actor with the gate on, and the ratio to off.
2. The driver's memory at two counts: it should not grow with the count.
3. Shard write MB/s: our Parquet sink against a plain `pyarrow.parquet.write_table`
   of the same rows, on file:// and on a local moto S3 server (127.0.0.1).

Prints a table naming the machine (and its load: the numbers mean little on a
busy machine).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from common import SMOKE_HELP, machine, smoke_ray  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def bench_spec(count: int, size: int, shard: int):
    from factory.spec import spec_from_dict

    return spec_from_dict({
        "name": "bench", "seed": 1, "count": count, "image": {"width": size, "height": size, "channels": 1},
        "defects": [
            {"class": "crack", "boxes": {"count": [1, 2], "size": {"min": 0.08, "max": 0.25}}},
            {"class": "black_spot", "boxes": {"count": [1, 2], "size": {"min": 0.05, "max": 0.15}}},
            {"class": "scratch", "boxes": {"size": {"min": 0.1, "max": 0.3}}},
        ],
        "negatives": 0.1, "output": {"shard_size": shard},
    })


def plain_loop(spec, out: str, generator_only: bool = False) -> tuple[float, float]:
    """The same work in one process, no Ray: (images/s accepted, CPU ms per image)."""
    from factory.generators.base import load_generator
    from factory.pipeline.stages import split_of
    from factory.planning import iter_plan
    from factory.quality import build_scorers
    from factory.quality.base import score_all
    from factory.storage.shards import sinks_for
    from factory.viz import png_bytes

    gen = load_generator("procedural", None, {})
    scorers = build_scorers(spec)
    sinks = sinks_for(spec.output.formats)
    t0, c0 = time.perf_counter(), time.process_time()
    accepted, buf, items = 0, [], list(iter_plan(spec, 0, spec.count))
    for k in range(0, len(items), 16):
        samples = gen.generate(items[k: k + 16])
        if generator_only:
            accepted += len(samples)
            continue
        for s, v in zip(samples, score_all(scorers, samples)):
            if v.accepted:
                buf.append({
                    "sample_id": s.sample_id, "image": png_bytes(s.image), "width": s.item.width,
                    "height": s.item.height, "boxes": [b.to_dict() for b in s.boxes], "generator": "procedural",
                    "checkpoint": "", "seed": s.item.seed, "item_id": s.sample_id, "item_index": s.item.index,
                    "spec_hash": "h", "scores": v.scores, "split": split_of(s.item.index), "work_item": "{}",
                })
        while len(buf) >= spec.output.shard_size or (buf and k + 16 >= len(items)):
            rows, buf = buf[: spec.output.shard_size], buf[spec.output.shard_size:]
            for sink in sinks:
                sink.write(out, f"s{accepted:08d}", rows)
            accepted += len(rows)
    return accepted / (time.perf_counter() - t0), (time.process_time() - c0) / accepted * 1000


class CpuMeter:
    """CPU seconds used by this process and all its descendants (the embedded Ray:
    GCS, raylet, workers), sampled as the job runs, so workers that exit at the
    end still count (up to their last sample)."""

    def __init__(self):
        import psutil

        self.me = psutil.Process()
        self.seen: dict[int, float] = {}
        self.base = self.sample()

    def sample(self) -> float:
        for p in [self.me, *self.me.children(recursive=True)]:
            try:
                t = p.cpu_times()
                self.seen[p.pid] = t.user + t.system + t.children_user + t.children_system
            except Exception:  # noqa: BLE001 - a process that just exited keeps its last sample
                pass
        return sum(self.seen.values())


def ray_job(spec, out: str, actors: int, warm_up: bool = False) -> dict[str, float]:
    """Images/s end to end (Ray start excluded; actor start, rounds and publish
    included), CPU seconds over all Ray processes, and the steady state: images/s
    and CPU per image between shard records (the fixed start-up and publish left out)."""
    from factory.pipeline import RunOptions, run_dataset

    meter = CpuMeter()
    marks: list[tuple[float, int, float]] = []  # (time, accepted, CPU) at each shard record

    def progress(p) -> None:
        if p.accepted and (not marks or p.accepted != marks[-1][1]):
            marks.append((time.perf_counter(), p.accepted, meter.sample()))

    t0 = time.perf_counter()
    r = run_dataset(spec, RunOptions(out=out, actors=actors, report=False), on_progress=progress)
    dt = time.perf_counter() - t0
    cpu = meter.sample() - meter.base
    assert r.manifest["counts"]["accepted"] == spec.count
    if warm_up:  # only starts Ray Data's helpers: no rate is read from it
        return {}
    # from the record by which every actor has delivered a shard (all at a shard
    # boundary) to the last; work in flight at the end goes uncounted (conservative)
    (ta, na, ca), (tb, nb, cb) = marks[min(actors, len(marks) - 1) - 1], marks[-1]
    if len(marks) - actors < 8:  # records reach the driver in bursts: a few shards say little
        sys.exit(f"only {len(marks)} shard records: too few for a steady rate; raise --count (1200 at shards of 64)")
    steady = (nb - na) / (tb - ta)
    return {"e2e": spec.count / dt, "seconds": dt, "cpu": cpu, "steady": steady,
            "steady_cpu_ms": (cb - ca) / (nb - na) * 1000, "startup": ta - t0 - na / steady,
            "pass_rate": r.manifest["counts"]["pass_rate"]}


def with_gate(spec, method: str, tmp: Path, n_normal: int):
    """The spec with an anomaly gate of `method`, fit on `n_normal` of its own defect-free
    renders, and the fit's seconds."""
    from factory.quality.audit import save_defect_free_renders
    from factory.training.anomaly import AnomalyTrainConfig, train_anomaly

    (tmp / "normal").mkdir()
    save_defect_free_renders(spec, n_normal, tmp / "normal")
    t = time.perf_counter()
    ckpt = f"file://{tmp}/gate"
    train_anomaly(str(tmp / "normal"), ckpt, AnomalyTrainConfig(method=method))
    q = spec.quality.model_copy(update={"anomaly_checkpoint": ckpt, "gpus": 0.0})
    return spec.model_copy(update={"quality": q}), time.perf_counter() - t


def driver_memory(count: int, out: str) -> tuple[float, float]:
    """The driver's Python heap (tracemalloc) for a whole run at 64x64: what it
    holds when generation ends, and its peak (publish included), in MB."""
    import tracemalloc

    import factory.pipeline.job as job
    from factory.pipeline import RunOptions, run_dataset

    held = {}
    publish = job.publish_version

    def measured(*a, **k):
        held["mb"] = (tracemalloc.get_traced_memory()[0] - base) / 1e6
        return publish(*a, **k)

    job.publish_version = measured
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    try:
        run_dataset(bench_spec(count, 64, 256), RunOptions(out=out, report=False))
        peak = (tracemalloc.get_traced_memory()[1] - base) / 1e6
    finally:
        tracemalloc.stop()
        job.publish_version = publish
    return held["mb"], peak


def shard_rows(n: int, size: int):
    from factory.generators.base import load_generator
    from factory.planning import iter_plan
    from factory.viz import png_bytes

    spec = bench_spec(n, size, n)
    samples = load_generator("procedural", None, {}).generate(list(iter_plan(spec, 0, n)))
    return [{
        "sample_id": s.sample_id, "image": png_bytes(s.image), "width": size, "height": size,
        "boxes": [b.to_dict() for b in s.boxes], "generator": "procedural", "checkpoint": "", "seed": s.item.seed,
        "item_id": s.sample_id, "item_index": s.item.index, "spec_hash": "h", "scores": {"image_std": 1.0},
        "split": "train", "work_item": "{}",
    } for s in samples]


def write_mb_s(rows, root_uri: str, repeat: int = 3) -> dict[str, float]:
    """MB/s of our sink vs plain write_table (same rows, same target)."""
    import pyarrow.parquet as pq

    from factory.storage import uri as U
    from factory.storage.shards import ParquetSink, YoloSink, rows_to_table

    table = rows_to_table(rows)
    mb = sum(len(r["image"]) for r in rows) / 1e6
    fs, base = U.arrow_filesystem(root_uri)
    out: dict[str, float] = {}

    def best(fn) -> float:
        times = []
        for i in range(repeat):
            t0 = time.perf_counter()
            fn(i)
            times.append(time.perf_counter() - t0)
        return mb / min(times)

    fs.create_dir(f"{base}/plain", recursive=True)
    out["plain write_table"] = best(lambda i: pq.write_table(table, f"{base}/plain/p{i}.parquet", filesystem=fs))
    out["ParquetSink (rows -> table -> sha256 -> put)"] = best(lambda i: ParquetSink().write(U.join(root_uri, "sink"), f"s{i}", rows))
    out["YoloSink (2 files per image)"] = best(lambda i: YoloSink().write(U.join(root_uri, f"yolo{i}"), "s", rows))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=1200)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--shard", type=int, default=64)
    ap.add_argument("--skip-ray", action="store_true")
    ap.add_argument("--gate", choices=["patchcore", "uiidd", "uiidd-disc"],
                    help="also run the Ray rows with this anomaly gate (trained first on the spec's own defect-free renders)")
    ap.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    a = ap.parse_args()
    memory_counts = (2000, 20000)
    if a.smoke:  # enough shard records for the steady rate (see ray_job), nothing more
        a.count, a.size, a.shard, memory_counts = 160, 64, 8, (100, 200)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    for k, v in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
                 "AWS_EC2_METADATA_DISABLED": "true"}.items():
        os.environ.setdefault(k, v)
    tmp = Path(tempfile.mkdtemp(prefix="bench-"))
    spec = bench_spec(a.count, a.size, a.shard)
    print(f"machine: {machine()}")
    print(f"job: procedural {a.size}x{a.size}, {a.count} images, shards of {a.shard}, Parquet + YOLO on file://")
    rows = []
    gen_only, gen_cpu = plain_loop(spec, str(tmp / "g"), generator_only=True)
    rows.append(("bare generator, 1 process", f"{gen_only:.1f}", "", "", f"{gen_cpu:.1f}", ""))
    plain, plain_cpu = plain_loop(spec, str(tmp / "plain"))
    rows.append(("plain loop, 1 process (generate+check+PNG+shards)", f"{plain:.1f}", "", "1.00x", f"{plain_cpu:.1f}", ""))
    if not a.skip_ray:
        from factory.ray_runtime import ensure_ray

        if a.smoke:
            smoke_ray()
        ensure_ray()
        import ray

        # Ray Data starts a few cluster-wide helper actors on a cluster's first job
        # (stats, autoscaling coordinator): like ray.init, not counted
        ray_job(bench_spec(min(64, a.count), a.size, a.shard), str(tmp / "warm"), 1, warm_up=True)
        off = {}
        for n in (1, 2):
            j = off[n] = ray_job(spec, str(tmp / f"ray{n}"), n)
            rows.append((f"Ray Data job, {n} actor{'s' * (n > 1)} ({j['seconds']:.1f} s, start-up {j['startup']:.1f} s)",
                         f"{j['e2e']:.1f}", f"{j['steady']:.1f}", f"{j['steady'] / (n * plain):.2f}x",
                         f"{j['cpu'] / spec.count * 1000:.1f}", f"{j['steady_cpu_ms']:.1f}"))
        if a.gate:
            gated, fit_s = with_gate(spec, a.gate, tmp, 16 if a.smoke else 200)
            print(f"gate: {a.gate} fit on the spec's own defect-free renders in {fit_s:.0f} s", flush=True)
            for n in (1, 2):
                j = ray_job(gated, str(tmp / f"gate{n}"), n)
                rows.append((f"  + {a.gate} gate, {n} actor{'s' * (n > 1)} ({j['seconds']:.1f} s, {j['pass_rate']:.0%} pass)",
                             f"{j['e2e']:.1f}",
                             f"{j['steady']:.1f}", f"{j['steady'] / off[n]['steady']:.2f}x off",
                             f"{j['cpu'] / spec.count * 1000:.1f}", f"{j['steady_cpu_ms']:.1f}"))
        memory = [(n, *driver_memory(n, str(tmp / f"mem{n}"))) for n in memory_counts]
        ray.shutdown()
    print(f"\n{'accepted images/s (Ray start excluded)':<58} {'e2e':>7} {'steady':>7} {'per actor':>10} "
          f"{'CPU ms/img':>11} {'steady':>9}")
    print(f"{'':<58} {'img/s':>7} {'img/s':>7} {'vs plain':>10} {'':>11} {'CPU ms':>9}")
    for name, v, st, note, cpu, marg in rows:
        print(f"{name:<58} {v:>7} {st:>7} {note:>10} {cpu:>11} {marg:>9}")
    if not a.skip_ray:
        print(f"\n{'driver memory (Python heap, tracemalloc), 64x64, shards of 256':<64} {'held MB':>9} {'peak MB':>9}")
        for n, held, peak in memory:
            print(f"{f'{n} images':<64} {held:>9.1f} {peak:>9.1f}")
    sys.stdout.flush()

    from s3_server import start_moto, stop_moto

    from factory.storage import configure_storage

    shard = shard_rows(a.shard, a.size)
    print(f"\nshard write: {a.shard} rows of {a.size}x{a.size} PNG ({sum(len(r['image']) for r in shard) / 1e6:.1f} MB of images), best of 3")
    print(f"{'target / writer':<70} {'MB/s':>8}")
    for name, v in write_mb_s(shard, f"file://{tmp}/w").items():
        print(f"{'file:// ' + name:<70} {v:>8.1f}")
    proc, url = start_moto()
    try:
        configure_storage(endpoint_url=url)
        import boto3

        boto3.client("s3", endpoint_url=url).create_bucket(Bucket="bench")
        for name, v in write_mb_s(shard, "s3://bench/w").items():
            print(f"{'s3:// (moto, 127.0.0.1) ' + name:<70} {v:>8.1f}")
    finally:
        stop_moto(proc)
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nload average at the end: {'/'.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
