"""Publishing one version as a resumable, idempotent state machine.

1. plan   `move`/`put` only record what the version will hold (a local spool;
          `put` stages generated files under `_staging/vN/_publish/out/`).
2. seal   `_publish/plan.jsonl` (every file: staged source, version path, sha256,
          bytes) then `_publish/head.json` (the manifest without its file list)
          are written to staging. From here on the plan is authoritative.
3. move   each planned file is moved from staging into `vN/`. Redoing a move
          whose source is gone is a no-op when the destination exists.
4. list   `vN/files.jsonl` (the file list) is written.
5. commit `vN/manifest.json` is created conditionally (S3 `If-None-Match: *`,
          a hard link on disk): the one step that makes the version visible.
6. clean  the staging prefix (run lock included) is deleted.

A crash anywhere in 3-6 is finished by `finish(...)` (what a version lease taken
with `--resume` calls when it finds a sealed plan: storage/lease.py); a crash
before 2 leaves only staged files that a new attempt overwrites. Nothing under
`vN/` counts before step 5.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, TypedDict

from factory.storage import uri as U
from factory.storage.manifest import Manifest
from factory.storage.shards import FileEntry, file_entry
from factory.storage.store import StorageError

MANIFEST = "manifest.json"
STAGING = "_staging"
FILE_LIST = "files.jsonl"
PUBLISH_DIR = "_publish"
MANIFEST_FORMAT = "defect-factory/dataset-version/2"
MOVE_BATCH = 2000  # plan lines moved per batch (bounded memory for millions of files)


class PublishedError(StorageError):
    """The version already has a manifest: published versions are immutable."""


@dataclass(frozen=True)
class Slot:
    """Where one version lives: its folder `uri` and its `staging` prefix (Registry.slot)."""

    name: str
    version: int
    uri: str
    staging: str


class PlanLine(TypedDict):
    """One line of `_publish/plan.jsonl`: a staged file (`src`, relative to staging) and its version entry."""

    src: str
    path: str
    sha256: str
    bytes: int


class Listed(TypedDict):
    """A file as the version's file list gives it."""

    sha256: str
    bytes: int


class FileList(TypedDict):
    """The manifest's `file_list`: files.jsonl's own entry, and how many files (bytes) it lists."""

    path: str
    sha256: str
    bytes: int
    files: int
    files_bytes: int


