"""The dataset registry: named, versioned, immutable datasets under a root URI.

Layout: `<root>/<name>/v<version>/` holds a published version (parquet/, yolo/,
coco/, rejected/, report.html, grid.png, files.jsonl, manifest.json). A run
claims the staging prefix `<root>/<name>/_staging/v<version>/` by creating its
lock `_run.json` there (conditionally: of two runs exactly one gets it; the
version lease in storage/lease.py does it) and
writes into it; publishing (storage/publish.py) moves the chosen files into the
version folder and creates `manifest.json` LAST. The manifest is the commit: no
manifest = not published, and a version with one is never written again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, TypedDict

from factory.storage import uri as U
from factory.storage.manifest import Manifest
from factory.storage.publish import MANIFEST, STAGING, Publication, PublishedError, Slot, read_file_list
from factory.storage.shards import FileEntry
from factory.storage.store import StorageError

DEFAULT_ROOT = "file://./datasets"
EXTRAS = "_extras"  # <name>/_extras/v<N>/: metrics and retraining runs of a published version

RUN_LOCK = "_run.json"  # in a staging prefix: the run that owns it (its state), created exclusively
_REF = re.compile(r"^(?P<name>[a-z0-9][a-z0-9-]{0,62})(@(?P<version>v?\d+|latest))?$")


class RunState(TypedDict, total=False):
    """A run lock's content: the run that holds the version and how far its plan went
    (storage/lease.py keeps it; a lock written by an older run may lack keys)."""

    spec_hash: str
    name: str
    version: int
    planned_until: int
    rounds: int
    started_at: float
    run_id: str


def default_root() -> str:
    """The registry root when none is named: `$FACTORY_ROOT`, else `file://./datasets`
    (read when called, so a command sees the environment it runs in)."""
    return os.environ.get("FACTORY_ROOT") or DEFAULT_ROOT


@dataclass(frozen=True)
class DatasetRef:
    """`[ROOT/]NAME[@VERSION]`: `s3://bucket/datasets/demo-pv-el@3`, `file:///data/demo@latest`, `demo@2`."""

    root: str
    name: str
    version: int | None  # None = latest

    @classmethod
    def parse(cls, text: str, default_root: str | None = None) -> "DatasetRef":
        text = str(text).rstrip("/")
        head, _, last = text.rpartition("/")
        m = _REF.match(last)
        if not m:
            raise ValueError(f"{text!r}: expected [ROOT/]NAME@VERSION, e.g. s3://bucket/datasets/demo-pv-el@3")
        if head in ("", "s3:", "file:"):
            if default_root is None:
                raise ValueError(f"{text!r}: no root given; write ROOT/NAME@VERSION or pass the root")
            root = default_root
        else:
            root = head
        v = m.group("version")
        version = None if v in (None, "latest") else int(v.lstrip("v"))
        return cls(U.to_uri(root), m.group("name"), version)

    def __str__(self) -> str:
        return f"{self.root}/{self.name}@{self.version if self.version is not None else 'latest'}"


class Registry:
    def __init__(self, root: str):
        self.root = U.to_uri(root)

    # --- where things live ----------------------------------------------------
    def dataset_uri(self, name: str) -> str:
        return U.join(self.root, name)

    def version_uri(self, name: str, version: int) -> str:
        return U.join(self.root, name, f"v{version}")

    def extras_uri(self, name: str, version: int) -> str:
        """Where what is computed after publishing (metrics, retraining runs) lives:
        beside the version, never inside it (a published version never changes)."""
        return U.join(self.root, name, EXTRAS, f"v{version}")

    def staging_uri(self, name: str, version: int) -> str:
        return U.join(self.root, name, STAGING, f"v{version}")

    def slot(self, name: str, version: int) -> Slot:
        return Slot(name, version, self.version_uri(name, version), self.staging_uri(name, version))

    # --- reading --------------------------------------------------------------
    def is_published(self, name: str, version: int) -> bool:
        return U.exists(U.join(self.version_uri(name, version), MANIFEST))

    def manifest(self, name: str, version: int, files: bool = True) -> Manifest:
        """The version's manifest (generated or imported: one schema); with `files`,
        its file list (files.jsonl, checked) read into `manifest.files`."""
        base = self.version_uri(name, version)
        where = U.join(base, MANIFEST)
        if not U.exists(where):
            raise StorageError(f"{where}: {name}@{version} is not published (no manifest)")
        m = _json(where)
        if not isinstance(m, dict):
            raise StorageError(f"{where}: not a manifest (a JSON {type(m).__name__}, not an object)")
        if files:
            info = m.get("file_list")
            if isinstance(info, dict) and not is_listed_path(info.get("path")):
                raise StorageError(f"{where}: file_list.path {info.get('path')!r} is not a path inside the version")
            listed = U.join(base, info["path"]) if isinstance(info, dict) else where
            try:
                m["files"] = read_file_list(base, m)
            except (ValueError, KeyError, TypeError) as e:  # (a forged list whose hash matches)
                raise StorageError(f"{listed}: not a file list this version of the factory reads ({e!r})") from None
            bad = next((p for p in m["files"] if not is_listed_path(p)), None)
            if bad is not None:
                raise StorageError(f"{listed}: lists {bad!r}, which is not a relative, normalized path inside the "
                                   f"version; refusing the whole version")
        try:
            return Manifest.model_validate(m)
        except ValueError as e:
            raise StorageError(f"{where}: not a manifest this version of the factory reads ({e})") from None

    def versions(self, name: str) -> list[int]:
        """Published versions of a dataset, ascending."""
        out = []
        for d in U.list_dirs(self.dataset_uri(name)):
            if re.fullmatch(r"v\d+", d) and self.is_published(name, int(d[1:])):
                out.append(int(d[1:]))
        return sorted(out)

    def resolve(self, ref: DatasetRef) -> tuple[str, int]:
        """(name, version) with `latest` resolved to the newest published version."""
        if ref.version is not None:
            return ref.name, ref.version
        versions = self.versions(ref.name)
        if not versions:
            raise StorageError(f"{self.dataset_uri(ref.name)}: no published versions of {ref.name!r}")
        return ref.name, versions[-1]

    def staged(self, name: str, published: bool = False) -> list[int]:
        """Versions with a run lock in staging: running now, or interrupted; with
        `published`, also published ones whose cleanup a crash cut short."""
        out = []
        for d in U.list_dirs(U.join(self.dataset_uri(name), STAGING)):
            if (re.fullmatch(r"v\d+", d) and U.exists(U.join(self.staging_uri(name, int(d[1:])), RUN_LOCK))
                    and (published or not self.is_published(name, int(d[1:])))):
                out.append(int(d[1:]))
        return sorted(out)

    def leftover_staging(self, name: str) -> list[int]:
        """Published versions whose staging folder is still there (a cleanup cut
        short): nothing reads it, it only takes space."""
        return sorted(int(d[1:]) for d in U.list_dirs(U.join(self.dataset_uri(name), STAGING))
                      if re.fullmatch(r"v\d+", d) and self.is_published(name, int(d[1:])))

    def names(self) -> list[str]:
        """Dataset names (folders of the root)."""
        return [n for n in U.list_dirs(self.root) if _REF.match(n)]

    def next_version(self, name: str) -> int:
        versions = self.versions(name)
        return (versions[-1] + 1) if versions else 1

    def refuse_published(self, name: str, version: int) -> None:
        if self.is_published(name, version):
            raise PublishedError(
                f"{self.version_uri(name, version)}: {name}@{version} is already published and published versions "
                f"are immutable; run with a new --version (next free: {self.next_version(name)})"
            )

    # --- the run lock (storage/lease.py) and publishing ------------------------------
    def claim(self, name: str, version: int, state: RunState) -> bool:
        """Create the run lock of `name@version` holding `state`; False when another
        run (live or interrupted) holds it. Atomic: of two racing runs one wins."""
        return U.create_exclusive(U.join(self.staging_uri(name, version), RUN_LOCK), json.dumps(state).encode())

    def run_state(self, name: str, version: int) -> RunState | None:
        where = U.join(self.staging_uri(name, version), RUN_LOCK)
        return _json(where) if U.exists(where) else None

    def save_run_state(self, name: str, version: int, state: RunState) -> None:
        U.write_bytes(U.join(self.staging_uri(name, version), RUN_LOCK), json.dumps(state).encode())

    def discard_staging(self, name: str, version: int) -> None:
        """Drop a version's staging (its run lock included)."""
        U.delete_prefix(self.staging_uri(name, version))

    def begin(self, name: str, version: int) -> Publication:
        """Start publishing `name@version` from its staging prefix (see Publication)."""
        self.refuse_published(name, version)
        return Publication(self.slot(name, version))

    def publish(self, name: str, version: int, moves: Iterable[tuple[str, FileEntry]],
                extra: dict[str, bytes], manifest: Manifest | dict[str, Any]) -> str:
        """All at once: move `moves`, write `extra`, commit `manifest`."""
        pub = self.begin(name, version)
        pub.move(moves)
        for path, data in extra.items():
            pub.put(path, data)
        return pub.commit(manifest)


