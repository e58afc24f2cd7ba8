"""Reading a published version: `open_dataset` (Ray Data) and `read_table` /
`read_pandas` (plain pyarrow, for users without Ray). Both read only the Parquet
files the manifest lists, so a reader never sees a staging or half-published
file; both check each part against the file list's sha256 first, so a damaged part
is named instead of read (`open_dataset(..., verify=False)` skips it)."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

from factory.storage import uri as U
from factory.storage.manifest import Manifest
from factory.storage.registry import DatasetRef, Registry, check_files, default_root, read_listed
from factory.storage.uri import StorageError

if TYPE_CHECKING:  # (each loads on first use)
    import pandas as pd
    import pyarrow as pa
    import ray.data


def _resolve(ref: str | DatasetRef, root: str | None) -> tuple[str, Manifest, list[str]]:
    r = ref if isinstance(ref, DatasetRef) else DatasetRef.parse(ref, default_root=root or default_root())
    reg = Registry(r.root)
    name, version = reg.resolve(r)
    manifest = reg.manifest(name, version)
    base = reg.version_uri(name, version)
    parts = sorted(p for p in manifest.files or {} if p.startswith("parquet/") and p.endswith(".parquet"))
    if not parts:
        raise ValueError(f"{base}: this version has no Parquet shards "
                         f"(formats: {', '.join(manifest.format_names()) or 'none'})")
    return base, manifest, parts


def open_dataset(ref: str | DatasetRef, root: str | None = None, verify: bool = True,
                 **read_kwargs: Any) -> ray.data.Dataset:
    """A published version as a `ray.data.Dataset` (one row per accepted sample).

    `ref` is `ROOT/NAME@VERSION` (`@latest` or no version = newest), e.g.
    `open_dataset("s3://bucket/datasets/demo-pv-el@3")`. Ray is joined or started
    the CLI's way (`ensure_ray`: quiet, no auth token written), not Ray's default way.
    With `verify` (the default) every Parquet part is first checked against the file
    list's sha256 (one extra read; a damaged part is named, never read as if whole);
    `verify=False` skips that for a version already checked.
    """
    import ray

    from factory.ray_runtime import ensure_ray

    base, manifest, parts = _resolve(ref, root)
    if verify:
        bad = check_files(base, manifest, parts)
        if bad:
            raise StorageError(next(iter(bad.values())) + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""))
    ensure_ray()
    fs, path = U.arrow_filesystem(base)
    return ray.data.read_parquet([f"{path}/{p}" for p in parts], filesystem=fs, **read_kwargs)


def read_table(ref: str | DatasetRef, root: str | None = None, columns: list[str] | None = None) -> pa.Table:
    """A published version as one `pyarrow.Table` (no Ray needed)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    base, manifest, parts = _resolve(ref, root)
    assert manifest.files is not None  # (`_resolve` found the parts in it)
    tables = []
    for p in parts:
        data = read_listed(base, p, manifest.files[p].sha256)
        try:
            tables.append(pq.read_table(io.BytesIO(data), columns=columns))
        except (pa.ArrowException, OSError) as e:  # matches its hash, yet unreadable: written so
            raise StorageError(f"{U.join(base, p)}: not a readable Parquet file ({e})") from None
    return pa.concat_tables(tables)


def read_pandas(ref: str | DatasetRef, root: str | None = None, columns: list[str] | None = None) -> pd.DataFrame:
    """A published version as a pandas DataFrame (no Ray needed)."""
    return read_table(ref, root, columns).to_pandas()
