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

from pydantic import Field, ValidationInfo, field_validator, model_validator

from factory.spec.base import (
    CLASS_PATTERN,
    NAME_PATTERN,
    FloatRange,
    IntRange,
    StrictModel,
    check_bound,
    check_range,
    check_uri,
)
from factory.spec.retrain import RetrainSpec


class ImageSpec(StrictModel):
    width: Annotated[int, Field(ge=32, le=4096)] = 256
    height: Annotated[int, Field(ge=32, le=4096)] = 256
    channels: Literal[1, 3] = 1


class DomainSpec(StrictModel):
    """The target domain's style. The EL-specific knobs are the shifts the PDIG
    paper's Fig. 1 names between production lines: background brightness,
    contrast, grid-line (finger) spacing, number of busbars.

    `style: fit` estimates them (and the renderer's busbar, finger, texture, noise
    and border values, kept in `fitted`) from `references` before planning
    (factory.generators.procedural.fit); both stay out of the spec hash while unset,
    so existing specs keep their hash and plan."""

    name: Annotated[str, Field(pattern=CLASS_PATTERN)] = "default"
    references: list[str] = Field(default_factory=list, description="URIs of real images in the target style")
    style: Literal["manual", "fit"] | None = Field(None, description="fit: estimate the style from references")
    fitted: dict[str, float] | None = Field(None, description="renderer values fitted to references (set by style: fit)")
    brightness: FloatRange = (0.45, 0.7)
    contrast: FloatRange = (0.8, 1.2)
    grid_pitch: FloatRange = (6.0, 10.0)
    busbars: IntRange = (2, 4)

    @field_validator("brightness")
    @classmethod
    def _brightness(cls, v: FloatRange) -> FloatRange:
        return check_range(v, within=(0, 1))

    @field_validator("contrast")
    @classmethod
    def _contrast(cls, v: FloatRange) -> FloatRange:
        check_range(v)
        check_bound(v[0], ">", 0)
        return v

    @field_validator("grid_pitch")
    @classmethod
    def _pitch(cls, v: FloatRange) -> FloatRange:
        check_range(v)
        if v[0] < 2:
            raise ValueError(f"finger spacing must be >= 2 pixels, got {v[0]}")
        return v

    @field_validator("busbars")
    @classmethod
    def _busbars(cls, v: IntRange) -> IntRange:
        return check_range(v, within=(0, 12))


class Distribution(StrictModel):
    """A 1-D distribution, always clipped to [min, max]. `normal`: at `mean` (default the
    middle of the range) with `std`; `lognormal`: ln(value) normal at `mean` (default the
    middle of ln min..ln max) with `std`, as numpy's lognormal (sizes that spread over a decade)."""

    dist: Literal["uniform", "loguniform", "normal", "lognormal"] = "uniform"
    min: float
    max: float
    mean: float | None = None
    std: float | None = None

    @model_validator(mode="after")
    def _check(self) -> "Distribution":
        if self.min > self.max:
            raise ValueError(f"min must be <= max, got min={self.min}, max={self.max}")
        if self.dist in ("loguniform", "lognormal") and self.min <= 0:
            raise ValueError(f"{self.dist} needs min > 0, got {self.min}")
        if self.dist in ("normal", "lognormal"):
            if self.std is None or self.std <= 0:
                raise ValueError(f"{self.dist} needs std > 0")
        return self


class PositiveDistribution(Distribution):
    """A distribution of a positive quantity (min > 0)."""

    @field_validator("min")
    @classmethod
    def _min(cls, v: float) -> float:
        return check_bound(v, ">", 0)


class SizeDistribution(PositiveDistribution):
    """Box side (geometric mean of width and height) as a fraction of the image side."""

    @field_validator("max")
    @classmethod
    def _max(cls, v: float) -> float:
        return check_bound(v, "<=", 1)


class AspectDistribution(PositiveDistribution):
    """Box width / height."""


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
        check_range(v)
        check_bound(v[0], ">=", 1)
        if v[1] > 64:
            raise ValueError(f"at most 64 boxes per image, got {v[1]}")
        return v


MAX_WEIGHT = 1e9  # weights are relative; a sum of huge ones overflows to inf and the shares to nan


class DefectSpec(StrictModel):
    class_name: Annotated[str, Field(alias="class", pattern=CLASS_PATTERN)]
    weight: Annotated[float, Field(ge=0, le=MAX_WEIGHT)] = 1.0
    boxes: BoxSpec = BoxSpec()


class GeneratorSpec(StrictModel):
    kind: str
    weight: Annotated[float, Field(ge=0, le=MAX_WEIGHT)] = 1.0
    checkpoint: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)


