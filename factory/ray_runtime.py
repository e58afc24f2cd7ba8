"""The one way the factory starts or joins Ray, and the one Job Submission client.

Every command, job and trainer calls `ensure_ray()`: it joins `address` or
`RAY_ADDRESS` when one is given (a real cluster, or the cluster a Ray job runs on),
else starts a quiet embedded cluster for this process (no dashboard, no usage
stats, no auth token). Ray Data's console chatter is turned off here too, since
the factory shows its own progress.
"""

from __future__ import annotations

import logging
import os

DEFAULT_JOB_SERVER = "http://127.0.0.1:8265"

_dashboard_url: str | None = None  # set when this process started a cluster with a dashboard


class JobServerError(RuntimeError):
    """No Ray job server answers at the address; the message names it."""


def ensure_ray(address: str | None = None, *, dashboard: bool = False, num_cpus: int | None = None) -> None:
    """Join `address` / RAY_ADDRESS, else start an embedded cluster (idempotent)."""
    global _dashboard_url
    import ray

    if not ray.is_initialized():
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        address = address or os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False, configure_logging=False)
        else:
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")
            ctx = ray.init(include_dashboard=dashboard, num_cpus=num_cpus, logging_level=logging.WARNING,
                           log_to_driver=False, configure_logging=False)
            url = getattr(ctx, "dashboard_url", None)
            _dashboard_url = (url if "://" in url else f"http://{url}") if url else None
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.enable_auto_log_stats = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)


def job_server_address(address: str | None = None) -> str:
    """`address`, else RAY_ADDRESS, else this process's own cluster's job server when it
    started one, else the default local head."""
    return address or os.environ.get("RAY_ADDRESS") or _dashboard_url or DEFAULT_JOB_SERVER


def job_client(address: str | None = None):
    """A `JobSubmissionClient` for the address (see `job_server_address`); a clear
    `JobServerError` when nothing answers there."""
    from ray.job_submission import JobSubmissionClient

    where = job_server_address(address)
    try:
        return JobSubmissionClient(where)
    except Exception as e:  # noqa: BLE001 - ray raises ConnectionError/RuntimeError/ValueError variants
        raise JobServerError(f"no Ray job server answers at {where} ({e})") from e
