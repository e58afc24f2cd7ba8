"""`run_dataset(spec)`: the whole job, from a spec to a published version.

The driver plans ranges of plan indices and keeps one small summary per written
shard (rounds.py); everything heavy (planning items, generating, scoring,
encoding, writing) runs in the Ray Data graph (graph.py), streaming. Rounds: the
first runs `ceil(count * overprovision)` items and stops as soon as `count` are
kept (accepted by the gate and no near-duplicate of an earlier sample in plan
order: rounds.py `Dedupe`); if too few were kept, a top-up round plans the next
items, sized by the pass rate seen so far. Publishing (publish.py) picks whole shards
in plan order and cuts the last one, so exactly `count` are published.

A run first claims its version: it creates the run lock `_run.json` in the
staging prefix conditionally, so of two runs of one version exactly one goes on;
the other stops there, having written nothing. The lock holds how far the plan
went; shard records say which plan indices are done. `--resume` redoes only the
missing indices (or, when the publish was already sealed, only finishes it);
`--restart` discards the version's staging first. A run that fails before its
first shard leaves no staging behind.
"""

from __future__ import annotations

import gc
import logging
import time
import uuid
from typing import Any, Callable

from factory.generators.checks import check_spec
from factory.pipeline.graph import Pool, plan_pools, run_round
from factory.pipeline.options import Progress, RunError, RunOptions, RunResult
from factory.pipeline.publish import publish_version, select
from factory.pipeline.records import ShardRecord
from factory.pipeline.rounds import MAX_ROUNDS, Dedupe, Shard, iter_records, missing, round_size, tally, top_reasons
from factory.pipeline.stages import split_of
from factory.ray_runtime import ensure_ray
from factory.spec import DatasetSpec
from factory.storage import uri as U
from factory.storage.publish import finish
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
    spec_hash = spec.spec_hash()
    version = o.version or spec.version or (o.resume and _interrupted(reg, spec.name, spec_hash)) \
        or reg.next_version(spec.name)
    if reg.is_published(spec.name, version) and reg.is_sealed(spec.name, version):
        manifest = finish(reg, spec.name, version)  # a crash hit the cleanup after the commit: clean up
        if o.resume:  # resuming that run: it is done now
            reported = U.exists(U.join(reg.version_uri(spec.name, version), "report.html"))
            result = _result(spec, reg, version, o, manifest, reported, time.time() - t0)
            result.notes.insert(0, f"the interrupted run had published {spec.name}@{version} already; "
                                   "its staging is cleaned up now (no new version)")
            return result
    reg.refuse_published(spec.name, version)
    if o.restart:
        reg.discard_staging(spec.name, version)
    state, fresh = _claim(reg, spec, version, spec_hash, o.resume)
    if reg.is_sealed(spec.name, version):  # a crash hit publish after its plan was sealed: finish it
        manifest = finish(reg, spec.name, version)
        reported = U.exists(U.join(reg.version_uri(spec.name, version), "report.html"))
        return _result(spec, reg, version, o, manifest, reported, time.time() - t0)
    staging = reg.staging_uri(spec.name, version)
    run = _Run(spec, Dedupe(spec.quality.duplicate_distance))
    try:
        for rec in [] if fresh else iter_records(staging):
            run.take(rec)
        resumed = len(run.shards)
        prog = _generate(spec, o, reg, version, state, run, on_progress)
    except BaseException:
        if not U.list_files(U.join(staging, "_shards")):  # nothing worth resuming: leave nothing behind
            reg.discard_staging(spec.name, version)
        raise
    prog.phase = "publishing"
    if on_progress:
        on_progress(prog)
    seconds = time.time() - t0
    uri, manifest, reported = publish_version(spec, reg, version, run.shards, run.dedupe, state, o, spec_hash, seconds)
    result = _result(spec, reg, version, o, manifest, reported, seconds)
    result.resumed_shards = resumed
    return result


