"""The Ray Serve application: a FastAPI ingress and one deployment per generator family.

    client --HTTP/JSON--> Ingress (validation, checkpoint roots, error ids)
           --handle, multiplexed_model_id = (checkpoint, params)--> GeneratorServer[kind]
              @serve.multiplexed: several loaded models per replica, LRU unloading
              @serve.batch: concurrent requests for one model share one generate() call

The ingress refuses every bad request (4xx naming the field) before a generator
sees it; a generator that raises costs its caller a 5xx with an error id (logged
with the traceback on the replica) and nothing else. Every kind in
every registered generator kind (`factory.generators.base.registered_kinds()`) is served the same way, so families that land
later are served without changes here.

Start it with `serve run serve/config.yaml` or `factory serve`; `build_app(args)`
is the application builder both use.
"""

# no `from __future__ import annotations` here: FastAPI reads the route signatures
import asyncio
import base64
import hashlib
import importlib
import json
import logging
import time
import uuid
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from serve.checkpoints import (
    CheckpointRefused,
    ParamPathRefused,
    check_param_paths,
    inside_roots,
    normalize_roots,
    resolve_checkpoint,
    resolve_param_paths,
)
from serve.schemas import MAX_N, ErrorResponse, GenerateRequest, GenerateResponse

logger = logging.getLogger("ray.serve")


def _package_version() -> str:
    # from the installed metadata, not `factory.__version__`: an editable install made
    # before factory/__init__.py existed maps `factory` as a namespace package
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("defect-factory")
    except PackageNotFoundError:
        return "unknown"


__version__ = _package_version()

MAX_PIXELS_PER_REQUEST = 16 * 512 * 512  # n * width * height: bounds one response's size
APP_NAME = "factory"


# --- configuration (the `args` of serve/config.yaml) ---------------------------------


