"""Ray job entrypoint for training: `ray job submit -- python jobs/train_generator.py dg2gan|pdig|anomaly ARGS...`.

It runs the same command as `factory train <family> ARGS...`, so a job and a
laptop run share one code path; Ray Train inside the command connects to the
cluster the job runs on.
"""

from __future__ import annotations

import sys

from factory.cli import app


def main(argv: list[str] | None = None) -> None:
    app(["train", *(sys.argv[1:] if argv is None else argv)], prog_name="train_generator")


if __name__ == "__main__":
    main()
