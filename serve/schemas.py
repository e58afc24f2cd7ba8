"""Request/response models of the online API, and the limits they enforce.

Import-light (pydantic only) so the CLI client and the tests can use them without
Ray. Every limit lives here, next to the field it bounds, so a bad request is
refused by the ingress with a message naming the field before any generator runs.
The style knobs mirror `factory.spec.model.DomainSpec` (one value instead of a range).
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from factory.spec.model import CLASS_PATTERN, MIN_BOX_SIDE_PX

MAX_SIDE = 1024  # online images stay small: one request must not hold a replica for long
MIN_SIDE = 32  # as the spec's ImageSpec
MAX_BOXES = 64  # as the spec's BoxSpec.count
MAX_N = 16  # images per request
MAX_PARAMS_JSON = 4096  # bytes of generator params (they become part of the model key)
MAX_SEED = 2**63 - 1
MAX_CHECKPOINT_NAME = 256
MAX_JSON_DEPTH = 32  # nesting of [ and { in a body (a real request needs 5): deeper never reaches a parser
# a checkpoint is a name relative to a configured root: segments of safe characters
# that never start with a dot, so `..`, absolute paths, `~`, URI schemes and
# backslashes cannot be expressed at all.
CHECKPOINT_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*(/[A-Za-z0-9_][A-Za-z0-9_.\-]*)*$")


_JSON_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def too_deep(text: str) -> bool:
    """Whether JSON text nests [ and { deeper than MAX_JSON_DEPTH (strings skipped).
    Checked before any parser sees the text: Python's json (and so FastAPI's body
    parsing) recurses per level, and 40 KB of brackets is a RecursionError (a 500) there."""
    if text.count("[") + text.count("{") <= MAX_JSON_DEPTH:
        return False  # the common case: two counts
    depth = 0
    for m in _JSON_TOKENS.finditer(text):
        t = m.group()
        if t == "[" or t == "{":
            depth += 1
            if depth > MAX_JSON_DEPTH:
                return True
        elif t == "]" or t == "}":
            depth -= 1
    return False


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ImageParams(_Strict):
    width: Annotated[int, Field(ge=MIN_SIDE, le=MAX_SIDE)] = 256
    height: Annotated[int, Field(ge=MIN_SIDE, le=MAX_SIDE)] = 256
    channels: Literal[1, 3] = 1


class StyleParams(_Strict):
    """One value per DomainSpec knob; a knob left out is drawn from the spec's
    default range with the request's seed (so it is still reproducible)."""

    brightness: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    contrast: Annotated[float, Field(gt=0.0, le=4.0)] | None = None
    grid_pitch: Annotated[float, Field(ge=2.0, le=128.0)] | None = None
    busbars: Annotated[int, Field(ge=0, le=12)] | None = None
    reference: Annotated[int, Field(ge=0, le=2**31 - 1)] | None = None


Coord = Annotated[int, Field(ge=0, le=MAX_SIDE)]
BoxList = Annotated[list[Coord], Field(min_length=4, max_length=4)]


GeneratorName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_-]*$")]


def _check_boxes(boxes: list[list[int]], width: int, height: int) -> None:
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        if x2 - x1 < MIN_BOX_SIDE_PX or y2 - y1 < MIN_BOX_SIDE_PX:
            raise ValueError(f"boxes[{i}] = {[x1, y1, x2, y2]}: needs x2 - x1 and y2 - y1 >= {MIN_BOX_SIDE_PX}")
        if x2 > width or y2 > height:
            raise ValueError(f"boxes[{i}] = {[x1, y1, x2, y2]} is outside the {width}x{height} image")


def _check_checkpoint(v: str | None) -> str | None:
    if v in (None, ""):
        return None
    if len(v) > MAX_CHECKPOINT_NAME or not CHECKPOINT_PATTERN.match(v):
        raise ValueError(
            "must be a name relative to a configured checkpoint root (letters, digits, '_', '-', '.', "
            "'/' between parts; no '..', no absolute path, no URI)"
        )
    return v


def _check_params(v: dict[str, Any]) -> dict[str, Any]:
    if len(json.dumps(v, sort_keys=True)) > MAX_PARAMS_JSON:
        raise ValueError(f"at most {MAX_PARAMS_JSON} bytes of JSON")
    return v


class BoxIn(_Strict):
    class_id: Annotated[int, Field(ge=0, le=999)]
    class_name: Annotated[str, Field(pattern=CLASS_PATTERN)]
    x1: Coord
    y1: Coord
    x2: Coord
    y2: Coord