def extras_for(version_uri: str) -> str:
    """`<root>/<name>/v<N>` -> `<root>/<name>/_extras/v<N>` (see `Registry.extras_uri`)."""
    parent, _, leaf = version_uri.rstrip("/").rpartition("/")
    if not (leaf.startswith("v") and leaf[1:].isdigit()):
        raise ValueError(f"{version_uri}: not a version folder (<root>/<name>/v<N>)")
    return U.join(parent, EXTRAS, leaf)


def code_version() -> str:
    """The package version plus the git commit when running from a checkout."""
    import importlib.metadata

    version = importlib.metadata.version("defect-factory")
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
            text=True, timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{version}+{sha}" if sha else version


def _json(uri: str) -> Any:
    """A JSON file, or a StorageError naming it (a truncated file must say which one)."""
    data = U.read_bytes(uri)
    try:
        return json.loads(data)
    except ValueError as e:
        raise StorageError(f"{uri}: not valid JSON ({e}; {len(data)} bytes): damaged or cut short") from None


def is_listed_path(path: object) -> bool:
    """Whether a path from a version's file list names a file inside the version:
    relative, normalized (no `..`, `.` or empty part), no backslash or NUL. A file
    list is data from the store; a path that is not one of these could make a reader
    write (pull) or read outside the version."""
    return (isinstance(path, str) and bool(path) and "\\" not in path and "\0" not in path
            and all(part not in ("", ".", "..") for part in path.split("/")))


