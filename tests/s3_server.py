"""A real S3-compatible HTTP server for tests: moto's server in a subprocess on
127.0.0.1, reached through boto3 with an endpoint URL (no in-process mocking).

Import the fixtures into a test module: `from tests.s3_server import s3_server, s3_bucket`.
`FlakyProxy` puts a real outage in front of the server (tests/test_storage_retry.py,
benchmarks/outage.py).
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import threading
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


class FlakyProxy:
    """127.0.0.1:port -> upstream (a plain TCP relay). `outage(seconds)` takes the
    endpoint down: the connections open at that moment are reset (a request in
    flight fails half-way), and so is every connection accepted while it lasts."""

    def __init__(self, upstream: str):
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.down_until = 0.0
        self.resets = 0  # connections reset by an outage (open ones and refused new ones)
        self._open: set[socket.socket] = set()  # client-side sockets being relayed
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @staticmethod
    def _reset(conn: socket.socket) -> None:
        try:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()  # connection reset by peer
        except OSError:
            pass

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            if time.time() < self.down_until:
                self._reset(conn)
                self.resets += 1
                continue
            try:
                up = socket.create_connection(self.upstream)
            except OSError:
                self._reset(conn)
                continue
            with self._lock:
                self._open.add(conn)
            for a, b in ((conn, up), (up, conn)):
                threading.Thread(target=self._pipe, args=(a, b, conn), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket, client: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._open.discard(client)
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def outage(self, seconds: float) -> None:
        self.down_until = time.time() + seconds
        with self._lock:
            cut, self._open = list(self._open), set()
        for conn in cut:  # (a close() would not wake the relay thread blocked in recv on it)
            try:
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.resets += 1

    def close(self) -> None:
        self.sock.close()


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
