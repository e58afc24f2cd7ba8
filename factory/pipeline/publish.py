"""From written shards to a published version: pick whole shards in plan order,
leave out the samples the driver judged near-duplicates, and cut the last shard
(exactly `count` samples); let each format's sink put its
part of every chosen shard and its own layout files into the version, gather the
manifest's statistics and the report's samples, then seal and finish the
publication (storage/publish.py: resumable; the manifest is created last).

Everything here reads staging only; nothing moves until the plan is sealed, so a
crash before the seal is redone from the shard records, one after it is finished
by `--resume` without reading a shard again.
"""

from __future__ import annotations

import bisect
import io
from collections import Counter
from typing import Any

from factory.pipeline.options import RunError, RunOptions
from factory.pipeline.records import BoxTuple, SampleSummary
from factory.pipeline.report import GridSample, build_report
from factory.pipeline.rounds import Dedupe, Shard, read_record
from factory.spec import DatasetSpec
from factory.storage import uri as U
from factory.storage.lease import VersionLease
from factory.storage.manifest import ShardMade
from factory.storage.publish import Publication
from factory.storage.registry import code_version
from factory.storage.shards import sinks_for

MAX_REPORT_BOXES = 50_000  # the report's box histograms use the first this many boxes (plan order is random)


def select(shards: list[Shard], count: int,
           dedupe: Dedupe | None = None) -> tuple[list[tuple[Shard, int]], int, list[Shard]]:
    """Pick shards in plan order until `count` samples; the last one is cut. The
    samples `dedupe` judged near-duplicates are not counted.

    Returns (chosen: list of (shard, how many of its kept samples to take, in
    plan order)), the surplus count, and the shards whose plan indices repeat an
    earlier shard's (skipped)."""
    chosen: list[tuple[Shard, int]] = []
    dup: list[Shard] = []
    total = surplus = 0
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
        kept = s.accepted - (dedupe.in_runs(s.runs) if dedupe else 0)
        take = min(kept, max(0, count - total))
        surplus += kept - take
        total += take
        if take:
            chosen.append((s, take))
    return chosen, surplus, dup


def _overlaps(starts: list[int], stops: list[int], a: int, b: int) -> bool:
    k = bisect.bisect(starts, a)
    return (k > 0 and stops[k - 1] > a) or (k < len(starts) and starts[k] < b)


class _Stats:
    """The manifest's counts and the report's samples, gathered shard by shard."""

    def __init__(self, names: list[str]):
        self.names = names
        self.images: Counter[str] = Counter()  # class -> images with it
        self.boxes: Counter[str] = Counter()  # class -> boxes
        self.generators: Counter[str] = Counter()
        self.splits: Counter[str] = Counter()
        self.negatives = 0
        self.box_rows: list[BoxTuple] = []  # the report's, at most MAX_REPORT_BOXES
        self.grid_ok: list[GridSample] = []  # the report's accepted and rejected samples
        self.grid_bad: list[GridSample] = []
        self.gate: list[str] = []  # the scorers' names, as the actors built them
        self.made: list[ShardMade] = []  # the published shards in plan order, and the node that made each

    def add(self, samples: list[SampleSummary]) -> None:
        for s in samples:
            self.splits[s.split] += 1
            self.generators[s.generator] += 1
            self.images.update({self.names[b[0]] for b in s.boxes})
            self.boxes.update(self.names[b[0]] for b in s.boxes)
            self.negatives += not s.boxes
            self.box_rows += list(s.boxes)[: MAX_REPORT_BOXES - len(self.box_rows)]

    def sample_accepted(self, staging: str, path: str, keep: set[str]) -> None:
        import pyarrow.parquet as pq

        if len(self.grid_ok) < 16:
            table = pq.read_table(io.BytesIO(U.read_bytes(U.join(staging, path))), columns=["sample_id", "image", "boxes"])
            self.grid_ok += [r for r in table.to_pylist() if r["sample_id"] in keep][: 16 - len(self.grid_ok)]

    def sample_rejected(self, staging: str, path: str) -> None:
        import pyarrow.parquet as pq

        if len(self.grid_bad) < 8:
            t = pq.read_table(io.BytesIO(U.read_bytes(U.join(staging, path))), columns=["sample_id", "image", "boxes", "reasons"])
            self.grid_bad += [r for r in t.to_pylist() if r["image"]][: 8 - len(self.grid_bad)]


