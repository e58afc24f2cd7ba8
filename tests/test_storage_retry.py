"""Transient S3 errors are retried (backoff with jitter) until the retry deadline
(FACTORY_S3_RETRY_SECONDS) has passed, then one StorageError names the URI and says
how many tries over how long it made. The outage
is real: a TCP proxy in front of moto's server that resets every connection
while it is "down"."""

from __future__ import annotations

import time

import pytest
from s3_server import FlakyProxy, s3_bucket, s3_server  # noqa: F401

from factory.storage import StorageError
from factory.storage import uri as U


@pytest.fixture
def proxy(s3_server):
    p = FlakyProxy(s3_server)
    before = U.storage_config()
    yield p
    p.close()
    U.set_storage_config(before)


def test_sub_second_outage_is_ridden_out(proxy, s3_bucket):
    U.configure_storage(endpoint_url=proxy.url, retry_seconds=30)
    uri = f"s3://{s3_bucket}/x/a.bin"
    U.write_bytes(uri, b"before")
    for step in (lambda: U.write_bytes(uri, b"during"), lambda: U.read_bytes(uri), lambda: U.list_files(f"s3://{s3_bucket}/x")):
        proxy.outage(0.8)
        t0 = time.time()
        step()  # no StorageError: retried until the endpoint is back
        assert time.time() - t0 >= 0.5
    assert proxy.resets >= 3
    assert U.read_bytes(uri) == b"during"


def test_parallel_puts_ride_out_an_outage_together(proxy, s3_bucket):
    """botocore's standard mode shares one retry quota per client: sixteen parallel
    PUTs through a 0.5 s reset outage all failed within 0.3 s. The deadline is per
    request: a 3 s outage at publish concurrency (16) is ridden out by every PUT."""
    from concurrent.futures import ThreadPoolExecutor

    U.configure_storage(endpoint_url=proxy.url, retry_seconds=30)
    U.write_bytes(f"s3://{s3_bucket}/p/warm.bin", b"x")  # the client exists before the outage
    proxy.outage(3)
    t0 = time.time()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: U.write_bytes(f"s3://{s3_bucket}/p/{i}.bin", bytes([i])), range(16)))
    assert time.time() - t0 >= 2.5
    assert proxy.resets >= 16
    assert all(U.read_bytes(f"s3://{s3_bucket}/p/{i}.bin") == bytes([i]) for i in range(16))


def test_outage_longer_than_the_deadline_is_one_clear_error(proxy, s3_bucket):
    U.configure_storage(endpoint_url=proxy.url, retry_seconds=1.5)
    proxy.outage(60)
    t0 = time.time()
    with pytest.raises(StorageError, match=rf"s3://{s3_bucket}/y.bin: cannot reach the S3 endpoint .*still failing after "
                                           rf"\d+ tries over 1\.\d s, the retry deadline \(FACTORY_S3_RETRY_SECONDS=1\.5\)"):
        U.write_bytes(f"s3://{s3_bucket}/y.bin", b"x")
    assert 1.4 <= time.time() - t0 < 10
    assert proxy.resets >= 3


@pytest.mark.parametrize("where", ["file", "s3"])
def test_a_claim_whose_answer_was_lost_is_still_won(where, tmp_path, request):
    """An outage can cut the answer to a conditional PUT that the store kept; the
    retry then gets 412. The object holding exactly this call's bytes (a unique run or
    publication id) means this call won; anyone else's bytes mean it lost."""
    uri = f"s3://{request.getfixturevalue('s3_bucket')}/lock.json" if where == "s3" else str(tmp_path / "lock.json")
    assert U.create_exclusive(uri, b'{"run_id": "a"}')
    assert U.create_exclusive(uri, b'{"run_id": "a"}')  # the retry of a stored put: ours
    assert not U.create_exclusive(uri, b'{"run_id": "b"}')  # another run's claim
