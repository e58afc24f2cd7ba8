"""The core types every layer passes along, at the bottom of the import graph.

`WorkItem` (one planned image), `GeneratorRef` (which generator draws it), `Box`
(a pixel box), `Sample` (what a generator made for a WorkItem) and `Reason` (why a
check rejected a sample). They are plain
data (ints, floats, strings, numpy arrays) so they travel through Ray Data as rows,
through JSON in the serve API, and into Parquet provenance columns without custom
serialization. Nothing here imports another factory module.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, TypedDict
from urllib.parse import urlparse

import numpy as np


def centre_crop(w: int, h: int, width: int, height: int) -> tuple[int, int, int, int]:
    """(left, top, crop width, crop height): the centred crop of a w x h image to a width x height frame's aspect."""
    scale = min(w / width, h / height)
    cw, ch = round(width * scale), round(height * scale)
    return (w - cw) // 2, (h - ch) // 2, cw, ch


# grey levels a pixel must move by to count as drawn on its background (sensor noise and
# JPEG move a few): a transplant paste must move this many to be visible, and the gate's
# exact tests (quality/outside.py) call a box unchanged below it
VISIBLE_DIFF = 8


@dataclass(frozen=True)
class Box:
    """An axis-aligned box in pixel coordinates: x1/y1 inclusive, x2/y2 exclusive."""

    class_id: int
    class_name: str
    x1: int
    y1: int
    x2: int
    y2: int

    @property
    def width(self) -> int:
        return self.x2 - self.x1

    @property
    def height(self) -> int:
        return self.y2 - self.y1

    def area(self) -> int:
        return self.width * self.height

    def intersects(self, other: "Box") -> bool:
        return not (
            self.x2 <= other.x1 or other.x2 <= self.x1 or self.y2 <= other.y1 or other.y2 <= self.y1
        )

    def inside(self, width: int, height: int) -> bool:
        return 0 <= self.x1 < self.x2 <= width and 0 <= self.y1 < self.y2 <= height

    def framed(self, w: int, h: int, width: int, height: int) -> "Box | None":
        """This box of a w x h image where framing the image to width x height (`centre_crop`,
        then resize: how generators frame references) puts it: the visible part of a box the
        crop cuts; None where it is cut to under 1 px."""
        left, top, cw, ch = centre_crop(w, h, width, height)
        sx, sy = width / cw, height / ch
        x1, x2 = max(0.0, (self.x1 - left) * sx), min(float(width), (self.x2 - left) * sx)
        y1, y2 = max(0.0, (self.y1 - top) * sy), min(float(height), (self.y2 - top) * sy)
        if x2 - x1 < 1 or y2 - y1 < 1:
            return None
        return Box(self.class_id, self.class_name, int(x1), int(y1), math.ceil(x2), math.ceil(y2))

    def to_dict(self) -> "BoxRow":
        return BoxRow(class_id=self.class_id, class_name=self.class_name, x1=self.x1, y1=self.y1, x2=self.x2, y2=self.y2)

    @classmethod
    def from_dict(cls, d: "BoxRow") -> "Box":
        return cls(
            class_id=int(d["class_id"]),
            class_name=str(d["class_name"]),
            x1=int(d["x1"]),
            y1=int(d["y1"]),
            x2=int(d["x2"]),
            y2=int(d["y2"]),
        )


class BoxRow(TypedDict):
    """A box as rows, JSON and the serve API store it (`Box.to_dict`)."""

    class_id: int
    class_name: str
    x1: int
    y1: int
    x2: int
    y2: int


@dataclass(frozen=True)
class GeneratorRef:
    """Which generator draws an item: a family `kind`, the `checkpoint` it loads and
    its spec `params` (plain JSON). Made once per `generators[i]` of a checked spec
    (`factory.planning.generator_refs`: `index` is i; -1 for a one-off such as a
    serve request) and shared by every item it draws.

    `key` is canonical (sorted JSON of kind, checkpoint and params): one key = one
    loaded generator, whatever the index. The pipeline runs one actor pool per key,
    and the preview, the gate audit and the serve app load one generator per key.
    Refs are equal when their keys are. `params` is never mutated."""

    kind: str
    checkpoint: str | None = None
    params: dict[str, Any] = field(default_factory=dict, compare=False)
    index: int = field(default=-1, compare=False)
    key: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "checkpoint", self.checkpoint or None)
        object.__setattr__(self, "key", json.dumps([self.kind, self.checkpoint or "", self.params], sort_keys=True))


