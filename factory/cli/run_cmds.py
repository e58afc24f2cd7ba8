"""`factory run|submit|status|logs|show|pull` and `factory datasets list`: make a
dataset version, follow a cluster job, and consume published versions."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Iterator

import typer
from rich.table import Table

from factory.cli.app import app, datasets_app
from factory.cli.common import EXIT_INVALID, console, fail, friendly_errors, load_spec_or_exit, ray_output_to_log
from factory.ray_runtime import JobServerError, job_client

SpecArg = typer.Argument(..., help="Path to the dataset spec (YAML).", show_default=False)
RefArg = typer.Argument(..., help="NAME@VERSION or ROOT/NAME@VERSION (e.g. s3://bucket/datasets/demo-pv-el@3).",
                        show_default=False)
DEFAULT_ROOT = os.environ.get("FACTORY_ROOT", "file://./datasets")
RootOpt = typer.Option(DEFAULT_ROOT, "--root", help="Registry root when the reference has none (env FACTORY_ROOT).")
REPO = Path(__file__).resolve().parents[2]


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
    out: str | None = typer.Option(None, "--out", help="Registry root URI (file://... or s3://...); default: the spec's output.uri."),
    version: int | None = typer.Option(None, "--version", min=1, help="Version to publish; default: the spec's, else the next free one."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run of this version, reusing its written shards (or finish its publish)."),
    restart: bool = typer.Option(False, "--restart", help="Discard this version's staging (an interrupted run's shards) and start over."),
    address: str | None = typer.Option(None, "--address", help="Ray cluster address; default: RAY_ADDRESS, else an embedded local Ray."),
    actors: int | None = typer.Option(None, "--actors", min=1, help="Generator actors per generator (default: one per CPU, or per GPU)."),
    overprovision: float = typer.Option(1.1, "--overprovision", min=1.0, help="Plan count x this in the first round (1 / expected pass rate)."),
    verbose: bool = typer.Option(False, "--verbose", help="Show Ray's own output here instead of in the run's log file."),
) -> None:
    """Generate, check and publish a dataset version (a Ray Data job)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from factory.pipeline import RunOptions, run_dataset
    from factory.retrain.trigger import publish_hook  # spec `retrain: {on: publish}` -> one Ray job

    s = load_spec_or_exit(spec)
    if resume and restart:
        fail("--resume and --restart exclude each other", EXIT_INVALID)
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
        console.print(f"resumed: reused {result.resumed_shards} shards written by the interrupted run")
    console.print(f"[green]published[/] {s.name}@{result.version} at {result.uri}")
    if result.report_uri:
        console.print(f"report: {result.report_uri}\nimage grid: {result.grid_uri}")
    for note in result.notes:
        console.print(note)