class QualitySpec(StrictModel):
    """Quality gate settings (`factory.quality.build_scorers` turns them into scorers).

    Without `anomaly_checkpoint` the gate runs sanity, near-duplicate and mask-based
    spillover checks only; with one it also runs the UIIDD anomaly gate."""

    spillover_max: Annotated[float, Field(ge=0, le=1)] = 0.2
    anomaly_checkpoint: str | None = Field(None, description="URI written by `factory train anomaly --out`")
    box_check: str | None = Field(None, description="URI written by `factory train box-check --out`: every box must score as "
                                  "its class on pretrained features (else `not_a_defect`)")
    threshold_rule: Literal["f1", "youden", "recall90"] = "f1"
    pixel_threshold: float | None = Field(None, description="override the checkpoint's heat-map threshold")
    image_threshold: float | None = Field(None, description="override the checkpoint's image-score threshold")
    use_generator_masks: bool = True
    box_margin: Annotated[float, Field(ge=0, le=2)] = 0.25
    max_outside_fraction: Annotated[float, Field(ge=0, le=1)] = 0.005  # raised to the checkpoint's calibrated share (gate.py)
    min_std: Annotated[float, Field(ge=0)] = 2.0
    max_saturated: Annotated[float, Field(ge=0, le=1)] = 0.5
    duplicate_distance: Annotated[int, Field(ge=-1, le=64)] = 4  # -1 disables near-duplicate rejection
    gpus: Annotated[float, Field(ge=0, le=8)] = Field(
        0.25, description="GPUs per scoring actor for the anomaly gate, used when the cluster has them free (0: CPU)")


Format = Literal["parquet", "yolo", "yolo_seg", "coco"]
DEFAULT_VAL_FRACTION = 0.1  # one plan index in ten: what versions published before `output.val_fraction` used


class OutputSpec(StrictModel):
    uri: str = "file://./datasets"
    formats: list[Format] = Field(default_factory=lambda: list[Format](["parquet", "yolo"]))
    shard_size: Annotated[int, Field(gt=0, le=100_000)] = 256
    val_fraction: Annotated[float, Field(ge=0, lt=1)] = Field(
        DEFAULT_VAL_FRACTION, description="share of the plan in the YOLO `val` split (every 1/f-th plan index); 0: none")

    @field_validator("formats")
    @classmethod
    def _formats(cls, v: list[Format]) -> list[Format]:
        if not v:
            raise ValueError("must name at least one format")
        if len(set(v)) != len(v):
            raise ValueError(f"duplicate format in {v}")
        return v

    @field_validator("uri")
    @classmethod
    def _uri(cls, v: str) -> str:
        return check_uri(v)


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

    # Cross-field checks are field validators that read the fields validated before
    # theirs (`info.data`), not one model validator: a model validator runs only once
    # every field is valid, so its problems would show only after those are fixed.
    @field_validator("defects")
    @classmethod
    def _defects(cls, defects: list[DefectSpec], info: ValidationInfo) -> list[DefectSpec]:
        seen: set[str] = set()
        for i, d in enumerate(defects):
            if d.class_name in seen:
                raise _field_error(f"[{i}].class", f"duplicate class name {d.class_name!r}")
            seen.add(d.class_name)
        if sum(d.weight for d in defects) <= 0:
            raise _field_error("", "weights are all zero: at least one class needs weight > 0")
        if "image" in info.data:
            for i, d in enumerate(defects):
                _check_boxes_fit(d.boxes, info.data["image"], f"[{i}].boxes")
        return defects

    @field_validator("classes_per_image")
    @classmethod
    def _cpi(cls, v: IntRange, info: ValidationInfo) -> IntRange:
        check_range(v)
        check_bound(v[0], ">=", 1)
        if "defects" in info.data and v[1] > len(info.data["defects"]):
            raise ValueError(f"asks for up to {v[1]} classes but defects lists {len(info.data['defects'])}")
        return v

    @field_validator("generators")
    @classmethod
    def _generators(cls, generators: list[GeneratorSpec]) -> list[GeneratorSpec]:
        if sum(g.weight for g in generators) <= 0:
            raise _field_error("", "weights are all zero: at least one generator needs weight > 0")
        return generators

    # --- derived values -------------------------------------------------------
    @property
    def class_names(self) -> list[str]:
        return [d.class_name for d in self.defects]

    def spec_hash(self) -> str:
        """sha256 of the canonical JSON of the spec without `version` (the same
        recipe published twice under two versions has one hash) and without
        `retrain` (what happens after publishing does not change the images)."""
        data = self.model_dump(mode="json", by_alias=True, exclude={"version", "retrain"})
        for key in ("style", "fitted"):  # unset: the hash of specs written before these fields existed
            if data["domain"].get(key) is None:
                data["domain"].pop(key, None)
        if data["output"].get("val_fraction") == DEFAULT_VAL_FRACTION:  # likewise: the default split is the old one
            data["output"].pop("val_fraction")
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
