"""Keeping ultralytics (and anything else a retrain imports) off the network.

There is no hub access on the target machines: `setup_ultralytics_offline` sets
what ultralytics needs never to ask (env, settings, a local font), and
`network_attempts` records every attempt to reach beyond this machine, because
libraries swallow their own failed downloads and only a record proves nothing
tried.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

OFFLINE_ENV = {
    "YOLO_OFFLINE": "1",
    "YOLO_AUTOINSTALL": "0",
    "HF_HUB_OFFLINE": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "AWS_EC2_METADATA_DISABLED": "true",
}

_GUARDS: list[list[str]] = []


def _is_local_host(host: Any) -> bool:
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    host = str(host)
    if host in ("localhost", "", socket.gethostname()):
        return True
    try:
        ip = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    if ip.is_loopback or ip.is_unspecified:
        return True
    with contextlib.suppress(Exception):  # this machine's own addresses (a Ray node talks to itself on them)
        import ray

        if ray.is_initialized() and host == ray.util.get_node_ip_address():
            return True
    return False


def _audit(event: str, args: tuple) -> None:
    if not _GUARDS:
        return
    if event == "socket.connect":
        addr = args[1]
        if isinstance(addr, tuple) and addr and not _is_local_host(addr[0]):
            for g in _GUARDS:
                g.append(f"connect {addr[0]}:{addr[1] if len(addr) > 1 else ''}")
    elif event == "socket.getaddrinfo":
        if args and args[0] is not None and not _is_local_host(args[0]):
            for g in _GUARDS:
                g.append(f"resolve {args[0]!r}")


@contextlib.contextmanager
def network_attempts():
    """Record every attempt (DNS lookup or connect) to reach beyond this machine
    while the block runs; yields the list the attempts are appended to."""
    if not getattr(sys, "_factory_net_audit", False):  # audit hooks cannot be removed: install once
        sys.addaudithook(_audit)
        sys._factory_net_audit = True
    attempts: list[str] = []
    _GUARDS.append(attempts)
    try:
        yield attempts
    finally:
        _GUARDS.remove(attempts)


def setup_ultralytics_offline(config_dir: str | Path | None = None) -> Path:
    """Everything ultralytics needs to never touch the network; call before importing it."""
    for k, v in OFFLINE_ENV.items():
        os.environ.setdefault(k, v)
    cdir = Path(config_dir or os.environ.get("YOLO_CONFIG_DIR") or Path(tempfile.gettempdir()) / "factory-yolo-config")
    os.environ["YOLO_CONFIG_DIR"] = str(cdir)
    font = cdir / "Ultralytics" / "Arial.ttf"
    if not font.exists():  # otherwise it asks github for Arial.ttf while checking a data set
        import matplotlib

        font.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf", font)
    from ultralytics import settings

    off = {k: False for k in ("sync", "raytune", "tensorboard", "mlflow", "wandb", "clearml", "comet", "dvc", "neptune")}
    settings.update({k: v for k, v in off.items() if k in settings})
    return cdir
