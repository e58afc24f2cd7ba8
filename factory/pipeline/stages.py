"""The stages of the Ray Data job, callable classes that `map_batches` runs. A
range of plan indices is the unit of work and becomes one shard:

  CPU generator, one actor:  range --plan, generate, score, PNG, write--> shard record
  GPU generator:             range --generate (GPU actor)--> raw image columns
                             --score, PNG, write (CPU actor)--> shard record

Inside an actor samples stay Python objects; only the GPU hop turns them into
flat columns (ints, strings, one uint8 image tensor), so nothing needs custom
serialization. The driver only ever sees shard records.
"""

from __future__ import annotations

import json
import math
import time
import traceback
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Sequence

import numpy as np

from factory.core import Box, GeneratorRef, Reason, Sample, WorkItem
from factory.formats import box_polygon, mask_polygons
from factory.generators.base import load_generator
from factory.pipeline.records import RejectSummary, SampleSummary, ShardRecord
from factory.planning import iter_plan
from factory.quality import build_scorers
from factory.quality.base import Verdict, score_all
from factory.quality.sanity import phash_of
from factory.spec import DatasetSpec
from factory.storage import uri as U
from factory.storage.shards import REJECT_SCHEMA, FileEntry, ParquetSink, SampleRow, sinks_for
from factory.viz import png_bytes

VAL_EVERY = 10  # split_of's default val share is 1 / VAL_EVERY: plan index % 10 == 9 -> the YOLO "val" split

# what generating one item gave: the sample, or None and the error that stopped it
Result = tuple[WorkItem, "Sample | None", str]


class ShardRow(SampleRow):
    """A scored sample as a shard's writer takes it: the sinks' row (`reasons` and
    `error` always set; no reasons = accepted) and its reasons' codes (the record's)."""

    reason_codes: list[str]


def split_of(index: int, val_fraction: float = 1 / VAL_EVERY) -> str:
    """The split of plan item `index`: `val` when floor((index + 1) * f) steps up, so
    every run of plan indices holds its share f of val items, spread evenly (f = 0.1:
    index % 10 == 9, as before `output.val_fraction` existed; f = 0: no val split)."""
    f = _exact(val_fraction)
    return "val" if math.floor((index + 1) * f) > math.floor(index * f) else "train"


@lru_cache(maxsize=8)  # called per sample with one value per run
def _exact(fraction: float) -> Fraction:
    return Fraction(fraction).limit_denominator(1_000_000)  # 0.1 is 1/10, not 0.1000000000000000055


@dataclass(frozen=True)
class ShardTarget:
    """Where and how shards are written (handed to the actors that write them)."""

    staging: str
    spec_hash: str
    formats: tuple[str, ...]
    storage: U.StorageConfig | None = None  # the driver's: endpoint and region only, never credentials


# --- stage 1: plan ranges -> generate (-> score -> write) -----------------------
class GenerateStage:
    """Holds one loaded generator per actor and makes the planned items of each
    range that are its own, those whose ref has its `ref.key` (a spec with several
    generators runs one pool per key over the same ranges). A failing call is retried, then retried item
    by item; an item that still fails becomes a reject with its error, never a
    lost row.

    With a `target` (CPU generators) the actor also scores, PNG-encodes and writes
    each range as one shard, `batch_size` items at a time, so an image never leaves
    the process that drew it and only PNG bytes are held until the shard is
    written. Without one (GPU generators) it returns raw image columns for a CPU
    `ScoreWriteStage` pool, so the GPU never waits for PNG encoding."""

    def __init__(self, spec: DatasetSpec, ref: GeneratorRef, device: str, retries: int, target: ShardTarget | None = None,
                 batch_size: int = 64):

        self.spec, self.ref, self.retries, self.batch_size = spec, ref, retries, max(1, batch_size)
        self.generator = load_generator(ref, device=device)
        self.finish = ScoreWriteStage(spec, target) if target else None

    def _try(self, items: list[WorkItem]) -> tuple[list[Sample] | None, str | None]:
        """(the samples, None), or (None, the last error) once every try failed."""
        err = None
        for attempt in range(1 + self.retries):
            try:
                samples = self.generator.generate(items)
                if len(samples) != len(items):
                    raise RuntimeError(f"generator returned {len(samples)} samples for {len(items)} items")
                return samples, None
            except Exception as e:  # noqa: BLE001 - recorded with the sample, not swallowed
                err = f"{type(e).__name__}: {e}"
                if attempt < self.retries:
                    time.sleep(min(0.1 * 2**attempt, 2.0))
        return None, err

    def generate(self, items: list[WorkItem]) -> list[Result]:
        """One call for all `items`, then one call per item if that fails."""
        if not items:
            return []
        samples, err = self._try(items)
        out: list[Result]
        if samples is not None:
            out = [(it, s, "") for it, s in zip(items, samples)]
        else:  # isolate the bad items
            out = []
            for it in items:
                one, e = self._try([it])
                out.append((it, one[0], "") if one else (it, None, e or err or "unknown error"))
        want = (self.spec.image.height, self.spec.image.width, self.spec.image.channels)
        return [(it, None, f"generator returned an image of shape {np.shape(s.image)}, expected {want}")
                if s is not None and np.shape(s.image) != want else (it, s, e) for it, s, e in out]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        records, raw = [], []
        for a, b in zip(batch["start"], batch["stop"]):
            items = [w for w in iter_plan(self.spec, int(a), int(b - a)) if w.generator_ref.key == self.ref.key]
            if not items:
                continue
            if self.finish is None:
                raw.append(to_columns(self.generate(items), int(a), self.spec))
                continue
            bs, rows = self.batch_size, []
            for k in range(0, len(items), bs):
                rows += self.finish.rows(self.generate(items[k: k + bs]))
            records.append(self.finish.write(rows))
        if self.finish is None:
            return {k: np.concatenate([r[k] for r in raw]) for k in raw[0]} if raw else to_columns([], 0, self.spec)
        return {"record": np.array(records, object)}


