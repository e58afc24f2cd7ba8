"""The stages of the Ray Data job, callable classes that `map_batches` runs. A
range of plan indices is the unit of work and becomes one shard:

  CPU generator, one actor:  range --plan, generate, score, PNG, write--> shard record
  GPU generator:             range --generate (GPU actor)--> images + boxes
                             --score, PNG, write (CPU actor)--> shard record

Rows between stages are flat columns (ints, strings, bytes, one uint8 image
tensor), so nothing needs custom serialization; the driver only sees records.
"""

from __future__ import annotations

import json
import time
import traceback
from dataclasses import dataclass
from typing import Any

import numpy as np

from factory.planning import Box, WorkItem, iter_plan
from factory.spec import DatasetSpec

VAL_EVERY = 10  # plan index % VAL_EVERY == VAL_EVERY - 1 -> the YOLO "val" split


def generator_key(kind: str, checkpoint: str | None, params: dict[str, Any]) -> str:
    """One actor pool per distinct generator (kind + checkpoint + params)."""
    return json.dumps([kind, checkpoint or "", params], sort_keys=True)


def split_of(index: int) -> str:
    return "val" if index % VAL_EVERY == VAL_EVERY - 1 else "train"


# --- stage 1: plan ranges -> generate (-> score -> write) -----------------------
def _boxes_json(boxes: list[Box]) -> str:
    return json.dumps([b.to_dict() for b in boxes])


def _item(text: str) -> WorkItem:
    return WorkItem.from_row(json.loads(text))


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


@dataclass(frozen=True)
class ShardTarget:
    """Where and how shards are written (handed to the actors that write them)."""

    staging: str
    spec_hash: str
    formats: tuple[str, ...]
    storage: Any = None  # the driver's StorageConfig (endpoint; credentials on a local cluster)


class GenerateStage:
    """Holds one loaded generator per actor and makes the planned items of each
    range that are its own (a spec with several generators runs one pool per
    generator over the same ranges). A failing call is retried, then retried item
    by item; an item that still fails becomes a row with `error` set (a reject
    later), never a lost row.

    With a `target` (CPU generators) the actor also scores, PNG-encodes and writes
    each range as one shard, `batch_size` items at a time, so an image never leaves
    the process that drew it and only PNG bytes are held until the shard is
    written. Without one (GPU generators) it returns the raw images for a CPU
    `ScoreWriteStage` pool, so the GPU never waits for PNG encoding."""

    def __init__(self, spec: DatasetSpec, key: str, device: str, retries: int, target: ShardTarget | None = None,
                 batch_size: int = 64):
        from factory.generators.base import load_generator

        kind, checkpoint, params = json.loads(key)
        self.spec, self.key, self.retries, self.batch_size = spec, key, retries, max(1, batch_size)
        self.generator = load_generator(kind, checkpoint or None, params, device=device)
        self.finish = ScoreWriteStage(spec, target) if target else None

    def _try(self, items: list[WorkItem]):
        err = None
        for attempt in range(1 + self.retries):
            try:
                samples = self.generator.generate(items)
                if len(samples) != len(items):
                    raise RuntimeError(f"generator returned {len(samples)} samples for {len(items)} items")
                return samples, None
            except Exception as e:  # noqa: BLE001 - recorded with the sample, not swallowed
                err = f"{type(e).__name__}: {e}"
                time.sleep(min(0.1 * 2**attempt, 2.0))
        return None, err

    def generate(self, items: list[WorkItem], shard: int) -> dict[str, np.ndarray]:
        """Generate `items` (one call, then one by one if it fails) -> raw columns."""
        results: list[tuple[Any, str]] = []
        if items:
            samples, err = self._try(items)
            if samples is not None:
                results = [(s, "") for s in samples]
            else:  # isolate the bad items
                for it in items:
                    one, e = self._try([it])
                    results.append((one[0], "") if one else (None, e or err or "unknown error"))
        img = self.spec.image
        H, W, C = img.height, img.width, img.channels
        images = np.zeros((len(items), H, W, C), np.uint8)
        masks = np.zeros((len(items), H, W), np.uint8)
        has_mask, boxes, ckpt, errors = [], [], [], []
        for i, (s, e) in enumerate(results):
            if s is not None and np.asarray(s.image).shape == (H, W, C):
                images[i] = s.image
            elif s is not None:
                e = e or f"generator returned an image of shape {np.asarray(s.image).shape}, expected {(H, W, C)}"
            if s is not None and s.mask is not None:
                masks[i] = s.mask
            has_mask.append(s is not None and s.mask is not None)
            boxes.append(_boxes_json(s.boxes) if s is not None else "[]")
            ckpt.append(str((s.meta or {}).get("checkpoint") or items[i].checkpoint or "") if s is not None else "")
            errors.append(e)
        return {
            "shard": np.full(len(items), shard, np.int64),
            "index": np.array([w.index for w in items], np.int64),
            "item": np.array([json.dumps(w.to_row()) for w in items], object),
            "image": images,
            "mask": masks,
            "has_mask": np.array(has_mask, bool),
            "boxes": np.array(boxes, object),
            "checkpoint": np.array(ckpt, object),
            "error": np.array(errors, object),
        }

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        records, raw = [], []
        for a, b in zip(batch["start"], batch["stop"]):
            items = [w for w in iter_plan(self.spec, int(a), int(b - a))
                     if generator_key(w.generator, w.checkpoint, w.params) == self.key]
            if not items:
                continue
            if self.finish is None:
                raw.append(self.generate(items, int(a)))
                continue
            bs = self.batch_size
            scored = [self.finish.score(self.generate(items[k: k + bs], int(a))) for k in range(0, len(items), bs)]
            records.append(self.finish.write(_concat(scored)))
        if self.finish is None:
            return _concat(raw) if raw else self.generate([], 0)
        return {"record": np.array(records, object)}


