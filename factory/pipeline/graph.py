"""The Ray Data graph of one round: ranges of plan indices in, shard records out.

A CPU generator's actor plans, generates, scores, PNG-encodes and writes its
ranges (one range = one shard); a GPU generator hands raw images to a CPU (or
fractional-GPU) scoring pool. `plan_pools` decides which, from the cluster's
resources; `run_round` streams the records back to the driver.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterator

from factory.core import GeneratorRef
from factory.generators.base import generator_class
from factory.pipeline.options import RunOptions
from factory.pipeline.records import ShardRecord
from factory.pipeline.stages import GenerateStage, ScoreWriteStage, ShardTarget
from factory.planning import generator_refs
from factory.quality import gate_gpus
from factory.spec import DatasetSpec
from factory.storage import uri as U

log = logging.getLogger("factory.pipeline")


def ranges(todo: list[tuple[int, int]], spec: DatasetSpec, workers: int, max_bytes: int) -> list[dict[str, int]]:
    """Runs of plan indices cut into ranges (one range = one shard) of at most
    `output.shard_size` items and at most `max_bytes` of raw pixels, so what an
    actor holds before it writes is bounded whatever shard_size says (PNG bytes
    are fewer than raw ones; after a GPU generator the raw images themselves
    cross to the scoring pool, a range at a time). Smaller for small rounds, so
    that every worker gets a few."""
    per_image = spec.image.width * spec.image.height * spec.image.channels
    size = max(1, min(spec.output.shard_size, max_bytes // per_image))
    chunk = max(1, min(size, sum(b - a for a, b in todo) // (4 * workers)))
    return [{"start": i, "stop": min(i + chunk, b)} for a, b in todo for i in range(a, b, chunk)]


def _shard_target(staging: str, spec_hash: str, spec: DatasetSpec) -> ShardTarget:
    """What the writing actors get: where to write, and the S3 endpoint and region
    (not secrets). Credentials never travel as task or actor arguments (they
    would sit in Ray's object store): workers resolve them from their own
    environment (AWS_* variables, files, instance roles) or from a `runtime_env`
    the cluster operator sets."""
    c = U.storage_config()
    return ShardTarget(staging, spec_hash, tuple(spec.output.formats),
                       U.StorageConfig(endpoint_url=U.s3_endpoint(), region=c.region))


@dataclass(frozen=True)
class Pool:
    """One generator's actor pool, and where its samples are scored and written."""

    ref: GeneratorRef  # the first spec generator of its key (equal keys share a pool)
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

    first: dict[str, GeneratorRef] = {}  # key -> its first spec generator with a weight
    for ref in generator_refs(spec):
        if spec.generators[ref.index].weight > 0:
            first.setdefault(ref.key, ref)
    refs = list(first.values())
    base = []
    for ref in refs:
        gpu = generator_class(ref.kind).wants_gpu and gpus >= 1
        base.append((ref, gpu, actors or (int(gpus) if gpu else max(1, int(cpus) // len(refs)))))
    free_gpus = gpus - sum(n for _, gpu, n in base if gpu)
    want = gate_gpus(spec)
    score_gpus = want if 0 < want <= free_gpus else 0.0
    if want and gpus and not score_gpus:
        log.info("the anomaly gate scores on CPU: the generators hold every GPU (lower --actors to share)")
    # CPU scoring after a GPU generator is light next to generating: those pools
    # reserve no CPU and stay small, so Ray does not start a process per block
    helpers = max(1, sum(n for *_, n in base) // 2)
    pools = []
    for ref, gpu, n in base:
        if score_gpus:
            pools.append(Pool(ref, n, gpu, max(1, min(helpers, int(free_gpus // score_gpus))), score_gpus))
        else:
            pools.append(Pool(ref, n, gpu, helpers if gpu else 0))
    return pools


def run_round(spec: DatasetSpec, o: RunOptions, staging: str, spec_hash: str,
              todo: list[tuple[int, int]]) -> Iterator[ShardRecord]:
    """Yield shard records as the streaming job writes them; closing the generator
    (the caller stops at `count`) shuts the executor down."""
    import ray
    from ray.data.block import BlockAccessor

    res = ray.cluster_resources()
    pools = plan_pools(spec, float(res.get("CPU", 1)), float(res.get("GPU", 0)), o.actors)
    target = _shard_target(staging, spec_hash, spec)
    cut = ranges(todo, spec, sum(p.actors for p in pools), o.shard_max_bytes)
    # one input block per range: the unit of work the generator actors share out
    items = ray.data.from_items(cut, override_num_blocks=max(1, min(len(cut), 5000)))
    outputs = []
    for p in pools:
        ds = items.map_batches(
            GenerateStage, fn_constructor_kwargs={"spec": spec, "ref": p.ref, "device": "cuda" if p.gpu else "cpu",
                                                  "retries": o.retries, "target": None if p.score_actors else target,
                                                  "batch_size": o.batch_size},
            batch_size=1, compute=ray.data.ActorPoolStrategy(size=p.actors),
            num_gpus=1 if p.gpu else None, num_cpus=None if p.gpu else 1,  # (None: not asked)
        )
        if p.score_actors:
            ds = ds.map_batches(
                ScoreWriteStage, fn_constructor_kwargs={"spec": spec, "target": target,
                                                        "device": "cuda" if p.score_gpus else "cpu"},
                batch_size=None, num_cpus=0, num_gpus=p.score_gpus or None,
                compute=ray.data.ActorPoolStrategy(min_size=1, max_size=p.score_actors),
            )
        outputs.append(ds)
    ds = outputs[0] if len(outputs) == 1 else outputs[0].union(*outputs[1:])
    # each output block as soon as its task ends (iter_rows' batching + prefetch delivered them in bursts)
    it = iter(ds.iter_internal_ref_bundles())
    try:
        for bundle in it:
            for ref in bundle.block_refs:
                for text in BlockAccessor.for_block(ray.get(ref)).to_arrow().column("record").to_pylist():
                    yield ShardRecord.of(text)
    finally:
        close = getattr(it, "close", None)
        if close:
            close()