def to_columns(results: Sequence[Result], shard: int, spec: DatasetSpec) -> dict[str, np.ndarray]:
    """Results -> flat columns for the hop from a GPU generator to its scoring pool."""
    H, W, C = spec.image.height, spec.image.width, spec.image.channels
    images = np.zeros((len(results), H, W, C), np.uint8)
    masks = np.zeros((len(results), H, W), np.uint8)
    backgrounds = np.zeros((len(results), H, W, C), np.uint8)  # the exact tests' (quality/outside.py)
    for i, (_, s, _) in enumerate(results):
        if s is not None:
            images[i] = s.image
            if s.mask is not None:
                masks[i] = s.mask
            if s.background is not None:
                backgrounds[i] = s.background
    return {
        "shard": np.full(len(results), shard, np.int64),
        "item": np.array([json.dumps(it.to_row()) for it, _, _ in results], object),
        "image": images,
        "mask": masks,
        "has_mask": np.array([s is not None and s.mask is not None for _, s, _ in results], bool),
        "background": backgrounds,
        "has_background": np.array([s is not None and s.background is not None for _, s, _ in results], bool),
        "blend_px": np.array([s.blend_px if s is not None else 0 for _, s, _ in results], np.int64),
        "boxes": np.array([json.dumps([b.to_dict() for b in s.boxes]) if s else "[]" for _, s, _ in results], object),
        "meta": np.array([json.dumps({"checkpoint": str((s.meta or {}).get("checkpoint") or ""),
                                      "provenance": (s.meta or {}).get("provenance") or {}}) if s else "{}"
                          for _, s, _ in results], object),
        "error": np.array([e for _, _, e in results], object),
    }


def from_columns(batch: dict[str, np.ndarray]) -> list[Result]:
    out: list[Result] = []
    for i in range(len(batch["item"])):
        item = WorkItem.from_row(json.loads(batch["item"][i]))
        if batch["error"][i]:
            out.append((item, None, str(batch["error"][i])))
            continue
        boxes = [Box.from_dict(b) for b in json.loads(batch["boxes"][i])]
        mask = batch["mask"][i] if batch["has_mask"][i] else None
        background = batch["background"][i] if batch["has_background"][i] else None
        out.append((item, Sample(item, batch["image"][i], boxes, mask, json.loads(batch["meta"][i]), background,
                                 int(batch["blend_px"][i])), ""))
    return out


