"""The serve app's configuration: the `args` of serve/config.yaml (validated, with
every knob's default), its `http_options`, and the helpers that read them.

`factory serve` and `serve run serve/config.yaml` read the same file, so both
apply the same HTTP options (host, port, request_timeout_s) and app args.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from factory.generators.base import registered_kinds
from serve.budget import WorkCost
from serve.schemas import MAX_N

APP_NAME = "factory"
CONFIG_FILE = Path(__file__).with_name("config.yaml")


def package_version() -> str:
    # from the installed metadata, not `factory.__version__`: an editable install made
    # before factory/__init__.py existed maps `factory` as a namespace package
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("defect-factory")
    except PackageNotFoundError:
        return "unknown"


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
    max_ongoing_requests: int = Field(32, ge=1, description="requests one replica holds at once")
    max_queued_requests: int = Field(32, ge=1, description="requests the ingress holds for the family beyond that; then 503")
    retry_after_s: int = Field(5, ge=1, description="the Retry-After of a 503 when the family is saturated")
    cost: WorkCost = WorkCost()
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
    registry_roots: list[str] = Field(default_factory=list, description="where request NAME@VERSION references resolve "
                                      "(paths, file:// or s3://); none: such references are refused")
    serve_all_kinds: bool = Field(True, description="serve every registered generator kind")
    defaults: GeneratorConfig = GeneratorConfig()
    generators: dict[str, dict[str, Any]] = Field(default_factory=dict, description="per-kind overrides of defaults")
    scorers: list[ScorerConfig] = Field(default_factory=list)
    max_request_bytes: int = Field(64 * 1024, ge=1024, le=16 * 1024 * 1024)
    ingress: IngressConfig = IngressConfig()

    def kinds(self) -> dict[str, GeneratorConfig]:
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


def import_object(path: Any) -> Any:
    """`module:Class` -> the class. Python callers may pass the class itself (it
    reaches the replicas pickled, e.g. a test-only generator)."""
    if not isinstance(path, str):
        return path
    module, _, attr = path.partition(":")
    if not module or not attr:
        raise ValueError(f"import path {path!r} must look like module:Class")
    return getattr(importlib.import_module(module), attr)


def _read(path: str | Path | None) -> tuple[Path, dict]:
    p = Path(path) if path else CONFIG_FILE
    data = yaml.safe_load(p.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{p}: not a Serve config (a mapping with `applications`)")
    return p, data


def config_args(path: str | Path | None = None) -> dict:
    """The `args` of the first application in a serve config file (default: serve/config.yaml)."""
    p, data = _read(path)
    apps = data.get("applications") or []
    if not apps:
        raise ValueError(f"{p}: no applications")
    return dict(apps[0].get("args") or {})


def http_options(path: str | Path | None = None, host: str | None = None, port: int | None = None) -> dict:
    """The file's `http_options` (request_timeout_s included), with host/port overridden when given."""
    _, data = _read(path)
    opts = dict(data.get("http_options") or {})
    if host is not None:
        opts["host"] = host
    if port is not None:
        opts["port"] = port
    return opts
