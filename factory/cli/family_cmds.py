"""The generator families' own subcommands (`factory train pdig`, `factory train dg2gan`,
...). Each family registers them from its folder (`factory.generators.<kind>.cli`) or
an installed entry point (`factory.generators.base.family_commands`); here they are
added to `factory train`, each wrapped so that its errors read like every other
command's (`friendly_errors`): a family's command module knows nothing of this CLI."""

from __future__ import annotations

import functools
import importlib
from typing import Callable

import typer
from rich.markup import escape

from factory.cli.app import train_app
from factory.cli.common import err_console, friendly_errors
from factory.generators.base import family_commands


def _friendly(command: Callable) -> Callable:
    @functools.wraps(command)  # typer reads the options from the wrapped signature
    def run(*args, **kwargs):
        with friendly_errors():
            return command(*args, **kwargs)

    return run


def register_families(train: typer.Typer = train_app) -> None:
    for kind, target in family_commands().items():
        module, _, name = target.partition(":")
        commands = typer.Typer()
        try:
            getattr(importlib.import_module(module), name)(commands)
        except (ImportError, AttributeError) as e:  # one broken plugin must not take the whole CLI down
            err_console.print(f"[yellow]warning:[/] the {escape(kind)} family's commands ({escape(target)}) "
                              f"are unavailable: {escape(str(e))}", highlight=False, soft_wrap=True)
            continue
        for info in commands.registered_commands:
            if info.callback is not None:
                info.callback = _friendly(info.callback)
            train.registered_commands.append(info)


register_families()
