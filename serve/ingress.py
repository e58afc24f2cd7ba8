"""The HTTP front: a FastAPI app in a Serve deployment (`Ingress`).

    client --HTTP/JSON--> Ingress (validation, checkpoint and registry roots, work budget, error ids)
           --handle, multiplexed_model_id = (checkpoint, params)--> GeneratorServer[kind]

The ingress refuses every bad request (4xx naming the field) before a generator
sees it, including one over its family's work budget (422). A request names
either what to draw (generator, class, boxes, style, seed, n) or a published
sample's `work_item`; either way it becomes WorkItems made with the planner's
code, so a dataset's work item gives that sample's image byte for byte. When a
family is saturated the answer is 503 with Retry-After, and /healthz says so.
"""

# no `from __future__ import annotations` here: FastAPI reads the route signatures
import asyncio
import hashlib
import json
import logging
import time
import uuid
from typing import Any

import numpy as np
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve.exceptions import BackPressureError

from factory.core import Box, GeneratorRef, WorkItem
from factory.planning import draw_style
from factory.spec.model import DomainSpec
from serve.budget import WorkCost, over_budget_message, request_cost_s
from serve.checkpoints import CheckpointRefused, ParamPathRefused, normalize_roots, resolve_checkpoint, resolve_param_paths
from serve.config import package_version
from serve.errors import RESPONSES, ApiError, install
from serve.schemas import GenerateRequest, GenerateResponse, WorkItemIn

logger = logging.getLogger("ray.serve")
__version__ = package_version()

MAX_PIXELS_PER_REQUEST = 16 * 512 * 512  # n * width * height: bounds one response's size
STYLE_STREAM = 0x5E7E  # a request's style is drawn from SeedSequence([seed, STYLE_STREAM])
HEALTH_PING_S = 2.0
# the fields that describe what to draw; a request with a `work_item` gives none of them
DRAW_FIELDS = ("generator", "checkpoint", "params", "class_name", "class_id", "image", "boxes", "domain", "style", "seed", "n")

api = FastAPI(
    title="Defect factory: online generation",
    version=__version__,
    description="Single defect images on demand from the factory's generators (Ray Serve).",
    docs_url="/docs",
)
install(api)


def request_style(style: dict[str, Any], seed: int) -> dict[str, float]:
    """The style of one image: given knobs as they are, missing ones drawn with the
    planner's `draw_style` from the spec's default domain, with a stream seeded by
    the image's seed. All draws happen in a fixed order, so setting one knob never
    changes another."""
    drawn = draw_style(np.random.default_rng(np.random.SeedSequence([seed, STYLE_STREAM])), DomainSpec())
    return {k: float(style[k]) if style.get(k) is not None else v for k, v in drawn.items()}


def build_items(req: GenerateRequest, class_id: int, ref: GeneratorRef) -> list[WorkItem]:
    """Image i of n: seed + i, the request's boxes, a style drawn from that seed, all
    drawn by `ref` (the request's generator, checkpoint name and resolved params)."""
    canonical = json.dumps(req.model_dump(mode="json", by_alias=True, exclude={"n", "seed", "work_item"}), sort_keys=True)
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:12]
    boxes = tuple(Box(class_id, req.class_name or "", *b) for b in req.boxes)
    items = []
    for i in range(req.n):
        seed = req.seed + i
        items.append(WorkItem(
            item_id=f"serve-{digest}-{seed}", index=i, generator=ref.kind, checkpoint=ref.checkpoint,
            width=req.image.width, height=req.image.height, channels=req.image.channels, seed=seed, boxes=boxes,
            style=request_style(req.style.model_dump(), seed), params=ref.params, domain=req.domain, ref=ref,
        ))
    return items


