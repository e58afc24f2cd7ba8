"""The Ray Data job: spec -> generated, checked, versioned dataset (see job.py)."""

from factory.pipeline.job import Pool, Progress, RunError, RunOptions, RunResult, ensure_ray, plan_pools, run_dataset

__all__ = ["Pool", "Progress", "RunError", "RunOptions", "RunResult", "ensure_ray", "plan_pools", "run_dataset"]