def summary_table(m: dict, seconds: float | None = None) -> Table:
    """Per-class counts, then one row per headline number."""
    c = m["counts"]
    t = Table(title=f"{m['name']}@{m['version']}", title_justify="left")
    t.add_column("class")
    t.add_column("images", justify="right")
    t.add_column("boxes", justify="right")
    for name in m["classes"]:
        t.add_row(name, str(c["images_per_class"].get(name, 0)), str(c["boxes_per_class"].get(name, 0)))
    t.add_row("(no defect)", str(c["negatives"]), "0", style="dim", end_section=True)
    reasons = ", ".join(f"{k} {v}" for k, v in m.get("reject_reasons", {}).items()) or "none"
    rate = f"{c['pass_rate']:.0%}" if c.get("pass_rate") is not None else "-"
    t.add_row("published", str(c["accepted"]), "", style="bold")
    t.add_row("rejected", str(c["rejected"]), reasons)
    t.add_row("surplus", str(c["surplus"]), "accepted, not needed")
    t.add_row("pass rate", rate, "")
    if seconds:
        t.add_row("time", f"{seconds:.0f} s", f"{c['accepted'] / seconds:.1f} img/s")
    t.add_row("spec hash", m["spec_hash"][:12], "")
    return t


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
    out: str | None = typer.Option(None, "--out", help="Registry root URI, as seen from the cluster."),
    version: int | None = typer.Option(None, "--version", min=1),
    resume: bool = typer.Option(False, "--resume"),
    restart: bool = typer.Option(False, "--restart"),
) -> None:
    """Submit `factory run` as a Ray job (jobs/generate.py) through the Job Submission API."""
    s = load_spec_or_exit(spec)
    args = [] if out is None else ["--out", out]
    args += [] if version is None else ["--version", str(version)]
    args += ["--resume"] if resume else []
    args += ["--restart"] if restart else []
    client = _job_client(address)
    with _errors():
        job_id = client.submit_job(
            entrypoint="python jobs/generate.py --spec-env FACTORY_SPEC_YAML " + " ".join(args),
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
def _open(ref: str, root: str):
    from factory.storage import DatasetRef, Registry

    try:
        r = DatasetRef.parse(ref, default_root=root)
    except ValueError as e:
        fail(str(e), EXIT_INVALID)
    reg = Registry(r.root)
    name, version = reg.resolve(r)
    return reg, name, version, reg.manifest(name, version)


@app.command()
def show(ref: str = RefArg, root: str = RootOpt) -> None:
    """Summary of a published version: counts, reject reasons, per-class table, files."""
    with _errors():
        reg, name, version, m = _open(ref, root)
    console.print(summary_table(m))
    size = sum(f["bytes"] for f in m["files"].values())
    console.print(
        f"{reg.version_uri(name, version)}\ncreated {m['created_at']}, code {m['code_version']}, formats "
        f"{', '.join(m['formats'])}, {len(m['files'])} files ({size / 1e6:.1f} MB), gate: {', '.join(m['gate'])}"
    )
    with _errors():
        from factory.storage import uri as U

        extras = U.list_files(reg.extras_uri(name, version))
    if extras:  # computed after publishing: metrics, retraining runs (beside the version, never in it)
        console.print(f"extras at {reg.extras_uri(name, version)}: " + ", ".join(sorted(extras)[:12])
                      + (f" and {len(extras) - 12} more" if len(extras) > 12 else ""))


@app.command()
def pull(
    ref: str = RefArg,
    fmt: str = typer.Option(..., "--format", help="yolo, coco or parquet."),
    to: Path = typer.Option(..., "--to", help="Local folder to write into."),
    root: str = RootOpt,
) -> None:
    """Download one format of a published version and verify every file's sha256."""
    from factory.storage import uri as U
    from factory.storage.shards import SINKS

    if fmt not in SINKS:
        fail(f"--format must be one of {', '.join(SINKS)}, got {fmt!r}", EXIT_INVALID)
    with _errors():
        reg, name, version, m = _open(ref, root)
        base = reg.version_uri(name, version)
        paths = [p for p in m["files"] if p.startswith(fmt + "/")]  # a format's files live under its name
        if not paths:
            fail(f"{base}: this version has no {fmt} files (formats: {', '.join(m['formats'])})")
        to.mkdir(parents=True, exist_ok=True)
        bad = []
        with console.status(f"pulling {len(paths)} files"):
            for p in paths:
                data = U.read_bytes(U.join(base, p))
                if hashlib.sha256(data).hexdigest() != m["files"][p]["sha256"]:
                    bad.append(p)
                    continue
                dest = to / p[len(fmt) + 1:]
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(data)
        (to / "manifest.json").write_text(json.dumps(m, indent=1))
    if bad:
        fail(f"{len(bad)} files do not match the manifest's sha256 (first: {base}/{bad[0]}); not written")
    hint = {"yolo": f" - train with data={to / 'data.yaml'}",
            "coco": f" - annotations in {to / 'annotations'}, images in {to / 'images'}"}.get(fmt, "")
    console.print(f"[green]pulled[/] {name}@{version} ({fmt}, {len(paths)} files, checksums ok) to {to}{hint}")


@datasets_app.command("list")
def datasets_list(root: str = typer.Argument(DEFAULT_ROOT, help="Registry root URI (default: env FACTORY_ROOT or ./datasets).")) -> None:
    """Every published version under a root, and "unfinished" ones: a run holds the
    version without having published it (running now, or interrupted: finish it
    with `factory run --resume`, or drop it with `--restart`)."""
    from datetime import datetime, timezone

    from factory.storage import Registry

    with _errors():
        reg = Registry(root)
        t = Table(title=f"datasets in {reg.root}")
        for col in ("name", "version", "status", "images", "rejected", "classes", "created", "spec hash"):
            t.add_column(col, no_wrap=col == "status", min_width=10 if col == "status" else None)
        for name in reg.names():
            for v in reg.versions(name):
                m = reg.manifest(name, v, files=False)
                t.add_row(name, str(v), "published", str(m["counts"]["accepted"]), str(m["counts"]["rejected"]),
                          ", ".join(m["classes"]), m["created_at"], m["spec_hash"][:12])
            for v in reg.staged(name):
                st = reg.run_state(name, v) or {}
                started = datetime.fromtimestamp(st.get("started_at", 0), timezone.utc).isoformat(timespec="seconds")
                t.add_row(name, str(v), "[yellow]unfinished[/]", "", "", "", started,
                          str(st.get("spec_hash", ""))[:12])
    console.print(t if t.row_count else f"no published datasets in {reg.root}")
    if any("unfinished" in str(c) for col in t.columns for c in col._cells):
        console.print("unfinished: a run is running or was interrupted; `factory run SPEC --resume` finishes it, "
                      "`--restart` discards it")
