"""`factory show|pull` and `factory datasets list`: look at, check and download
published dataset versions."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import typer
from rich.table import Table

from factory.cli.app import app, datasets_app
from factory.cli.common import EXIT_FAILED, EXIT_INVALID, console, err_console, fail, plural
from factory.cli.run_cmds import count_cell, one_line_errors, summary_table

RefArg = typer.Argument(..., help="NAME@VERSION or ROOT/NAME@VERSION (e.g. s3://bucket/datasets/demo-pv-el@3).",
                        show_default=False)
RootOpt = typer.Option(None, "--root", show_default=False,
                       help="Registry root when the reference has none (default: env FACTORY_ROOT, else file://./datasets).")


def _open(ref: str, root: str | None):
    from factory.storage import DatasetRef, Registry, default_root

    try:
        r = DatasetRef.parse(ref, default_root=root or default_root())
    except ValueError as e:
        fail(str(e), EXIT_INVALID)
    reg = Registry(r.root)
    name, version = reg.resolve(r)
    return reg, name, version, reg.manifest(name, version)


@app.command()
def show(
    ref: str = RefArg,
    root: str | None = RootOpt,
    verify: bool = typer.Option(True, "--verify/--no-verify",
                                help="Check every file against the version's file list (reads the whole version; "
                                     "--no-verify for a quick look at a large remote one)."),
) -> None:
    """Summary of a published version: counts, reject reasons, per-class table, files.
    Exits 1 naming the file when a file does not match the version's file list."""
    from factory.storage import uri as U
    from factory.storage.registry import check_files

    with one_line_errors():
        reg, name, version, m = _open(ref, root)
        base = reg.version_uri(name, version)
        files = m.files or {}
        bad = []
        if verify:
            with console.status(f"verifying {plural(len(files), 'file')}"):
                bad = list(check_files(base, m).values())
        extras = U.list_files(reg.extras_uri(name, version))
    console.print(summary_table(m))
    size = sum(f.bytes for f in files.values())
    made = f"gate: {', '.join(m.gate) or '-'}" if m.kind == "generated" else "imported real data"
    console.print(
        f"{base}\ncreated {m.created_at or '-'}, code {m.code_version or '-'}, formats "
        f"{', '.join(m.format_names()) or '-'}, {plural(len(files), 'file')} ({size / 1e6:.1f} MB"
        f"{', checksums ok' if verify and not bad else ''}), {made}"
    )
    if extras:  # computed after publishing: metrics, retraining runs (beside the version, never in it)
        console.print(f"extras at {reg.extras_uri(name, version)}: " + ", ".join(sorted(extras)[:12])
                      + (f" and {len(extras) - 12} more" if len(extras) > 12 else ""))
    if bad:
        fail(bad[0] + (f" (and {plural(len(bad) - 1, 'more file')})" if len(bad) > 1 else ""))


@app.command()
def pull(
    ref: str = RefArg,
    fmt: str = typer.Option(..., "--format", help="yolo, yolo_seg, coco or parquet."),
    to: Path = typer.Option(..., "--to", help="Local folder to write into (created; files already there stay)."),
    root: str | None = RootOpt,
) -> None:
    """Download one format of a published version, every file checked against the
    version's file list (sha256). All or nothing: the files gather in a temporary
    folder beside --to and move in at the end, so a refused or failed pull leaves
    nothing. A version whose file list names a path outside its folders is refused
    whole; pull never writes outside --to and never follows a symbolic link."""
    from factory.storage.shards import SINKS

    if fmt not in SINKS:
        fail(f"--format must be one of {', '.join(SINKS)}, got {fmt!r}", EXIT_INVALID)
    with one_line_errors():
        reg, name, version, m = _open(ref, root)  # (refuses a file list naming a path outside the version)
        base = reg.version_uri(name, version)
        files = m.files or {}
        paths = [p for p in files if p.startswith(fmt + "/")]  # a format's files live under its name
        if not paths:
            how = f"; add {fmt} to the spec's output.formats and publish a new version" if m.kind == "generated" else ""
            fail(f"{base}: this version has no {fmt} files (formats: {', '.join(m.format_names()) or 'none'}){how}")
        with console.status(f"pulling {plural(len(paths), 'file')}"):
            _pull(base, {p[len(fmt) + 1:]: (p, files[p].sha256) for p in paths},
                  json.dumps(m.to_dict(), indent=1).encode(), to)
    hint = {"yolo": f" - train with data={to / 'data.yaml'}",
            "yolo_seg": f" - train a segmentation model with data={to / 'data.yaml'}",
            "coco": f" - annotations in {to / 'annotations'}, images in {to / 'images'}"}.get(fmt, "")
    console.print(f"[green]pulled[/] {name}@{version} ({fmt}, {plural(len(paths), 'file')}, checksums ok) to {to}{hint}")


