"""One way to name every location: `file://...`, a plain local path, or `s3://bucket/prefix`.

S3 goes through boto3 (storage/s3.py: endpoint, credentials, retries; any
S3-compatible store via `AWS_ENDPOINT_URL` or `configure_storage`). Every failure
is a `StorageError` naming the URI (`_errors`). Not pyarrow.fs: the run lock and
the manifest are created conditionally (`If-None-Match: *`), which pyarrow's S3
filesystem cannot ask for; it serves only Ray Data's Parquet reader.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

from factory.core import uri_problem
from factory.storage import s3
from factory.storage.s3 import StorageConfig, configure_storage, set_storage_config, storage_config  # noqa: F401


class StorageError(RuntimeError):
    """A storage operation failed; the message names the URI and the reason."""


def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


def local_path(uri: str | Path) -> Path:
    """The local path of a `file://` URI or plain path."""
    uri = str(uri)
    if is_s3(uri):
        raise StorageError(f"{uri}: not a local path")
    if uri.startswith("file://"):
        parsed = urlparse(uri)
        return Path((parsed.netloc or "") + parsed.path).expanduser()
    return Path(uri).expanduser()


def _local_str(uri: str) -> str:
    """`local_path` as a plain string for per-file calls: pathlib interns every path
    part it parses (millions of sample files would pin hundreds of MB)."""
    return uri[7:] if uri.startswith("file:///") else os.fspath(local_path(uri))


def to_uri(path_or_uri: str | Path) -> str:
    """Normalize a path or URI: local paths become absolute `file://` URIs."""
    s = str(path_or_uri)
    problem = uri_problem(s)
    if problem:
        raise StorageError(problem)
    if is_s3(s):
        return s.rstrip("/")
    return "file://" + str(local_path(s).resolve())


def join(uri: str, *parts: str) -> str:
    out = str(uri).rstrip("/")
    for p in parts:
        p = str(p).strip("/")
        if p:
            out += "/" + p
    return out


def split_s3(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if not parsed.netloc:
        raise StorageError(f"{uri}: an s3 URI needs a bucket (s3://bucket/prefix)")
    return parsed.netloc, parsed.path.lstrip("/")


def s3_endpoint() -> str | None:
    return s3.endpoint()


@contextlib.contextmanager
def _errors(uri: str) -> Iterator[None]:
    """Turn boto3/OS errors into a StorageError naming the URI."""
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        ConnectionClosedError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        ReadTimeoutError,
    )

    try:
        yield
    except StorageError:
        raise
    except FileNotFoundError as e:
        raise StorageError(f"{uri}: not found") from e
    except ClientError as e:
        code = e.response.get("Error", {}).get("Code", "")
        reason = {
            "NoSuchBucket": "bucket does not exist",
            "NoSuchKey": "not found",
            "404": "not found",
            "InvalidAccessKeyId": "bad credentials (access key not recognized)",
            "SignatureDoesNotMatch": "bad credentials (signature does not match)",
            "AccessDenied": "access denied",
            "403": "access denied or bad credentials",
        }.get(code, f"{code}: {e}")
        raise StorageError(f"{uri}: {reason}") from e
    except (EndpointConnectionError, ConnectionClosedError, ConnectTimeoutError, ReadTimeoutError) as e:
        raise StorageError(f"{uri}: cannot reach the S3 endpoint {s3_endpoint() or '(AWS default)'} "
                           f"({_gave_up_how()}: {type(e).__name__})") from e
    except NoCredentialsError as e:
        raise StorageError(f"{uri}: no AWS credentials found (set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)") from e
    except BotoCoreError as e:
        raise StorageError(f"{uri}: {e}") from e
    except OSError as e:
        raise StorageError(f"{uri}: {e.strerror or e}") from e


def _gave_up_how() -> str:
    """What the retrying really did before this error (this thread's last give-up)."""
    tries = s3.last_give_up()
    if tries is None:
        return f"gave up within the retry deadline of {s3.retry_seconds():g} s (FACTORY_S3_RETRY_SECONDS)"
    return (f"still failing after {tries[0]} tries over {tries[1]:g} s, the retry deadline "
            f"(FACTORY_S3_RETRY_SECONDS={s3.retry_seconds():g})")


def read_bytes(uri: str) -> bytes:
    with _errors(uri):
        if is_s3(uri):
            bucket, key = split_s3(uri)
            return s3.client().get_object(Bucket=bucket, Key=key)["Body"].read()
        with open(_local_str(uri), "rb") as f:
            return f.read()


def iter_lines(uri: str) -> Iterator[bytes]:
    """The lines of a file, streamed (a file list of millions of lines never sits in memory)."""
    with _errors(uri):
        if is_s3(uri):
            bucket, key = split_s3(uri)
            yield from s3.client().get_object(Bucket=bucket, Key=key)["Body"].iter_lines()
            return
        with open(_local_str(uri), "rb") as f:
            yield from f


def write_bytes(uri: str, data: bytes) -> None:
    with _errors(uri):
        if is_s3(uri):
            bucket, key = split_s3(uri)
            s3.client().put_object(Bucket=bucket, Key=key, Body=data)
            return
        path = _local_str(uri)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with _tmp_beside(path) as tmp:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)  # a reader never sees half a file


