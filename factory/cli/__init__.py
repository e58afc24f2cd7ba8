"""`factory` command line. One module per area registers its commands on the
shared apps in `factory.cli.app`; the generator families register their own
(`family_cmds`)."""

from __future__ import annotations

from factory.cli import (  # noqa: F401  (imported for their command registrations)
    family_cmds,
    metrics_cmds,
    quality_cmds,
    retrain_cmds,
    run_cmds,
    serve_cmds,
    spec_cmds,
    versions_cmds,
)
from factory.cli.app import app


def main() -> None:
    app()


__all__ = ["app", "main"]
