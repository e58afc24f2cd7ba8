"""Benchmark of the Ray Data job against plain single-process code.

    python benchmarks/pipeline.py [--count 600] [--size 256] [--shard 64]

1. Accepted images/s: the full job (`run_dataset`: plan, generate, score, PNG,
   Parquet + YOLO shards, publish) with 1 and 2 generator actors, against a plain
   loop doing the same work in one process (and the bare generator, for scale).
2. Shard write MB/s: our Parquet sink against a plain `pyarrow.parquet.write_table`
   of the same rows, on file:// and on a local moto S3 server (127.0.0.1).

Prints a table naming the machine (and its load: the numbers mean little on a
busy machine).
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()
    return (f"{platform.node()}: {cpu}, {os.cpu_count()} cores, python {platform.python_version()}, "
            f"load average {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}")


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


def plain_loop(spec, out: str, generator_only: bool = False) -> float:
    """The same work in one process, no Ray: images/s accepted."""
    from factory.generators.base import load_generator
    from factory.pipeline.checks import scorers_for
    from factory.pipeline.stages import split_of
    from factory.planning import iter_plan
    from factory.quality.base import score_all
    from factory.storage.shards import sinks_for
    from factory.viz import png_bytes

    gen = load_generator("procedural", None, {})
    scorers = scorers_for(spec)
    sinks = sinks_for(spec.output.formats)
    t0 = time.perf_counter()
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
    return accepted / (time.perf_counter() - t0)


def ray_job(spec, out: str, actors: int) -> tuple[float, float]:
    """(images/s end to end incl. actor start and publish, seconds)."""
    from factory.pipeline import RunOptions, run_dataset

    t0 = time.perf_counter()
    r = run_dataset(spec, RunOptions(out=out, actors=actors, report=False))
    dt = time.perf_counter() - t0
    assert r.manifest["counts"]["accepted"] == spec.count
    return spec.count / dt, dt


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

    out["plain write_table"] = best(lambda i: pq.write_table(table, f"{base}/plain/p{i}.parquet", filesystem=fs))
    out["ParquetSink (rows -> table -> sha256 -> put)"] = best(lambda i: ParquetSink().write(U.join(root_uri, "sink"), f"s{i}", rows))
    out["YoloSink (2 files per image)"] = best(lambda i: YoloSink().write(U.join(root_uri, f"yolo{i}"), "s", rows))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=600)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--shard", type=int, default=64)
    ap.add_argument("--skip-ray", action="store_true")
    a = ap.parse_args()
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
    gen_only = plain_loop(spec, str(tmp / "g"), generator_only=True)
    rows.append(("bare generator, 1 process", f"{gen_only:.1f}", ""))
    plain = plain_loop(spec, str(tmp / "plain"))
    rows.append(("plain loop, 1 process (generate+check+PNG+shards)", f"{plain:.1f}", "baseline"))
    if not a.skip_ray:
        from factory.pipeline import ensure_ray

        ensure_ray()
        import ray

        for n in (1, 2):
            ips, dt = ray_job(spec, str(tmp / f"ray{n}"), n)
            rows.append((f"Ray Data job, {n} generator actor{'s' * (n > 1)} ({dt:.1f} s end to end)", f"{ips:.1f}",
                         f"{ips / plain:.2f}x plain, {ips / n / plain:.2f} per actor"))
        ray.shutdown()
    print(f"\n{'accepted images/s':<70} {'img/s':>8}  vs plain")
    for name, v, note in rows:
        print(f"{name:<70} {v:>8}  {note}")

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
