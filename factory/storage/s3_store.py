"""`S3Store`: `s3://bucket/prefix` through boto3 (storage/s3.py: endpoint,
credentials, deadline retries). Not pyarrow.fs or fsspec: the run lock and the
manifest are created conditionally (`If-None-Match: *`), which pyarrow's S3
filesystem cannot ask for, and the deadline retry is a boto3 hook; pyarrow's
filesystem serves only Ray Data's Parquet reader."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator
from urllib.parse import urlparse

from factory.storage import s3
from factory.storage.store import StorageError, Store

if TYPE_CHECKING:  # (botocore loads on first use)
    from botocore.exceptions import ClientError
    from mypy_boto3_s3.type_defs import ListObjectsV2OutputTypeDef, ObjectIdentifierTypeDef

_NOT_FOUND = ("404", "NoSuchKey", "NotFound")
_CLIENT_REASONS = {
    "NoSuchBucket": "bucket does not exist",
    "NoSuchKey": "not found",
    "404": "not found",
    "InvalidAccessKeyId": "bad credentials (access key not recognized)",
    "SignatureDoesNotMatch": "bad credentials (signature does not match)",
    "AccessDenied": "access denied",
    "403": "access denied or bad credentials",
}


def split_s3(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if not parsed.netloc:
        raise StorageError(f"{uri}: an s3 URI needs a bucket (s3://bucket/prefix)")
    return parsed.netloc, parsed.path.lstrip("/")


def _code(e: ClientError) -> str:
    """A botocore ClientError's error code."""
    return e.response.get("Error", {}).get("Code", "")


def _gave_up_how() -> str:
    """What the retrying really did before this error (this thread's last give-up)."""
    tries = s3.last_give_up()
    if tries is None:
        return f"gave up within the retry deadline of {s3.retry_seconds():g} s (FACTORY_S3_RETRY_SECONDS)"
    return (f"still failing after {tries[0]} tries over {tries[1]:g} s, the retry deadline "
            f"(FACTORY_S3_RETRY_SECONDS={s3.retry_seconds():g})")


