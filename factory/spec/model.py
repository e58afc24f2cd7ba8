"""The dataset spec: what users write in YAML, validated up front.

Every model forbids unknown keys, so a typo is an error and not a silently
ignored setting. Cross-field checks (lo <= hi, boxes that fit the image, weights
that sum to something) live next to the fields they check.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
CLASS_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"

# (lo, hi) pairs. Validation of lo <= hi happens in _check_range.
FloatRange = tuple[float, float]
IntRange = tuple[int, int]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def _check_range(value: tuple, what: str = "range") -> tuple:
    lo, hi = value
    if lo > hi:
        raise ValueError(f"lo must be <= hi, got [{lo}, {hi}]")
    return value


class ImageSpec(StrictModel):
    width: Annotated[int, Field(ge=32, le=4096)] = 256
    height: Annotated[int, Field(ge=32, le=4096)] = 256
    channels: Literal[1, 3] = 1


class DomainSpec(StrictModel):
    """The target domain's style. The EL-specific knobs are the shifts the PDIG
    paper's Fig. 1 names between production lines: background brightness,
    contrast, grid-line (finger) spacing, number of busbars."""

    name: Annotated[str, Field(pattern=CLASS_PATTERN)] = "default"
    references: list[str] = Field(default_factory=list, description="URIs of real images in the target style")
    brightness: FloatRange = (0.45, 0.7)
    contrast: FloatRange = (0.8, 1.2)
    grid_pitch: FloatRange = (6.0, 10.0)
    busbars: IntRange = (2, 4)

    @field_validator("brightness")
    @classmethod
    def _brightness(cls, v: FloatRange) -> FloatRange:
        _check_range(v)
        if not (0.0 <= v[0] and v[1] <= 1.0):
            raise ValueError(f"must lie in [0, 1], got [{v[0]}, {v[1]}]")
        return v

    @field_validator("contrast")
    @classmethod
    def _contrast(cls, v: FloatRange) -> FloatRange:
        _check_range(v)
        if v[0] <= 0:
            raise ValueError(f"must be > 0, got {v[0]}")
        return v

    @field_validator("grid_pitch")
    @classmethod
    def _pitch(cls, v: FloatRange) -> FloatRange:
        _check_range(v)
        if v[0] < 2:
            raise ValueError(f"finger spacing must be >= 2 pixels, got {v[0]}")
        return v

    @field_validator("busbars")
    @classmethod
    def _busbars(cls, v: IntRange) -> IntRange:
        _check_range(v)
        if v[0] < 0 or v[1] > 12:
            raise ValueError(f"must lie in [0, 12], got [{v[0]}, {v[1]}]")
        return v


class Distribution(StrictModel):
    """A 1-D distribution, always clipped to [min, max]."""

    dist: Literal["uniform", "loguniform", "normal"] = "uniform"
    min: float
    max: float
    mean: float | None = None
    std: float | None = None

    @model_validator(mode="after")
    def _check(self) -> "Distribution":
        if self.min > self.max:
            raise ValueError(f"min must be <= max, got min={self.min}, max={self.max}")
        if self.dist == "loguniform" and self.min <= 0:
            raise ValueError(f"loguniform needs min > 0, got {self.min}")
        if self.dist == "normal":
            if self.std is None or self.std <= 0:
                raise ValueError("normal needs std > 0")
        return self


class SizeDistribution(Distribution):
    """Box side (geometric mean of width and height) as a fraction of the image side."""

    @field_validator("max")
    @classmethod
    def _max(cls, v: float) -> float:
        if v > 1:
            raise ValueError(f"must be <= 1, got {v}")
        return v

    @field_validator("min")
    @classmethod
    def _min(cls, v: float) -> float:
        if v <= 0:
            raise ValueError(f"must be > 0, got {v}")
        return v


class AspectDistribution(Distribution):
    """Box width / height."""

    @field_validator("min")
    @classmethod
    def _min(cls, v: float) -> float:
        if v <= 0:
            raise ValueError(f"must be > 0, got {v}")
        return v


class PositionDistribution(StrictModel):
    """Where box centres go: uniform over the image, or normal around `center`
    (fractions of width/height) with `std` (fraction of the side), clipped so the
    box stays inside."""

    dist: Literal["uniform", "normal"] = "uniform"
    center: FloatRange = (0.5, 0.5)
    std: Annotated[float, Field(gt=0, le=1)] = 0.2

    @field_validator("center")
    @classmethod
    def _center(cls, v: FloatRange) -> FloatRange:
        if not all(0.0 <= c <= 1.0 for c in v):
            raise ValueError(f"must lie in [0, 1], got [{v[0]}, {v[1]}]")
        return v


class BoxSpec(StrictModel):
    count: IntRange = (1, 1)
    size: SizeDistribution = SizeDistribution(min=0.05, max=0.15)
    aspect: AspectDistribution = AspectDistribution(min=1.0, max=1.0)
    position: PositionDistribution = PositionDistribution()
    overlap: bool = False

    @field_validator("count")
    @classmethod
    def _count(cls, v: IntRange) -> IntRange:
        _check_range(v)
        if v[0] < 1:
            raise ValueError(f"must be >= 1, got {v[0]}")
        if v[1] > 64:
            raise ValueError(f"at most 64 boxes per image, got {v[1]}")
        return v


class DefectSpec(StrictModel):
    class_name: Annotated[str, Field(alias="class", pattern=CLASS_PATTERN)]
    weight: Annotated[float, Field(ge=0)] = 1.0
    boxes: BoxSpec = BoxSpec()


class GeneratorSpec(StrictModel):
    kind: str
    weight: Annotated[float, Field(ge=0)] = 1.0
    checkpoint: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)


class QualitySpec(StrictModel):
    """Quality gate settings (`factory.quality.build_scorers` turns them into scorers).

    Without `anomaly_checkpoint` the gate runs sanity, near-duplicate and mask-based
    spillover checks only; with one it also runs the UIIDD anomaly gate."""

    spillover_max: Annotated[float, Field(ge=0, le=1)] = 0.2
    anomaly_checkpoint: str | None = Field(None, description="URI written by `factory train anomaly --out`")
    threshold_rule: Literal["f1", "youden", "recall90"] = "f1"
    pixel_threshold: float | None = Field(None, description="override the checkpoint's heat-map threshold")
    image_threshold: float | None = Field(None, description="override the checkpoint's image-score threshold")
    use_generator_masks: bool = True
    box_margin: Annotated[float, Field(ge=0, le=2)] = 0.25
    max_outside_fraction: Annotated[float, Field(ge=0, le=1)] = 0.005
    min_std: Annotated[float, Field(ge=0)] = 2.0
    max_saturated: Annotated[float, Field(ge=0, le=1)] = 0.5
    duplicate_distance: Annotated[int, Field(ge=-1, le=64)] = 4  # -1 disables near-duplicate rejection
    gpus: Annotated[float, Field(ge=0, le=8)] = Field(
        0.25, description="GPUs per scoring actor for the anomaly gate, used when the cluster has them free (0: CPU)")


class OutputSpec(StrictModel):
    uri: str = "file://./datasets"
    formats: list[Literal["parquet", "yolo"]] = Field(default_factory=lambda: ["parquet", "yolo"])
    shard_size: Annotated[int, Field(gt=0, le=100_000)] = 256

    @field_validator("formats")
    @classmethod
    def _formats(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("must name at least one format")
        if len(set(v)) != len(v):
            raise ValueError(f"duplicate format in {v}")
        return v

    @field_validator("uri")
    @classmethod
    def _uri(cls, v: str) -> str:
        if "://" in v and not v.startswith(("file://", "s3://")):
            raise ValueError(f"scheme must be file:// or s3://, got {v!r}")
        return v


class RetrainSettings(StrictModel):
    """How a detector is retrained and compared (factory.retrain): the one
    settings class, used as it is by `factory retrain`, the Ray job and the
    publish trigger. Arms: `real` (real train images), `mixed` (real +
    synthetic), `synthetic` (synthetic only: the domain gap). `budget: steps`
    (the default) gives every arm the same number of optimizer steps, `steps`
    or, when unset, the mixed arm's steps at `epochs`; `budget: epochs` trains
    every arm `epochs` epochs (the arms then differ in steps)."""

    model: str = "yolov8n.yaml"
    budget: Literal["steps", "epochs"] = "steps"
    steps: Annotated[int, Field(ge=1, le=10_000_000)] | None = None
    epochs: Annotated[int, Field(ge=1, le=10_000)] = 30
    imgsz: Annotated[int, Field(ge=32, le=4096)] = 320
    batch: Annotated[int, Field(ge=1, le=4096)] = 16
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    arms: list[Literal["real", "mixed", "synthetic"]] = Field(default_factory=lambda: ["real", "mixed"], min_length=1)
    real_limit: Annotated[int, Field(ge=1)] | None = Field(
        default=None, description="train on a seeded subset of this many real train images in which every class appears")
    synthetic_ratio: Annotated[float, Field(gt=0, le=1000)] = 1.0
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
    def _unique(cls, v: list) -> list:
        if len(set(v)) != len(v):
            raise ValueError(f"duplicates in {v}")
        return v

    @field_validator("train_args")
    @classmethod
    def _train_args(cls, v: dict[str, Any]) -> dict[str, Any]:
        owned = sorted(set(v) & {"data", "epochs", "imgsz", "batch", "seed", "device", "project", "name", "workers"})
        if owned:
            raise ValueError(f"{owned} are retrain settings of their own, not train_args")
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
        if "://" in v and not v.startswith(("file://", "s3://")):
            raise ValueError(f"scheme must be file:// or s3://, got {v!r}")
        return v


class DatasetSpec(StrictModel):
    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    version: Annotated[int, Field(gt=0)] | None = None
    seed: int = 0
    count: Annotated[int, Field(gt=0, le=10_000_000)]
    image: ImageSpec = ImageSpec()
    domain: DomainSpec = DomainSpec()
    defects: list[DefectSpec] = Field(min_length=1)
    classes_per_image: IntRange = (1, 1)
    negatives: Annotated[float, Field(ge=0, le=1)] = 0.0
    generators: list[GeneratorSpec] = Field(default_factory=lambda: [GeneratorSpec(kind="procedural")], min_length=1)
    quality: QualitySpec = QualitySpec()
    output: OutputSpec = OutputSpec()
    retrain: RetrainSpec | None = None

    @field_validator("classes_per_image")
    @classmethod
    def _cpi(cls, v: IntRange) -> IntRange:
        _check_range(v)
        if v[0] < 1:
            raise ValueError(f"must be >= 1, got {v[0]}")
        return v

    @model_validator(mode="after")
    def _cross_checks(self) -> "DatasetSpec":
        names = [d.class_name for d in self.defects]
        seen: set[str] = set()
        for i, n in enumerate(names):
            if n in seen:
                raise _field_error(f"defects[{i}].class", f"duplicate class name {n!r}")
            seen.add(n)
        if sum(d.weight for d in self.defects) <= 0:
            raise _field_error("defects", "weights are all zero: at least one class needs weight > 0")
        if sum(g.weight for g in self.generators) <= 0:
            raise _field_error("generators", "weights are all zero: at least one generator needs weight > 0")
        if self.classes_per_image[1] > len(self.defects):
            raise _field_error(
                "classes_per_image", f"asks for up to {self.classes_per_image[1]} classes but defects lists {len(self.defects)}"
            )
        for i, d in enumerate(self.defects):
            _check_boxes_fit(d.boxes, self.image, f"defects[{i}].boxes")
        return self

    # --- derived values -------------------------------------------------------
    @property
    def class_names(self) -> list[str]:
        return [d.class_name for d in self.defects]

    def spec_hash(self) -> str:
        """sha256 of the canonical JSON of the spec without `version` (the same
        recipe published twice under two versions has one hash) and without
        `retrain` (what happens after publishing does not change the images)."""
        data = self.model_dump(mode="json", by_alias=True, exclude={"version", "retrain"})
        return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()

    def to_yaml_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


class SpecFieldError(ValueError):
    """A cross-field error that knows which field it is about."""

    def __init__(self, loc: str, msg: str):
        super().__init__(msg)
        self.loc = loc
        self.msg = msg


def _field_error(loc: str, msg: str) -> SpecFieldError:
    return SpecFieldError(loc, msg)


MIN_BOX_SIDE_PX = 2


def _check_boxes_fit(b: BoxSpec, image: ImageSpec, where: str) -> None:
    """Refuse box distributions that cannot be realized in the image."""
    short = min(image.width, image.height)
    widest = math.sqrt(b.aspect.max)
    tallest = 1.0 / math.sqrt(b.aspect.min)
    # the smallest box must still be >= 2 px on its short side
    min_side_px = b.size.min * short / max(widest, tallest)
    if min_side_px < MIN_BOX_SIDE_PX:
        raise _field_error(
            f"{where}.size.min",
            f"boxes can be {min_side_px:.2f} px on their short side at {image.width}x{image.height}; "
            f"need >= {MIN_BOX_SIDE_PX} px (raise size.min or narrow aspect)",
        )
    # the smallest box at its most extreme aspect must fit inside the image
    if b.size.min * widest > 1.0 or b.size.min * tallest > 1.0:
        raise _field_error(
            f"{where}.aspect",
            f"a box of size {b.size.min} with aspect in [{b.aspect.min}, {b.aspect.max}] is wider or taller than the image",
        )
    if not b.overlap:
        # non-overlapping boxes: the smallest boxes must leave room (packing bound 0.5)
        need = b.count[1] * b.size.min**2
        if need > 0.5:
            raise _field_error(
                f"{where}.count",
                f"{b.count[1]} non-overlapping boxes of size >= {b.size.min} need {need:.0%} of the image; "
                "lower count or size, or set overlap: true",
            )
