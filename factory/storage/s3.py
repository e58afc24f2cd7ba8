"""The one S3 configuration: endpoint, region, credentials and retries, for the
boto3 client every storage call uses and for the pyarrow filesystem handed to
Ray Data's Parquet reader.

Credentials are resolved in one place, `_credentials`: explicit ones given to
`configure_storage` (this process only), else the standard AWS chain (AWS_*
variables, config files, instance roles) of whichever process asks. They are
never put into anything sent to Ray workers: a worker resolves its own.

Transient errors (connection resets and timeouts, HTTP 5xx, throttling) are
retried by botocore's `standard` retry mode (exponential backoff with jitter, at
most 20 s between tries) up to `max_attempts` tries per request (env
FACTORY_S3_MAX_ATTEMPTS, default 10: about a minute of outage is ridden out);
only then does the request fail, with one `StorageError` naming the URI.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import urlparse

RETRY_MODE = "standard"  # botocore's: backoff with jitter on connection errors, 5xx, throttling, timeouts


@dataclass(frozen=True)
class StorageConfig:
    endpoint_url: str | None = None
    region: str | None = None
    # explicit credentials (else boto3's usual chain: AWS_* variables, files, roles)
    access_key: str | None = None
    secret_key: str | None = None
    session_token: str | None = None
    max_attempts: int | None = None  # tries per request; None: FACTORY_S3_MAX_ATTEMPTS or 10


_config = StorageConfig()


def configure_storage(endpoint_url: str | None = None, region: str | None = None, access_key: str | None = None,
                      secret_key: str | None = None, session_token: str | None = None,
                      max_attempts: int | None = None) -> None:
    """Override the S3 endpoint (otherwise AWS_ENDPOINT_URL / boto3 defaults apply),
    the retry budget and, for this process only, the credentials."""
    set_storage_config(StorageConfig(endpoint_url, region, access_key, secret_key, session_token, max_attempts))


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


def max_attempts() -> int:
    return _config.max_attempts or int(os.environ.get("FACTORY_S3_MAX_ATTEMPTS", "10"))


def _credentials() -> dict[str, str | None]:
    """Explicitly configured credentials, or {} for the standard AWS chain."""
    if _config.access_key and _config.secret_key:
        return {"access_key": _config.access_key, "secret_key": _config.secret_key,
                "session_token": _config.session_token}
    return {}


@lru_cache(maxsize=4)
def client():
    import boto3
    from botocore.config import Config

    c = _credentials()
    creds = {"aws_access_key_id": c["access_key"], "aws_secret_access_key": c["secret_key"],
             "aws_session_token": c["session_token"]} if c else {}
    return boto3.client(
        "s3", endpoint_url=endpoint(), region_name=region(), **creds,
        config=Config(retries={"max_attempts": max_attempts(), "mode": RETRY_MODE}, connect_timeout=5,
                      read_timeout=60, max_pool_connections=32),
    )


def arrow_filesystem():
    """A pyarrow S3 filesystem with the same endpoint, region and retry budget.
    Ray Data pickles it into its read tasks, so it carries no credentials: each
    task resolves its own from the AWS chain."""
    import pyarrow.fs as pafs

    kwargs = {"region": region(), "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=max_attempts())}
    if endpoint():
        parsed = urlparse(endpoint())
        kwargs["endpoint_override"] = parsed.netloc or parsed.path
        kwargs["scheme"] = parsed.scheme or "https"
    return pafs.S3FileSystem(**kwargs)
