"""Small helpers shared by CLI modules: the console, and turning known errors
into a one-line message and an exit code instead of a traceback."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Iterator

import typer
from rich.console import Console
from rich.markup import escape

from factory.generators.base import CheckpointError
from factory.spec import SpecError, load_spec

# Piped output (CI logs, `| tee`) gets wide lines instead of rich's 80-column default,
# so tables do not wrap mid-cell.
console = Console(width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 200)

LOG_DIR = Path(os.environ.get("FACTORY_LOG_DIR") or Path(tempfile.gettempdir()) / "defect-factory")
EXIT_INVALID = 2  # invalid input (spec, arguments)
EXIT_FAILED = 1  # the work itself failed


def plural(n: int, one: str, many: str | None = None) -> str:
    """`1 box`, `2 boxes`."""
    return f"{n} {one if n == 1 else (many or one + 's')}"


def parse_frame(text: str | None, option: str = "--frame") -> tuple[int, int] | None:
    """"WIDTHxHEIGHT" -> (width, height); None stays None; anything else is a ValueError naming the option."""
    if text is None:
        return None
    w, _, h = text.lower().partition("x")
    if not (w.strip().isdigit() and h.strip().isdigit()):
        raise ValueError(f"{option}: {text!r} is not WIDTHxHEIGHT (e.g. 192x192)")
    return int(w), int(h)


def fail(message: str, code: int = EXIT_FAILED) -> None:
    err_console.print(f"[bold red]error:[/] {escape(str(message))}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def load_spec_or_exit(path: Path):
    """Load a spec and check it against its generator families; on a bad spec print
    every problem as `file: field: reason` and exit 2."""
    from factory.generators.checks import check_spec

    try:
        return check_spec(load_spec(path), str(path))
    except SpecError as e:
        for line in e.lines():
            err_console.print(f"[bold red]invalid spec[/] {escape(line)}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_INVALID) from None


_log: Path | None = None  # the current command's log file, while Ray output goes there


@contextlib.contextmanager
def ray_output_to_log(command: str, verbose: bool = False) -> Iterator[Path | None]:
    """Ray's own output (its C++ core worker lines, Ray Data's loggers, the processes
    of an embedded cluster) goes to a log file instead of the terminal, unless
    `verbose`; the factory's own console keeps the terminal."""
    global _log
    if verbose:
        yield None
        return
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    _log = LOG_DIR / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    replaced = []  # (console, the file it had: None = "sys.stdout/stderr when writing")
    for con, stream, fd in ((console, sys.stdout, saved[0]), (err_console, sys.stderr, saved[1])):
        if _on_fd(stream):  # the terminal itself (not a test runner's buffer): keep writing there
            replaced.append((con, con._file))
            con.file = os.fdopen(os.dup(fd), "w", buffering=1)
    fd = os.open(_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    try:
        yield _log
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for con, previous in replaced:
            con.file.close()
            con._file = previous  # rich's own slot: the `file` setter cannot put back "None"
        os.close(saved[0])
        os.close(saved[1])  # `_log` stays set: an error handled after this names it


_ERROR_LINE = re.compile(r"^(?:[A-Za-z_][\w]*\.)*(?P<name>[A-Za-z_]\w*(?:Error|Exception)): (?P<msg>.+)$")


def _on_fd(stream) -> bool:
    try:
        return stream.fileno() in (1, 2)
    except (AttributeError, OSError, ValueError):
        return False


def root_cause(e: BaseException) -> str:
    """`Name: message` of the error that started it. An error inside a Ray worker
    reaches the driver wrapped (ActorDiedError, RayTaskError, Ray Data's markers)
    with the worker's traceback in its text: the last error line that is not one of
    Ray's own wrappers is the one that names the cause."""
    lines = "".join(traceback.format_exception(e)).splitlines()
    for line in reversed(lines):
        m = _ERROR_LINE.match(line)
        if m and not line.startswith("ray.") and m["name"] not in ("SystemException", "UserCodeException"):
            return f"{m['name']}: {m['msg'][:400]}"
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:400]}"


@contextlib.contextmanager
def friendly_errors() -> Iterator[None]:
    """Known user-facing errors become `error: message` and exit code 1 or 2; anything
    else (an error inside a Ray worker, say) becomes one line naming its root cause,
    with the full traceback in a log file whose path is printed."""

    try:
        yield
    except typer.Exit:
        raise
    except (CheckpointError, FileNotFoundError, PermissionError) as e:
        fail(str(e))
    except ValueError as e:
        fail(str(e), EXIT_INVALID)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - the last line of defence against a wall of tracebacks
        log = _log or LOG_DIR / f"error-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as f:
            traceback.print_exception(e, file=f)
        fail(f"{root_cause(e)} (full traceback: {log})")
