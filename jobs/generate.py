"""Ray job entrypoint: make and publish one dataset version.

    ray job submit --working-dir . -- python jobs/generate.py specs/demo-pv-el.yaml --out s3://bucket/datasets
    factory submit specs/demo-pv-el.yaml --address http://HEAD:8265     (ships the spec in FACTORY_SPEC_YAML)

It runs the same command as `factory run SPEC [options]` (every option of `factory
run` is accepted: `python jobs/generate.py --help`), so a job and a laptop run share
one code path and one set of defaults. `--spec-env VAR` reads the spec's YAML from
the environment variable VAR instead of a file (what `factory submit` sends).
Inside a job `ray.init()` joins the job's cluster (RAY_ADDRESS is set by Ray).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from factory.cli import app


def _spec_from_env(argv: list[str], folder: str) -> list[str]:
    """`--spec-env VAR` (or `--spec-env=VAR`) -> the path of a file holding $VAR, as the spec argument."""
    out, var, i = [], None, 0
    while i < len(argv):
        a = argv[i]
        if a == "--spec-env" and i + 1 < len(argv):
            var, i = argv[i + 1], i + 2
            continue
        if a.startswith("--spec-env="):
            var = a.split("=", 1)[1]
        else:
            out.append(a)
        i += 1
    if var is None:
        return out
    if var not in os.environ:
        sys.exit(f"error: --spec-env {var}: no such environment variable")
    path = Path(folder) / f"{var}.yaml"  # spec errors name this file
    path.write_text(os.environ[var])
    return [str(path), *out]


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory(prefix="factory-job-") as folder:
        app(["run", *_spec_from_env(argv, folder)], prog_name="jobs/generate.py")


if __name__ == "__main__":
    main()
