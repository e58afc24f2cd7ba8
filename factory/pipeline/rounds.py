"""The driver's bookkeeping of a run: one small summary per written shard
(`Shard`), which plan indices are still missing, how big a top-up round is.

The driver keeps one `Shard` per written shard, never the samples: the full
record (every sample's id, split and boxes, every file's sha256) stays in
staging as `_shards/<key>.json` and publish reads it back one at a time, so the
driver's memory grows with the number of shards, not of samples.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

from factory.pipeline.options import Progress
from factory.storage import uri as U

MAX_ROUNDS = 10


@dataclass
class Shard:
    """The driver's view of one written shard (see the module docstring)."""

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


def read_record(staging: str, key: str) -> dict[str, Any]:
    return json.loads(U.read_bytes(U.join(staging, "_shards", f"{key}.json")))


def load_shards(staging: str) -> list[Shard]:
    prefix = U.join(staging, "_shards")
    return [Shard.of(read_record(staging, n[:-5])) for n in U.list_files(prefix) if n.endswith(".json")]


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


def top_reasons(shards: list[Shard]) -> str:
    c = sum((s.reasons for s in shards), Counter())
    return "reject reasons: " + (", ".join(f"{k} {v}" for k, v in c.most_common(5)) or "none")
