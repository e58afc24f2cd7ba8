"""The driver's bookkeeping of a run: one small summary per written shard
(`Shard`), which plan indices are still missing, how big a top-up round is.

The driver keeps one `Shard` per written shard, never the samples: the full
record (every sample's id, split and boxes, every file's sha256) stays in
staging as `_shards/<key>.json` and publish reads it back one at a time, so the
driver's memory grows with the number of shards, not of samples, except for the
near-duplicate judge (`Dedupe`): one hash per kept sample.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterator

from factory.pipeline.options import Progress
from factory.pipeline.records import ShardRecord
from factory.quality.sanity import NearDuplicateIndex
from factory.storage import uri as U

MAX_ROUNDS = 10


@dataclass
class Shard:
    """The driver's view of one written shard (see the module docstring)."""

    key: str
    accepted: int
    rejected: int
    runs: list[tuple[int, int]]  # the plan indices it covers, as [start, stop) runs
    reasons: Counter[str]  # reject reason codes

    @classmethod
    def of(cls, rec: ShardRecord | dict[str, Any]) -> "Shard":
        rec = ShardRecord.of(rec)
        codes = Counter(code for r in rec.rejects for code in r.reasons)
        return cls(rec.key, len(rec.samples), len(rec.rejects), _runs(rec.indices), codes)


def _runs(sorted_indices: list[int]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for i in sorted_indices:
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


def missing(shards: list[Shard], until: int) -> list[tuple[int, int]]:
    """The plan indices below `until` that no shard covers, as runs."""
    out, pos = [], 0
    for a, b in sorted(r for s in shards for r in s.runs):
        if a > pos:
            out.append((pos, min(a, until)))
        pos = max(pos, b)
    if pos < until:
        out.append((pos, until))
    return [(a, b) for a, b in out if a < b]


class Dedupe:
    """Dataset-wide near-duplicate rejection, decided in plan order: an accepted
    sample is dropped when its perceptual hash is within `max_distance` bits of an
    earlier kept one. A sample is judged only once every plan index before it has
    been seen, so which samples survive never depends on which actor finished
    first. `kept` counts the kept samples of that judged prefix: the run stops when
    it reaches `count`, and publish takes exactly those.

    Memory: the index's 0.2-0.3 KB per kept sample (the one part of the driver
    that grows with samples, not shards: ~0.3 GB at a million), and the entries of
    shards that arrived ahead of a slower earlier one."""

    def __init__(self, max_distance: int):
        self.index = NearDuplicateIndex(max_distance) if max_distance >= 0 else None
        self.frontier = 0  # every plan index below it is judged
        self.kept = 0
        self.duplicates: dict[str, str] = {}  # sample id -> the kept sample it repeats
        self.duplicate_indices: list[int] = []  # their plan indices, ascending
        self._pending: list[tuple[int, str, int | None, bool]] = []  # heap: index, sample id, hash, accepted
        self._seen: set[int] = set()  # pending indices

    def in_runs(self, runs: list[tuple[int, int]]) -> int:
        """How many duplicates fall in these plan-index runs (a shard's)."""
        d = self.duplicate_indices
        return sum(bisect.bisect_left(d, b) - bisect.bisect_left(d, a) for a, b in runs)

    def add(self, rec: ShardRecord | dict[str, Any]) -> int:
        """Take one shard record; returns how many duplicates that uncovered (in any shard)."""
        rec = ShardRecord.of(rec)
        for s in rec.samples:
            self._push(s.index, s.sample_id, s.phash, True)
        for r in rec.rejects:
            self._push(r.index, r.sample_id, None, False)
        found = 0
        while self._pending and self._pending[0][0] == self.frontier:
            index, sid, h, accepted = heapq.heappop(self._pending)
            self._seen.discard(index)
            self.frontier += 1
            if not accepted:
                continue
            near = self.index.nearest(h) if self.index is not None and h is not None else None
            if near is None:
                self.kept += 1
                if self.index is not None and h is not None:
                    self.index.add(h, sid)
            else:
                self.duplicates[sid] = near[0]
                self.duplicate_indices.append(index)
                found += 1
        return found

    def _push(self, index: int, sid: str, h: int | None, accepted: bool) -> None:
        if index < self.frontier or index in self._seen:  # a shard written twice (a retried task)
            return
        self._seen.add(index)
        heapq.heappush(self._pending, (index, sid, h, accepted))


def read_record(staging: str, key: str) -> ShardRecord:
    return ShardRecord.of(U.read_bytes(U.join(staging, "_shards", f"{key}.json")))


def has_records(staging: str) -> bool:
    """Whether a shard was written: something a resumed run would not make again."""
    return bool(U.list_files(U.join(staging, "_shards")))


def iter_records(staging: str) -> Iterator[ShardRecord]:
    """The written shard records, one at a time (a resumed run's starting point)."""
    for name in U.list_files(U.join(staging, "_shards")):
        if name.endswith(".json"):
            yield read_record(staging, name[:-5])


def tally(prog: Progress, shards: list[Shard]) -> None:
    for s in shards:
        prog.accepted += s.accepted
        prog.rejected += s.rejected
        prog.processed += s.accepted + s.rejected


def round_size(count: int, prog: Progress, overprovision: float) -> int:
    need = count - prog.accepted
    if not prog.processed:
        return math.ceil(count * overprovision)
    rate = max(prog.accepted / prog.processed, 0.02)
    return max(8, math.ceil(need / rate * 1.1))


def top_reasons(shards: list[Shard], duplicates: int = 0) -> str:
    c = sum((s.reasons for s in shards), Counter()) + Counter({"near_duplicate": duplicates})
    return "reject reasons: " + (", ".join(f"{k} {v}" for k, v in c.most_common(5)) or "none")