@dataclass(frozen=True)
class WorkItem:
    """One image to make: which generator, which boxes, which seed, which style.

    `index` is the item's position in the (infinite) deterministic plan of a spec;
    `item_id` is derived from the spec hash and the index, so the same spec always
    names the same items and duplicates are detectable across resumed runs.

    `generator`, `checkpoint` and `params` are the flat columns a row stores; `ref`
    is the `GeneratorRef` they make, the planner's own (one per spec generator,
    shared by its items) or, for an item made another way (read back from a row,
    built by hand), one made from those three fields.
    """

    item_id: str
    index: int
    generator: str
    checkpoint: str | None
    width: int
    height: int
    channels: int
    seed: int
    boxes: tuple[Box, ...] = ()
    style: dict[str, float] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    domain: str = ""
    ref: GeneratorRef | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        ref = self.ref
        if ref is None or (ref.kind, ref.checkpoint) != (self.generator, self.checkpoint or None) or (
                ref.params is not self.params and ref.params != self.params):  # (`replace` changed a field)
            object.__setattr__(self, "ref", GeneratorRef(self.generator, self.checkpoint, self.params))

    @property
    def generator_ref(self) -> GeneratorRef:
        """Which generator draws this item (`ref`, never None once made)."""
        assert self.ref is not None
        return self.ref

    @property
    def is_negative(self) -> bool:
        return not self.boxes

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(sorted({b.class_name for b in self.boxes}))

    def to_row(self) -> "WorkItemRow":
        """A flat dict for Ray Data / Arrow: boxes as a list of dicts, params as JSON text
        (params differ per generator and would otherwise become ragged Arrow structs).
        Its keys, their order and values are what shards store: never change them."""
        return WorkItemRow(
            item_id=self.item_id, index=self.index, generator=self.generator, checkpoint=self.checkpoint or "",
            width=self.width, height=self.height, channels=self.channels, seed=self.seed,
            boxes=[b.to_dict() for b in self.boxes], style=dict(self.style),
            params=json.dumps(self.params, sort_keys=True), domain=self.domain,
        )

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> "WorkItem":
        boxes = row.get("boxes")
        boxes = [] if boxes is None else list(boxes)
        return cls(
            item_id=str(row["item_id"]),
            index=int(row["index"]),
            generator=str(row["generator"]),
            checkpoint=None if row.get("checkpoint") in (None, "") else str(row["checkpoint"]),
            width=int(row["width"]),
            height=int(row["height"]),
            channels=int(row["channels"]),
            seed=int(row["seed"]),
            boxes=tuple(Box.from_dict(b) for b in boxes),
            style={k: float(v) for k, v in dict(row.get("style") or {}).items() if v is not None},
            params=_params(row.get("params")),
            domain=str(row.get("domain") or ""),
        )


class WorkItemRow(TypedDict):
    """`WorkItem.to_row()`: what shards store in their `work_item` column (as JSON)."""

    item_id: str
    index: int
    generator: str
    checkpoint: str
    width: int
    height: int
    channels: int
    seed: int
    boxes: list[BoxRow]
    style: dict[str, float]
    params: str  # JSON text
    domain: str


def _params(value: Any) -> dict[str, Any]:
    if value in (None, ""):
        return {}
    if isinstance(value, str):
        parsed: dict[str, Any] = json.loads(value)
        return parsed
    return dict(value)


@dataclass
class Sample:
    """What a generator returns for one WorkItem.

    `boxes` are the annotations the generator vouches for (they may be tighter than
    the requested ones, or measured, as DG2GAN does). `mask` is an HxW uint8 map of
    defect pixels (0 = background, k = 1 + index of the box in `boxes`) when the
    generator knows it exactly, else None. `meta` carries provenance (checkpoint,
    extra per-sample info) and optional debugging arrays (e.g. attention maps).
    `background` is the image before any defect was drawn, when the generator knows
    it (transplant, procedural), and `blend_px` how far outside a box drawing may
    change it: the gate's exact tests (quality/outside.py). Never written out.
    """

    item: WorkItem
    image: np.ndarray  # HxWxC uint8
    boxes: list[Box]
    mask: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    background: np.ndarray | None = None  # HxWxC uint8, like `image`
    blend_px: int = 0

    @property
    def sample_id(self) -> str:
        return self.item.item_id


@dataclass(frozen=True)
class Reason:
    """Why a check rejected a sample: a short machine `code` (counted in manifests and
    reports) and a human `detail`. Stored as the text `code: detail`."""

    code: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.code}: {self.detail}" if self.detail else self.code

    @classmethod
    def parse(cls, text: str) -> "Reason":
        code, _, detail = str(text).partition(":")
        return cls(code.strip(), detail.strip())


_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def uri_problem(text: str) -> str | None:
    """Why `text` is neither a `file://`/`s3://` URI nor a plain path, or None. A
    scheme written wrong (`s3:/bucket`, one slash) would otherwise name a local
    folder `s3:`, and the data would land there while the user looks in S3."""
    if text.startswith("s3://"):
        return None if urlparse(text).netloc else f"an s3 URI needs a bucket (s3://bucket/prefix), got {text[:80]!r}"
    if text.startswith("file://") or not _SCHEME.match(text):
        return None
    return f"scheme must be file:// or s3:// (s3://bucket/prefix, file:///path), or a plain path, got {text[:80]!r}"
