"""`Store`: the one interface every location is read and written through, and
`StorageError`, the one error it raises. `uri.store_for` picks the implementation
for a URI (`LocalStore` in uri.py, `S3Store` in s3_store.py); nothing else tells
schemes apart, so callers ask a store what it can do (`remote`, `on_disk`)."""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ContextManager, Iterator


class StorageError(RuntimeError):
    """A storage operation failed; the message names the URI and the reason."""


class Store(ABC):
    remote = False  # each call is a network round trip: callers overlap per-file calls

    @contextlib.contextmanager
    def errors(self, uri: str) -> Iterator[None]:
        """Turn a failure into a StorageError naming the URI (`reason` says what it was)."""
        try:
            yield
        except StorageError:
            raise
        except FileNotFoundError as e:
            raise StorageError(f"{uri}: not found") from e
        except Exception as e:
            why = self.reason(e)
            if why is None:
                raise
            raise StorageError(f"{uri}: {why}") from e

    def reason(self, e: Exception) -> str | None:
        """What a failure means for the user, or None when it is no storage failure."""
        return (e.strerror or str(e)) if isinstance(e, OSError) else None

    @abstractmethod
    def on_disk(self, uri: str) -> Path | None:
        """The local path behind `uri`; None when it is not on this machine's disk."""

    @abstractmethod
    def read_bytes(self, uri: str) -> bytes: ...

    @abstractmethod
    def iter_lines(self, uri: str) -> Iterator[bytes]:
        """The lines of a file, streamed (a file list of millions never sits in memory)."""

    @abstractmethod
    def write_bytes(self, uri: str, data: bytes) -> None:
        """Replace `uri` whole: a reader sees the old bytes or the new, never half."""

    @abstractmethod
    def write_file(self, uri: str, local: str | Path) -> None:
        """`write_bytes` from a local file, without reading it into memory."""

    @abstractmethod
    def create_exclusive(self, uri: str, data: bytes) -> bool:
        """Write `uri` only if nothing is there yet, atomically: False if it exists.
        Callers put a unique token in `data` (a run id, a publication id), so a second
        call with the very same bytes is the same claim again and wins again (an
        outage can cut the answer to a create that was stored; the retry then finds it)."""

    @abstractmethod
    def exists(self, uri: str) -> bool: ...

    @abstractmethod
    def is_folder(self, uri: str) -> bool:
        """Whether `uri` holds files under it (a folder; on S3 a non-empty prefix)."""

    @abstractmethod
    def list_files(self, uri: str) -> list[str]:
        """All files under a prefix, as paths relative to it, sorted."""

    @abstractmethod
    def list_dirs(self, uri: str) -> list[str]:
        """Names of the immediate sub-folders under a prefix, sorted."""

    @abstractmethod
    def delete(self, uri: str) -> None:
        """Delete one file (no error if it is already gone)."""

    @abstractmethod
    def delete_prefix(self, uri: str) -> None: ...

    @abstractmethod
    def prune(self, uri: str) -> None:
        """Remove `uri` if it is an empty folder (an S3 prefix without objects is nothing)."""

    @abstractmethod
    def move(self, src: str, dst: str) -> None:
        """Move one file within this store."""

    @abstractmethod
    def check_root(self, uri: str) -> None:
        """Fail early, naming the URI, when a root cannot be used."""

    @abstractmethod
    def arrow_filesystem(self, uri: str) -> tuple[Any, str]:
        """(pyarrow filesystem, path) for readers that take one (ray.data.read_parquet)."""

    @abstractmethod
    def local_dir(self, uri: str) -> ContextManager[Path]:
        """A local folder with the prefix's files, for libraries that read folders."""