def read_listed(version_uri: str, path: str, sha256: str | None = None) -> bytes:
    """One file of a version, by its listed path, checked: the path stays inside the
    version, a local file is no symlink and lies under none below the version folder
    (a version holds plain files; a link would read what the version does not hold),
    and with `sha256` its bytes match the file list."""
    uri = U.join(version_uri, path)
    if not is_listed_path(path):
        raise StorageError(f"{version_uri}: listed path {path!r} leaves the version folder; refusing it")
    folder = U.on_disk(version_uri)  # (an object store has no links)
    if folder is not None:
        base = str(folder)
        if os.path.realpath(os.path.join(base, path)) != os.path.join(os.path.realpath(base), path):
            raise StorageError(f"{uri}: is (or lies under) a symbolic link; a version holds plain files only, "
                               f"refusing to follow it")
    data = U.read_bytes(uri)
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise StorageError(f"{uri}: sha256 differs from the version's file list (damaged, or changed after publishing)")
    return data


def check_files(version_uri: str, manifest: Manifest | dict[str, Any],
                paths: Iterable[str] | None = None) -> dict[str, str]:
    """Every listed file (or those in `paths`) read and checked as `read_listed` does:
    {path: the error naming it} for each that fails (empty: all match)."""
    m = Manifest.of(manifest)
    files = {p: e.sha256 for p, e in m.files.items()} if m.files is not None else {
        p: e["sha256"] for p, e in read_file_list(version_uri, m).items()}

    def check(path: str) -> str | None:
        try:
            read_listed(version_uri, path, files[path])
        except StorageError as e:
            return str(e)
        return None

    todo = list(paths if paths is not None else files)
    with ThreadPoolExecutor(max_workers=U.workers(version_uri, 16)) as pool:
        return {p: e for p, e in zip(todo, pool.map(check, todo)) if e}
