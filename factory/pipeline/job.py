"""`run_dataset(spec)`: the whole job, from a spec to a published version.

The driver plans ranges of plan indices and keeps one small summary per written
shard (rounds.py); everything heavy (planning items, generating, scoring,
encoding, writing) runs in the Ray Data graph (graph.py), streaming. Rounds: the
first runs `ceil(count * overprovision)` items and stops as soon as `count` are
kept (accepted by the gate and no near-duplicate of an earlier sample in plan
order: rounds.py `Dedupe`); if too few were kept, a top-up round plans the next
items, sized by the pass rate seen so far. Publishing (publish.py) picks whole shards
in plan order and cuts the last one, so exactly `count` are published.

A run first takes its version's lease (storage/lease.py: the run lock, which
holds how far the plan went); shard records say which plan indices are done.
`--resume` redoes only the missing indices (or, when the publish was already
sealed, the lease only finishes it); `--restart` discards the version's staging
first. A run that fails before its first shard leaves no staging behind.
"""

from __future__ import annotations

import gc
import logging
import time
from typing import Any, Callable

from factory.generators.checks import check_spec
from factory.pipeline.graph import Pool, plan_pools, run_round
from factory.pipeline.options import Progress, RunError, RunOptions, RunResult
from factory.pipeline.publish import publish_version, select
from factory.pipeline.records import ShardRecord
from factory.pipeline.rounds import (
    MAX_ROUNDS,
    Dedupe,
    Shard,
    has_records,
    iter_records,
    missing,
    round_size,
    tally,
    top_reasons,
)
from factory.pipeline.stages import split_of
from factory.ray_runtime import ensure_ray
from factory.spec import DatasetSpec
from factory.storage import uri as U
from factory.storage.lease import Finished, LeaseRefused, VersionLease
from factory.storage.registry import Registry

log = logging.getLogger("factory.pipeline")


def run_dataset(spec: DatasetSpec, options: RunOptions | None = None,
                on_progress: Callable[[Progress], None] | None = None) -> RunResult:
    o = options or RunOptions()
    t0 = time.time()
    check_spec(spec)  # the generator families' own checks (params, classes, references)
    root = U.to_uri(o.out or spec.output.uri)
    U.check_root(root)
    reg = Registry(root)
    try:
        taken = VersionLease.take(reg, spec.name, spec.spec_hash(), o.version or spec.version,
                                  resume=o.resume, restart=o.restart)
    except LeaseRefused as e:
        raise RunError(str(e)) from None
    if isinstance(taken, Finished):  # an interrupted run's sealed publish, finished now
        result = _result(spec, reg, taken.version, o, taken.manifest, time.time() - t0)
        if taken.committed_before:
            result.notes.insert(0, f"the interrupted run had published {spec.name}@{taken.version} already; "
                                   "its staging is cleaned up now (no new version)")
        return result
    lease = taken
    run = _Run(spec, Dedupe(spec.quality.duplicate_distance))
    try:
        for rec in [] if lease.fresh else iter_records(lease.staging):
            run.take(rec)
        resumed = len(run.shards)
        prog = _generate(spec, o, lease, run, on_progress)
    except BaseException:
        lease.give_up(resumable=has_records(lease.staging))
        raise
    prog.phase = "publishing"
    if on_progress:
        on_progress(prog)
    seconds = time.time() - t0
    manifest, reported = publish_version(spec, lease, run.shards, run.dedupe, o, seconds)
    result = _result(spec, reg, lease.version, o, manifest, seconds, reported)
    result.resumed_shards = resumed
    return result


def _result(spec: DatasetSpec, reg: Registry, version: int, o: RunOptions, manifest: dict[str, Any],
            seconds: float, reported: bool | None = None) -> RunResult:
    """The result, after the post-publish callback (e.g. the detector retrain trigger)
    ran; `reported` None: look whether the version has its report."""
    uri = reg.version_uri(spec.name, version)
    if reported is None:
        reported = U.exists(U.join(uri, "report.html"))
    notes = list(o.on_publish(spec, uri) or []) if o.on_publish else []
    return RunResult(spec.name, version, uri, manifest, seconds, U.join(uri, "report.html") if reported else None,
                     U.join(uri, "grid.png") if reported else None, notes=notes)


class _Run:
    """The shards written so far (the driver's summaries) and the plan-order
    near-duplicate judge, with the progress the user sees."""

    def __init__(self, spec: DatasetSpec, dedupe: Dedupe):
        self.shards: list[Shard] = []
        self.dedupe = dedupe
        self.prog = Progress(count=spec.count)

    def take(self, rec: ShardRecord | dict[str, Any]) -> None:
        rec = ShardRecord.of(rec)
        self.shards.append(Shard.of(rec))
        tally(self.prog, self.shards[-1:])
        dups = self.dedupe.add(rec)
        self.prog.accepted -= dups
        self.prog.rejected += dups

    def reasons(self) -> str:
        return top_reasons(self.shards, len(self.dedupe.duplicates))

    @property
    def done(self) -> int:
        """Samples kept in the judged plan-order prefix: what publish can take."""
        return self.dedupe.kept


def _generate(spec: DatasetSpec, o: RunOptions, lease: VersionLease, run: _Run,
              on_progress: Callable[[Progress], None] | None) -> Progress:
    """Rounds until `count` samples are kept; `run` grows in place."""
    prog = run.prog
    if on_progress:
        on_progress(prog)
    if run.done < spec.count:
        ensure_ray(o.address)
    while run.done < spec.count:
        prog.round += 1
        if prog.round > MAX_ROUNDS:
            raise RunError(f"{run.done}/{spec.count} kept after {MAX_ROUNDS} rounds; {run.reasons()}")
        todo = missing(run.shards, lease.planned_until)
        if not todo:  # the planned range is used up: plan more (top-up)
            if prog.processed and not prog.accepted and prog.processed >= 8:
                raise RunError(f"the quality gate rejected all {prog.processed} samples; {run.reasons()}")
            todo = [lease.plan(round_size(spec.count, prog, o.overprovision), prog.round)]
        log.info("round %d: %d items", prog.round, sum(b - a for a, b in todo))
        try:
            for rec in run_round(spec, o, lease.staging, lease.spec_hash, todo):
                run.take(rec)
                if on_progress:
                    on_progress(prog)
                if run.done >= spec.count:
                    break
        finally:
            # Ray Data lets a finished pool's actors go by dropping its handles (it kills
            # none), and its executor keeps those in reference cycles: until the cycle
            # collector runs, the generator actors stay alive holding their CPUs/GPUs, and
            # what this process starts next on Ray (a Train run after a publish) waits for them.
            gc.collect()
    return prog


__all__ = ["Pool", "Progress", "RunError", "RunOptions", "RunResult", "plan_pools", "run_dataset",
           "select", "split_of"]
