"""The Ray Data job: spec -> generated, checked, versioned dataset (see job.py)."""

from factory.pipeline.job import Progress, RunError, RunOptions, RunResult, ensure_ray, run_dataset

__all__ = ["Progress", "RunError", "RunOptions", "RunResult", "ensure_ray", "run_dataset"]