class _Cfg(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AutoscalingConfig(_Cfg):
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(2, ge=1)
    target_ongoing_requests: float = Field(8.0, gt=0)


class GeneratorConfig(_Cfg):
    """How one family is deployed. `num_gpus: null` = 1 GPU per replica when the
    family wants one and the cluster has GPUs, else 0."""

    import_path: Any = Field(None, description="module:Class (or, from Python, the class); default: the registered kind's class")
    params: dict[str, Any] = Field(default_factory=dict, description="operator params (trusted), under each request's params")
    # a scheduling share, not a thread limit: small so every family fits on a 2-core machine
    num_cpus: float = Field(0.25, ge=0)
    num_gpus: float | None = Field(None, ge=0)
    max_models_per_replica: int = Field(3, ge=1)
    batching: bool = True
    max_batch_size: int = Field(16, ge=MAX_N, description="in images; >= the largest n of one request")
    batch_wait_timeout_s: float = Field(0.01, ge=0, le=1)
    max_ongoing_requests: int = Field(32, ge=1)
    num_replicas: int = Field(1, ge=1, description="used when autoscaling is null")
    autoscaling: AutoscalingConfig | None = AutoscalingConfig()


class ScorerConfig(_Cfg):
    import_path: Any  # module:Class implementing factory.quality.base.Scorer (or, from Python, the class)
    kwargs: dict[str, Any] = Field(default_factory=dict)


class IngressConfig(_Cfg):
    num_cpus: float = Field(0.25, ge=0)
    num_replicas: int = Field(1, ge=1)
    max_ongoing_requests: int = Field(64, ge=1)


class AppConfig(_Cfg):
    checkpoint_roots: list[str] = Field(default_factory=list)
    serve_all_kinds: bool = Field(True, description="serve every registered generator kind")
    defaults: GeneratorConfig = GeneratorConfig()
    generators: dict[str, dict[str, Any]] = Field(default_factory=dict, description="per-kind overrides of defaults")
    scorers: list[ScorerConfig] = Field(default_factory=list)
    max_request_bytes: int = Field(64 * 1024, ge=1024, le=16 * 1024 * 1024)
    ingress: IngressConfig = IngressConfig()

    def kinds(self) -> dict[str, GeneratorConfig]:
        from factory.generators.base import registered_kinds

        kinds = registered_kinds()
        names = sorted(kinds) if self.serve_all_kinds else []
        names += [k for k in self.generators if k not in names]
        out = {}
        for kind in names:
            merged = {**self.defaults.model_dump(), **self.generators.get(kind, {})}
            cfg = GeneratorConfig.model_validate(merged)
            if cfg.import_path is None:
                if kind not in kinds:
                    raise ValueError(f"generators.{kind}: not a registered kind; give its import_path (module:Class)")
                cfg.import_path = kinds[kind]
            out[kind] = cfg
        if not out:
            raise ValueError("no generator kinds to serve")
        return out


def _import(path: Any) -> Any:
    """`module:Class` -> the class. Python callers may pass the class itself (it
    reaches the replicas pickled, e.g. a test-only generator)."""
    if not isinstance(path, str):
        return path
    module, _, attr = path.partition(":")
    if not module or not attr:
        raise ValueError(f"import path {path!r} must look like module:Class")
    return getattr(importlib.import_module(module), attr)


# --- errors --------------------------------------------------------------------------


class ApiError(Exception):
    def __init__(self, status: int, field: str | None, message: str, error_id: str | None = None):
        super().__init__(message)
        self.status, self.field, self.message, self.error_id = status, field, message, error_id


def _error_response(status: int, field: str | None, message: str, error_id: str | None = None, errors=()) -> JSONResponse:
    body = ErrorResponse(error={"status": status, "field": field, "message": message, "error_id": error_id, "errors": list(errors)})
    return JSONResponse(body.model_dump(), status_code=status)


def _field_name(loc: tuple) -> str:
    parts = [p for p in loc if p != "body"] if loc and loc[0] == "body" else list(loc)
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "body"


class BodySizeLimit:
    """Pure ASGI middleware: refuse bodies over the limit with 413 before anything
    parses them. The body is buffered (it is small by construction) and replayed."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = getattr(scope["app"].state, "max_request_bytes", 64 * 1024)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            return await self._refuse(scope, receive, send, limit)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > limit:
                return await self._refuse(scope, receive, send, limit)
            more = message.get("more_body", False)
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    @staticmethod
    async def _refuse(scope, receive, send, limit):
        await _error_response(413, "body", f"request body larger than {limit} bytes")(scope, receive, send)


api = FastAPI(
    title="Defect factory: online generation",
    version=__version__,
    description="Single defect images on demand from the factory's generators (Ray Serve).",
    docs_url="/docs",
)
api.add_middleware(BodySizeLimit)


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = [{"field": _field_name(tuple(e.get("loc", ()))), "message": e.get("msg", ""), "type": e.get("type")} for e in exc.errors()]
    if any(e["type"] == "json_invalid" for e in errors):
        return _error_response(400, "body", "the request body is not valid JSON", errors=errors)
    first = errors[0] if errors else {"field": "body", "message": "invalid request"}
    return _error_response(422, first["field"], f"{first['field']}: {first['message']}", errors=errors)


@api.exception_handler(ApiError)
async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return _error_response(exc.status, exc.field, exc.message, exc.error_id)


_ERRORS = {400: {"model": ErrorResponse}, 413: {"model": ErrorResponse}, 422: {"model": ErrorResponse}, 500: {"model": ErrorResponse}}


# --- the generator deployment --------------------------------------------------------


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
    """One family's models. Calls carry a job {model, checkpoint_name, items}; the
    multiplexed model id is the job's `model` key (checkpoint path + params)."""

    def __init__(self, kind: str, config: dict, checkpoint_roots: list[str], scorers: list[dict]):
        import ray

        cfg = GeneratorConfig.model_validate(config)
        self.kind = kind
        self.cls = _import(cfg.import_path)
        self.classes = getattr(self.cls, "classes", None)
        self.device = "cuda" if ray.get_gpu_ids() else "cpu"
        self.roots = normalize_roots(checkpoint_roots)
        self.scorers = [_import(s["import_path"])(**s.get("kwargs", {})) for s in scorers]
        self.cfg = cfg
        self.loaded: dict[str, dict] = {}
        self.lock = asyncio.Lock()  # one generate() at a time per replica: batches, not threads, share work

        async def load(model_key: str) -> "_LoadedModel":
            return await self._load(model_key)

        self.get_model = serve.multiplexed(max_num_models_per_replica=cfg.max_models_per_replica)(load)
        self.generate_batched.set_max_batch_size(cfg.max_batch_size)
        self.generate_batched.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)

    async def _load(self, model_key: str) -> "_LoadedModel":
        key = json.loads(model_key)
        checkpoint = key["checkpoint"] or None
        if checkpoint is not None and not inside_roots(checkpoint, self.roots):  # defence in depth
            raise CheckpointRefused("checkpoint outside the configured checkpoint roots")
        check_param_paths(key["params"], self.roots)
        t0 = time.perf_counter()
        params = {**self.cfg.params, **key["params"]}
        generator = await asyncio.to_thread(self.cls.load, checkpoint, params, self.device)
        info = {"checkpoint": key["name"], "params": key["shown"], "load_s": round(time.perf_counter() - t0, 3), "loaded_at": time.time()}
        return _LoadedModel(self.loaded, model_key, generator, info)

    async def ping(self) -> str:
        return "ok"

    async def info(self) -> dict:
        return {
            "kind": self.kind,
            "version": str(getattr(self.cls, "version", __version__)),
            "class": f"{self.cls.__module__}.{self.cls.__qualname__}",
            "wants_gpu": bool(getattr(self.cls, "wants_gpu", False)),
            "device": self.device,
            "classes": self.classes,
            "batching": self.cfg.batching,
            "max_batch_size": self.cfg.max_batch_size,
            "max_models_per_replica": self.cfg.max_models_per_replica,
            "replica": serve.get_replica_context().replica_id.unique_id,
            "loaded": list(self.loaded.values()),
        }

    async def generate(self, job: dict) -> dict:
        if self.cfg.batching:
            return await self.generate_batched(job)
        return (await self._run([job]))[0]

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01, batch_size_fn=_batch_size)
    async def generate_batched(self, jobs: list[dict]) -> list[dict]:
        return await self._run(jobs)

    async def _run(self, jobs: list[dict]) -> list[dict]:
        """Generate for every job; jobs for one model share one generate() call. If a
        shared call raises, each job is retried alone so one bad job fails only itself."""
        results: list[dict | None] = [None] * len(jobs)
        groups: dict[str, list[int]] = {}
        for i, job in enumerate(jobs):
            try:  # items carry params too: the same rule as the model's
                for item in job["items"]:
                    check_param_paths(item.params, self.roots)
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
                images = await self._generate(model, [it for i in idx for it in jobs[i]["items"]], jobs[idx[0]])
                for i in idx:
                    k = len(jobs[i]["items"])
                    results[i], images = {"ok": True, "images": images[:k]}, images[k:]
            except Exception as e:  # noqa: BLE001
                if len(idx) == 1:
                    results[idx[0]] = self._failure(e, jobs[idx[0]])
                    continue
                for i in idx:
                    try:
                        results[i] = {"ok": True, "images": await self._generate(model, jobs[i]["items"], jobs[i])}
                    except Exception as e1:  # noqa: BLE001
                        results[i] = self._failure(e1, jobs[i])
        return results  # type: ignore[return-value]

    async def _generate(self, model: "_LoadedModel", items: list, job: dict) -> list[dict]:
        async with self.lock:
            return await asyncio.to_thread(self._generate_sync, model.generator, items, job["checkpoint_name"])

    def _generate_sync(self, generator: Any, items: list, checkpoint_name: str | None) -> list[dict]:
        from factory.quality.base import score_all
        from factory.viz import png_bytes

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
                "png_base64": base64.b64encode(png_bytes(image)).decode("ascii"),
                "boxes": [{"class_id": b.class_id, "class_name": b.class_name, "x1": b.x1, "y1": b.y1, "x2": b.x2, "y2": b.y2} for b in sample.boxes],
                "scores": scores,
                "verdict": None if verdict is None else {"accepted": verdict.accepted, "reasons": [str(r) for r in verdict.reasons], "scores": dict(verdict.scores)},
                "meta": {**meta, "item_id": sample.item.item_id, "device": self.device, "checkpoint": checkpoint_name or ""},
            })
        return out

    def _hide_roots(self, text: str) -> str:
        """Server paths never leave the server: checkpoint roots become a placeholder."""
        for root in self.roots:
            text = text.replace(str(root), "<checkpoint root>")
        return text

    def _load_failure(self, e: Exception, job: dict) -> dict:
        from factory.generators.base import CheckpointError

        if isinstance(e, (CheckpointRefused, CheckpointError, ValueError)):  # the request's fault: 422
            message = self._hide_roots(str(e))
            if isinstance(e, ParamPathRefused):
                field = e.loc
            elif isinstance(e, (CheckpointRefused, CheckpointError)) or not job["params"]:
                field = "checkpoint"
            else:
                field = "params" if not job["checkpoint_name"] else "checkpoint"
            return {"ok": False, "status": 422, "field": field, "message": f"{self.kind} could not load: {message}"}
        return self._failure(e, job)

    def _failure(self, e: Exception, job: dict) -> dict:
        error_id = uuid.uuid4().hex[:12]
        logger.exception("error %s: generator %s failed on a request (%s)", error_id, self.kind, type(e).__name__, exc_info=e)
        return {"ok": False, "status": 500, "field": None, "error_id": error_id,
                "message": f"generator {self.kind!r} failed ({type(e).__name__}); error id {error_id} is in the server log"}


