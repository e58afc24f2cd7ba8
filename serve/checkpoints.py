"""Checkpoint names in requests -> paths inside the configured roots, never outside.

A request names a checkpoint relative to a root (`dg2gan/line2.pt`). The name's
characters already rule out `..` and absolute paths (see schemas.CHECKPOINT_PATTERN);
here the joined path is resolved (following symlinks) and must still lie inside
the resolved root, so a symlink planted under a root cannot lead out of it either.
Both the ingress and the generator replica check, so a caller that talks to a
generator deployment directly gets the same refusal.
"""

from __future__ import annotations

from pathlib import Path

from serve.schemas import CHECKPOINT_PATTERN, MAX_CHECKPOINT_NAME


class CheckpointRefused(ValueError):
    """The checkpoint name is malformed, unknown, or resolves outside every root."""


def normalize_roots(roots: list[str]) -> list[Path]:
    """Config roots (plain paths or file:// URIs) -> resolved absolute paths."""
    out = []
    for r in roots:
        if r.startswith("s3://") or ("://" in r and not r.startswith("file://")):
            raise ValueError(
                f"checkpoint root {r!r}: only local roots (a path or file://) are supported by the serve app; "
                "copy remote checkpoints to a local folder first"
            )
        out.append(Path(r.removeprefix("file://")).expanduser().resolve())
    return out


def resolve_checkpoint(name: str, roots: list[Path]) -> Path:
    """The existing path for `name` under the first root that has it."""
    if not roots:
        raise CheckpointRefused("no checkpoint roots are configured on this server, so no checkpoint can be named")
    if len(name) > MAX_CHECKPOINT_NAME or not CHECKPOINT_PATTERN.match(name):
        raise CheckpointRefused(f"{name!r} is not a name relative to a checkpoint root")
    for root in roots:
        path = (root / name).resolve()
        if not path.is_relative_to(root):
            raise CheckpointRefused(f"{name!r} resolves outside the checkpoint root")
        if path.exists():
            return path
    raise CheckpointRefused(f"unknown checkpoint {name!r}: not found under any configured checkpoint root")


def inside_roots(path: str, roots: list[Path]) -> bool:
    p = Path(path).resolve()
    return any(p.is_relative_to(r) for r in roots)
