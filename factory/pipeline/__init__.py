"""The Ray Data job: spec -> generated, checked, versioned dataset (see job.py)."""

from factory.pipeline.job import Pool, Progress, RunError, RunOptions, RunResult, plan_pools, run_dataset

__all__ = ["Pool", "Progress", "RunError", "RunOptions", "RunResult", "plan_pools", "run_dataset"]
