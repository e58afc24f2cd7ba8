"""`factory run|submit|status|logs|show|pull` and `factory datasets list`: make a
dataset version, follow a cluster job, and consume published versions."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import typer
from rich.table import Table

from factory.cli.app import app, datasets_app
from factory.cli.common import (
    EXIT_FAILED,
    EXIT_INVALID,
    console,
    err_console,
    fail,
    friendly_errors,
    load_spec_or_exit,
    plural,
    ray_output_to_log,
)
from factory.ray_runtime import JobServerError, job_client

if TYPE_CHECKING:
    from factory.storage import Manifest

SpecArg = typer.Argument(..., help="Path to the dataset spec (YAML).", show_default=False)
RefArg = typer.Argument(..., help="NAME@VERSION or ROOT/NAME@VERSION (e.g. s3://bucket/datasets/demo-pv-el@3).",
                        show_default=False)
RootOpt = typer.Option(None, "--root", show_default=False,
                       help="Registry root when the reference has none (default: env FACTORY_ROOT, else file://./datasets).")
REPO = Path(__file__).resolve().parents[2]

# `factory run`'s options, declared once: `run` takes them and `submit` forwards every one of them to the job
OutOpt = typer.Option(None, "--out", help="Registry root URI (file://... or s3://...); default: the spec's output.uri.")
VersionOpt = typer.Option(None, "--version", min=1, help="Version to publish; default: the spec's, else the next free one.")
ResumeOpt = typer.Option(False, "--resume", help="Continue an interrupted run of this version, reusing its written shards (or finish its publish).")
RestartOpt = typer.Option(False, "--restart", help="Discard this version's staging (an interrupted run's shards) and start over.")
ActorsOpt = typer.Option(None, "--actors", min=1, help="Generator actors per generator (default: one per CPU, or per GPU).")
OverprovisionOpt = typer.Option(1.1, "--overprovision", min=1.0, help="Plan count x this in the first round (1 / expected pass rate).")
VerboseOpt = typer.Option(False, "--verbose", help="Show Ray's own output here instead of in the run's log file.")


def run_argv(out: str | None = None, version: int | None = None, resume: bool = False, restart: bool = False,
             actors: int | None = None, overprovision: float = 1.1, verbose: bool = False) -> list[str]:
    """`factory run`'s options (all but the spec and --address) as command-line arguments."""
    args = [] if out is None else ["--out", out]
    args += [] if version is None else ["--version", str(version)]
    args += ["--resume"] if resume else []
    args += ["--restart"] if restart else []
    args += [] if actors is None else ["--actors", str(actors)]
    args += ["--overprovision", repr(float(overprovision))]
    args += ["--verbose"] if verbose else []
    return args


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """Storage and job errors become one line naming what failed."""
    from factory.pipeline import RunError
    from factory.storage import StorageError

    with friendly_errors():
        try:
            yield
        except (StorageError, RunError) as e:
            fail(str(e))


@app.command()
def run(
    spec: Path = SpecArg,
    out: str | None = OutOpt,
    version: int | None = VersionOpt,
    resume: bool = ResumeOpt,
    restart: bool = RestartOpt,
    address: str | None = typer.Option(None, "--address", help="Ray cluster address; default: RAY_ADDRESS, else an embedded local Ray."),
    actors: int | None = ActorsOpt,
    overprovision: float = OverprovisionOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Generate, check and publish a dataset version (a Ray Data job)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from factory.pipeline import RunOptions, run_dataset
    from factory.retrain.trigger import publish_hook  # spec `retrain: {on: publish}` -> one Ray job

    s = load_spec_or_exit(spec)
    if resume and restart:
        fail("--resume and --restart exclude each other", EXIT_INVALID)
    _hint_on_ctrl_c(spec, out, version)
    opts = RunOptions(out=out, version=version, resume=resume, restart=restart, address=address, actors=actors,
                      overprovision=overprovision, on_publish=publish_hook)
    with _errors(), ray_output_to_log("run", verbose) as log, Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("accepted, {task.fields[rejected]} rejected, round {task.fields[round]}"), TimeElapsedColumn(),
        console=console, transient=False,
    ) as bar:
        task = bar.add_task(f"{s.name}: checking storage", total=s.count, rejected=0, round=0)

        def show(p) -> None:
            desc = f"{s.name}: {'publishing' if p.phase == 'publishing' else 'generating'}"
            bar.update(task, completed=min(p.accepted, s.count), rejected=p.rejected, round=p.round, description=desc)

        result = run_dataset(s, opts, on_progress=show)
    console.print(summary_table(result.manifest, result.seconds))
    if log:
        console.print(f"[dim]Ray's log: {log}[/]")
    if result.resumed_shards:
        console.print(f"resumed: reused {plural(result.resumed_shards, 'shard')} written by the interrupted run")
    console.print(f"[green]published[/] {s.name}@{result.version} at {result.uri}")
    if result.report_uri:
        console.print(f"report: {result.report_uri}\nimage grid: {result.grid_uri}")
    for note in result.notes:
        console.print(note)


