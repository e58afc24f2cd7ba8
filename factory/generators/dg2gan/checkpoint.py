"""DG2GAN checkpoints under a URI (file:// or s3://).

Layout of a training run at OUT:
    OUT/epoch_0007/config.json        model + training config (JSON)
    OUT/epoch_0007/generators.pt      G and F state dicts (all generation needs)
    OUT/epoch_0007/discriminators.pt  D1n, D1d, D2n, D2d (for resuming)
    OUT/epoch_0007/train_state.pt     optimizers, schedulers, epoch (for resuming)
    OUT/latest.json                   {"epoch": 7, "dir": "epoch_0007"}, written last
A folder of such runs, one per class (OUT/<class>/latest.json), is a multi-class
checkpoint for the generator.
"""

from __future__ import annotations

import io
import json
from typing import Any

import torch

from factory.generators.base import CheckpointError
from factory.generators.dg2gan.model import DG2GANConfig, Generators
from factory.storage import uri as U

TRAIN_HINT = (
    "train one with `factory train dg2gan --defect-free DIR --defective DIR --class NAME --out URI` "
    "and name the run folder (or a folder of per-class run folders) as the generator's checkpoint"
)


def _save_pt(obj: Any, uri: str) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    U.write_bytes(uri, buf.getvalue())


def _load_pt(uri: str, map_location: str = "cpu") -> Any:
    return torch.load(io.BytesIO(U.read_bytes(uri)), map_location=map_location, weights_only=True)


def save_checkpoint(
    out: str,
    epoch: int,
    cfg: DG2GANConfig,
    gens: torch.nn.Module,
    discs: torch.nn.Module | None = None,
    train_state: dict | None = None,
    train_config: dict | None = None,
    metrics: dict | None = None,
) -> str:
    """Write one epoch's checkpoint, then point latest.json at it; returns its URI."""
    name = f"epoch_{epoch:04d}"
    ck = U.join(out, name)
    config = {"model": cfg.to_dict(), "train": train_config or {}, "epoch": epoch, "metrics": metrics or {}}
    U.write_bytes(U.join(ck, "config.json"), json.dumps(config, indent=2, sort_keys=True).encode())
    _save_pt(gens.state_dict(), U.join(ck, "generators.pt"))
    if discs is not None:
        _save_pt(discs.state_dict(), U.join(ck, "discriminators.pt"))
    if train_state is not None:
        _save_pt(train_state, U.join(ck, "train_state.pt"))
    U.write_bytes(U.join(out, "latest.json"), json.dumps({"epoch": epoch, "dir": name}).encode())
    return ck


def resolve(uri: str) -> str | None:
    """The epoch folder a URI names: itself (has generators.pt) or its latest.json target."""
    if U.exists(U.join(uri, "generators.pt")):
        return uri
    latest = U.join(uri, "latest.json")
    if U.exists(latest):
        return U.join(uri, json.loads(U.read_bytes(latest))["dir"])
    return None


def read_config(ck: str) -> dict:
    return json.loads(U.read_bytes(U.join(ck, "config.json")))


def load_generators(uri: str, device: str = "cpu") -> tuple[DG2GANConfig, Generators, dict]:
    """(model config, G+F in eval mode, full config dict) from a run or epoch folder."""
    ck = resolve(uri)
    if ck is None:
        raise CheckpointError(f"no DG2GAN checkpoint at {uri} (no latest.json or generators.pt); {TRAIN_HINT}")
    try:
        config = read_config(ck)
        cfg = DG2GANConfig.from_dict(config["model"])
        gens = Generators(cfg)
        gens.load_state_dict(_load_pt(U.join(ck, "generators.pt")))
    except (U.StorageError, KeyError, RuntimeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"unreadable DG2GAN checkpoint at {ck}: {e}; {TRAIN_HINT}") from e
    return cfg, gens.to(device).eval(), config


def load_train_state(ck: str) -> tuple[dict, dict, dict]:
    """(generators, discriminators, train_state) state dicts of an epoch folder, to resume."""
    return (
        _load_pt(U.join(ck, "generators.pt")),
        _load_pt(U.join(ck, "discriminators.pt")),
        _load_pt(U.join(ck, "train_state.pt")),
    )


def find_runs(uri: str) -> dict[str, str]:
    """Class -> run URI for a checkpoint URI: one run (key "") or a folder of per-class runs."""
    if resolve(uri) is not None:
        return {"": uri}
    runs = {}
    for name in U.list_files(uri):
        parts = name.split("/")
        if len(parts) == 2 and parts[1] == "latest.json":
            runs[parts[0]] = U.join(uri, parts[0])
    return runs