def _tmp_name(path: str) -> str:
    """A temp name beside `path` that no other writer (process or thread) shares."""
    return f"{path}.{uuid.uuid4().hex[:12]}.tmp"


@contextlib.contextmanager
def _tmp_beside(path: str) -> Iterator[str]:
    """A temp name beside `path`, its file removed afterwards if still there: a write
    that fails half-way (a full disk) leaves no `*.tmp` behind."""
    tmp = _tmp_name(path)
    try:
        yield tmp
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def create_exclusive(uri: str, data: bytes) -> bool:
    """Write `uri` only if nothing is there yet, atomically: False if it exists.
    S3: a conditional put (`If-None-Match: *`); on disk: a complete temp file
    hard-linked to the name (the link fails if the name exists), so a reader
    never sees half a file and of two writers exactly one wins. Callers put a
    unique token in `data` (a run id, a publication id), so a second call with the
    very same bytes is the same claim again and wins again (on S3 an outage can cut
    the answer to a put that was stored, and the retry then finds the object)."""
    with _errors(uri):
        if is_s3(uri):
            from botocore.exceptions import ClientError

            bucket, key = split_s3(uri)
            try:
                s3.client().put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
                return True
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                    try:
                        return s3.client().get_object(Bucket=bucket, Key=key)["Body"].read() == data
                    except ClientError:  # (a racing writer's object is not readable yet: not ours)
                        return False
                raise
        path = _local_str(uri)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with _tmp_beside(path) as tmp:
            with open(tmp, "wb") as f:
                f.write(data)
            try:
                os.link(tmp, path)
                return True
            except FileExistsError:
                with open(path, "rb") as f:
                    return f.read() == data


def write_file(uri: str, local: str | Path) -> None:
    """Write a local file's contents to `uri` without reading it into memory
    (multipart upload on S3; an atomic replace on disk)."""
    with _errors(uri):
        if is_s3(uri):
            bucket, key = split_s3(uri)
            s3.client().upload_file(str(local), bucket, key)
            return
        path = local_path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        with _tmp_beside(str(path)) as tmp:
            shutil.copyfile(local, tmp)
            os.replace(tmp, path)


def exists(uri: str) -> bool:
    with _errors(uri):
        if is_s3(uri):
            from botocore.exceptions import ClientError

            bucket, key = split_s3(uri)
            try:
                s3.client().head_object(Bucket=bucket, Key=key)
                return True
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    return False
                raise
        return local_path(uri).exists()


def _s3_pages(uri: str, **kwargs) -> Iterator[tuple[str, str, dict]]:
    """(bucket, the listed key prefix ending in "/", page) for each ListObjectsV2 page under `uri`."""
    bucket, key = split_s3(uri)
    prefix = key.rstrip("/") + "/" if key else ""
    for page in s3.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, **kwargs):
        yield bucket, prefix, page


def list_files(uri: str) -> list[str]:
    """All files under a prefix, as paths relative to it, sorted."""
    with _errors(uri):
        if is_s3(uri):
            return sorted(o["Key"][len(prefix):] for _, prefix, page in _s3_pages(uri) for o in page.get("Contents", []))
        root = local_path(uri)
        if not root.exists():
            return []
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and not p.name.endswith(".tmp"))