# --- stage 2: score + write -------------------------------------------------------
class ScoreWriteStage:
    """Runs every Scorer (basic checks + the quality gate when present), encodes the
    PNG kept for accepted and rejected samples alike, and writes one shard per
    range. In the generator's actor for CPU generators; a pool of its own after a
    GPU generator (or when the gate's scorers want a GPU: `device="cuda"`)."""

    def __init__(self, spec: DatasetSpec, target: ShardTarget, device: str = "cpu"):
        from factory.pipeline.checks import scorers_for

        self.scorers = scorers_for(spec, device=device)
        self.target = target

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        scored = self.score(batch)
        shards = scored["shard"]
        records = [self.write({k: v[shards == s] for k, v in scored.items()}) for s in np.unique(shards)]
        return {"record": np.array(records, object)}

    def write(self, scored: dict[str, np.ndarray]) -> str:
        t = self.target
        return write_shard(scored, t.staging, t.spec_hash, list(t.formats), t.storage)["record"][0]

    def score(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Raw generator columns -> verdicts + PNG bytes (the raw images are dropped)."""
        from factory.generators.base import Sample
        from factory.quality.base import Verdict, score_all
        from factory.viz import png_bytes

        n = len(batch["index"])
        verdicts: list[Verdict] = [Verdict() for _ in range(n)]
        ok = [i for i in range(n) if not batch["error"][i]]
        for i in range(n):
            if batch["error"][i]:
                verdicts[i].reasons.append(f"generator_error: {batch['error'][i]}")
        samples = [
            Sample(
                item=_item(batch["item"][i]),
                image=batch["image"][i],
                boxes=[Box.from_dict(b) for b in json.loads(batch["boxes"][i])],
                mask=batch["mask"][i] if batch["has_mask"][i] else None,
                meta={"checkpoint": batch["checkpoint"][i]},
            )
            for i in ok
        ]
        if samples:
            try:
                for i, v in zip(ok, score_all(self.scorers, samples)):
                    verdicts[i] = v
            except Exception as e:  # noqa: BLE001 - a broken scorer rejects, with its error, not silently
                for i in ok:
                    verdicts[i].reasons.append(f"scorer_error: {type(e).__name__}: {e}")
                traceback.print_exc()
        png = [png_bytes(batch["image"][i]) if not batch["error"][i] else b"" for i in range(n)]
        return {
            "shard": np.asarray(batch["shard"], np.int64),
            "index": np.asarray(batch["index"], np.int64),
            "item": batch["item"],
            "png": np.array(png, object),
            "boxes": batch["boxes"],
            "checkpoint": batch["checkpoint"],
            "error": batch["error"],
            "scores": np.array([json.dumps(v.scores) for v in verdicts], object),
            "reasons": np.array([json.dumps(v.reasons) for v in verdicts], object),
        }


# --- writing a shard --------------------------------------------------------------
def write_shard(batch: dict[str, np.ndarray], staging: str, spec_hash: str, formats: list[str],
                storage: Any = None) -> dict[str, Any]:
    """Write one shard (accepted rows through the format sinks, rejected rows to
    `rejected/`), then its record `_shards/<key>.json` LAST: a shard without a
    record is ignored by publish and redone by a resumed run."""
    from factory.storage import uri as U
    from factory.storage.shards import REJECT_SCHEMA, ParquetSink, sinks_for

    if not len(batch["index"]):
        return {"record": np.array([], object)}
    if storage is not None:  # the driver's endpoint (and, on a local cluster, credentials)
        U.set_storage_config(storage)
    accepted, rejected = [], []
    for i in range(len(batch["index"])):
        item = json.loads(batch["item"][i])
        reasons = json.loads(batch["reasons"][i])
        row = {
            "sample_id": item["item_id"],
            "image": batch["png"][i] or None,
            "width": item["width"],
            "height": item["height"],
            "boxes": json.loads(batch["boxes"][i]),
            "generator": item["generator"],
            "checkpoint": batch["checkpoint"][i],
            "seed": item["seed"],
            "item_id": item["item_id"],
            "item_index": int(batch["index"][i]),
            "spec_hash": spec_hash,
            "scores": json.loads(batch["scores"][i]),
            "split": split_of(int(batch["index"][i])),
            "work_item": batch["item"][i],
        }
        if reasons:
            rejected.append({**row, "reasons": reasons, "error": batch["error"][i]})
        else:
            accepted.append(row)
    key = f"s{int(np.min(batch['index'])):010d}"
    files = []
    for sink in sinks_for(formats):
        files += sink.write(staging, key, accepted)
    rejected_files = ParquetSink("rejected", REJECT_SCHEMA).write(staging, key, rejected)
    record = {
        "key": key,
        "files": files,
        "rejected_files": rejected_files,
        # [index, sample_id, split, generator, [[class_id, x1, y1, x2, y2], ...]]
        "samples": [
            [r["item_index"], r["sample_id"], r["split"], r["generator"],
             [[b["class_id"], b["x1"], b["y1"], b["x2"], b["y2"]] for b in r["boxes"]]]
            for r in accepted
        ],
        "rejects": [[r["item_index"], r["sample_id"], r["reasons"]] for r in rejected],
    }
    U.write_bytes(U.join(staging, "_shards", f"{key}.json"), json.dumps(record).encode())
    return {"record": np.array([json.dumps(record)], object)}