# --- the ingress ---------------------------------------------------------------------


def draw_style(style: dict[str, Any], seed: int) -> dict[str, float]:
    """The style of one image: given knobs as they are, missing ones drawn from the
    spec's default domain ranges with a stream seeded by the image's seed. All draws
    happen in a fixed order, so setting one knob never changes another."""
    from factory.spec.model import DomainSpec

    d = DomainSpec()
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5E7E]))
    drawn = {
        "brightness": float(rng.uniform(*d.brightness)),
        "contrast": float(rng.uniform(*d.contrast)),
        "grid_pitch": float(rng.uniform(*d.grid_pitch)),
        "busbars": float(rng.integers(d.busbars[0], d.busbars[1] + 1)),
        "reference": float(rng.integers(0, 2**31 - 1)),
    }
    return {k: float(style[k]) if style.get(k) is not None else v for k, v in drawn.items()}


def build_items(req: GenerateRequest, class_id: int, checkpoint_name: str | None, params: dict) -> list:
    from factory.core import Box, WorkItem

    canonical = json.dumps(req.model_dump(mode="json", by_alias=True, exclude={"n", "seed"}), sort_keys=True)
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:12]
    boxes = tuple(Box(class_id, req.class_name or "", *b) for b in req.boxes)
    items = []
    for i in range(req.n):
        seed = req.seed + i
        items.append(WorkItem(
            item_id=f"serve-{digest}-{seed}", index=i, generator=req.generator, checkpoint=checkpoint_name,
            width=req.image.width, height=req.image.height, channels=req.image.channels, seed=seed, boxes=boxes,
            style=draw_style(req.style.model_dump(), seed), params=dict(params), domain=req.domain,
        ))
    return items


