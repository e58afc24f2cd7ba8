"""A real S3-compatible HTTP server for tests: moto's server in a subprocess on
127.0.0.1, reached through boto3 with an endpoint URL (no in-process mocking).

Import the fixtures into a test module: `from tests.s3_server import s3_server, s3_bucket`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid

import pytest

# The test server's dummy credentials, set when this module is imported, before any
# Ray cluster starts: Ray workers resolve credentials from their own environment
# (the driver never hands them over), and an embedded cluster's workers inherit
# the environment the driver had when it started them.
for _k, _v in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
               "AWS_EC2_METADATA_DISABLED": "true"}.items():
    os.environ.setdefault(_k, _v)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto(env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env={**os.environ, **(env or {})},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=1)
            return proc, url
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError("moto server exited at start")
            time.sleep(0.1)
    stop_moto(proc)
    raise RuntimeError("moto server did not start in 30 s")


def stop_moto(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="session")
def s3_server():
    """The server's endpoint URL; storage and the test credentials point at it for the session."""
    from factory.storage import configure_storage

    proc, url = start_moto()
    configure_storage(endpoint_url=url)
    yield url
    configure_storage()
    stop_moto(proc)


@pytest.fixture
def s3_bucket(s3_server) -> str:
    """A fresh, empty bucket per test; returns its name."""
    import boto3

    name = f"t-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket=name)
    return name
