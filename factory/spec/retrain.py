"""The spec's `retrain:` section and the one settings class of detector retraining."""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import Field, field_validator, model_validator

from factory.spec.base import StrictModel, check_uri

Arm = Literal["real", "mixed", "synthetic"]
ItemT = TypeVar("ItemT")


class RetrainSettings(StrictModel):
    """How a detector is retrained and compared (factory.retrain): the one
    settings class, used as it is by `factory retrain`, the Ray job and the
    publish trigger. Arms: `real` (real train images), `mixed` (real +
    synthetic), `synthetic` (synthetic only: the domain gap). `budget: steps`
    (the default) gives every arm the same number of optimizer steps, `steps`
    or, when unset, the mixed arm's steps at `epochs`; `budget: epochs` trains
    every arm `epochs` epochs (the arms then differ in steps). `evals`: how often
    a run scores itself on the eval set while training (evenly spaced in
    optimizer steps), on top of the final score of its last weights.
    `schedule`: `mix` trains the mixed arm on real + synthetic together;
    `pretrain_finetune` trains it on synthetic only for `1 - finetune_fraction`
    of the step budget, then fine-tunes those weights on real only for the rest
    (same total optimizer steps as the real arm)."""

    model: str = "yolov8n.yaml"
    budget: Literal["steps", "epochs"] = "steps"
    steps: Annotated[int, Field(ge=1, le=10_000_000)] | None = None
    epochs: Annotated[int, Field(ge=1, le=10_000)] = 30
    imgsz: Annotated[int, Field(ge=32, le=4096)] = 320
    batch: Annotated[int, Field(ge=1, le=4096)] = 16
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    arms: list[Arm] = Field(default_factory=lambda: list[Arm](["real", "mixed"]), min_length=1)
    real_limit: Annotated[int, Field(ge=1)] | None = Field(
        default=None, description="train on a seeded subset of this many real train images in which every class appears")
    synthetic_ratio: Annotated[float, Field(gt=0, le=1000)] = 1.0
    schedule: Literal["mix", "pretrain_finetune"] = Field(
        default="mix", description="mixed arm: real + synthetic together (mix), or synthetic first, then real (pretrain_finetune)")
    finetune_fraction: Annotated[float, Field(gt=0, lt=1)] = Field(
        default=0.5, description="pretrain_finetune: the share of the step budget spent fine-tuning on real images")
    evals: Annotated[int, Field(ge=0, le=1000)] = Field(
        default=5, description="validations on the eval set while training, evenly spaced in steps (0: only the final score)")
    class_map: dict[str, str | None] = Field(default_factory=dict, description="synthetic class -> real class (null drops it)")
    workers: Annotated[int, Field(ge=0, le=64)] = 2
    gpus: Annotated[float, Field(ge=0, le=1, description="GPU share per run; 0.5 lets two runs share one GPU")] = 0
    parallel: Annotated[int, Field(ge=1, le=1024)] | None = Field(
        default=None, description="runs side by side at most (default: as many as the cluster's resources allow)")
    min_gain: float | None = None
    train_args: dict[str, Any] = Field(default_factory=dict, description="extra ultralytics train() arguments")

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        if not v.endswith((".yaml", ".yml", ".pt")):
            raise ValueError(f"must be a model .yaml (train from scratch) or a local .pt, got {v!r}")
        return v

    @field_validator("seeds", "arms")
    @classmethod
    def _unique(cls, v: list[ItemT]) -> list[ItemT]:
        if len(set(v)) != len(v):
            raise ValueError(f"duplicates in {v}")
        return v

    @field_validator("train_args")
    @classmethod
    def _train_args(cls, v: dict[str, Any]) -> dict[str, Any]:
        owned = sorted(set(v) & {"data", "epochs", "imgsz", "batch", "seed", "device", "project", "name", "workers"})
        if owned:
            raise ValueError(f"{owned} are retrain settings of their own, not train_args")
        if "val" in v:
            raise ValueError("val: validation while training is the `evals` setting (0: only the final score), not train_args")
        return v


class RetrainSpec(RetrainSettings):
    """A spec's `retrain:` section: the settings plus where the real data is and
    when to run. `on: publish` submits the job (Ray Job Submission) when a
    version is published; `on: manual` only records the settings for `factory
    retrain`. `min_gain` flags a run whose mAP50 gain on the real eval set is
    below it."""

    on: Literal["publish", "manual"] = "publish"
    real_train: str = Field(description="URI of a YOLO folder (or imported registry dataset) whose `train` split is the real train set")
    real_eval: str = Field(description="URI of a YOLO folder whose `val` split is the held-out real eval set")
    address: str | None = Field(default=None, description="Ray job server (http://host:8265); default RAY_ADDRESS or the local cluster")

    def settings(self) -> RetrainSettings:
        """The training settings alone (what changes the trained detectors)."""
        return RetrainSettings.model_validate(self.model_dump(include=set(RetrainSettings.model_fields)))

    @model_validator(mode="before")
    @classmethod
    def _yaml_on(cls, data: Any) -> Any:
        # YAML 1.1 reads the bare key `on` as the boolean True
        if isinstance(data, dict) and True in data and "on" not in data:
            data = {("on" if k is True else k): v for k, v in data.items()}
        return data

    @field_validator("real_train", "real_eval")
    @classmethod
    def _uri(cls, v: str) -> str:
        return check_uri(v)
