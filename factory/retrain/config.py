"""What a retrain run is: its settings (the spec's `RetrainSettings`, one class
for the CLI, the job and the publish trigger), its inputs (URIs resolved through
the registry) and its id (a hash of both, so the same trigger never trains twice)."""

from __future__ import annotations

import hashlib
import json
from typing import Any, NamedTuple

from factory.spec.retrain import RetrainSettings, RetrainSpec
from factory.storage.manifest import Manifest
from factory.storage.registry import DatasetRef, Registry, extras_for
from factory.storage.uri import exists, join, read_bytes, to_uri

ARMS = ("real", "mixed", "synthetic")
ARM_LABELS = {"real": "real only", "mixed": "real + synthetic", "synthetic": "synthetic only"}

__all__ = ["ARMS", "ARM_LABELS", "RetrainError", "RetrainSettings", "RetrainSpec", "read_manifest", "resolve",
           "retrain_root", "run_id_for", "run_inputs", "run_uri", "settings_from", "yolo_uri"]


class RetrainError(RuntimeError):
    """Retraining cannot run or failed; the message says why and what to provide."""


def settings_from(data: dict[str, Any] | RetrainSettings | RetrainSpec) -> RetrainSettings:
    """Settings from a dict (CLI `--config`, the job's command line) or a spec section;
    a bad value is a pydantic error naming the field."""
    if isinstance(data, RetrainSpec):
        return data.settings()
    if isinstance(data, RetrainSettings):
        return data
    return RetrainSettings.model_validate(data)


def training_key(s: RetrainSettings) -> dict[str, Any]:
    """What changes the trained detectors (min_gain only changes the verdict; parallel only the schedule)."""
    return s.model_dump(mode="json", exclude={"min_gain", "parallel"})


def resolve(text: str, root: str | None = None) -> str:
    """A URI for `NAME@VERSION` / `ROOT/NAME@VERSION` (through the registry) or a
    plain URI / path (as it is)."""
    last = str(text).rstrip("/").rpartition("/")[2]
    if "@" in last:
        ref = DatasetRef.parse(text, default_root=root)
        reg = Registry(ref.root)
        name, version = reg.resolve(ref)
        if not reg.is_published(name, version):
            raise RetrainError(f"{ref}: {name}@{version} is not published under {reg.root}")
        return reg.version_uri(name, version)
    return to_uri(text)


def yolo_uri(uri: str) -> str:
    """A published version keeps its YOLO tree in `yolo/`; a plain YOLO folder is itself."""
    if exists(join(uri, "yolo", "data.yaml")):
        return join(uri, "yolo")
    if exists(join(uri, "data.yaml")):
        return uri
    raise RetrainError(f"{uri}: neither yolo/data.yaml (a registry version) nor data.yaml (a YOLO folder) found")


def read_manifest(version_uri: str) -> Manifest | None:
    """The version's manifest (one schema for generated and imported versions; `kind`
    tells them apart), None when it is not published."""
    uri = join(version_uri, "manifest.json")
    return Manifest.model_validate_json(read_bytes(uri)) if exists(uri) else None


def run_id_for(version_uri: str, real_train: str, real_eval: str, s: RetrainSettings, manifest: dict | None = None) -> str:
    """Deterministic: same version (and manifest), same real data, same settings -> same id."""
    # a manifest field naming the retrain job itself must not change the id
    stable = {k: v for k, v in (manifest or {}).items() if not k.startswith("retrain")}
    ident = {
        "version": to_uri(version_uri),
        "manifest": hashlib.sha256(json.dumps(stable, sort_keys=True, default=str).encode()).hexdigest() if manifest else None,
        "real_train": to_uri(real_train),
        "real_eval": to_uri(real_eval),
        "settings": training_key(s),
    }
    return "r" + hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:12]


class RunInputs(NamedTuple):
    version: str  # the synthetic version's URI
    real_train: str  # the real sets' YOLO trees
    real_eval: str
    manifest: Manifest | None  # the version's
    run_id: str


def run_inputs(version_uri: str, real_train: str, real_eval: str, s: RetrainSettings) -> RunInputs:
    """A run's inputs as URIs (registry references resolved, YOLO trees found) and its id:
    what the command and the publish trigger must agree on."""
    version_uri = to_uri(version_uri)
    real_train, real_eval = yolo_uri(resolve(real_train)), yolo_uri(resolve(real_eval))
    manifest = read_manifest(version_uri)
    return RunInputs(version_uri, real_train, real_eval, manifest, run_id_for(version_uri, real_train, real_eval, s, manifest))


def run_uri(version_uri: str, run_id: str) -> str:
    """A retraining run's folder: beside the version (`<name>/_extras/v<N>/retrain/<id>`),
    never inside it, since a published version never changes."""
    return join(retrain_root(version_uri), run_id)


def retrain_root(version_uri: str) -> str:
    return join(extras_for(version_uri), "retrain")
