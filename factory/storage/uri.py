"""One way to name every location: `file://...`, a plain local path, or `s3://bucket/prefix`.

`store_for(uri)` is the one place that tells them apart: it gives the `Store`
(storage/store.py) serving a URI, `LocalStore` below or `S3Store`
(storage/s3_store.py; any S3-compatible store via `AWS_ENDPOINT_URL` or
`configure_storage`). The functions here are the store's calls for a URI, so
callers name locations and never branch on a scheme. Every failure is a
`StorageError` naming the URI.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, ContextManager, Iterator
from urllib.parse import urlparse

from factory.core import uri_problem
from factory.storage.s3 import StorageConfig as StorageConfig  # `X as X`: re-exported (callers name this module)
from factory.storage.s3 import configure_storage as configure_storage
from factory.storage.s3 import endpoint
from factory.storage.s3 import set_storage_config as set_storage_config
from factory.storage.s3 import storage_config as storage_config
from factory.storage.s3_store import S3Store
from factory.storage.store import StorageError as StorageError
from factory.storage.store import Store


@contextlib.contextmanager
def _written_beside(path: str, data: bytes) -> Iterator[str]:
    """`_tmp_beside`, its folder made and `data` written to it in full."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with _tmp_beside(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
        yield tmp


@contextlib.contextmanager
def _tmp_beside(path: str) -> Iterator[str]:
    """A temp name beside `path` that no other writer (process or thread) shares, its
    file removed afterwards if still there: a write that fails half-way (a full disk)
    leaves no `*.tmp` behind."""
    tmp = f"{path}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        yield tmp
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


class LocalStore(Store):
    """A local path or `file://` URI. Every write goes to a temp file beside its
    target, then an atomic rename (or hard link): a reader never sees half a file."""

    def on_disk(self, uri: str) -> Path:
        uri = str(uri)  # (a Path, from callers that have one)
        if uri.startswith("file://"):
            parsed = urlparse(uri)
            return Path((parsed.netloc or "") + parsed.path).expanduser()
        return Path(uri).expanduser()

    def _str(self, uri: str) -> str:
        """`on_disk` as a plain string for per-file calls: pathlib interns every path
        part it parses (millions of sample files would pin hundreds of MB)."""
        return uri[7:] if uri.startswith("file:///") else os.fspath(self.on_disk(uri))

    def read_bytes(self, uri: str) -> bytes:
        with self.errors(uri), open(self._str(uri), "rb") as f:
            return f.read()

    def iter_lines(self, uri: str) -> Iterator[bytes]:
        with self.errors(uri), open(self._str(uri), "rb") as f:
            yield from f

    def write_bytes(self, uri: str, data: bytes) -> None:
        with self.errors(uri):
            path = self._str(uri)
            with _written_beside(path, data) as tmp:
                os.replace(tmp, path)

    def write_file(self, uri: str, local: str | Path) -> None:
        with self.errors(uri):
            path = self.on_disk(uri)
            path.parent.mkdir(parents=True, exist_ok=True)
            with _tmp_beside(str(path)) as tmp:
                shutil.copyfile(local, tmp)
                os.replace(tmp, path)

    def create_exclusive(self, uri: str, data: bytes) -> bool:
        """A complete temp file hard-linked to the name: the link fails if the name
        exists, so of two writers exactly one wins."""
        with self.errors(uri):
            path = self._str(uri)
            with _written_beside(path, data) as tmp:
                try:
                    os.link(tmp, path)
                    return True
                except FileExistsError:
                    with open(path, "rb") as f:
                        return f.read() == data

    def exists(self, uri: str) -> bool:
        with self.errors(uri):
            return self.on_disk(uri).exists()

    def is_folder(self, uri: str) -> bool:
        with self.errors(uri):
            return self.on_disk(uri).is_dir()

    def list_files(self, uri: str) -> list[str]:
        with self.errors(uri):
            root = self.on_disk(uri)
            if not root.exists():
                return []
            return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and not p.name.endswith(".tmp"))

    def list_dirs(self, uri: str) -> list[str]:
        with self.errors(uri):
            root = self.on_disk(uri)
            return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []

    def delete(self, uri: str) -> None:
        with self.errors(uri):
            self.on_disk(uri).unlink(missing_ok=True)

    def delete_prefix(self, uri: str) -> None:
        with self.errors(uri):
            shutil.rmtree(self.on_disk(uri), ignore_errors=True)

    def prune(self, uri: str) -> None:
        with contextlib.suppress(OSError):
            self.on_disk(uri).rmdir()

    def move(self, src: str, dst: str) -> None:
        with self.errors(src):
            d = self._str(dst)
            os.makedirs(os.path.dirname(d), exist_ok=True)
            os.replace(self._str(src), d)

    def check_root(self, uri: str) -> None:
        """A path that is a file."""
        with self.errors(uri):
            path = self.on_disk(uri)
            if path.exists() and not path.is_dir():
                raise StorageError(f"{uri}: is a file, expected a folder")

    def arrow_filesystem(self, uri: str) -> tuple[Any, str]:
        import pyarrow.fs as pafs

        return pafs.LocalFileSystem(), str(self.on_disk(uri))

    @contextlib.contextmanager
    def local_dir(self, uri: str) -> Iterator[Path]:
        """The folder itself."""
        path = self.on_disk(uri)
        if not path.exists():
            raise StorageError(f"{uri}: not found")
        yield path