def _hint_on_ctrl_c(spec: Path, out: str | None, version: int | None) -> None:
    """On Ctrl-C, say at once how to go on (before Ray and the job wind down, which
    takes a while), then interrupt as usual."""
    import signal

    again = ["factory", "run", str(spec)] + (["--out", out] if out else []) + ([f"--version={version}"] if version else [])
    hint = (f"interrupted: nothing new is published. `{shlex.join(again + ['--resume'])}` goes on from the shards "
            f"written so far; `--restart` discards them and starts over")

    def interrupted(signum, frame) -> None:
        err_console.print(hint, highlight=False, soft_wrap=True)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        raise KeyboardInterrupt

    with contextlib.suppress(ValueError):  # not the main thread: leave SIGINT alone
        signal.signal(signal.SIGINT, interrupted)


def summary_table(manifest: "Manifest | dict", seconds: float | None = None) -> Table:
    """Per-class counts, then one row per headline number (a generated version's
    gate numbers, or an imported real set's source)."""
    from factory.storage import Manifest

    m = Manifest.of(manifest)
    c = m.counts
    t = Table(title=f"{m.ref}" + (" (real)" if m.kind == "real" else ""), title_justify="left")
    t.add_column("class")
    t.add_column("images", justify="right")
    t.add_column("boxes", justify="right")
    for name in m.classes:
        images = "-" if c.images_per_class is None else str(c.images_per_class.get(name, 0))
        t.add_row(name, images, str(c.boxes_per_class.get(name, 0)))
    t.add_row("(no defect)", "-" if c.negatives is None else str(c.negatives), "0", style="dim", end_section=True)
    t.add_row("published", str(c.published), ", ".join(f"{k} {v}" for k, v in c.splits.items()), style="bold")
    if m.kind == "real":
        t.add_row("source", m.source or "-", f"imported by the {m.adapter} adapter" if m.adapter else "")
        return t
    reasons = ", ".join(f"{k} {v}" for k, v in m.reject_reasons.items()) or "none"
    t.add_row("rejected", _num(c.rejected), reasons)
    t.add_row("surplus", _num(c.surplus), "accepted, not needed")
    t.add_row("pass rate", f"{c.pass_rate:.0%}" if c.pass_rate is not None else "-", "")
    if seconds:
        t.add_row("time", f"{seconds:.0f} s", f"{c.published / seconds:.1f} img/s")
    t.add_row("spec hash", (m.spec_hash or "-")[:12], "")
    return t


def _num(v: int | None) -> str:
    return "-" if v is None else str(v)


# --- cluster jobs -----------------------------------------------------------
def _job_client(address: str | None):

    try:
        return job_client(address)
    except JobServerError as e:
        fail(str(e))


AddressOpt = typer.Option(None, "--address", help="Ray dashboard address, e.g. http://HEAD:8265 (default: RAY_ADDRESS).")


