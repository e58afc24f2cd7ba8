"""Checkpoint names (and path-valued params) in requests -> paths inside the
configured roots, never outside.

A request names a checkpoint relative to a root (`dg2gan/line2`: for DG2GAN a run
folder, or a folder of per-class run folders; for PDIG an adapter folder). The name's
characters already rule out `..` and absolute paths (see schemas.CHECKPOINT_PATTERN);
here the joined path is resolved (following symlinks) and must still lie inside
the resolved root, so a symlink planted under a root cannot lead out of it either.
Both the ingress and the generator replica check, so a caller that talks to a
generator deployment directly gets the same refusal.

Generator params can name files too (`references`, transplant's `source`, DG2GAN
`checkpoints`; PDIG `base`). In a request, any string param with path syntax (a
separator, `:`, a leading `.` or `~`), and any string in `references`/`source`, must
be such a root-relative name; it is rewritten to the resolved path. A registry
reference `NAME@VERSION` resolves in the configured `registry_roots` only (none by
default: refused), never in the server's `./datasets` or `$FACTORY_ROOT`; it is
rewritten to `ROOT/NAME@VERSION` with the version `latest` stands for. The replica
then refuses any string param that names an existing path outside the roots (which
catches bare names relative to its working folder) and any registry reference not so
qualified. Params the operator sets in the serve config are trusted and not checked.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from factory.data.folders import is_image_name
from factory.storage import uri as U
from factory.storage.registry import DatasetRef, Registry
from factory.storage.uri import StorageError
from serve.schemas import CHECKPOINT_PATTERN, MAX_CHECKPOINT_NAME

# params that always name data: a bare name there is a name under the checkpoint roots
# (never a path relative to the server's working folder) or a registry reference
DATA_PARAMS = ("params.references", "params.source")
# a registry reference's last part, as factory.storage.registry parses it (version required)
REGISTRY_REF = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}@(v?\d+|latest)$")
NO_REGISTRY = ("names a registry dataset (NAME@VERSION), but this server has no registry roots: set "
               "`registry_roots` in the serve config (or `factory serve --registry-root`)")


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


def normalize_registry_roots(roots: list[str]) -> list[str]:
    """Config registry roots -> URIs (local ones absolute, resolved once; s3:// as is)."""
    return [U.to_uri(r) for r in roots]


def resolve_registry_ref(text: str, roots: list[str]) -> str:
    """`ROOT/NAME@VERSION` in the first registry root that has it published (`latest`
    resolved there), else CheckpointRefused. Server paths stay out of the messages."""
    if not roots:
        raise CheckpointRefused(f"{text!r} {NO_REGISTRY}")
    if not REGISTRY_REF.match(text):
        raise CheckpointRefused(f"{text!r} is not a registry reference NAME@VERSION (e.g. demo-pv-el@3 or demo-pv-el@latest)")
    name, _, v = text.partition("@")
    version = None if v == "latest" else int(v.lstrip("v"))
    for root in roots:
        reg = Registry(root)
        try:
            _, found = reg.resolve(DatasetRef(root, name, version))
            if reg.is_published(name, found):
                return f"{root}/{name}@{found}"
        except StorageError:  # no such dataset (or the root is unreachable): try the next root
            continue
    raise CheckpointRefused(f"{text!r} is not published under any configured registry root")


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


def _is_data(loc: str) -> bool:
    return loc in DATA_PARAMS or loc.startswith("params.references[")


def resolve_param_paths(params: dict, roots: list[Path], registry_roots: list[str] = ()) -> dict:
    """Ingress side: registry references -> `ROOT/NAME@VERSION` in the registry roots,
    path-like strings (and every name in references/source) -> resolved paths inside
    the checkpoint roots; else ParamPathRefused naming the param."""

    def fn(s: str, loc: str) -> str:
        data = _is_data(loc)
        if REGISTRY_REF.match(s) or (data and "@" in s and not _looks_like_path(s)):
            try:
                return resolve_registry_ref(s, list(registry_roots))
            except CheckpointRefused as e:
                raise ParamPathRefused(loc, str(e)) from None
        if not (data or _looks_like_path(s)):
            return s
        try:
            path = resolve_checkpoint(s, roots)
        except CheckpointRefused as e:
            hint = "references and sources name folders or images inside the checkpoint roots, or NAME@VERSION" \
                if data else "path-valued params must name files inside the checkpoint roots"
            raise ParamPathRefused(loc, f"{e} ({hint})") from None
        if loc.startswith("params.references") and path.is_file() and not is_image_name(path.name):
            raise ParamPathRefused(loc, f"{s!r} is a file but not an image (references are image folders or images)")
        return str(path)

    return _walk(params, "params", fn)


def check_param_paths(params: dict, roots: list[Path], registry_roots: list[str] = ()) -> None:
    """Replica side: no string param may name an existing path outside the roots, nor a
    registry dataset other than `ROOT/NAME@VERSION` of a registry root."""

    def fn(s: str, loc: str) -> str:
        root, _, last = s.rstrip("/").rpartition("/")
        if REGISTRY_REF.match(last) and root not in registry_roots:
            raise ParamPathRefused(loc, "names a registry dataset outside the registry roots")
        if s and len(s) < 4096 and os.path.lexists(s) and not inside_roots(s, roots):
            raise ParamPathRefused(loc, "names a path outside the checkpoint roots")
        return s

    _walk(params, "params", fn)
