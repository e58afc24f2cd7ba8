"""Ray job entrypoint for detector retraining:
`ray job submit -- python -m jobs.retrain NAME@VERSION --real-train URI --real-eval URI [...]`.

It runs the same command as `factory retrain ...` (the publish trigger,
`factory.retrain.trigger`, submits exactly this, settings as `--config`), so a
job and a laptop run share one code path and one set of defaults (matched
optimizer steps); the Ray Train runs inside it join the cluster the job runs on.
"""

from __future__ import annotations

import sys

from factory.cli import app


def main(argv: list[str] | None = None) -> None:
    app(["retrain", *(sys.argv[1:] if argv is None else argv)], prog_name="retrain")


if __name__ == "__main__":
    main()
