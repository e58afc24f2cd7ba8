"""The one S3 configuration: endpoint, region, credentials and retries, for the
boto3 client every storage call uses and for the pyarrow filesystem handed to
Ray Data's Parquet reader.

Credentials are resolved in one place, `_credentials`: explicit ones given to
`configure_storage` (this process only), else the standard AWS chain (AWS_*
variables, config files, instance roles) of whichever process asks. They are
never put into anything sent to Ray workers: a worker resolves its own.

Transient errors (connection resets and timeouts, HTTP 5xx, throttling: botocore's
standard retry conditions) are retried against a deadline, not a try count: every
request keeps trying, with exponential backoff and full jitter (0.1 s doubling to
at most 5 s between tries), until `retry_seconds` have passed since its first send
(env FACTORY_S3_RETRY_SECONDS, default 120). botocore's own standard mode gives up
far sooner under concurrency: its retry quota is shared by the client, so sixteen
parallel PUTs through a half-second outage drained it within 0.3 s. Only after the
deadline does the request fail, with one `StorageError` that names the URI and says
how many tries over how many seconds it made.
"""

from __future__ import annotations

import os
import random
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, TypedDict
from urllib.parse import urlparse

if TYPE_CHECKING:  # (boto3, botocore and pyarrow load on first use)
    import pyarrow.fs as pafs
    from mypy_boto3_s3 import S3Client

DEFAULT_RETRY_SECONDS = 120.0


@dataclass(frozen=True)
class StorageConfig:
    endpoint_url: str | None = None
    region: str | None = None
    # explicit credentials (else boto3's usual chain: AWS_* variables, files, roles)
    access_key: str | None = None
    secret_key: str | None = None
    session_token: str | None = None
    retry_seconds: float | None = None  # how long a request keeps retrying; None: FACTORY_S3_RETRY_SECONDS or 120


_config = StorageConfig()


def configure_storage(endpoint_url: str | None = None, region: str | None = None, access_key: str | None = None,
                      secret_key: str | None = None, session_token: str | None = None,
                      retry_seconds: float | None = None) -> None:
    """Override the S3 endpoint (otherwise AWS_ENDPOINT_URL / boto3 defaults apply),
    the retry deadline and, for this process only, the credentials."""
    set_storage_config(StorageConfig(endpoint_url, region, access_key, secret_key, session_token, retry_seconds))


def storage_config() -> StorageConfig:
    return _config


def set_storage_config(config: StorageConfig) -> None:
    """Install a config captured elsewhere (a driver's endpoint, inside a Ray worker)."""
    global _config
    if config != _config:
        _config = config
        client.cache_clear()


def endpoint() -> str | None:
    return _config.endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")


def region() -> str:
    return _config.region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


def retry_seconds() -> float:
    if _config.retry_seconds is not None:
        return _config.retry_seconds
    return float(os.environ.get("FACTORY_S3_RETRY_SECONDS", DEFAULT_RETRY_SECONDS))


_gave_up = threading.local()  # the last request this thread gave up on: (tries, seconds), for the error message


def last_give_up() -> tuple[int, float] | None:
    return getattr(_gave_up, "value", None)


class DeadlineRetry:
    """botocore `needs-retry` handler: retry what the standard conditions call
    transient until `seconds` after the request's first send; no shared quota."""

    def __init__(self, seconds: float):
        from botocore.retries import standard

        self.seconds = seconds
        self.conditions = standard.StandardRetryConditions(max_attempts=1_000_000)
        self.adapter = standard.RetryEventAdapter()

    def __call__(self, **kwargs: Any) -> float | None:
        context = self.adapter.create_retry_context(**kwargs)
        start: float = context.request_context.setdefault("factory_first_send", time.monotonic())
        if context.attempt_number == 1:
            _gave_up.value = None
        if not self.conditions.is_retryable(context):
            return None
        left = start + self.seconds - time.monotonic()
        if left <= 0:
            _gave_up.value = (context.attempt_number, round(time.monotonic() - start, 1))
            return None
        return min(left, random.uniform(0, min(5.0, 0.1 * 2.0 ** (context.attempt_number - 1))))


class Credentials(TypedDict):
    """boto3's credential arguments: all None for the standard AWS chain."""

    aws_access_key_id: str | None
    aws_secret_access_key: str | None
    aws_session_token: str | None


def _credentials() -> Credentials:
    """Explicitly configured credentials, or None each for the standard AWS chain."""
    if _config.access_key and _config.secret_key:
        return Credentials(aws_access_key_id=_config.access_key, aws_secret_access_key=_config.secret_key,
                           aws_session_token=_config.session_token)
    return Credentials(aws_access_key_id=None, aws_secret_access_key=None, aws_session_token=None)


@lru_cache(maxsize=4)
def client() -> S3Client:
    import boto3
    from botocore.config import Config

    s3 = boto3.client(
        "s3", endpoint_url=endpoint(), region_name=region(), **_credentials(),
        config=Config(retries={"mode": "standard"}, connect_timeout=5, read_timeout=60, max_pool_connections=32),
    )
    # botocore's standard handler (shared quota, try count) is replaced by the deadline
    s3.meta.events.unregister("needs-retry.s3", unique_id="retry-config-s3")
    # (botocore-stubs type every handler as returning None; a needs-retry handler returns the delay)
    s3.meta.events.register("needs-retry.s3", DeadlineRetry(retry_seconds()),  # type: ignore[arg-type]
                            unique_id="retry-config-s3")
    return s3


def arrow_filesystem() -> pafs.S3FileSystem:
    """A pyarrow S3 filesystem with the same endpoint and region; its AWS standard
    retry strategy counts tries, so it gets about as many as the deadline allows.
    Ray Data pickles it into its read tasks, so it carries no credentials: each
    task resolves its own from the AWS chain."""
    import pyarrow.fs as pafs

    kwargs: dict[str, Any] = {"region": region(), "retry_strategy": pafs.AwsStandardS3RetryStrategy(
        max_attempts=max(3, int(retry_seconds() / 5)))}
    url = endpoint()
    if url:
        parsed = urlparse(url)
        kwargs["endpoint_override"] = parsed.netloc or parsed.path
        kwargs["scheme"] = parsed.scheme or "https"
    return pafs.S3FileSystem(**kwargs)