def publish_version(spec: DatasetSpec, lease: VersionLease, shards: list[Shard], dedupe: Dedupe,
                    o: RunOptions, seconds: float) -> tuple[dict[str, Any], bool]:
    """Plan, seal and finish the version; returns (the manifest, whether report.html
    and grid.png were written)."""
    chosen, surplus, dup = select(shards, spec.count, dedupe)
    if sum(t for _, t in chosen) != spec.count:
        raise RunError(f"internal: selected {sum(t for _, t in chosen)} samples, expected {spec.count}")
    skipped = {id(s) for s in dup}
    kept = sorted((s for s in shards if id(s) not in skipped), key=lambda s: s.key)
    pub = lease.publication()
    stats = _put_shards(spec, pub, lease.staging, kept, {s.key: t for s, t in chosen}, dedupe)
    manifest = _manifest(spec, lease, kept, dedupe, stats, surplus, len(dup), seconds)
    if o.report:
        html, grid_png = build_report(spec, {**manifest, "version": lease.version}, stats.box_rows,
                                      (stats.grid_ok, stats.grid_bad))
        pub.put("report.html", html)
        pub.put("grid.png", grid_png)
    pub.commit(manifest)
    return pub.manifest, o.report


def _put_shards(spec: DatasetSpec, pub: Publication, staging: str, kept: list[Shard], take: dict[str, int],
                dedupe: Dedupe) -> _Stats:
    """Every kept shard's files into the publication (the taken samples of the chosen
    ones, through each format's sink; the rejected parts of all), then the sinks'
    layout files; returns what was gathered on the way."""
    sinks = sinks_for(spec.output.formats)
    stats = _Stats(spec.class_names)
    rejected_part = 0
    for shard in kept:
        rec = read_record(staging, shard.key)
        stats.gate = stats.gate or list(rec.gate)
        if shard.key in take:
            samples = sorted((x for x in rec.samples if x.sample_id not in dedupe.duplicates),
                             key=lambda x: x.index)[: take[shard.key]]
            cut = len(samples) < len(rec.samples)
            ids = {x.sample_id for x in samples}
            for sink in sinks:
                own = [f for f in rec.files if f["path"].startswith(sink.format + "/")]
                sink.publish_shard(pub, staging, own, ids if cut else None, len(stats.made))  # its part number
                if sink.format == "parquet" and own:
                    stats.sample_accepted(staging, own[0]["path"], ids)
            stats.add(samples)
            stats.made.append(ShardMade(key=shard.key, node=rec.node, samples=len(samples)))
        for f in rec.rejected_files:
            stats.sample_rejected(staging, f["path"])
            pub.move([(f["path"], {**f, "path": f"rejected/part-{rejected_part:05d}.parquet"})])
            rejected_part += 1
    for sink in sinks:
        sink.finalize(pub, spec.class_names, stats.splits)
    return stats


def _manifest(spec: DatasetSpec, lease: VersionLease, kept: list[Shard], dedupe: Dedupe, stats: _Stats,
              surplus: int, duplicate_shards: int, seconds: float) -> dict[str, Any]:
    """What this publisher says about the version (storage/publish.py adds the rest)."""
    near_duplicates = sum(dedupe.in_runs(s.runs) for s in kept)
    rejected = sum(s.rejected for s in kept) + near_duplicates
    processed = sum(s.rejected + s.accepted for s in kept)
    return {
        "spec_hash": lease.spec_hash,
        "code_version": code_version(),
        "count": spec.count,
        "classes": spec.class_names,
        "formats": list(spec.output.formats),
        "image": {"width": spec.image.width, "height": spec.image.height, "channels": spec.image.channels},
        "counts": {
            "accepted": spec.count,
            "rejected": rejected,
            "surplus": surplus,  # accepted but not needed (over-provisioning)
            "processed": processed,
            "pass_rate": round((spec.count + surplus) / processed, 4) if processed else None,
            "negatives": stats.negatives,
            "images_per_class": {n: stats.images[n] for n in spec.class_names},
            "boxes_per_class": {n: stats.boxes[n] for n in spec.class_names},
            "per_generator": dict(stats.generators),
            "splits": dict(stats.splits),
        },
        "reject_reasons": dict((sum((s.reasons for s in kept), Counter())
                                + Counter({"near_duplicate": near_duplicates})).most_common()),
        "gate": stats.gate,
        "rounds": lease.rounds,
        "duplicate_shards_skipped": duplicate_shards,
        "shards": [m.model_dump(mode="json") for m in stats.made],
        "seconds": round(seconds, 2),
        "spec": spec.to_yaml_dict(),
    }
