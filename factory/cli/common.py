"""Small helpers shared by CLI modules: the console, and turning known errors
into a one-line message and an exit code instead of a traceback."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Iterator

import typer
from rich.console import Console
from rich.markup import escape

# Piped output (CI logs, `| tee`) gets wide lines instead of rich's 80-column default,
# so tables do not wrap mid-cell.
console = Console(width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 200)

EXIT_INVALID = 2  # invalid input (spec, arguments)
EXIT_FAILED = 1  # the work itself failed


def plural(n: int, one: str, many: str | None = None) -> str:
    """`1 box`, `2 boxes`."""
    return f"{n} {one if n == 1 else (many or one + 's')}"


def fail(message: str, code: int = EXIT_FAILED) -> None:
    err_console.print(f"[bold red]error:[/] {escape(str(message))}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def load_spec_or_exit(path: Path):
    """Load a spec and check it against its generator families; on a bad spec print
    every problem as `file: field: reason` and exit 2."""
    from factory.generators.checks import check_spec
    from factory.spec import SpecError, load_spec

    try:
        return check_spec(load_spec(path), str(path))
    except SpecError as e:
        for line in e.lines():
            err_console.print(f"[bold red]invalid spec[/] {escape(line)}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_INVALID) from None


@contextlib.contextmanager
def friendly_errors() -> Iterator[None]:
    """Known user-facing errors become `error: message` and exit code 1 or 2."""
    from factory.generators.base import CheckpointError

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
