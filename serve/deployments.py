"""`GeneratorServer`: one generator family's Serve deployment.

A replica holds several loaded models (`@serve.multiplexed`, LRU unloading) and
lets concurrent requests for one model share a generate() call (`@serve.batch`,
counted in images). Its work is bounded: it refuses a job (503 + Retry-After)
while its accepted backlog would exceed `cost.max_backlog_s`, and it generates in
slices of about `cost.slice_s`, skipping the items of requests cancelled meanwhile
(the client went away or the request timed out), so nobody's gone request holds
the generator. One generate() runs at a time per replica: batches, not threads,
share the work. A generator that raises fails only its own request: 422 when it
refused the request's input (ValueError or CheckpointError, which the families raise
for a class their model or source lacks), else 500; both with an error id logged.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import time
import uuid
from typing import Any

import numpy as np
from ray import serve

from factory.generators.base import CheckpointError
from factory.quality.base import score_all
from factory.storage.uri import StorageError
from factory.viz import png_bytes
from serve.budget import slices
from serve.checkpoints import CheckpointRefused, ParamPathRefused, check_param_paths, inside_roots, normalize_roots
from serve.config import GeneratorConfig, import_object, package_version

logger = logging.getLogger("ray.serve")


class _LoadedModel:
    """A loaded generator as the multiplexer holds it. Serve calls __del__ when it
    evicts the model (LRU): that drops it from the replica's listing. The generator
    itself is freed by reference counting once no in-flight request still uses it."""

    def __init__(self, registry: dict, key: str, generator: Any, info: dict) -> None:
        self.registry, self.key, self.generator, self.info = registry, key, generator, info
        registry[key] = info

    def __del__(self):
        if self.registry.get(self.key) is self.info:  # not a newer load of the same key
            del self.registry[self.key]


def _batch_size(jobs: list[dict]) -> int:
    return sum(len(j["items"]) for j in jobs)


@serve.deployment
class GeneratorServer:
    """One family's models. Calls carry a job {id, model, checkpoint_name, params,
    items, cost_s}; the multiplexed model id is the job's `model` key (checkpoint
    path + params)."""

    def __init__(self, kind: str, config: dict, checkpoint_roots: list[str], scorers: list[dict],
                 registry_roots: list[str] = ()):
        import ray

        cfg = GeneratorConfig.model_validate(config)
        self.kind = kind
        self.cls = import_object(cfg.import_path)
        self.classes = getattr(self.cls, "classes", None)
        self.device = "cuda" if ray.get_gpu_ids() else "cpu"
        self.roots = normalize_roots(checkpoint_roots)
        self.registry_roots = list(registry_roots)
        self.scorers = [import_object(s["import_path"])(**s.get("kwargs", {})) for s in scorers]
        self.cfg = cfg
        self.loaded: dict[str, dict] = {}
        self.lock = asyncio.Lock()
        self.backlog_s = 0.0  # estimated seconds of the jobs accepted and not yet answered
        self.ongoing = 0
        self.running: set[str] = set()  # ids of the jobs a _run is working on
        self.cancelled: set[str] = set()  # ... of which these were cancelled by their callers
        self.counts = {"images": 0, "cancelled_images": 0, "refused_saturated": 0}

        async def load(model_key: str) -> _LoadedModel:
            return await self._load(model_key)

        self.get_model = serve.multiplexed(max_num_models_per_replica=cfg.max_models_per_replica)(load)
        self.generate_batched.set_max_batch_size(cfg.max_batch_size)
        self.generate_batched.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)

    async def _load(self, model_key: str) -> _LoadedModel:
        key = json.loads(model_key)
        checkpoint = key["checkpoint"] or None
        if checkpoint is not None and not inside_roots(checkpoint, self.roots):  # defence in depth
            raise CheckpointRefused("checkpoint outside the configured checkpoint roots")
        check_param_paths(key["params"], self.roots, self.registry_roots)
        t0 = time.perf_counter()
        params = {**self.cfg.params, **key["params"]}
        generator = await asyncio.to_thread(self.cls.load, checkpoint, params, self.device)
        info = {"checkpoint": key["name"], "params": key["shown"], "load_s": round(time.perf_counter() - t0, 3), "loaded_at": time.time()}
        return _LoadedModel(self.loaded, model_key, generator, info)

    def _saturated(self) -> bool:
        """True when a request of the largest allowed cost would be refused now."""
        full = self.backlog_s + self.cfg.cost.max_request_s > self.cfg.cost.max_backlog_s
        return full or self.ongoing >= self.cfg.max_ongoing_requests - 1  # the caller's ping holds the last slot

    async def ping(self) -> dict:
        return {"status": "saturated" if self._saturated() else "ok", "ongoing": self.ongoing,
                "backlog_s": round(self.backlog_s, 2), "max_backlog_s": self.cfg.cost.max_backlog_s}

    async def info(self) -> dict:
        return {
            "kind": self.kind,
            "version": str(getattr(self.cls, "version", package_version())),
            "class": f"{self.cls.__module__}.{self.cls.__qualname__}",
            "wants_gpu": bool(getattr(self.cls, "wants_gpu", False)),
            "device": self.device,
            "classes": self.classes,
            "batching": self.cfg.batching,
            "max_batch_size": self.cfg.max_batch_size,
            "max_models_per_replica": self.cfg.max_models_per_replica,
            "replica": serve.get_replica_context().replica_id.unique_id,
            "loaded": list(self.loaded.values()),
            "backlog_s": round(self.backlog_s, 2),
            **self.counts,
        }

    async def generate(self, job: dict) -> dict:
        cost = job["cost_s"]
        if self.backlog_s > 0 and self.backlog_s + cost > self.cfg.cost.max_backlog_s:
            self.counts["refused_saturated"] += 1
            return {"ok": False, "status": 503, "field": None, "retry_after_s": max(1, math.ceil(self.backlog_s)),
                    "message": f"generator {self.kind!r} is saturated (about {self.backlog_s:.0f} s of work queued); retry later"}
        self.backlog_s += cost
        self.ongoing += 1
        try:
            if self.cfg.batching:
                return await self.generate_batched(job)
            return (await self._run([job]))[0]
        except asyncio.CancelledError:  # the caller is gone: the running batch skips its remaining items
            if job["id"] in self.running:
                self.cancelled.add(job["id"])
            raise
        finally:
            self.backlog_s = max(0.0, self.backlog_s - cost)
            self.ongoing -= 1

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01, batch_size_fn=_batch_size)
    async def generate_batched(self, jobs: list[dict]) -> list[dict]:
        return await self._run(jobs)

    async def _run(self, jobs: list[dict]) -> list[dict]:
        """Generate for every job; jobs for one model share generate() calls. If a
        shared call raises, each job is retried alone so one bad job fails only itself."""
        ids = [j["id"] for j in jobs]
        self.running.update(ids)
        try:
            return await self._run_jobs(jobs)
        finally:
            self.running.difference_update(ids)
            self.cancelled.difference_update(ids)

    async def _run_jobs(self, jobs: list[dict]) -> list[dict]:
        results: list[dict | None] = [None] * len(jobs)
        groups: dict[str, list[int]] = {}
        for i, job in enumerate(jobs):
            try:  # items carry params too (their refs): the same rule as the model's
                for ref in {it.generator_ref.key: it.generator_ref for it in job["items"]}.values():
                    check_param_paths(ref.params, self.roots, self.registry_roots)
            except ParamPathRefused as e:
                results[i] = self._load_failure(e, job)
                continue
            groups.setdefault(job["model"], []).append(i)
        for key, idx in groups.items():
            try:
                model = await self.get_model(key)
            except Exception as e:  # noqa: BLE001 - every load failure becomes an answer
                for i in idx:
                    results[i] = self._load_failure(e, jobs[i])
                continue
            try:
                for i, images in zip(idx, await self._generate(model, [jobs[i] for i in idx])):
                    results[i] = self._answer(images)
            except Exception as e:  # noqa: BLE001
                if len(idx) == 1:
                    results[idx[0]] = self._generate_failure(e, jobs[idx[0]])
                    continue
                for i in idx:
                    try:
                        results[i] = self._answer((await self._generate(model, [jobs[i]]))[0])
                    except Exception as e1:  # noqa: BLE001
                        results[i] = self._generate_failure(e1, jobs[i])
        return results  # type: ignore[return-value]

    @staticmethod
    def _answer(images: list[dict] | None) -> dict:
        if images is None:
            return {"ok": False, "status": 499, "field": None, "message": "the request was cancelled"}
        return {"ok": True, "images": images}

    async def _generate(self, model: _LoadedModel, jobs: list[dict]) -> list[list[dict] | None]:
        """Images per job (None for a job cancelled before it was done), made in
        slices of about cost.slice_s with a cancellation check before each."""
        items = [(j, it) for j, job in enumerate(jobs) for it in job["items"]]
        made: list[list[dict]] = [[] for _ in jobs]
        runs = slices(self.cfg.cost, [it for _, it in items])
        for r, run in enumerate(runs):
            todo = [items[k] for k in run if jobs[items[k][0]]["id"] not in self.cancelled]
            self.counts["cancelled_images"] += len(run) - len(todo)
            if not todo:
                continue
            try:
                async with self.lock:
                    images = await asyncio.to_thread(self._generate_sync, model.generator, [it for _, it in todo],
                                                     jobs[0]["checkpoint_name"])
            except asyncio.CancelledError:  # unbatched: this request's own task was cancelled
                self.counts["cancelled_images"] += len(todo) + sum(len(x) for x in runs[r + 1:])
                raise
            self.counts["images"] += len(images)
            for (j, _), image in zip(todo, images):
                made[j].append(image)
        return [None if job["id"] in self.cancelled else made[j] for j, job in enumerate(jobs)]

    def _generate_sync(self, generator: Any, items: list, checkpoint_name: str | None) -> list[dict]:
        samples = generator.generate(items)
        if len(samples) != len(items):
            raise RuntimeError(f"{self.kind} returned {len(samples)} samples for {len(items)} items")
        verdicts = score_all(self.scorers, samples) if self.scorers else [None] * len(samples)
        out = []
        for sample, verdict in zip(samples, verdicts):
            image = np.asarray(sample.image)
            scores = {k: float(v) for k, v in sample.meta.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            if verdict is not None:
                scores.update({k: float(v) for k, v in verdict.scores.items()})
            meta = {k: self._hide_roots(v) for k, v in sample.meta.items() if isinstance(v, str) and k != "checkpoint" and len(v) <= 256}
            out.append({
                "seed": sample.item.seed,
                "height": int(image.shape[0]),
                "width": int(image.shape[1]),
                "channels": int(image.shape[2]) if image.ndim == 3 else 1,
                "png_base64": base64.b64encode(png_bytes(image)).decode("ascii"),  # the pipeline's encoder: same bytes
                "boxes": [{"class_id": b.class_id, "class_name": b.class_name, "x1": b.x1, "y1": b.y1, "x2": b.x2, "y2": b.y2} for b in sample.boxes],
                "scores": scores,
                "verdict": None if verdict is None else {"accepted": verdict.accepted, "reasons": [str(r) for r in verdict.reasons], "scores": dict(verdict.scores)},
                "meta": {**meta, "item_id": sample.item.item_id, "device": self.device, "checkpoint": checkpoint_name or ""},
            })
        return out

    def _hide_roots(self, text: str) -> str:
        """Server paths never leave the server: the roots become placeholders."""
        for root in self.registry_roots:
            text = text.replace(root, "<registry root>").replace(root.removeprefix("file://"), "<registry root>")
        for root in self.roots:
            text = text.replace(str(root), "<checkpoint root>")
        return text

    def _load_failure(self, e: Exception, job: dict) -> dict:
        # the request's fault (it named a file or dataset that is missing or unusable): 422
        if isinstance(e, (CheckpointRefused, CheckpointError, ValueError, FileNotFoundError, StorageError)):
            message = self._hide_roots(str(e))
            if isinstance(e, ParamPathRefused):
                field = e.loc
            elif isinstance(e, (CheckpointRefused, CheckpointError)) or not job["params"]:
                field = "checkpoint"
            else:
                field = "params" if not job["checkpoint_name"] else "checkpoint"
            return {"ok": False, "status": 422, "field": job["field_prefix"] + field, "message": f"{self.kind} could not load: {message}"}
        return self._failure(e, job)

    def _generate_failure(self, e: Exception, job: dict) -> dict:
        """generate() failed on this job alone. ValueError / CheckpointError: it refused the
        request's input (transplant and PDIG for a class their source or checkpoint lacks,
        DG2GAN for a class without a model), so 422 with its message; logged with an id
        all the same, in case it was a bug. Anything else: 500."""
        if not isinstance(e, (ValueError, CheckpointError)):
            return self._failure(e, job)
        error_id = uuid.uuid4().hex[:12]
        logger.warning("error %s: generator %s refused a request: %s: %s", error_id, self.kind, type(e).__name__, e)
        field = job["field_prefix"] + ("boxes" if job["field_prefix"] else "class")
        return {"ok": False, "status": 422, "field": field, "error_id": error_id,
                "message": f"{self.kind} cannot generate this request: {self._hide_roots(str(e))}"}

    def _failure(self, e: Exception, job: dict) -> dict:
        error_id = uuid.uuid4().hex[:12]
        logger.exception("error %s: generator %s failed on a request (%s)", error_id, self.kind, type(e).__name__, exc_info=e)
        return {"ok": False, "status": 500, "field": None, "error_id": error_id,
                "message": f"generator {self.kind!r} failed ({type(e).__name__}); error id {error_id} is in the server log"}