@serve.deployment
@serve.ingress(api)
class Ingress:
    def __init__(self, generators: dict, checkpoint_roots: list[str], max_request_bytes: int):
        api.state.max_request_bytes = max_request_bytes
        self.handles = generators
        self.roots = normalize_roots(checkpoint_roots)
        self._info: dict[str, dict] = {}

    async def _kind_info(self, kind: str) -> dict:
        if kind not in self._info:
            self._info[kind] = await self.handles[kind].info.remote()
        return self._info[kind]

    @api.get("/healthz")
    async def healthz(self) -> JSONResponse:
        """200 when the ingress and every generator deployment answer within 5 s."""
        status = {}
        for kind, handle in self.handles.items():
            try:
                status[kind] = await asyncio.wait_for(handle.ping.remote(), 5.0)
            except Exception as e:  # noqa: BLE001
                status[kind] = f"unreachable ({type(e).__name__})"
        ok = all(v == "ok" for v in status.values())
        return JSONResponse({"status": "ok" if ok else "degraded", "version": __version__, "generators": status}, status_code=200 if ok else 503)

    @api.get("/v1/generators")
    async def generators(self) -> dict:
        """The served families: classes, device, batching, and the models loaded on the replica that answered."""
        out = []
        for kind, handle in sorted(self.handles.items()):
            info = await handle.info.remote()
            self._info[kind] = info
            out.append(info)
        return {"version": __version__, "checkpoint_roots": len(self.roots), "generators": out}

    @api.post("/v1/generate", response_model=GenerateResponse, responses=_ERRORS)
    async def generate(self, req: GenerateRequest) -> GenerateResponse:
        """Generate `n` images of `class` inside `boxes`; the same inputs and seed give the same image."""
        request_id = uuid.uuid4().hex[:12]
        if req.generator not in self.handles:
            raise ApiError(422, "generator", f"generator {req.generator!r} is not served here; served: {', '.join(sorted(self.handles))}")
        if req.n * req.image.width * req.image.height > MAX_PIXELS_PER_REQUEST:
            raise ApiError(422, "n", f"n * width * height = {req.n * req.image.width * req.image.height} exceeds {MAX_PIXELS_PER_REQUEST} pixels per request")
        info = await self._kind_info(req.generator)
        classes = info.get("classes")
        class_id = req.class_id if req.class_id is not None else 0
        if req.class_name is not None and classes is not None:
            if req.class_name not in classes:
                raise ApiError(422, "class", f"generator {req.generator!r} cannot draw {req.class_name!r}; it draws {', '.join(classes)}")
            if req.class_id is None:
                class_id = classes.index(req.class_name)
        path = None
        if req.checkpoint is not None:
            try:
                path = str(resolve_checkpoint(req.checkpoint, self.roots))
            except CheckpointRefused as e:
                raise ApiError(422, "checkpoint", str(e)) from None
        try:
            params = resolve_param_paths(req.params, self.roots)
        except ParamPathRefused as e:
            raise ApiError(422, e.loc, str(e)) from None
        # the key names the model: resolved paths for the replica, the request's names for listings
        model_key = json.dumps({"checkpoint": path or "", "name": req.checkpoint or "", "params": params, "shown": req.params}, sort_keys=True)
        items = build_items(req, class_id, req.checkpoint, params)
        job = {"model": model_key, "checkpoint_name": req.checkpoint, "params": req.params, "items": items}
        try:
            result = await self.handles[req.generator].options(multiplexed_model_id=model_key).generate.remote(job)
        except Exception as e:  # noqa: BLE001 - the replica died or the call failed: an id, not a trace
            error_id = uuid.uuid4().hex[:12]
            logger.exception("error %s: request %s to %s failed", error_id, request_id, req.generator, exc_info=e)
            raise ApiError(500, None, f"generator {req.generator!r} is unavailable; error id {error_id}", error_id) from None
        if not result["ok"]:
            raise ApiError(result["status"], result.get("field"), result["message"], result.get("error_id"))
        return GenerateResponse(request_id=request_id, generator=req.generator, checkpoint=req.checkpoint, images=result["images"])


