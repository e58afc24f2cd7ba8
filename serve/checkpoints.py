"""Checkpoint names (and path-valued params) in requests -> paths inside the
configured roots, never outside.

A request names a checkpoint relative to a root (`dg2gan/line2`: for DG2GAN a run
folder, or a folder of per-class run folders; for PDIG an adapter folder). The name's
characters already rule out `..` and absolute paths (see schemas.CHECKPOINT_PATTERN);
here the joined path is resolved (following symlinks) and must still lie inside
the resolved root, so a symlink planted under a root cannot lead out of it either.
Both the ingress and the generator replica check, so a caller that talks to a
generator deployment directly gets the same refusal.

Generator params can name files too (DG2GAN `references`, `checkpoints`; PDIG
`base`). In a request, any string param with path syntax (a separator, `:`, a
leading `.` or `~`) must be such a root-relative name; it is rewritten to the
resolved path. The replica then refuses any string param that names an existing
path outside the roots (which catches bare names relative to its working folder).
Params the operator sets in the serve config are trusted and not checked.
"""

from __future__ import annotations

import os
from pathlib import Path

from serve.schemas import CHECKPOINT_PATTERN, MAX_CHECKPOINT_NAME


class CheckpointRefused(ValueError):
    """The checkpoint name is malformed, unknown, or resolves outside every root."""


class ParamPathRefused(CheckpointRefused):
    """A path-valued request param is not a name inside the roots; `loc` names it."""

    def __init__(self, loc: str, message: str):
        super().__init__(f"{loc}: {message}")
        self.loc = loc


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


def _looks_like_path(s: str) -> bool:
    return any(c in s for c in "/\\:") or s.startswith((".", "~"))


def _walk(value, loc: str, fn):
    if isinstance(value, str):
        return fn(value, loc)
    if isinstance(value, dict):
        return {k: _walk(v, f"{loc}.{k}", fn) for k, v in value.items()}
    if isinstance(value, list):
        return [_walk(v, f"{loc}[{i}]", fn) for i, v in enumerate(value)]
    return value


def resolve_param_paths(params: dict, roots: list[Path]) -> dict:
    """Ingress side: path-like strings -> resolved paths inside the roots (else ParamPathRefused)."""

    def fn(s: str, loc: str) -> str:
        if not _looks_like_path(s):
            return s
        try:
            return str(resolve_checkpoint(s, roots))
        except CheckpointRefused as e:
            raise ParamPathRefused(loc, f"{e} (path-valued params must name files inside the checkpoint roots)") from None

    return _walk(params, "params", fn)


def check_param_paths(params: dict, roots: list[Path]) -> None:
    """Replica side: no string param may name an existing path outside the roots."""

    def fn(s: str, loc: str) -> str:
        if s and len(s) < 4096 and os.path.lexists(s) and not inside_roots(s, roots):
            raise ParamPathRefused(loc, "names a path outside the checkpoint roots")
        return s

    _walk(params, "params", fn)