class S3Store(Store):
    remote = True

    def reason(self, e: Exception) -> str | None:
        # botocore's timeouts are OSErrors too: they are named before the base's OSError
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            ConnectionClosedError,
            ConnectTimeoutError,
            EndpointConnectionError,
            NoCredentialsError,
            ReadTimeoutError,
        )

        if isinstance(e, ClientError):
            return _CLIENT_REASONS.get(_code(e), f"{_code(e)}: {e}")
        if isinstance(e, (EndpointConnectionError, ConnectionClosedError, ConnectTimeoutError, ReadTimeoutError)):
            return (f"cannot reach the S3 endpoint {s3.endpoint() or '(AWS default)'} "
                    f"({_gave_up_how()}: {type(e).__name__})")
        if isinstance(e, NoCredentialsError):
            return "no AWS credentials found (set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
        if isinstance(e, BotoCoreError):
            return str(e)
        return super().reason(e)

    def on_disk(self, uri: str) -> Path | None:
        return None

    def _pages(self, uri: str, **kwargs: Any) -> Iterator[tuple[str, str, ListObjectsV2OutputTypeDef]]:
        """(bucket, the listed key prefix ending in "/", page) for each ListObjectsV2 page under `uri`."""
        bucket, key = split_s3(uri)
        prefix = key.rstrip("/") + "/" if key else ""
        for page in s3.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, **kwargs):
            yield bucket, prefix, page

    def read_bytes(self, uri: str) -> bytes:
        with self.errors(uri):
            bucket, key = split_s3(uri)
            return s3.client().get_object(Bucket=bucket, Key=key)["Body"].read()

    def iter_lines(self, uri: str) -> Iterator[bytes]:
        with self.errors(uri):
            bucket, key = split_s3(uri)
            yield from s3.client().get_object(Bucket=bucket, Key=key)["Body"].iter_lines()

    def write_bytes(self, uri: str, data: bytes) -> None:
        with self.errors(uri):
            bucket, key = split_s3(uri)
            s3.client().put_object(Bucket=bucket, Key=key, Body=data)

    def write_file(self, uri: str, local: str | Path) -> None:
        with self.errors(uri):  # a multipart upload
            bucket, key = split_s3(uri)
            s3.client().upload_file(str(local), bucket, key)

    def create_exclusive(self, uri: str, data: bytes) -> bool:
        """A conditional put (`If-None-Match: *`)."""
        from botocore.exceptions import ClientError

        with self.errors(uri):
            bucket, key = split_s3(uri)
            try:
                s3.client().put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
                return True
            except ClientError as e:
                if _code(e) not in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                    raise
            try:
                return s3.client().get_object(Bucket=bucket, Key=key)["Body"].read() == data
            except ClientError:  # (a racing writer's object is not readable yet: not ours)
                return False

    def exists(self, uri: str) -> bool:
        from botocore.exceptions import ClientError

        with self.errors(uri):
            bucket, key = split_s3(uri)
            try:
                s3.client().head_object(Bucket=bucket, Key=key)
                return True
            except ClientError as e:
                if _code(e) in _NOT_FOUND:
                    return False
                raise

    def is_folder(self, uri: str) -> bool:
        with self.errors(uri):
            return any(page.get("Contents") for _, _, page in self._pages(uri, PaginationConfig={"MaxItems": 1}))

    def list_files(self, uri: str) -> list[str]:
        with self.errors(uri):
            return sorted(o["Key"][len(prefix):] for _, prefix, page in self._pages(uri) for o in page.get("Contents", []))

    def list_dirs(self, uri: str) -> list[str]:
        with self.errors(uri):
            return sorted(p["Prefix"][len(prefix):].rstrip("/")
                          for _, prefix, page in self._pages(uri, Delimiter="/") for p in page.get("CommonPrefixes", []))

    def delete(self, uri: str) -> None:
        with self.errors(uri):
            bucket, key = split_s3(uri)
            s3.client().delete_object(Bucket=bucket, Key=key)

    def delete_prefix(self, uri: str) -> None:
        with self.errors(uri):  # a page of up to 1000 keys at a time, one DeleteObjects request each
            for bucket, _, page in self._pages(uri):
                keys: list[ObjectIdentifierTypeDef] = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                if keys:
                    out = s3.client().delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
                    if out.get("Errors"):
                        e = out["Errors"][0]
                        raise StorageError(f"s3://{bucket}/{e['Key']}: delete failed: {e.get('Message', e.get('Code'))}")

    def prune(self, uri: str) -> None:
        """Nothing: a prefix is gone with its last object."""

    def move(self, src: str, dst: str) -> None:
        """A server-side copy, then a delete."""
        with self.errors(src):
            (sb, sk), (db, dk) = split_s3(src), split_s3(dst)
            s3.client().copy_object(Bucket=db, Key=dk, CopySource={"Bucket": sb, "Key": sk})
            s3.client().delete_object(Bucket=sb, Key=sk)

    def check_root(self, uri: str) -> None:
        """A missing bucket, bad credentials or an unreachable endpoint."""
        from botocore.exceptions import ClientError

        with self.errors(uri):
            bucket, _ = split_s3(uri)
            try:
                s3.client().head_bucket(Bucket=bucket)
            except ClientError as e:
                if _code(e) in ("404", "NoSuchBucket", "NotFound"):
                    raise StorageError(f"{uri}: bucket {bucket!r} does not exist") from e
                raise

    def arrow_filesystem(self, uri: str) -> tuple[Any, str]:
        bucket, key = split_s3(uri)
        return s3.arrow_filesystem(), f"{bucket}/{key}"

    @contextlib.contextmanager
    def local_dir(self, uri: str) -> Iterator[Path]:
        """A temporary download, removed afterwards."""
        tmp = Path(tempfile.mkdtemp(prefix="factory-"))
        try:
            base = uri.rstrip("/")
            for name in self.list_files(uri):
                dest = tmp / name
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(self.read_bytes(f"{base}/{name}"))
            if not any(tmp.iterdir()):
                raise StorageError(f"{uri}: no files under this prefix")
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
