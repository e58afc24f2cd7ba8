"""`ShardRecord`: what a written shard says about itself, the one shape the
actors write (`_shards/<key>.json`, and the text they hand the driver) and the
driver and publish read back.

The JSON form keeps one compact row per sample (`[index, sample_id, split,
generator, [[class_id, x1, y1, x2, y2], ...], phash]`) and per reject (`[index,
sample_id, [reason codes]]`): a shard record holds every sample of its shard,
and staging may hold records written before this module existed (a resumed
run reads them). Only `to_json`/`from_json` here know those positions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from factory.storage.shards import FileEntry, SampleRow

BoxTuple = tuple[int, int, int, int, int]  # class_id, x1, y1, x2, y2 (pixels)


@dataclass(frozen=True)
class SampleSummary:
    """One accepted sample of a shard: enough to count, split and dedupe it."""

    index: int  # plan index
    sample_id: str
    split: str
    generator: str
    boxes: tuple[BoxTuple, ...]
    phash: int | None = None  # perceptual hash (the near-duplicate judge's input), None without one

    def to_json(self) -> list[Any]:
        return [self.index, self.sample_id, self.split, self.generator, [list(b) for b in self.boxes], self.phash]

    @classmethod
    def from_json(cls, row: Sequence[Any]) -> "SampleSummary":
        index, sample_id, split, generator, boxes, *rest = row
        return cls(index, sample_id, split, generator, tuple(tuple(b) for b in boxes), rest[0] if rest else None)

    @classmethod
    def of_row(cls, row: SampleRow, phash: int | None) -> "SampleSummary":
        """From a shard row (stages.py `ScoreWriteStage.rows`)."""
        return cls(row["item_index"], row["sample_id"], row["split"], row["generator"],
                   tuple((b["class_id"], b["x1"], b["y1"], b["x2"], b["y2"]) for b in row["boxes"]), phash)


@dataclass(frozen=True)
class RejectSummary:
    """One rejected sample of a shard, with its reason codes."""

    index: int
    sample_id: str
    reasons: tuple[str, ...]

    def to_json(self) -> list[Any]:
        return [self.index, self.sample_id, list(self.reasons)]

    @classmethod
    def from_json(cls, row: Sequence[Any]) -> "RejectSummary":
        index, sample_id, reasons = row
        return cls(index, sample_id, tuple(reasons))


@dataclass(frozen=True)
class ShardRecord:
    """One written shard: its files (staging paths with sha256 and bytes), its
    accepted and rejected samples, the scorers that judged them and the Ray node
    that wrote it. Written LAST, after the shard's files."""

    key: str
    files: tuple[FileEntry, ...] = ()  # the format sinks' files (in staging)
    rejected_files: tuple[FileEntry, ...] = ()
    samples: tuple[SampleSummary, ...] = ()
    rejects: tuple[RejectSummary, ...] = ()
    gate: tuple[str, ...] = ()  # the scorers that judged these samples
    node: str | None = None  # the Ray node whose actor wrote this shard

    @property
    def indices(self) -> list[int]:
        """Every plan index the shard covers (accepted and rejected), ascending."""
        return sorted([s.index for s in self.samples] + [r.index for r in self.rejects])

    def to_data(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "files": list(self.files),
            "rejected_files": list(self.rejected_files),
            "samples": [s.to_json() for s in self.samples],
            "rejects": [r.to_json() for r in self.rejects],
            "gate": list(self.gate),
            "node": self.node,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_data())

    @classmethod
    def from_data(cls, d: Mapping[str, Any]) -> "ShardRecord":
        return cls(
            key=d["key"],
            files=tuple(d.get("files", ())),
            rejected_files=tuple(d.get("rejected_files", ())),
            samples=tuple(SampleSummary.from_json(s) for s in d.get("samples", ())),
            rejects=tuple(RejectSummary.from_json(r) for r in d.get("rejects", ())),
            gate=tuple(d.get("gate") or ()),
            node=d.get("node"),
        )

    @classmethod
    def of(cls, rec: "ShardRecord | Mapping[str, Any] | str | bytes") -> "ShardRecord":
        """A record from itself, its JSON data, or its JSON text."""
        if isinstance(rec, ShardRecord):
            return rec
        if isinstance(rec, (str, bytes)):
            return cls.from_data(json.loads(rec))
        return cls.from_data(rec)
