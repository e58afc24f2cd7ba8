"""What a run takes and gives: `RunOptions`, `Progress`, `RunResult`, `RunError`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from factory.spec import DatasetSpec

# called after a version's manifest is written, with the spec and the version's
# URI; returns lines to show the user (the CLI passes the detector retrain trigger)
PublishHook = Callable[[DatasetSpec, str], list[str]]


class RunError(RuntimeError):
    """The job cannot go on (a version held by another or an interrupted run, a
    spec that changed under --resume, a gate that rejects everything, ...)."""


@dataclass
class Progress:
    accepted: int = 0
    rejected: int = 0
    processed: int = 0
    count: int = 0
    round: int = 0
    phase: str = "generating"


@dataclass
class RunOptions:
    out: str | None = None  # registry root; default: the spec's output.uri
    version: int | None = None  # default: the spec's version, else the next free one
    resume: bool = False  # continue an interrupted run of this version (or finish its publish)
    restart: bool = False  # discard this version's staging (an interrupted run's shards) first
    address: str | None = None  # Ray address; default: RAY_ADDRESS, else an embedded cluster
    actors: int | None = None  # generator actors per pool; default: fill the cluster's CPUs (1 per GPU)
    batch_size: int = 64  # work items per generator call (a shard is made in calls of this many)
    # a shard holds at most this many bytes of raw pixels (and output.shard_size images): the bound on
    # what one generator actor holds before it writes (plus one batch of raw images in flight)
    shard_max_bytes: int = 256 * 2**20
    overprovision: float = 1.1  # 1 / expected pass rate of the first round
    retries: int = 2  # retries of a failing generator call before it becomes a reject
    report: bool = True
    on_publish: PublishHook | None = None


@dataclass
class RunResult:
    name: str
    version: int
    uri: str
    manifest: dict[str, Any]
    seconds: float
    report_uri: str | None = None
    grid_uri: str | None = None
    resumed_shards: int = 0
    notes: list[str] = field(default_factory=list)
