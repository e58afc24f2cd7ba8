"""`factory run|submit|status|logs`: make a dataset version, here or as a cluster job
(`factory show|pull` and `factory datasets list`, which consume published versions,
are in `factory.cli.versions_cmds`)."""

from __future__ import annotations

import contextlib
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import typer
from rich.table import Table

from factory.cli.app import app
from factory.cli.common import (
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
def one_line_errors() -> Iterator[None]:
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
    with one_line_errors(), ray_output_to_log("run", verbose) as log, Progress(
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
    t.add_row("rejected", count_cell(c.rejected), reasons)
    t.add_row("surplus", count_cell(c.surplus), "accepted, not needed")
    t.add_row("pass rate", f"{c.pass_rate:.0%}" if c.pass_rate is not None else "-", "")
    if seconds:
        t.add_row("time", f"{seconds:.0f} s", f"{c.published / seconds:.1f} img/s")
    t.add_row("spec hash", (m.spec_hash or "-")[:12], "")
    return t


def count_cell(v: int | None) -> str:
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
    with one_line_errors():
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

