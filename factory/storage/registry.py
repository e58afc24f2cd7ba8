"""The dataset registry: named, versioned, immutable datasets under a root URI.

Layout: `<root>/<name>/v<version>/` holds a published version (parquet/, yolo/,
rejected/, report.html, grid.png, manifest.json). A run writes into the staging
prefix `<root>/<name>/_staging/v<version>/` first; publishing moves the chosen
files into the version folder and writes `manifest.json` LAST. The manifest is
the commit: no manifest = not published, and a version with one is never
written again.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from factory.storage import uri as U
from factory.storage.uri import StorageError

MANIFEST = "manifest.json"
STAGING = "_staging"
MANIFEST_FORMAT = "defect-factory/dataset-version/1"
_REF = re.compile(r"^(?P<name>[a-z0-9][a-z0-9-]{0,62})(@(?P<version>v?\d+|latest))?$")


class PublishedError(StorageError):
    """The version already has a manifest: published versions are immutable."""


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

    def staging_uri(self, name: str, version: int) -> str:
        return U.join(self.root, name, STAGING, f"v{version}")

    # --- reading --------------------------------------------------------------
    def is_published(self, name: str, version: int) -> bool:
        return U.exists(U.join(self.version_uri(name, version), MANIFEST))

    def manifest(self, name: str, version: int) -> dict[str, Any]:
        where = U.join(self.version_uri(name, version), MANIFEST)
        if not U.exists(where):
            raise StorageError(f"{where}: {name}@{version} is not published (no manifest)")
        return json.loads(U.read_bytes(where))

    def versions(self, name: str) -> list[int]:
        """Published versions of a dataset, ascending."""
        out = []
        for d in U.list_dirs(self.dataset_uri(name)):
            if re.fullmatch(r"v\d+", d) and self.is_published(name, int(d[1:])):
                out.append(int(d[1:]))
        return sorted(out)

    def names(self) -> list[str]:
        return [n for n in U.list_dirs(self.root) if _REF.match(n)]

    def resolve(self, ref: DatasetRef) -> tuple[str, int]:
        """(name, version) with `latest` resolved to the newest published version."""
        if ref.version is not None:
            return ref.name, ref.version
        versions = self.versions(ref.name)
        if not versions:
            raise StorageError(f"{self.dataset_uri(ref.name)}: no published versions of {ref.name!r}")
        return ref.name, versions[-1]

    def next_version(self, name: str) -> int:
        versions = self.versions(name)
        return (versions[-1] + 1) if versions else 1

    def refuse_published(self, name: str, version: int) -> None:
        if self.is_published(name, version):
            raise PublishedError(
                f"{self.version_uri(name, version)}: {name}@{version} is already published and published versions "
                f"are immutable; run with a new --version (next free: {self.next_version(name)})"
            )

    # --- publishing -----------------------------------------------------------
    def begin(self, name: str, version: int) -> "Publication":
        """Start publishing `name@version` from its staging prefix (see Publication)."""
        self.refuse_published(name, version)
        return Publication(self, name, version)

    def publish(self, name: str, version: int, moves: Iterable[tuple[str, dict[str, Any]]],
                extra: dict[str, bytes], manifest: dict[str, Any]) -> str:
        """All at once: move `moves`, write `extra`, commit `manifest`."""
        pub = self.begin(name, version)
        pub.move(moves)
        for path, data in extra.items():
            pub.put(path, data)
        return pub.commit(manifest)


class Publication:
    """Publishing one version, in as many steps as the caller likes, in constant
    memory: staged files are moved in batches and each file's entry (sha256, bytes)
    is spooled to a local temp file, so a version of millions of files never sits
    in memory. `commit` writes manifest.json LAST (streamed from the spool), then
    drops the staging prefix. A crash before the manifest leaves an unpublished
    folder that a resumed run overwrites."""

    GROUPS = ("parquet/", "rejected/", "yolo/")  # the manifest lists files grouped so, each in the order moved

    def __init__(self, registry: Registry, name: str, version: int):
        import tempfile

        self.registry, self.name, self.version = registry, name, version
        self.staging, self.uri = registry.staging_uri(name, version), registry.version_uri(name, version)
        self._dir = tempfile.TemporaryDirectory(prefix="publish-")
        self._spools = {g: open(Path(self._dir.name) / f"{i}.jsonl", "w") for i, g in enumerate((*self.GROUPS, ""))}
        self.manifest: dict[str, Any] = {}  # after commit: the manifest without its file list

    def _add(self, path: str, sha256: str, size: int) -> None:
        group = next((g for g in self.GROUPS if path.startswith(g)), "")
        self._spools[group].write(f"{json.dumps(path)}: {json.dumps({'sha256': sha256, 'bytes': size})}\n")

    def move(self, moves: Iterable[tuple[str, dict[str, Any]]]) -> None:
        """Move staged files (source path relative to staging, entry with the
        destination `path`, `sha256`, `bytes`) into the version."""
        moves = list(moves)

        def one(m: tuple[str, dict[str, Any]]) -> None:
            U.move(U.join(self.staging, m[0]), U.join(self.uri, m[1]["path"]))

        # I/O bound: S3 copies are one request each, so overlap them.
        with ThreadPoolExecutor(max_workers=16 if U.is_s3(self.uri) else 1) as pool:
            list(pool.map(one, moves))
        for _, e in moves:
            self._add(e["path"], e["sha256"], e["bytes"])

    def put(self, path: str, data: bytes) -> None:
        from factory.storage.shards import file_entry

        U.write_bytes(U.join(self.uri, path), data)
        e = file_entry(path, data)
        self._add(path, e["sha256"], e["bytes"])

    def commit(self, manifest: dict[str, Any]) -> str:
        head = {"format": MANIFEST_FORMAT, "name": self.name, "version": self.version, "uri": self.uri,
                "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), **manifest}
        out = Path(self._dir.name) / MANIFEST
        with open(out, "w") as f:
            text = json.dumps({**head, "files": None}, indent=1)
            f.write(text[: text.rindex("null")] + "{")
            first = True
            for spool in self._spools.values():
                spool.close()
                with open(spool.name) as lines:
                    for line in lines:
                        f.write(("\n  " if first else ",\n  ") + line.rstrip("\n"))
                        first = False
            f.write("\n }\n}")
        self.registry.refuse_published(self.name, self.version)  # someone else may have published meanwhile
        U.write_file(U.join(self.uri, MANIFEST), out)
        self._dir.cleanup()
        U.delete_prefix(self.staging)
        if not U.is_s3(self.staging):  # drop an empty `_staging` folder too
            with contextlib.suppress(OSError):
                U.local_path(U.join(self.registry.root, self.name, STAGING)).rmdir()
        self.manifest = head
        return self.uri


def code_version() -> str:
    """The package version plus the git commit when running from a checkout."""
    import importlib.metadata

    import factory

    # (an editable install made before factory/__init__.py existed maps `factory` as a namespace package)
    version = getattr(factory, "__version__", None) or importlib.metadata.version("defect-factory")
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
            text=True, timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{version}+{sha}" if sha else version


def verify_files(version_uri: str, manifest: dict[str, Any], paths: Iterable[str] | None = None) -> list[str]:
    """Paths whose sha256 differs from the manifest (or which are missing)."""
    import hashlib

    bad = []
    for path in paths if paths is not None else manifest["files"]:
        want = manifest["files"][path]["sha256"]
        try:
            got = hashlib.sha256(U.read_bytes(U.join(version_uri, path))).hexdigest()
        except StorageError:
            got = None
        if got != want:
            bad.append(path)
    return bad