def published_item(w: WorkItemIn, ref: GeneratorRef) -> WorkItem:
    """A dataset's work item as it was planned (the style exactly as stored, nothing
    drawn), drawn by `ref` (its generator and checkpoint name, its params resolved)."""
    return WorkItem(
        item_id=w.item_id, index=w.index, generator=ref.kind, checkpoint=ref.checkpoint,
        width=w.width, height=w.height, channels=w.channels, seed=w.seed,
        boxes=tuple(Box(b.class_id, b.class_name, b.x1, b.y1, b.x2, b.y2) for b in w.boxes),
        style={k: float(v) for k, v in w.style.model_dump().items() if v is not None}, params=ref.params,
        domain=w.domain, ref=ref,
    )


@serve.deployment
@serve.ingress(api)
class Ingress:
    def __init__(self, generators: dict, limits: dict[str, dict], checkpoint_roots: list[str], max_request_bytes: int,
                 registry_roots: list[str] = ()):
        api.state.max_request_bytes = max_request_bytes
        self.handles = generators
        self.costs = {k: WorkCost.model_validate(v["cost"]) for k, v in limits.items()}
        self.retry_after = {k: int(v["retry_after_s"]) for k, v in limits.items()}
        self.roots = normalize_roots(checkpoint_roots)
        self.registry_roots = list(registry_roots)  # URIs, normalized by build_app
        self._info: dict[str, dict] = {}
        self.in_flight = {k: 0 for k in generators}
        self.saturated_at = {k: 0.0 for k in generators}  # when the family last answered 503

    async def _kind_info(self, kind: str) -> dict:
        if kind not in self._info:
            self._info[kind] = await self.handles[kind].info.remote()
        return self._info[kind]

    async def _health(self, kind: str) -> dict:
        recent = time.monotonic() - self.saturated_at[kind] < self.retry_after[kind]
        try:
            state = await asyncio.wait_for(self.handles[kind].ping.remote(), HEALTH_PING_S)
        except BackPressureError:
            state = {"status": "saturated"}
        except Exception as e:  # noqa: BLE001 - a busy queue looks like a slow answer
            state = {"status": "saturated" if self.in_flight[kind] else f"unreachable ({type(e).__name__})"}
        if recent and state["status"] == "ok":
            state = {**state, "status": "saturated"}
        return {**state, "in_flight": self.in_flight[kind]}

    @api.get("/healthz")
    async def healthz(self) -> JSONResponse:
        """200 `ok` when every family answers and can take a request of its largest
        allowed cost; 503 `saturated` (with Retry-After) or `degraded` otherwise."""
        kinds = sorted(self.handles)
        states = dict(zip(kinds, await asyncio.gather(*(self._health(k) for k in kinds))))
        codes = {s["status"] for s in states.values()}
        status = "ok" if codes == {"ok"} else ("saturated" if codes <= {"ok", "saturated"} else "degraded")
        headers = {"Retry-After": str(max(self.retry_after[k] for k in kinds))} if status == "saturated" else None
        return JSONResponse({"status": status, "version": __version__, "generators": states},
                            status_code=200 if status == "ok" else 503, headers=headers)

    @api.get("/v1/generators")
    async def generators(self) -> dict:
        """The served families: classes, device, batching, and the models loaded on the replica that answered."""
        out = []
        for kind, handle in sorted(self.handles.items()):
            info = await handle.info.remote()
            self._info[kind] = info
            out.append({**info, "cost": self.costs[kind].model_dump()})
        return {"version": __version__, "checkpoint_roots": len(self.roots), "registry_roots": len(self.registry_roots),
                "generators": out}

    @api.post("/v1/generate", response_model=GenerateResponse, responses=RESPONSES)
    async def generate(self, req: GenerateRequest) -> GenerateResponse:
        """Generate `n` images of `class` inside `boxes`, or the image of a published
        `work_item`; the same inputs and seed give the same image."""
        request_id = uuid.uuid4().hex[:12]
        if req.work_item is not None:
            given = sorted(f for f in DRAW_FIELDS if f in req.model_fields_set)
            if given:
                raise ApiError(422, "work_item", f"give either work_item or the fields that describe an image, not both (also given: {', '.join(given)})")
        elif req.generator is None:
            raise ApiError(422, "generator", "generator: Field required (or give a published sample's work_item)")
        prefix = "work_item." if req.work_item is not None else ""
        source = req.work_item if req.work_item is not None else req
        kind, checkpoint_name = source.generator, source.checkpoint
        if kind not in self.handles:
            raise ApiError(422, prefix + "generator", f"generator {kind!r} is not served here; served: {', '.join(sorted(self.handles))}")
        width, height, n = (source.width, source.height, 1) if prefix else (req.image.width, req.image.height, req.n)
        if n * width * height > MAX_PIXELS_PER_REQUEST:
            raise ApiError(422, "n", f"n * width * height = {n * width * height} exceeds {MAX_PIXELS_PER_REQUEST} pixels per request")
        classes = (await self._kind_info(kind)).get("classes")
        class_id = self._class_id(req, kind, classes) if not prefix else 0
        if prefix and classes is not None:
            for i, b in enumerate(source.boxes):
                if b.class_name not in classes:
                    raise ApiError(422, f"work_item.boxes[{i}].class_name", f"generator {kind!r} cannot draw {b.class_name!r}; it draws {', '.join(classes)}")
        path = None
        if checkpoint_name is not None:
            try:
                path = str(resolve_checkpoint(checkpoint_name, self.roots))
            except CheckpointRefused as e:
                raise ApiError(422, prefix + "checkpoint", str(e)) from None
        try:
            params = resolve_param_paths(source.params, self.roots, self.registry_roots)
        except ParamPathRefused as e:
            raise ApiError(422, prefix + e.loc, str(e)) from None
        ref = GeneratorRef(kind, checkpoint_name, params)  # made once: every item of the request shares it
        items = [published_item(source, ref)] if prefix else build_items(req, class_id, ref)
        too_much = over_budget_message(self.costs[kind], items)
        if too_much:
            field = "boxes" if any(it.boxes for it in items) else ("width" if prefix else "n")
            raise ApiError(422, prefix + field, too_much)
        # the key names the model: resolved paths for the replica, the request's names for listings
        model_key = json.dumps({"checkpoint": path or "", "name": checkpoint_name or "", "params": params, "shown": source.params}, sort_keys=True)
        job = {"id": request_id, "model": model_key, "checkpoint_name": checkpoint_name, "params": source.params,
               "items": items, "cost_s": request_cost_s(self.costs[kind], items), "field_prefix": prefix}
        result = await self._call(kind, job, model_key)
        if not result["ok"]:
            if result["status"] == 503:
                self.saturated_at[kind] = time.monotonic()
            raise ApiError(result["status"], result.get("field"), result["message"], result.get("error_id"), result.get("retry_after_s"))
        return GenerateResponse(request_id=request_id, generator=kind, checkpoint=checkpoint_name, images=result["images"])

    def _class_id(self, req: GenerateRequest, kind: str, classes: list[str] | None) -> int:
        class_id = req.class_id if req.class_id is not None else 0
        if req.class_name is not None and classes is not None:
            if req.class_name not in classes:
                raise ApiError(422, "class", f"generator {kind!r} cannot draw {req.class_name!r}; it draws {', '.join(classes)}")
            if req.class_id is None:
                class_id = classes.index(req.class_name)
        return class_id

    async def _call(self, kind: str, job: dict, model_key: str) -> dict:
        """One call to the family's deployment. Cancelling this request (client gone,
        request_timeout_s) cancels the call, and the replica stops its work."""
        self.in_flight[kind] += 1
        try:
            return await self.handles[kind].options(multiplexed_model_id=model_key).generate.remote(job)
        except BackPressureError:
            self.saturated_at[kind] = time.monotonic()
            raise ApiError(503, None, f"generator {kind!r} is saturated (every replica busy and its queue full); retry later",
                           retry_after_s=self.retry_after[kind]) from None
        except Exception as e:  # noqa: BLE001 - the replica died or the call failed: an id, not a trace
            error_id = uuid.uuid4().hex[:12]
            logger.exception("error %s: request %s to %s failed", error_id, job["id"], kind, exc_info=e)
            raise ApiError(500, None, f"generator {kind!r} is unavailable; error id {error_id}", error_id) from None
        finally:
            self.in_flight[kind] -= 1