# --- stage 2: score + write -------------------------------------------------------
class ScoreWriteStage:
    """Runs every Scorer (basic checks + the quality gate when present), encodes the
    PNG kept for accepted and rejected samples alike, and writes one shard per
    range. In the generator's actor for CPU generators; a pool of its own after a
    GPU generator (or when the gate's scorers get a GPU: `device="cuda"`)."""

    def __init__(self, spec: DatasetSpec, target: ShardTarget, device: str = "cpu"):

        self.scorers = build_scorers(spec, device=device)
        self.target = target
        self.val_fraction = spec.output.val_fraction
        if target.storage is not None:  # the driver's endpoint; credentials come from this worker's environment
            from factory.storage import uri as U

            U.set_storage_config(target.storage)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        shards = batch["shard"]
        records = [self.write(self.rows(from_columns({k: v[shards == s] for k, v in batch.items()})))
                   for s in np.unique(shards)]
        return {"record": np.array(records, object)}

    def rows(self, results: Sequence[Result]) -> list[ShardRow]:
        """Score the samples -> shard rows (PNG bytes; `reasons` empty = accepted)."""

        made = [s for _, s, _ in results if s is not None]
        verdicts: list[Verdict] = [Verdict() for _ in made]
        if made:
            try:
                verdicts = score_all(self.scorers, made)
            except Exception as e:  # noqa: BLE001 - a broken scorer rejects, with its error, not silently
                verdicts = [Verdict(reasons=[Reason("scorer_error", f"{type(e).__name__}: {e}")]) for _ in made]
                traceback.print_exc()
        verdict = iter(verdicts)
        rows: list[ShardRow] = []
        for item, s, err in results:
            v = next(verdict) if s is not None else Verdict(reasons=[Reason("generator_error", err)])
            rows.append({
                "sample_id": item.item_id,
                "image": png_bytes(s.image) if s is not None else None,
                "width": item.width,
                "height": item.height,
                "boxes": [b.to_dict() for b in s.boxes] if s is not None else [],
                "generator": item.generator,
                "checkpoint": str((s.meta or {}).get("checkpoint") or item.checkpoint or "") if s is not None else "",
                "seed": item.seed,
                "item_id": item.item_id,
                "item_index": item.index,
                "spec_hash": self.target.spec_hash,
                "scores": v.scores,
                "split": split_of(item.index, self.val_fraction),
                "work_item": json.dumps(item.to_row()),
                "provenance": json.dumps((s.meta or {}).get("provenance") or {}, sort_keys=True) if s is not None else "{}",
                "segments": _segments(s) if s is not None and SEGMENT_FORMATS & set(self.target.formats) else None,
                "reasons": [str(r) for r in v.reasons],  # Parquet text: `code: detail`
                "reason_codes": [r.code for r in v.reasons],
                "error": err,
            })
        return rows

    def write(self, rows: list[ShardRow]) -> str:
        return write_shard(rows, self.target, [s.name for s in self.scorers])


# --- writing a shard --------------------------------------------------------------
def node_id() -> str | None:
    """The Ray node this process runs on (hex), None outside Ray (a stage called directly)."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


SEGMENT_FORMATS = {"yolo_seg", "coco"}  # the sinks that write each box's outline


def _segments(s: Sample) -> list[list[list[float]]]:
    """Each box's outline polygons from the generator's instance mask (its rectangle
    where the generator returns no mask)."""
    if s.mask is None:
        return [[box_polygon(b)] for b in s.boxes]
    return [mask_polygons(s.mask, k, b) for k, b in enumerate(s.boxes, start=1)]


def write_shard(rows: list[ShardRow], target: ShardTarget, gate: list[str]) -> str:
    """Write one shard (accepted rows through the format sinks, rejected rows to
    `rejected/`), then its record (`ShardRecord`) `_shards/<key>.json` LAST: a shard
    without a record is ignored by publish and redone by a resumed run. Returns the
    record's JSON text (what the actor hands the driver)."""

    accepted = [r for r in rows if not r["reasons"]]
    rejected = [r for r in rows if r["reasons"]]
    key = f"s{min(r['item_index'] for r in rows):010d}"
    files: list[FileEntry] = []
    for sink in sinks_for(target.formats):
        files += sink.write(target.staging, key, accepted)
    rejected_files = ParquetSink("rejected", REJECT_SCHEMA).write(target.staging, key, rejected)
    record = ShardRecord(
        key=key,
        files=tuple(files),
        rejected_files=tuple(rejected_files),
        samples=tuple(SampleSummary.of_row(r, phash_of(r["scores"])) for r in accepted),
        rejects=tuple(RejectSummary(r["item_index"], r["sample_id"], tuple(r["reason_codes"])) for r in rejected),
        gate=tuple(gate),
        node=node_id(),
    )
    text = record.to_json()
    U.write_bytes(U.join(target.staging, "_shards", f"{key}.json"), text.encode())
    return text