@app.command()
def submit(
    spec: Path = SpecArg,
    address: str | None = AddressOpt,
    out: str | None = OutOpt,
    version: int | None = VersionOpt,
    resume: bool = ResumeOpt,
    restart: bool = RestartOpt,
    actors: int | None = ActorsOpt,
    overprovision: float = OverprovisionOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Submit `factory run` as a Ray job (jobs/generate.py) through the Job Submission API; every
    option but --address goes to `factory run` in the job (--out as the cluster sees it)."""
    s = load_spec_or_exit(spec)
    args = run_argv(out=out, version=version, resume=resume, restart=restart, actors=actors,
                    overprovision=overprovision, verbose=verbose)
    client = _job_client(address)
    with _errors():
        job_id = client.submit_job(
            entrypoint=shlex.join(["python", "jobs/generate.py", "--spec-env", "FACTORY_SPEC_YAML", *args]),
            runtime_env={
                "working_dir": str(REPO),
                "excludes": [".venv", ".git", "datasets", "out", "runs", "checkpoints", "*.pt", "*.safetensors"],
                "env_vars": {"FACTORY_SPEC_YAML": spec.read_text()},
            },
            metadata={"dataset": s.name, "spec_hash": s.spec_hash()},
        )
    console.print(f"submitted {s.name} as job [bold]{job_id}[/]\nfollow it: factory status {job_id} / factory logs {job_id}")


@app.command()
def status(job_id: str = typer.Argument(..., help="Job id printed by `factory submit`."), address: str | None = AddressOpt) -> None:
    """Status of a submitted job."""
    client = _job_client(address)
    try:
        info = client.get_job_info(job_id)
    except Exception as e:  # noqa: BLE001
        fail(f"job {job_id}: {e}")
    console.print(f"{job_id}: [bold]{info.status}[/] {info.message or ''}")


@app.command()
def logs(job_id: str = typer.Argument(..., help="Job id printed by `factory submit`."), address: str | None = AddressOpt,
         follow: bool = typer.Option(False, "--follow", "-f", help="Stream until the job ends.")) -> None:
    """Logs of a submitted job."""
    client = _job_client(address)
    try:
        if not follow:
            sys.stdout.write(client.get_job_logs(job_id))
            return
        import asyncio

        async def tail() -> None:
            async for chunk in client.tail_job_logs(job_id):
                sys.stdout.write(chunk)
                sys.stdout.flush()

        asyncio.run(tail())
    except Exception as e:  # noqa: BLE001
        fail(f"job {job_id}: {e}")


# --- consumers --------------------------------------------------------------
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

    with _errors():
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
    with _errors():
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
    from datetime import datetime, timezone

    from rich.markup import escape

    from factory.storage import Registry, StorageError, default_root
    from factory.storage import uri as U

    if root_arg and root and U.to_uri(root_arg) != U.to_uri(root):
        fail(f"two roots: {root_arg} and --root {root}; give the root once", EXIT_INVALID)
    broken, leftover, unfinished = [], [], False
    with _errors():
        reg = Registry(root or root_arg or default_root())
        t = Table(title=f"datasets in {reg.root}")
        for col in ("name", "version", "status", "kind", "images", "rejected", "classes", "created", "spec hash"):
            t.add_column(col, no_wrap=col == "status", min_width=10 if col == "status" else None)
        for name in reg.names():
            rows: list[tuple[int, list[str]]] = []  # (version, cells): a dataset's rows in version order
            for v in reg.versions(name):
                try:
                    m = reg.manifest(name, v, files=False)
                except StorageError as e:  # one broken version hides nothing else
                    broken.append(str(e))
                    rows.append((v, [name, str(v), "[red]broken[/]", *[""] * 6]))
                    continue
                rows.append((v, [name, str(v), "published", m.kind, str(m.counts.published), _num(m.counts.rejected),
                                 ", ".join(m.classes), m.created_at, (m.spec_hash or "-")[:12]]))
            for v in reg.staged(name):
                try:
                    st = reg.run_state(name, v) or {}
                except StorageError as e:
                    broken.append(str(e))
                    rows.append((v, [name, str(v), "[red]broken[/]", "generated", *[""] * 5]))
                    continue
                unfinished = True
                started = datetime.fromtimestamp(st.get("started_at", 0), timezone.utc).isoformat(timespec="seconds")
                rows.append((v, [name, str(v), "[yellow]unfinished[/]", "generated", "", "", "", started,
                                 str(st.get("spec_hash", ""))[:12]]))
            for v in reg.leftover_staging(name):
                leftover.append(reg.staging_uri(name, v))
                rows.append((v, [name, str(v), "[yellow]leftover staging[/]", *[""] * 6]))
            for _, cells in sorted(rows, key=lambda r: r[0]):
                t.add_row(*cells)
    console.print(t if t.row_count else f"no published datasets in {reg.root}")
    if unfinished:
        console.print("unfinished: a run is running or was interrupted; `factory run SPEC --resume` finishes it, "
                      "`--restart` discards it")
    for where in leftover:
        console.print(f"leftover staging: {where} (its version is published; nothing reads this: delete it, or "
                      f"`factory run SPEC --resume` finishes that run's cleanup)")
    for e in broken:
        err_console.print(f"[bold red]broken:[/] {escape(e)}", highlight=False, soft_wrap=True)
    if broken:
        raise typer.Exit(EXIT_FAILED)