def _pull(base: str, want: dict[str, tuple[str, str]], manifest: bytes, to: Path) -> None:
    """Read and check each wanted file (path under `to` -> (listed path, sha256)) into
    a temporary folder beside `to`, add manifest.json, then move them into `to`; on
    any error remove the temporary folder and the folders made for it."""
    from factory.storage import StorageError
    from factory.storage.registry import read_listed

    to = Path(os.path.abspath(to))
    if to.exists() and not to.is_dir():
        raise StorageError(f"{to}: is a file, expected a folder")
    made = _mkdirs(to.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{to.name}.pull-", dir=to.parent))
    try:
        for rel, (path, sha256) in want.items():
            dest = tmp / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(read_listed(base, path, sha256))
        (tmp / "manifest.json").write_bytes(manifest)
        _move_in(tmp, to)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for d in reversed(made):
            with contextlib.suppress(OSError):
                d.rmdir()
        raise
    shutil.rmtree(tmp, ignore_errors=True)


def _mkdirs(folder: Path) -> list[Path]:
    """Create `folder` and its missing parents; the ones created, outermost first."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for d in reversed(missing):
        d.mkdir(exist_ok=True)
    return missing[::-1]


def _move_in(tmp: Path, to: Path) -> None:
    """Move the pulled files into `to`: one rename when `to` is new (or an empty
    folder); else file by file, after checking that nothing below `to` on the way is
    a symbolic link (or a file where a folder goes), so nothing is written through one."""
    from factory.storage import StorageError

    if not to.is_symlink() and (not to.exists() or (to.is_dir() and not any(to.iterdir()))):
        os.replace(tmp, to)
        return
    moves = [p.relative_to(tmp) for p in sorted(tmp.rglob("*")) if p.is_file()]
    for rel in moves:
        for i in range(1, len(rel.parts) + 1):
            here, folder = to.joinpath(*rel.parts[:i]), i < len(rel.parts)
            if here.is_symlink():
                raise StorageError(f"{here}: is a symbolic link; pull never writes through one "
                                   f"(remove it, or pull into a new folder)")
            if here.exists() and here.is_dir() != folder:
                raise StorageError(f"{here}: is a {'folder' if here.is_dir() else 'file'} where the pull puts a "
                                   f"{'folder' if folder else 'file'}")
    for rel in moves:
        (to / rel).parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp / rel, to / rel)


ListRootOpt = typer.Option(None, "--root", show_default=False,
                           help="Registry root URI (default: env FACTORY_ROOT, else file://./datasets); "
                                "the first argument says the same.")


@datasets_app.command("list")
def datasets_list(
    root_arg: str | None = typer.Argument(None, metavar="ROOT", show_default=False,
                                          help="Registry root URI: the same as --root."),
    root: str | None = ListRootOpt,
) -> None:
    """Every published version under a root, and what else it holds, each marked:
    "unfinished": a run holds the version without having published it (running now,
    or interrupted: finish it with `factory run --resume`, or drop it with `--restart`);
    "leftover staging": a published version's staging folder that a cut-short cleanup
    left (nothing reads it); "broken": its manifest or run lock cannot be read (the
    file and the reason follow the table, and the command exits 1)."""
    from rich.markup import escape

    from factory.storage import Registry, default_root
    from factory.storage import uri as U

    if root_arg and root and U.to_uri(root_arg) != U.to_uri(root):
        fail(f"two roots: {root_arg} and --root {root}; give the root once", EXIT_INVALID)
    listing = _Listing()
    with one_line_errors():
        reg = Registry(root or root_arg or default_root())
        t = Table(title=f"datasets in {reg.root}")
        for col in ("name", "version", "status", "kind", "images", "rejected", "classes", "created", "spec hash"):
            t.add_column(col, no_wrap=col == "status", min_width=10 if col == "status" else None)
        for name in reg.names():
            for cells in listing.rows(reg, name):
                t.add_row(*cells)
    console.print(t if t.row_count else f"no published datasets in {reg.root}")
    if listing.unfinished:
        console.print("unfinished: a run is running or was interrupted; `factory run SPEC --resume` finishes it, "
                      "`--restart` discards it")
    for where in listing.leftover:
        console.print(f"leftover staging: {where} (its version is published; nothing reads this: delete it, or "
                      f"`factory run SPEC --resume` finishes that run's cleanup)")
    for e in listing.broken:
        err_console.print(f"[bold red]broken:[/] {escape(e)}", highlight=False, soft_wrap=True)
    if listing.broken:
        raise typer.Exit(EXIT_FAILED)


class _Listing:
    """`datasets list`'s rows, and what it found on the way: broken manifests or run locks
    (one hides nothing else), leftover staging folders, unfinished runs."""

    def __init__(self):
        self.broken: list[str] = []
        self.leftover: list[str] = []
        self.unfinished = False

    def rows(self, reg, name: str) -> list[list[str]]:
        """One dataset's rows (published, unfinished, leftover staging), in version order."""
        from datetime import datetime, timezone

        from factory.storage import StorageError

        rows: list[tuple[int, list[str]]] = []
        for v in reg.versions(name):
            try:
                m = reg.manifest(name, v, files=False)
            except StorageError as e:  # one broken version hides nothing else
                self.broken.append(str(e))
                rows.append((v, [name, str(v), "[red]broken[/]", *[""] * 6]))
                continue
            rows.append((v, [name, str(v), "published", m.kind, str(m.counts.published), count_cell(m.counts.rejected),
                             ", ".join(m.classes), m.created_at, (m.spec_hash or "-")[:12]]))
        for v in reg.staged(name):
            try:
                st = reg.run_state(name, v) or {}
            except StorageError as e:
                self.broken.append(str(e))
                rows.append((v, [name, str(v), "[red]broken[/]", "generated", *[""] * 5]))
                continue
            self.unfinished = True
            started = datetime.fromtimestamp(st.get("started_at", 0), timezone.utc).isoformat(timespec="seconds")
            rows.append((v, [name, str(v), "[yellow]unfinished[/]", "generated", "", "", "", started,
                             str(st.get("spec_hash", ""))[:12]]))
        for v in reg.leftover_staging(name):
            self.leftover.append(reg.staging_uri(name, v))
            rows.append((v, [name, str(v), "[yellow]leftover staging[/]", *[""] * 6]))
        return [cells for _, cells in sorted(rows, key=lambda r: r[0])]