class WorkItemIn(_Strict):
    """`factory.core.WorkItem.to_row()` as a dataset stores it, within the online limits."""

    item_id: Annotated[str, Field(min_length=1, max_length=256)]
    index: Annotated[int, Field(ge=0)]
    generator: GeneratorName
    checkpoint: str | None = None
    width: Annotated[int, Field(ge=MIN_SIDE, le=MAX_SIDE)]
    height: Annotated[int, Field(ge=MIN_SIDE, le=MAX_SIDE)]
    channels: Literal[1, 3]
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)]
    boxes: Annotated[list[BoxIn], Field(max_length=MAX_BOXES)] = Field(default_factory=list)
    style: StyleParams = StyleParams()
    params: dict[str, Any] = Field(default_factory=dict)
    domain: Annotated[str, Field(pattern=CLASS_PATTERN)] = "default"

    @field_validator("checkpoint")
    @classmethod
    def _checkpoint(cls, v: str | None) -> str | None:
        return _check_checkpoint(v)

    @field_validator("params", mode="before")
    @classmethod
    def _params(cls, v: Any) -> Any:
        if isinstance(v, str):  # to_row() stores params as JSON text
            try:
                v = json.loads(v) if v else {}
            except json.JSONDecodeError:
                raise ValueError("not valid JSON") from None
        return _check_params(v) if isinstance(v, dict) else v

    @field_validator("boxes")
    @classmethod
    def _boxes(cls, v: list[BoxIn], info: ValidationInfo) -> list[BoxIn]:
        if "width" in info.data and "height" in info.data:
            _check_boxes([[b.x1, b.y1, b.x2, b.y2] for b in v], info.data["width"], info.data["height"])
        return v


class GenerateRequest(_Strict):
    """`POST /v1/generate`. Image i of n is made with seed `seed + i`, so it equals
    the first image of the same request with that seed and n = 1."""

    generator: GeneratorName | None = Field(None, description="required unless `work_item` is given")
    checkpoint: str | None = Field(None, description="name relative to a configured checkpoint root")
    params: dict[str, Any] = Field(default_factory=dict, description="the generator family's load params")
    class_name: Annotated[str, Field(pattern=CLASS_PATTERN)] | None = Field(None, alias="class")
    class_id: Annotated[int, Field(ge=0, le=999)] | None = Field(
        None, description="YOLO class id; defaults to the class's index for fixed-class generators, else 0"
    )
    image: ImageParams = ImageParams()
    boxes: Annotated[list[BoxList], Field(max_length=MAX_BOXES)] = Field(
        default_factory=list, description="[[x1, y1, x2, y2], ...] in pixels, x2/y2 exclusive"
    )
    domain: Annotated[str, Field(pattern=CLASS_PATTERN)] = "default"
    style: StyleParams = StyleParams()
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] = 0
    n: Annotated[int, Field(ge=1, le=MAX_N)] = 1
    work_item: WorkItemIn | None = Field(
        None, description="a published sample's `work_item` (JSON text or object): its image, byte for byte; "
        "give it alone (no generator, boxes, style, seed, ...)")

    @field_validator("work_item", mode="before")
    @classmethod
    def _work_item_text(cls, v: Any) -> Any:
        if isinstance(v, str):  # as stored in a dataset's Parquet `work_item` column
            if too_deep(v):
                raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
            try:
                return json.loads(v)
            except json.JSONDecodeError:
                raise ValueError("not valid JSON (give the work_item column's text, or the object)") from None
        return v

    @field_validator("checkpoint")
    @classmethod
    def _checkpoint(cls, v: str | None) -> str | None:
        return _check_checkpoint(v)

    @field_validator("params")
    @classmethod
    def _params(cls, v: dict[str, Any]) -> dict[str, Any]:
        return _check_params(v)

    @field_validator("boxes")
    @classmethod
    def _boxes(cls, v: list[list[int]], info: ValidationInfo) -> list[list[int]]:
        image = info.data.get("image")
        if image is None:  # the image itself was invalid; that error is reported
            return v
        _check_boxes(v, image.width, image.height)
        if v and "class_name" in info.data and info.data["class_name"] is None:
            raise ValueError("boxes are given but `class` is missing (say which class they are)")
        return v


class BoxOut(BaseModel):
    class_id: int
    class_name: str = Field(serialization_alias="class")
    x1: int
    y1: int
    x2: int
    y2: int


class ImageOut(BaseModel):
    seed: int
    width: int
    height: int
    channels: int
    png_base64: str
    boxes: list[BoxOut]
    scores: dict[str, float] = Field(default_factory=dict)
    verdict: dict[str, Any] | None = Field(None, description="the quality gate's verdict when a scorer is configured")
    meta: dict[str, Any] = Field(default_factory=dict)


class GenerateResponse(BaseModel):
    request_id: str
    generator: str
    checkpoint: str | None
    images: list[ImageOut]


class ErrorBody(BaseModel):
    status: int
    field: str | None = None
    message: str
    error_id: str | None = None
    errors: list[dict[str, Any]] = Field(default_factory=list)


class ErrorResponse(BaseModel):
    error: ErrorBody
