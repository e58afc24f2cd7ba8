"""`run_dataset(spec)`: the whole job, from a spec to a published version.

The driver only plans ranges of plan indices and keeps one small summary per
written shard (`Shard`); everything heavy (planning items, generating, scoring,
encoding, writing) runs in Ray Data stages, streaming. The shard records stay in
staging and publish reads them back one at a time, spooling the manifest's file
list to disk, so the driver's memory grows with the number of shards, not of
samples. Rounds: the first runs `ceil(count * overprovision)` items and stops
as soon as `count` are accepted; if the gate rejected too many, a top-up round
plans the next items, sized by the pass rate seen so far. Publishing picks whole
shards in plan order and cuts the last one, so exactly `count` are published.

Resume: `_run.json` in the staging prefix says how far the plan went; shard
records say which plan indices are done. A resumed run redoes only the missing
indices, and publish skips any record that repeats an index, so no sample is
published twice.
"""

from __future__ import annotations

import bisect
import dataclasses
import io
import json
import logging
import math
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

from factory.generators.checks import check_spec
from factory.pipeline.stages import GenerateStage, ScoreWriteStage, ShardTarget, generator_key, split_of
from factory.ray_runtime import ensure_ray
from factory.spec import DatasetSpec
from factory.storage import uri as U
from factory.storage.registry import Registry, code_version

RUN_STATE = "_run.json"
MAX_ROUNDS = 10

log = logging.getLogger("factory.pipeline")


class RunError(RuntimeError):
    """The job cannot go on (interrupted staging without --resume, a spec that
    changed under --resume, a gate that rejects everything, ...)."""


@dataclass
class Progress:
    accepted: int = 0
    rejected: int = 0
    processed: int = 0
    count: int = 0
    round: int = 0
    phase: str = "generating"


@dataclass
class RunResult:
    name: str
    version: int
    uri: str
    manifest: dict[str, Any]
    seconds: float
    report_uri: str | None = None
    grid_uri: str | None = None
    resumed_shards: int = 0
    notes: list[str] = field(default_factory=list)


@dataclass
class RunOptions:
    out: str | None = None  # registry root; default: the spec's output.uri
    version: int | None = None  # default: the spec's version, else the next free one
    resume: bool = False
    address: str | None = None  # Ray address; default: RAY_ADDRESS, else an embedded cluster
    actors: int | None = None  # generator actors per pool; default: fill the cluster's CPUs (1 per GPU)
    batch_size: int = 64  # work items per generator call (a shard is made in calls of this many)
    overprovision: float = 1.1  # 1 / expected pass rate of the first round
    retries: int = 2  # retries of a failing generator call before it becomes a reject
    report: bool = True


def _is_local_cluster() -> bool:
    import ray

    return ray.util.get_node_ip_address() in {n["NodeManagerAddress"] for n in ray.nodes()} and len(ray.nodes()) == 1


def run_dataset(spec: DatasetSpec, options: RunOptions | None = None,
                on_progress: Callable[[Progress], None] | None = None) -> RunResult:
    o = options or RunOptions()
    t0 = time.time()
    check_spec(spec)  # the generator families' own checks (params, classes, references)
    root = U.to_uri(o.out or spec.output.uri)
    U.check_root(root)
    reg = Registry(root)
    version = o.version or spec.version or reg.next_version(spec.name)
    reg.refuse_published(spec.name, version)
    staging = reg.staging_uri(spec.name, version)
    spec_hash = spec.spec_hash()
    state = _start_state(spec, version, staging, spec_hash, o.resume)
    shards = _load_shards(staging) if o.resume else []
    resumed = len(shards)

    prog = Progress(count=spec.count)
    _tally(prog, shards)
    if on_progress:
        on_progress(prog)
    if prog.accepted < spec.count:
        ensure_ray(o.address)
    while prog.accepted < spec.count:
        prog.round += 1
        if prog.round > MAX_ROUNDS:
            raise RunError(f"{prog.accepted}/{spec.count} accepted after {MAX_ROUNDS} rounds; {_top_reasons(shards)}")
        todo = _missing(shards, state["planned_until"])
        if not todo:  # the planned range is used up: plan more (top-up)
            if prog.processed and not prog.accepted and prog.processed >= 8:
                raise RunError(f"the quality gate rejected all {prog.processed} samples; {_top_reasons(shards)}")
            n = _round_size(spec.count, prog, o.overprovision)
            todo = [(state["planned_until"], state["planned_until"] + n)]
            state["planned_until"] += n
            state["rounds"] = prog.round
            U.write_bytes(U.join(staging, RUN_STATE), json.dumps(state).encode())
        log.info("round %d: %d items", prog.round, sum(b - a for a, b in todo))
        for rec in _run_round(spec, o, staging, spec_hash, todo):
            shards.append(Shard.of(rec))
            _tally(prog, shards[-1:])
            if on_progress:
                on_progress(prog)
            if prog.accepted >= spec.count:
                break
    prog.phase = "publishing"
    if on_progress:
        on_progress(prog)
    result = _publish(spec, reg, version, staging, shards, state, o, spec_hash, time.time() - t0)
    result.resumed_shards = resumed
    return result