_LOCAL = LocalStore()
_S3 = S3Store()


def store_for(uri: str | Path) -> Store:
    """The store serving `uri`: the one place that tells schemes apart."""
    return _S3 if str(uri).startswith("s3://") else _LOCAL


def s3_endpoint() -> str | None:
    """The S3 endpoint storage calls go to (configured, else AWS_ENDPOINT_URL[_S3]; None: AWS's own)."""
    return endpoint()


# --- names ----------------------------------------------------------------------
def on_disk(uri: str | Path) -> Path | None:
    """The local path behind `uri`, None when it is not on this machine's disk (an
    object store's object: never a device, a pipe or a symbolic link)."""
    return store_for(uri).on_disk(str(uri))


def local_path(uri: str | Path) -> Path:
    """The local path of a `file://` URI or plain path."""
    path = on_disk(uri)
    if path is None:
        raise StorageError(f"{uri}: not a local path")
    return path


def absolute(uri: str | Path) -> str:
    """`uri` readable from any working directory: a local path made absolute (plain, not `file://`)."""
    path = on_disk(uri)
    return str(uri) if path is None else str(path.resolve())


def to_uri(path_or_uri: str | Path) -> str:
    """Normalize a path or URI: local paths become absolute `file://` URIs."""
    s = str(path_or_uri)
    problem = uri_problem(s)
    if problem:
        raise StorageError(problem)
    path = on_disk(s)
    return s.rstrip("/") if path is None else "file://" + str(path.resolve())


def join(uri: str, *parts: str) -> str:
    out = str(uri).rstrip("/")
    for p in parts:
        p = str(p).strip("/")
        if p:
            out += "/" + p
    return out


def workers(uri: str, remote: int) -> int:
    """Threads for per-file calls under `uri`: `remote` where each is a round trip
    (S3), one on disk (more would only contend)."""
    return remote if store_for(uri).remote else 1


# --- the store's calls, for a URI -------------------------------------------------
def read_bytes(uri: str) -> bytes:
    return store_for(uri).read_bytes(uri)


def iter_lines(uri: str) -> Iterator[bytes]:
    return store_for(uri).iter_lines(uri)


def write_bytes(uri: str, data: bytes) -> None:
    store_for(uri).write_bytes(uri, data)


def write_file(uri: str, local: str | Path) -> None:
    store_for(uri).write_file(uri, local)


def create_exclusive(uri: str, data: bytes) -> bool:
    return store_for(uri).create_exclusive(uri, data)


def exists(uri: str) -> bool:
    return store_for(uri).exists(uri)


def is_folder(uri: str) -> bool:
    return store_for(uri).is_folder(uri)


def list_files(uri: str) -> list[str]:
    return store_for(uri).list_files(uri)


def list_dirs(uri: str) -> list[str]:
    return store_for(uri).list_dirs(uri)


def delete(uri: str) -> None:
    store_for(uri).delete(uri)


def delete_prefix(uri: str) -> None:
    store_for(uri).delete_prefix(uri)


def prune(uri: str) -> None:
    store_for(uri).prune(uri)


def move(src: str, dst: str) -> None:
    """Move one file within a store (both URIs under one root)."""
    store_for(src).move(src, dst)


def check_root(uri: str) -> None:
    store_for(uri).check_root(uri)


def arrow_filesystem(uri: str) -> tuple[Any, str]:
    return store_for(uri).arrow_filesystem(uri)


def as_local_dir(uri: str) -> ContextManager[Path]:
    """A local folder with the prefix's files: the folder itself on disk, else a
    temporary download (removed afterwards)."""
    return store_for(uri).local_dir(uri)


def upload_dir(local: str | Path, uri: str) -> None:
    local = Path(local)
    for p in sorted(local.rglob("*")):
        if p.is_file():
            write_bytes(join(uri, str(p.relative_to(local))), p.read_bytes())
