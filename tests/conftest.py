"""Shared fixtures: offline environment, one embedded Ray cluster per session,
paths to the real data sets in ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Nothing in the tests may reach the internet; set the libraries' offline switches
# before any of them is imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
# a tiny test job that makes no progress for minutes is stuck: fail it then, not after Ray Data's default 30
os.environ.setdefault("RAY_DATA_EXECUTION_NO_PROGRESS_TIMEOUT_S", "300")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FACTORY_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"real data sets not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="module")
def ray_local():
    """An embedded Ray cluster per test module (starting one costs a few seconds).
    Not one per session: Ray Train leaves its controller and dataset actors alive
    after `fit()` in the driver that ran it (a `factory` command is its own driver,
    so there they go when it exits), and once, in CI, a Ray Data job in a later
    module waited 30 minutes for an actor that never started. A fresh cluster per
    module keeps one module's leftovers from starving the next."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def demo_spec_path() -> Path:
    return REPO / "specs" / "demo-pv-el.yaml"


# `pytest -m "not slow"`: the quick loop while changing code (the full suite is CI's).
# Slow: whatever starts Ray (the `ray_local` fixture, Serve, Ray Train, a cluster),
# a browser or a benchmark script, and the few long numeric tests marked by hand.
SLOW_MODULES = {"test_benchmarks", "test_cluster", "test_reports", "test_serve", "test_serve_hostile",
                "test_gpu_script", "test_all_generators_e2e"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if ("ray_local" in item.fixturenames or item.get_closest_marker("ray") or item.get_closest_marker("cluster")
                or item.module.__name__ in SLOW_MODULES):
            item.add_marker(pytest.mark.slow)
