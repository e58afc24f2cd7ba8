"""The typer apps every CLI module registers on. Kept tiny and import-light:
command bodies import heavy libraries (torch, ray) only when they run."""

from __future__ import annotations

import typer
from typer.core import TyperOption

_display_type = TyperOption.display_type_rich


def _flag_without_type(self, ctx):
    """typer 0.29 shows `<bool>` after plain flags (`--resume <bool>`), which reads as if
    the flag took a value: show no type for flags."""
    return None if self.is_flag else _display_type(self, ctx)


TyperOption.display_type_rich = _flag_without_type

app = typer.Typer(
    name="factory",
    help="Synthetic defect-image dataset factory: YAML spec in, versioned box-annotated dataset out.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
train_app = typer.Typer(help="Train generators and the quality gate's anomaly model (Ray Train).", no_args_is_help=True)
data_app = typer.Typer(help="Import real data sets into the registry.", no_args_is_help=True)
datasets_app = typer.Typer(help="Browse published dataset versions.", no_args_is_help=True)
app.add_typer(train_app, name="train")
app.add_typer(data_app, name="data")
app.add_typer(datasets_app, name="datasets")