def delete_prefix(uri: str) -> None:
    with _errors(uri):
        if is_s3(uri):  # a page of up to 1000 keys at a time, one DeleteObjects request each
            for bucket, _, page in _s3_pages(uri):
                keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                if keys:
                    out = s3.client().delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
                    if out.get("Errors"):
                        e = out["Errors"][0]
                        raise StorageError(f"s3://{bucket}/{e['Key']}: delete failed: {e.get('Message', e.get('Code'))}")
            return
        shutil.rmtree(local_path(uri), ignore_errors=True)


def move(src: str, dst: str) -> None:
    """Move one file within a store: a rename on disk, a server-side copy + delete on S3."""
    with _errors(src):
        if is_s3(src) != is_s3(dst):
            write_bytes(dst, read_bytes(src))
            delete(src)
        elif is_s3(src):
            sb, sk = split_s3(src)
            db, dk = split_s3(dst)
            s3.client().copy_object(Bucket=db, Key=dk, CopySource={"Bucket": sb, "Key": sk})
            s3.client().delete_object(Bucket=sb, Key=sk)
        else:
            d = _local_str(dst)
            os.makedirs(os.path.dirname(d), exist_ok=True)
            os.replace(_local_str(src), d)


def delete(uri: str) -> None:
    """Delete one file (no error if it is already gone)."""
    with _errors(uri):
        if is_s3(uri):
            bucket, key = split_s3(uri)
            s3.client().delete_object(Bucket=bucket, Key=key)
        else:
            local_path(uri).unlink(missing_ok=True)


def check_root(uri: str) -> None:
    """Fail early, naming the URI, when a root cannot be used: missing bucket, bad
    credentials, unreachable endpoint (S3), or a path that is a file (local)."""
    with _errors(uri):
        if is_s3(uri):
            from botocore.exceptions import ClientError

            bucket, _ = split_s3(uri)
            try:
                s3.client().head_bucket(Bucket=bucket)
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") in ("404", "NoSuchBucket", "NotFound"):
                    raise StorageError(f"{uri}: bucket {bucket!r} does not exist") from e
                raise
            return
        path = local_path(uri)
        if path.exists() and not path.is_dir():
            raise StorageError(f"{uri}: is a file, expected a folder")


def list_dirs(uri: str) -> list[str]:
    """Names of the immediate sub-folders (S3: common prefixes) under a prefix, sorted."""
    with _errors(uri):
        if is_s3(uri):
            return sorted(p["Prefix"][len(prefix):].rstrip("/")
                          for _, prefix, page in _s3_pages(uri, Delimiter="/") for p in page.get("CommonPrefixes", []))
        root = local_path(uri)
        if not root.is_dir():
            return []
        return sorted(p.name for p in root.iterdir() if p.is_dir())


def arrow_filesystem(uri: str):
    """(pyarrow filesystem, path) for readers that take one (ray.data.read_parquet)."""
    import pyarrow.fs as pafs

    if not is_s3(uri):
        return pafs.LocalFileSystem(), str(local_path(uri))
    bucket, key = split_s3(uri)
    return s3.arrow_filesystem(), f"{bucket}/{key}"


def upload_dir(local: str | Path, uri: str) -> None:
    local = Path(local)
    for p in sorted(local.rglob("*")):
        if p.is_file():
            write_bytes(join(uri, str(p.relative_to(local))), p.read_bytes())


def download_dir(uri: str, local: str | Path) -> Path:
    local = Path(local)
    for name in list_files(uri):
        dest = local / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(read_bytes(join(uri, name)))
    return local


@contextlib.contextmanager
def as_local_dir(uri: str) -> Iterator[Path]:
    """A local folder with the prefix's files: the folder itself for local URIs,
    a temporary download for s3 (removed afterwards)."""
    if not is_s3(uri):
        path = local_path(uri)
        if not path.exists():
            raise StorageError(f"{uri}: not found")
        yield path
        return
    tmp = Path(tempfile.mkdtemp(prefix="factory-"))
    try:
        download_dir(uri, tmp)
        if not any(tmp.iterdir()):
            raise StorageError(f"{uri}: no files under this prefix")
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
