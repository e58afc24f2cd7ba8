"""`Manifest`: the one schema of a published version's `manifest.json`, for
generated versions (`factory run`) and imported real sets (`factory data import`)
alike. `kind` tells them apart; a manifest without one (every generated version
so far) reads as `generated`. Unknown keys are kept (`extra="allow"`), and
`to_dict()` gives back exactly the keys that were read, so reading and writing
a manifest loses and adds nothing.

Readers use the fields; `counts.published` is the number of images a version
holds whatever its kind (a generated version's `accepted`, a real set's `images`).
"""

from __future__ import annotations

from typing import Any, ItemsView, Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field

Number = int | float  # declared so: pydantic would turn an int given to a `float` field into a float


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class FileEntry(_Open):
    sha256: str
    bytes: int


class FileListInfo(_Open):
    """`files.jsonl` as the manifest names it: its path, sha256, and how many files/bytes it lists."""

    path: str
    sha256: str
    bytes: int
    files: int | None = None
    files_bytes: int | None = None


class ShardMade(_Open):
    """A published shard, in plan order: its staging key, the Ray node that made it, its samples."""

    key: str
    node: str | None = None
    samples: int


class Counts(_Open):
    # generated versions
    accepted: int | None = None
    rejected: int | None = None
    surplus: int | None = None
    processed: int | None = None
    pass_rate: Number | None = None
    per_generator: dict[str, int] = Field(default_factory=dict)
    # imported real sets
    images: int | None = None
    # both
    negatives: int | None = None
    images_per_class: dict[str, int] | None = None  # None: not counted (a real set)
    boxes_per_class: dict[str, int] = Field(default_factory=dict)
    splits: dict[str, int] = Field(default_factory=dict)

    @property
    def published(self) -> int:
        """Images in the version: a generated version's accepted samples, a real set's images."""
        return self.accepted if self.accepted is not None else (self.images or 0)


class Manifest(_Open):
    # written by every publication (storage/publish.py)
    format: str | None = None
    name: str = ""
    version: int = 0
    uri: str | None = None
    created_at: str = ""
    publication: str | None = None
    file_list: FileListInfo | None = None
    files: dict[str, FileEntry] | None = None  # the file list itself, when read with it (or inline: format 1)
    # what the publisher says
    kind: Literal["generated", "real"] = "generated"
    code_version: str = ""
    classes: list[str] = Field(default_factory=list)
    formats: list[str] | None = None  # None: not recorded (older real imports); see `format_names`
    counts: Counts = Field(default_factory=Counts)
    # generated versions
    spec_hash: str | None = None
    count: int | None = None
    image: dict[str, int] | None = None
    reject_reasons: dict[str, int] = Field(default_factory=dict)
    gate: list[str] = Field(default_factory=list)
    rounds: int | None = None
    duplicate_shards_skipped: int | None = None
    shards: list[ShardMade] = Field(default_factory=list)
    seconds: Number | None = None
    spec: dict[str, Any] | None = None
    # imported real sets
    source: str | None = None
    adapter: str | None = None
    settings: dict[str, Any] | None = None

    @classmethod
    def of(cls, data: "Manifest | dict[str, Any]") -> "Manifest":
        return data if isinstance(data, Manifest) else cls.model_validate(data)

    def to_dict(self) -> dict[str, Any]:
        """The manifest as JSON-able data: exactly the keys it was made from."""
        return self.model_dump(mode="json", exclude_unset=True)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def format_names(self) -> list[str]:
        """The formats the version holds: recorded, else the top folders of its files that are formats."""
        if self.formats is not None:
            return list(self.formats)
        tops = {p.split("/", 1)[0] for p in (self.files or {}) if "/" in p}
        return sorted(tops & {"parquet", "yolo", "yolo_seg", "coco"})

    # Read-only mapping access, for callers not yet moved to the fields (the manifest's JSON keys).
    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __contains__(self, key: object) -> bool:
        return key in self.to_dict()

    def get(self, key: str, default: Any = None) -> Any:
        return self.to_dict().get(key, default)

    def keys(self) -> Iterator[str]:
        return iter(self.to_dict())

    def items(self) -> ItemsView[str, Any]:
        return self.to_dict().items()
