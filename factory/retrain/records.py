"""The records of a retrain run: how an arm trains (`ArmPlan`, its `Phase`s), what a
worker is handed (`ArmRun`), and what it writes (`ArmMetrics`: `Scores` per class,
a `PhaseRecord` per train() call)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NotRequired, TypedDict

from factory.retrain.data import SelectionCounts


class Phase(TypedDict):
    """One train() call of an arm: on which data (synthetic|real, or the arm's own), for how long."""

    data: str
    epochs: int
    stop_steps: int | None
    warmup_epochs: float
    close_mosaic: int


@dataclass
class ArmPlan:
    """How long one arm trains (the launcher sizes it so arms match in steps)."""

    epochs: int  # the schedule's length (lr decay, warm-up) in this arm's epochs
    stop_steps: int | None  # stop after exactly this many optimizer steps (None: run all epochs)
    warmup_epochs: float  # the same warm-up in optimizer steps for every arm
    close_mosaic: int  # the same mosaic-free tail in optimizer steps, as near as whole epochs allow
    total_steps: int | None = None  # the whole run's steps (all phases): where the evaluations are spaced
    # pretrain_finetune: train() calls in sequence, each {data: synthetic|real, epochs, stop_steps,
    # warmup_epochs, close_mosaic}; the next starts from the previous one's last.pt
    phases: list[Phase] | None = None

    def phase_list(self, arm: str) -> list[Phase]:
        return self.phases or [Phase(data=arm, epochs=self.epochs, stop_steps=self.stop_steps,
                                     warmup_epochs=self.warmup_epochs, close_mosaic=self.close_mosaic)]


class ArmRun(TypedDict):
    """`train_loop_config` of one (arm, seed): what the worker fetches, trains and where it writes."""

    run_id: str
    out_uri: str
    real_train: str
    real_eval: str
    synthetic: str
    settings: dict  # RetrainSettings.model_dump(mode="json")
    storage_path: str
    no_network: bool
    arm: str
    seed: int
    plan: dict  # vars(ArmPlan)
    cpus: int  # CPUs its worker holds; a CPU run trains and scores with that many torch threads


class ClassScores(TypedDict):
    ap50: float | None  # None: the class is absent from the eval set
    ap50_95: float | None
    precision: float | None
    recall: float | None
    instances: int | None


class Scores(TypedDict):
    """A detector's scores on the eval set (from ultralytics' DetMetrics)."""

    map50: float
    map50_95: float
    precision: float
    recall: float
    per_class: dict[str, ClassScores]


class PhaseRecord(TypedDict):
    """What one train() call did."""

    data: str
    steps: int
    batches: int
    images_seen: int
    epochs: float
    train_images: int
    train_seconds: float
    loaded: dict[str, int]  # the images ultralytics loaded: real, synthetic, other
    train_dirs: list[str]
    threads: int  # torch's threads when training started (what a CPU run really used)


class ArmMetrics(Scores):
    """metrics.json of one (arm, seed): the final scores, the budget actually spent, the curve."""

    arm: str
    seed: int
    steps: int
    batches: int
    images_seen: int
    epochs: float
    train_images: int
    plan: dict  # asdict(ArmPlan)
    curve: dict[str, list]
    schedule: str
    phases: list[PhaseRecord]
    train_seconds: float
    val_seconds: float
    validations: dict[str, int | list[int]]
    device: str
    data: NotRequired[SelectionCounts]  # added by the worker
    network_attempts: NotRequired[list[str]]