class Publication:
    """Plan a version (`move`, `put`), then `commit(manifest)`: seal + finish."""

    def __init__(self, slot: Slot):
        self.slot, self.staging, self.uri = slot, slot.staging, slot.uri
        self._dir = tempfile.TemporaryDirectory(prefix="publish-")
        self._plan = open(Path(self._dir.name) / "plan.jsonl", "w")
        self.manifest: dict[str, Any] = {}  # after commit: the manifest without its file list

    def move(self, moves: Iterable[tuple[str, FileEntry]]) -> None:
        """Plan staged files (source relative to staging; entry with the version
        `path`, `sha256`, `bytes`) into the version."""
        for src, e in moves:
            line: PlanLine = {"src": src, "path": e["path"], "sha256": e["sha256"], "bytes": e["bytes"]}
            self._plan.write(json.dumps(line) + "\n")

    def put(self, path: str, data: bytes) -> None:
        """Stage a generated file (report, data.yaml, a cut shard) and plan it."""
        src = f"{PUBLISH_DIR}/out/{path}"
        U.write_bytes(U.join(self.staging, src), data)
        self.move([(src, file_entry(path, data))])

    def put_file(self, path: str, local: str | Path) -> None:
        """`put` for a file already on local disk (large generated files: COCO JSON)."""
        src = f"{PUBLISH_DIR}/out/{path}"
        U.write_file(U.join(self.staging, src), local)
        with open(local, "rb") as f:
            sha = hashlib.file_digest(f, "sha256").hexdigest()
        self.move([(src, {"path": path, "sha256": sha, "bytes": Path(local).stat().st_size})])

    def commit(self, manifest: Manifest | dict[str, Any]) -> str:
        self.seal(manifest)
        self.manifest = finish(self.slot)
        return self.uri

    def seal(self, manifest: Manifest | dict[str, Any]) -> None:
        if isinstance(manifest, Manifest):
            manifest = manifest.to_dict()
        if U.exists(U.join(self.uri, MANIFEST)):
            raise PublishedError(f"{self.uri}: {self.slot.name}@{self.slot.version} was published by another run "
                                 "meanwhile; published versions are immutable")
        self._plan.close()
        head = {"format": MANIFEST_FORMAT, "name": self.slot.name, "version": self.slot.version, "uri": self.uri,
                "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "publication": uuid.uuid4().hex, **manifest}
        U.write_file(U.join(self.staging, PUBLISH_DIR, "plan.jsonl"), self._plan.name)
        U.write_bytes(U.join(self.staging, PUBLISH_DIR, "head.json"), json.dumps(head, indent=1).encode())
        self._dir.cleanup()


def is_sealed(slot: Slot) -> bool:
    """A publish of this version was planned and sealed: `finish` completes it."""
    return U.exists(U.join(slot.staging, PUBLISH_DIR, "head.json"))


def _plan_lines(staging: str) -> Iterator[PlanLine]:
    for line in U.iter_lines(U.join(staging, PUBLISH_DIR, "plan.jsonl")):
        if line.strip():
            yield json.loads(line)


def _batches(it: Iterable[PlanLine], n: int) -> Iterator[list[PlanLine]]:
    batch: list[PlanLine] = []
    for x in it:
        batch.append(x)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def finish(slot: Slot) -> dict[str, Any]:
    """Steps 3-6 of a sealed publication; safe to run again after a crash at any
    point. Returns the manifest (without its file list)."""
    staging, uri = slot.staging, slot.uri
    head: dict[str, Any] = json.loads(U.read_bytes(U.join(staging, PUBLISH_DIR, "head.json")))
    where = U.join(uri, MANIFEST)
    if U.exists(where):
        if json.loads(U.read_bytes(where)).get("publication") != head["publication"]:
            raise PublishedError(f"{uri}: {slot.name}@{slot.version} was published by another run; this run's "
                                 f"staging ({staging}) is left for inspection")
        _clean(slot)  # committed already: a crash hit step 6
        return head
    listed = _move_and_list(slot)
    manifest = {**head, "file_list": listed}
    if not U.create_exclusive(where, json.dumps(manifest, indent=1).encode()):
        if json.loads(U.read_bytes(where)).get("publication") != head["publication"]:
            raise PublishedError(f"{uri}: {slot.name}@{slot.version} was published by another run meanwhile")
    _clean(slot)
    return manifest


def _move_and_list(slot: Slot) -> FileList:
    """Steps 3-4: every planned file moved into the version, then its file list
    written; returns the manifest's `file_list` entry."""
    staging, uri = slot.staging, slot.uri

    def one(e: PlanLine) -> None:
        src, dst = U.join(staging, e["src"]), U.join(uri, e["path"])
        try:
            U.move(src, dst)
        except StorageError:
            if not U.exists(dst):  # neither staged nor moved: lost
                raise StorageError(f"{src}: staged file missing and not at {dst} either; "
                                   f"run again with --restart") from None
            if U.exists(src):  # a real error moving a file that is still there
                raise

    with tempfile.TemporaryDirectory(prefix="publish-") as tmp:
        listing = Path(tmp) / FILE_LIST
        count = size = 0
        with open(listing, "w") as out, ThreadPoolExecutor(max_workers=U.workers(uri, 16)) as pool:
            for batch in _batches(_plan_lines(staging), MOVE_BATCH):
                list(pool.map(one, batch))
                for e in batch:
                    out.write(json.dumps({"path": e["path"], "sha256": e["sha256"], "bytes": e["bytes"]}) + "\n")
                    count, size = count + 1, size + e["bytes"]
        U.write_file(U.join(uri, FILE_LIST), listing)
        own = file_entry(FILE_LIST, listing.read_bytes())
        return {"path": own["path"], "sha256": own["sha256"], "bytes": own["bytes"], "files": count, "files_bytes": size}


def _clean(slot: Slot) -> None:
    U.delete_prefix(slot.staging)
    U.prune(slot.staging.rpartition("/")[0])  # an empty `_staging` folder too


def read_file_list(version_uri: str, manifest: Manifest | dict[str, Any]) -> dict[str, Listed]:
    """The version's files {path: {sha256, bytes}}, checked against the manifest."""
    if isinstance(manifest, Manifest):
        manifest = manifest.to_dict()
    if "files" in manifest:  # format 1: the list inline
        inline: dict[str, Listed] = manifest["files"]
        return inline
    info = manifest["file_list"]
    data = U.read_bytes(U.join(version_uri, info["path"]))
    if file_entry(info["path"], data)["sha256"] != info["sha256"]:
        raise StorageError(f"{U.join(version_uri, info['path'])}: sha256 differs from the manifest's")
    out: dict[str, Listed] = {}
    for line in data.splitlines():
        if line.strip():
            e = json.loads(line)
            out[e["path"]] = {"sha256": e["sha256"], "bytes": e["bytes"]}
    return out