# --- state and records ------------------------------------------------------
def _start_state(spec: DatasetSpec, version: int, staging: str, spec_hash: str, resume: bool) -> dict[str, Any]:
    where = U.join(staging, RUN_STATE)
    if U.exists(where):
        if not resume:
            raise RunError(
                f"{staging}: an earlier run of {spec.name}@{version} was interrupted here; pass --resume to reuse "
                "its shards, or delete that prefix to start over"
            )
        state = json.loads(U.read_bytes(where))
        if state.get("spec_hash") != spec_hash:
            raise RunError(
                f"{staging}: --resume with a different spec (staged hash {str(state.get('spec_hash'))[:12]}, "
                f"this spec {spec_hash[:12]}); use a new --version or the original spec"
            )
        return state
    if U.list_files(staging):  # files without a run state: leftovers of a run that never planned
        U.delete_prefix(staging)
    state = {"spec_hash": spec_hash, "name": spec.name, "version": version, "planned_until": 0, "rounds": 0,
             "started_at": time.time()}
    U.write_bytes(where, json.dumps(state).encode())
    return state


@dataclass
class Shard:
    """The driver's view of one written shard. Its record (every sample's id, split
    and boxes, every file's sha256) stays in staging as `_shards/<key>.json` and is
    read again, one at a time, at publish, so the driver's memory grows with the
    number of shards, not of samples."""

    key: str
    accepted: int
    rejected: int
    runs: list[tuple[int, int]]  # the plan indices it covers, as [start, stop) runs
    reasons: Counter  # reject reason codes

    @classmethod
    def of(cls, rec: dict[str, Any]) -> "Shard":
        codes = Counter(code for _, _, codes in rec["rejects"] for code in codes)
        idx = sorted([s[0] for s in rec["samples"]] + [r[0] for r in rec["rejects"]])
        return cls(rec["key"], len(rec["samples"]), len(rec["rejects"]), _runs(idx), codes)