def _interrupted(reg: Registry, name: str, spec_hash: str) -> int | None:
    """`--resume` without a pinned version: the newest version an interrupted run of
    this same spec left staging for (published already, or not), else None."""
    for version in reversed(reg.staged(name, published=True)):
        state = reg.run_state(name, version)
        if state and state.get("spec_hash") == spec_hash:
            return version
    return None


def _result(spec: DatasetSpec, reg: Registry, version: int, o: RunOptions, manifest: dict[str, Any],
            reported: bool, seconds: float) -> RunResult:
    """The result, after the post-publish callback (e.g. the detector retrain trigger) ran."""
    uri = reg.version_uri(spec.name, version)
    notes = list(o.on_publish(spec, uri) or []) if o.on_publish else []
    return RunResult(spec.name, version, uri, manifest, seconds, U.join(uri, "report.html") if reported else None,
                     U.join(uri, "grid.png") if reported else None, notes=notes)


def _claim(reg: Registry, spec: DatasetSpec, version: int, spec_hash: str, resume: bool) -> tuple[dict[str, Any], bool]:
    """(run state, whether this run created it). Creating the lock is atomic, so a
    second run of the same version stops here without writing anything."""
    staging = reg.staging_uri(spec.name, version)
    state = {"spec_hash": spec_hash, "name": spec.name, "version": version, "planned_until": 0, "rounds": 0,
             "started_at": time.time(), "run_id": uuid.uuid4().hex}
    if reg.claim(spec.name, version, state):
        if reg.is_published(spec.name, version):  # a run that published just before us held the lock until then
            reg.discard_staging(spec.name, version)
            reg.refuse_published(spec.name, version)
        for name in U.list_files(staging):  # leftovers without a lock (a cleanup cut short): not ours
            if name != "_run.json":
                U.delete(U.join(staging, name))
        # files of an unpublished version (a publish crashed, then --restart): we hold the lock, so no one
        # else can be publishing it, and it has no manifest (checked after taking the lock)
        U.delete_prefix(reg.version_uri(spec.name, version))
        return state, True
    held = reg.run_state(spec.name, version)
    if held is None:  # the holder finished between our two calls
        reg.refuse_published(spec.name, version)
        return _claim(reg, spec, version, spec_hash, resume)
    if not resume:
        raise RunError(
            f"{staging}: another run of {spec.name}@{version} holds this version (running now, or interrupted); "
            "pass --resume to continue an interrupted one, or --restart to discard its staging and start over"
        )
    if held.get("spec_hash") != spec_hash:
        raise RunError(
            f"{staging}: --resume with a different spec (staged hash {str(held.get('spec_hash'))[:12]}, "
            f"this spec {spec_hash[:12]}); use a new --version, --restart, or the original spec"
        )
    return held, False


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


def _generate(spec: DatasetSpec, o: RunOptions, reg: Registry, version: int, state: dict[str, Any],
              run: _Run, on_progress: Callable[[Progress], None] | None) -> Progress:
    """Rounds until `count` samples are kept; `run` grows in place."""
    staging = reg.staging_uri(spec.name, version)
    spec_hash = state["spec_hash"]
    prog = run.prog
    if on_progress:
        on_progress(prog)
    if run.done < spec.count:
        ensure_ray(o.address)
    while run.done < spec.count:
        prog.round += 1
        if prog.round > MAX_ROUNDS:
            raise RunError(f"{run.done}/{spec.count} kept after {MAX_ROUNDS} rounds; {run.reasons()}")
        todo = missing(run.shards, state["planned_until"])
        if not todo:  # the planned range is used up: plan more (top-up)
            if prog.processed and not prog.accepted and prog.processed >= 8:
                raise RunError(f"the quality gate rejected all {prog.processed} samples; {run.reasons()}")
            n = round_size(spec.count, prog, o.overprovision)
            todo = [(state["planned_until"], state["planned_until"] + n)]
            state["planned_until"] += n
            state["rounds"] = prog.round
            reg.save_run_state(spec.name, version, state)
        log.info("round %d: %d items", prog.round, sum(b - a for a, b in todo))
        try:
            for rec in run_round(spec, o, staging, spec_hash, todo):
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
