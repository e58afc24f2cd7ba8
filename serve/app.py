"""The Ray Serve application builder: `build_app(args)` for `serve run
serve/config.yaml` and `factory serve`.

    serve/config.py       the args (AppConfig) and the file's http_options
    serve/ingress.py      the FastAPI ingress: validation, work budget, health
    serve/deployments.py  GeneratorServer: one deployment per generator family
    serve/errors.py       the one error shape; serve/budget.py the work budget

Every registered generator kind (`factory.generators.base.registered_kinds()`) is
served the same way, so families that land later are served without changes here.
"""

from __future__ import annotations

from typing import Any

from serve.checkpoints import normalize_registry_roots, normalize_roots
from serve.config import APP_NAME, AppConfig, GeneratorConfig, config_args, http_options, import_object
from serve.deployments import GeneratorServer
from serve.ingress import Ingress

__all__ = ["APP_NAME", "build_app", "config_args", "deployment_options", "http_options"]


def _cluster_has_gpu() -> bool:
    import ray

    return ray.is_initialized() and ray.cluster_resources().get("GPU", 0) > 0


def deployment_options(kind: str, gc: GeneratorConfig, has_gpu: bool) -> dict[str, Any]:
    """Serve options of one family's deployment: a GPU per replica when the family
    wants one and the cluster has one (unless the config says how many); at most
    `max_ongoing_requests` per replica and `max_queued_requests` waiting at the
    ingress, beyond which the ingress answers 503."""
    cls = import_object(gc.import_path)
    num_gpus = gc.num_gpus if gc.num_gpus is not None else (1.0 if has_gpu and getattr(cls, "wants_gpu", False) else 0.0)
    options: dict[str, Any] = {
        "name": f"generator-{kind}",
        "ray_actor_options": {"num_cpus": gc.num_cpus, "num_gpus": num_gpus},
        "max_ongoing_requests": gc.max_ongoing_requests,
        "max_queued_requests": gc.max_queued_requests,
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
    registry = normalize_registry_roots(cfg.registry_roots)
    has_gpu = _cluster_has_gpu()
    generators, limits = {}, {}
    for kind, gc in cfg.kinds().items():
        options = deployment_options(kind, gc, has_gpu)
        generators[kind] = GeneratorServer.options(**options).bind(kind, gc.model_dump(), roots,
                                                                   [s.model_dump() for s in cfg.scorers], registry)
        limits[kind] = {"cost": gc.cost.model_dump(), "retry_after_s": gc.retry_after_s}
    ing = cfg.ingress
    return Ingress.options(
        name="ingress", num_replicas=ing.num_replicas, max_ongoing_requests=ing.max_ongoing_requests,
        ray_actor_options={"num_cpus": ing.num_cpus},
    ).bind(generators, limits, roots, cfg.max_request_bytes, registry)