def _runs(sorted_indices: list[int]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for i in sorted_indices:
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


def _missing(shards: list[Shard], until: int) -> list[tuple[int, int]]:
    """The plan indices below `until` that no shard covers, as runs."""
    out, pos = [], 0
    for a, b in sorted(r for s in shards for r in s.runs):
        if a > pos:
            out.append((pos, min(a, until)))
        pos = max(pos, b)
    if pos < until:
        out.append((pos, until))
    return [(a, b) for a, b in out if a < b]


def _record(staging: str, key: str) -> dict[str, Any]:
    return json.loads(U.read_bytes(U.join(staging, "_shards", f"{key}.json")))


def _load_shards(staging: str) -> list[Shard]:
    prefix = U.join(staging, "_shards")
    return [Shard.of(_record(staging, n[:-5])) for n in U.list_files(prefix) if n.endswith(".json")]


def _tally(prog: Progress, shards: list[Shard]) -> None:
    for s in shards:
        prog.accepted += s.accepted
        prog.rejected += s.rejected
        prog.processed += s.accepted + s.rejected


def _round_size(count: int, prog: Progress, overprovision: float) -> int:
    need = count - prog.accepted
    if not prog.processed:
        return math.ceil(count * overprovision)
    rate = max(prog.accepted / prog.processed, 0.02)
    return max(8, math.ceil(need / rate * 1.1))


def _top_reasons(shards: list[Shard]) -> str:
    c = sum((s.reasons for s in shards), Counter())
    return "reject reasons: " + (", ".join(f"{k} {v}" for k, v in c.most_common(5)) or "none")


# --- the Ray Data graph -----------------------------------------------------
def _ranges(todo: list[tuple[int, int]], shard_size: int, workers: int) -> list[dict[str, int]]:
    """Runs of plan indices cut into ranges of at most `shard_size` (one range = one
    shard); smaller for small rounds, so that every worker gets a few."""
    chunk = max(1, min(shard_size, sum(b - a for a, b in todo) // (4 * workers)))
    return [{"start": i, "stop": min(i + chunk, b)} for a, b in todo for i in range(a, b, chunk)]


def _shard_target(staging: str, spec_hash: str, spec: DatasetSpec) -> ShardTarget:
    storage = U.storage_config()
    if U.is_s3(staging) and _is_local_cluster() and not storage.access_key:
        # an embedded cluster may predate the credential variables: hand them over
        storage = dataclasses.replace(
            storage, endpoint_url=U.s3_endpoint(), access_key=os.environ.get("AWS_ACCESS_KEY_ID"),
            secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY"), session_token=os.environ.get("AWS_SESSION_TOKEN"))
    else:
        storage = dataclasses.replace(storage, endpoint_url=U.s3_endpoint())
    return ShardTarget(staging, spec_hash, tuple(spec.output.formats), storage)


@dataclass(frozen=True)
class Pool:
    """One generator's actor pool, and where its samples are scored and written."""

    key: str  # generator_key(kind, checkpoint, params)
    actors: int
    gpu: bool  # each generator actor holds one GPU
    score_actors: int = 0  # 0: the generator's own actor scores and writes (fused)
    score_gpus: float = 0.0  # per scoring actor


def plan_pools(spec: DatasetSpec, cpus: float, gpus: float, actors: int | None = None) -> list[Pool]:
    """How a round uses the cluster. A CPU generator's actor does everything for its
    ranges (generate, score, PNG, write), so an image never crosses a process; by
    default the CPU generators share the cores. A GPU generator (one GPU per actor)
    hands its images to a CPU scoring pool so the GPU never waits for PNG encoding.
    When the anomaly gate asks for a GPU (`quality.gpus`) and the generators leave
    that much free, every pool scores in GPU actors of that share."""
    from factory.generators.base import generator_class
    from factory.quality import gate_gpus

    keys = list(dict.fromkeys(generator_key(g.kind, g.checkpoint, g.params) for g in spec.generators if g.weight > 0))
    base = []
    for key in keys:
        gpu = generator_class(json.loads(key)[0]).wants_gpu and gpus >= 1
        base.append((key, gpu, actors or (int(gpus) if gpu else max(1, int(cpus) // len(keys)))))
    free_gpus = gpus - sum(n for _, gpu, n in base if gpu)
    want = gate_gpus(spec)
    score_gpus = want if 0 < want <= free_gpus else 0.0
    if want and gpus and not score_gpus:
        log.info("the anomaly gate scores on CPU: the generators hold every GPU (lower --actors to share)")
    # CPU scoring after a GPU generator is light next to generating: those pools
    # reserve no CPU and stay small, so Ray does not start a process per block
    helpers = max(1, sum(n for *_, n in base) // 2)
    pools = []
    for key, gpu, n in base:
        if score_gpus:
            pools.append(Pool(key, n, gpu, max(1, min(helpers, int(free_gpus // score_gpus))), score_gpus))
        else:
            pools.append(Pool(key, n, gpu, helpers if gpu else 0))
    return pools


def _run_round(spec: DatasetSpec, o: RunOptions, staging: str, spec_hash: str, todo: list[tuple[int, int]]):
    """Yield shard records as the streaming job writes them; closing the generator
    (the caller stops at `count`) shuts the executor down."""
    import ray

    res = ray.cluster_resources()
    pools = plan_pools(spec, float(res.get("CPU", 1)), float(res.get("GPU", 0)), o.actors)
    target = _shard_target(staging, spec_hash, spec)
    ranges = _ranges(todo, spec.output.shard_size, sum(p.actors for p in pools))
    # one input block per range: the unit of work the generator actors share out
    items = ray.data.from_items(ranges, override_num_blocks=max(1, min(len(ranges), 5000)))
    outputs = []
    for p in pools:
        ds = items.map_batches(
            GenerateStage, fn_constructor_kwargs={"spec": spec, "key": p.key, "device": "cuda" if p.gpu else "cpu",
                                                  "retries": o.retries, "target": None if p.score_actors else target,
                                                  "batch_size": o.batch_size},
            batch_size=1, compute=ray.data.ActorPoolStrategy(size=p.actors),
            **({"num_gpus": 1} if p.gpu else {"num_cpus": 1}),
        )
        if p.score_actors:
            ds = ds.map_batches(
                ScoreWriteStage, fn_constructor_kwargs={"spec": spec, "target": target,
                                                        "device": "cuda" if p.score_gpus else "cpu"},
                batch_size=None, num_cpus=0, **({"num_gpus": p.score_gpus} if p.score_gpus else {}),
                compute=ray.data.ActorPoolStrategy(min_size=1, max_size=p.score_actors),
            )
        outputs.append(ds)
    ds = outputs[0] if len(outputs) == 1 else outputs[0].union(*outputs[1:])
    it = iter(ds.iter_rows())
    try:
        for row in it:
            yield json.loads(row["record"])
    finally:
        close = getattr(it, "close", None)
        if close:
            close()


# --- publishing -------------------------------------------------------------
def select(shards: list[Shard], count: int):
    """Pick shards in plan order until `count` samples; the last one is cut.

    Returns (chosen: list of (shard, how many of its samples to take, in plan
    order)), the surplus count, and the shards whose plan indices repeat an
    earlier shard's (skipped)."""
    chosen, dup, total, surplus = [], [], 0, 0
    starts: list[int] = []  # covered plan indices so far: sorted, disjoint runs
    stops: list[int] = []
    for s in sorted(shards, key=lambda s: s.key):
        if any(_overlaps(starts, stops, a, b) for a, b in s.runs):
            dup.append(s)
            continue
        for a, b in s.runs:
            k = bisect.bisect(starts, a)
            starts.insert(k, a)
            stops.insert(k, b)
        take = min(s.accepted, max(0, count - total))
        surplus += s.accepted - take
        total += take
        if take:
            chosen.append((s, take))
    return chosen, surplus, dup


def _overlaps(starts: list[int], stops: list[int], a: int, b: int) -> bool:
    k = bisect.bisect(starts, a)
    return (k > 0 and stops[k - 1] > a) or (k < len(starts) and starts[k] < b)


MAX_REPORT_BOXES = 50_000  # the report's box histograms use the first this many boxes (plan order is random)


def _publish(spec, reg: Registry, version: int, staging: str, shards: list[Shard], state, o: RunOptions,
             spec_hash: str, seconds: float) -> RunResult:
    """Move the chosen shards' files into the version, one shard at a time (the
    records are read back from staging), then write the manifest last."""
    import pyarrow.parquet as pq

    from factory.storage.report import build_report
    from factory.storage.shards import rows_to_table, table_bytes, yolo_data_yaml

    chosen, surplus, dup = select(shards, spec.count)
    if sum(t for _, t in chosen) != spec.count:
        raise RunError(f"internal: selected {sum(t for _, t in chosen)} samples, expected {spec.count}")
    take = {s.key: t for s, t in chosen}
    skipped = {id(s) for s in dup}
    kept = sorted((s for s in shards if id(s) not in skipped), key=lambda s: s.key)
    names = spec.class_names
    per_class_images: Counter = Counter()
    per_class_boxes: Counter = Counter()
    per_generator: Counter = Counter()
    splits: Counter = Counter()
    negatives, box_rows, grid_ok, grid_bad, gate = 0, [], [], [], []
    pub = reg.begin(spec.name, version)
    part = rejected_part = 0
    for shard in kept:
        rec = _record(staging, shard.key)
        gate = gate or rec.get("gate", [])  # the scorers' names, as the actors built them
        files = {f["path"]: f for f in rec["files"]}
        moves: list[tuple[str, dict[str, Any]]] = []
        if shard.key in take:
            samples = sorted(rec["samples"], key=lambda x: x[0])[: take[shard.key]]
            src, dst = f"parquet/{shard.key}.parquet", f"parquet/part-{part:05d}.parquet"
            part += 1
            cut = len(samples) < len(rec["samples"])
            if src in files and (cut or len(grid_ok) < 16):
                table = pq.read_table(io.BytesIO(U.read_bytes(U.join(staging, src))))
                keep = {x[1] for x in samples}
                rows = [r for r in table.to_pylist() if r["sample_id"] in keep]
                grid_ok += rows[: 16 - len(grid_ok)]
                if cut:  # the last shard: rewrite it with the kept rows only
                    for r in rows:
                        r["scores"] = dict(r["scores"] or [])
                    pub.put(dst, table_bytes(rows_to_table(rows)))
            if src in files and not cut:
                moves.append((src, {**files[src], "path": dst}))
            for index, sid, split, gen, boxes in samples:
                for kind, ext in (("images", "png"), ("labels", "txt")):
                    p = f"yolo/{kind}/{split}/{sid}.{ext}"
                    if p in files:
                        moves.append((p, files[p]))
                splits[split] += 1
                per_generator[gen] += 1
                per_class_images.update({names[b[0]] for b in boxes})
                per_class_boxes.update(names[b[0]] for b in boxes)
                negatives += not boxes
                box_rows += [tuple(b) for b in boxes][: MAX_REPORT_BOXES - len(box_rows)]
        for f in rec["rejected_files"]:
            if len(grid_bad) < 8:
                t = pq.read_table(io.BytesIO(U.read_bytes(U.join(staging, f["path"]))),
                                  columns=["sample_id", "image", "boxes", "reasons"])
                grid_bad += [r for r in t.to_pylist() if r["image"]][: 8 - len(grid_bad)]
            moves.append((f["path"], {**f, "path": f"rejected/part-{rejected_part:05d}.parquet"}))
            rejected_part += 1
        pub.move(moves)
    if "yolo" in spec.output.formats:
        data_yaml = yolo_data_yaml(names, ["train", "val"] if splits["val"] else ["train"])
        if not splits["val"]:  # ultralytics needs a val split: point it at train, and say so
            data_yaml += b"val: images/train  # no sample fell in the val split\n"
        pub.put("yolo/data.yaml", data_yaml)
    reasons = sum((s.reasons for s in kept), Counter())
    rejected = sum(s.rejected for s in kept)
    processed = rejected + sum(s.accepted for s in kept)
    manifest = {
        "version": version,
        "spec_hash": spec_hash,
        "code_version": code_version(),
        "count": spec.count,
        "classes": names,
        "formats": list(spec.output.formats),
        "image": {"width": spec.image.width, "height": spec.image.height, "channels": spec.image.channels},
        "counts": {
            "accepted": spec.count,
            "rejected": rejected,
            "surplus": surplus,  # accepted but not needed (over-provisioning)
            "processed": processed,
            "pass_rate": round((spec.count + surplus) / processed, 4) if processed else None,
            "negatives": negatives,
            "images_per_class": {n: per_class_images[n] for n in names},
            "boxes_per_class": {n: per_class_boxes[n] for n in names},
            "per_generator": dict(per_generator),
            "splits": dict(splits),
        },
        "reject_reasons": dict(reasons.most_common()),
        "gate": gate,
        "rounds": state.get("rounds", 0),
        "duplicate_shards_skipped": len(dup),
        "seconds": round(seconds, 2),
        "spec": spec.to_yaml_dict(),
    }
    report_uri = grid_uri = None
    if o.report:
        html, grid_png = build_report(spec, manifest, box_rows, (grid_ok, grid_bad))
        pub.put("report.html", html)
        pub.put("grid.png", grid_png)
    uri = pub.commit(manifest)
    if o.report:
        report_uri, grid_uri = U.join(uri, "report.html"), U.join(uri, "grid.png")
    from factory.training.detector import publish_hook  # spec `retrain: {on: publish}` -> one Ray job

    return RunResult(spec.name, version, uri, pub.manifest, seconds, report_uri, grid_uri,
                     notes=publish_hook(spec, uri))


__all__ = ["Pool", "Progress", "RunError", "RunOptions", "RunResult", "ensure_ray", "plan_pools", "run_dataset",
           "select", "split_of"]