# --- the application builder -----------------------------------------------------------


def _cluster_has_gpu() -> bool:
    import ray

    return ray.is_initialized() and ray.cluster_resources().get("GPU", 0) > 0


def deployment_options(kind: str, gc: GeneratorConfig, has_gpu: bool) -> dict[str, Any]:
    """Serve options of one family's deployment: a GPU per replica when the family
    wants one and the cluster has one (unless the config says how many)."""
    cls = _import(gc.import_path)
    num_gpus = gc.num_gpus if gc.num_gpus is not None else (1.0 if has_gpu and getattr(cls, "wants_gpu", False) else 0.0)
    options: dict[str, Any] = {
        "name": f"generator-{kind}",
        "ray_actor_options": {"num_cpus": gc.num_cpus, "num_gpus": num_gpus},
        "max_ongoing_requests": gc.max_ongoing_requests,
    }
    if gc.autoscaling is not None:
        options["autoscaling_config"] = gc.autoscaling.model_dump()
    else:
        options["num_replicas"] = gc.num_replicas
    return options


def build_app(args: dict | None = None):
    """Application builder for `serve run serve/config.yaml` (and `factory serve`)."""
    cfg = AppConfig.model_validate(args or {})
    # refuse unsupported roots at deploy time, and resolve relative ones here, once, so
    # every replica (whatever its working folder) checks against the same folders
    roots = [str(p) for p in normalize_roots(cfg.checkpoint_roots)]
    has_gpu = _cluster_has_gpu()
    generators = {}
    for kind, gc in cfg.kinds().items():
        options = deployment_options(kind, gc, has_gpu)
        generators[kind] = GeneratorServer.options(**options).bind(kind, gc.model_dump(), roots, [s.model_dump() for s in cfg.scorers])
    ing = cfg.ingress
    return Ingress.options(
        name="ingress", num_replicas=ing.num_replicas, max_ongoing_requests=ing.max_ongoing_requests,
        ray_actor_options={"num_cpus": ing.num_cpus},
    ).bind(generators, roots, cfg.max_request_bytes)


def config_args(path: str | None = None) -> dict:
    """The `args` of the first application in a serve config file (default: serve/config.yaml)."""
    from pathlib import Path

    import yaml

    p = Path(path) if path else Path(__file__).with_name("config.yaml")
    data = yaml.safe_load(p.read_text())
    apps = data.get("applications") or []
    if not apps:
        raise ValueError(f"{p}: no applications")
    return dict(apps[0].get("args") or {})
