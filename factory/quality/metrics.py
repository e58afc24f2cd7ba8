"""Dataset metrics for a published version: pass rate, spillover rate, per-class
counts, reject reasons, and, against real images, distribution distances (FID/KID,
IS; `factory.quality.fidelity` says which feature extractor), the classifier
two-sample test (`realism.c2st`) on whole images and on box crops, the same
measures between two halves of the real images (the floor they are read
against), and a grid of real beside generated images.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path
from typing import Callable, NotRequired, Sequence, TypedDict, TypeVar

import numpy as np

from factory.core import Box, Reason
from factory.data.folders import list_images
from factory.quality.fidelity import Fidelity, fidelity
from factory.quality.realism import C2ST, c2st, train_indomain_extractor
from factory.storage import uri as U
from factory.storage.registry import DatasetRef, Registry, extras_for
from factory.storage.uri import local_path
from factory.viz import grid, png_bytes, to_rgb

T = TypeVar("T")


class Skipped(TypedDict):
    skipped: str  # why the measure was not taken


class GateSummary(TypedDict):
    samples: int
    accepted: int
    rejected: int
    pass_rate: float
    spillover_rate: float  # share of all samples rejected for spillover (the PDIG paper's Table IV rate)
    spillover_mean: float
    spillover_measured: int
    reject_reasons: dict[str, int]
    images_per_class: dict[str, int]
    boxes_per_class: dict[str, int]


class RealFloor(TypedDict):
    images_per_half: int
    c2st: C2ST | Skipped
    c2st_box_crops: C2ST | Skipped
    fidelity_pretrained: Fidelity | Skipped


class Realism(TypedDict):
    fidelity: Fidelity
    fidelity_pretrained: Fidelity | Skipped
    c2st: C2ST
    c2st_box_crops: C2ST | Skipped
    real_floor: RealFloor
    realism_grid: NotRequired[str]


class DatasetMetrics(GateSummary):
    """`metrics/quality.json`: the gate summary, and with real images the realism measures (`Realism`)."""

    dataset: str
    version_uri: str
    fidelity: NotRequired[Fidelity]
    fidelity_pretrained: NotRequired[Fidelity | Skipped]
    c2st: NotRequired[C2ST]
    c2st_box_crops: NotRequired[C2ST | Skipped]
    real_floor: NotRequired[RealFloor]
    realism_grid: NotRequired[str]
    written_to: NotRequired[str]


# --- gate statistics ---------------------------------------------------------------


def _code(reason: str) -> str:
    return Reason.parse(reason).code


def gate_summary(accepted: Sequence[dict], rejected: Sequence[dict]) -> GateSummary:
    """Rows are dicts with `boxes` (list of {class_name, ...}), `scores` (dict or list of
    (key, value) pairs), and for rejected rows `reasons` (list of `code: detail`)."""
    n_acc, n_rej = len(accepted), len(rejected)
    total = n_acc + n_rej
    reasons = Counter(_code(r) for row in rejected for r in set(row.get("reasons") or []))
    spill_vals = []
    for row in [*accepted, *rejected]:
        sc = dict(row.get("scores") or {})
        v = sc.get("spillover.max")
        if v is not None and v == v:
            spill_vals.append(float(v))
    images, boxes = Counter(), Counter()
    for row in accepted:
        names = [b["class_name"] for b in row.get("boxes") or []]
        boxes.update(names)
        images.update(set(names) or {"(negative)"})
    return {
        "samples": total,
        "accepted": n_acc,
        "rejected": n_rej,
        "pass_rate": n_acc / total if total else float("nan"),
        "spillover_rate": reasons.get("spillover", 0) / total if total else float("nan"),
        "spillover_mean": float(np.mean(spill_vals)) if spill_vals else float("nan"),
        "spillover_measured": len(spill_vals),
        "reject_reasons": dict(reasons.most_common()),
        "images_per_class": dict(sorted(images.items())),
        "boxes_per_class": dict(sorted(boxes.items())),
    }


def _read_parquets(base: str, prefix: str, files: Sequence[str], columns: list[str]) -> list[dict]:
    import pyarrow.parquet as pq


    rows: list[dict] = []
    for p in sorted(f for f in files if f.startswith(prefix) and f.endswith(".parquet")):
        t = pq.read_table(io.BytesIO(U.read_bytes(U.join(base, p))))
        cols = [c for c in columns if c in t.column_names]
        rows += t.select(cols).to_pylist()
    return rows


def _version(ref: str, root: str | None):

    r = DatasetRef.parse(ref, default_root=root)
    reg = Registry(r.root)
    name, version = reg.resolve(r)
    return reg, name, version, reg.version_uri(name, version), reg.manifest(name, version)



def list_real_images(uri: str, limit: int | None = None) -> list[str]:
    """Image files under a local folder (masks beside JPGs skipped); s3 is downloaded by the caller."""

    paths = [str(p) for p in list_images(local_path(uri))]
    if not paths:
        raise FileNotFoundError(f"no images under {uri}")
    if limit and len(paths) > limit:
        idx = np.random.default_rng(0).choice(len(paths), limit, replace=False)
        paths = [paths[i] for i in sorted(idx)]
    return paths


def _labelled(paths: Sequence[str]) -> list[tuple[np.ndarray, list]]:
    """(grey image, boxes) of the real images that have YOLO labels beside them."""
    from PIL import Image

    from factory.formats import yolo_label_boxes

    out = []
    for path in paths:
        with Image.open(path) as im:
            grey = np.asarray(im.convert("L"))
        boxes = yolo_label_boxes(Path(path), grey.shape[1], grey.shape[0])
        if boxes:
            out.append((grey, boxes))
    return out


NO_LABELS = "the real images have no YOLO labels beside them (give an imported set's images/<split> folder)"


def _crop_c2st(gen: list[bytes], gen_boxes: list[list[dict]], reals: list[str]) -> C2ST | Skipped:
    """The C2ST on square crops 1.5x around every box (the defects, not the
    backgrounds), against the real images' own boxes (their YOLO label files)."""
    from PIL import Image

    from factory.viz import box_crops

    real_items = _labelled(reals)
    if not real_items:
        return Skipped(skipped=NO_LABELS)
    generated = [(np.asarray(Image.open(io.BytesIO(g)).convert("L")), [Box.from_dict(b) for b in bs])
                 for g, bs in zip(gen, gen_boxes) if bs]
    try:
        return c2st(box_crops(generated), box_crops(real_items))
    except ValueError as e:  # too few boxes on one side
        return Skipped(skipped=str(e))


def _skipped(fn: Callable[..., T], *args, **kwargs) -> T | Skipped:
    try:
        return fn(*args, **kwargs)
    except ValueError as e:  # too few images on one side
        return Skipped(skipped=str(e))


def real_floor(reals: list[str]) -> RealFloor:
    """The same measures between two seeded halves of the real images: the scale the
    generated-vs-real numbers are read on (a C2ST never reaches 0.5 with this few
    images; KID is not 0 between two draws of one line)."""
    from factory.quality.backbone import MissingWeightsError
    from factory.viz import box_crops

    order = np.random.default_rng(0).permutation(len(reals))
    a, b = [reals[i] for i in order[: len(reals) // 2]], [reals[i] for i in order[len(reals) // 2:]]
    whole = _skipped(c2st, a, b)
    la, lb = _labelled(a), _labelled(b)
    crops = _skipped(c2st, box_crops(la), box_crops(lb)) if la and lb else Skipped(skipped=NO_LABELS)
    try:
        pretrained: Fidelity | Skipped = fidelity(a, b, pretrained="lite0")
    except (MissingWeightsError, ValueError) as e:
        pretrained = Skipped(skipped=str(e))
    return RealFloor(images_per_half=len(a), c2st=whole, c2st_box_crops=crops, fidelity_pretrained=pretrained)


def _realism(gen: list[bytes], gen_boxes: list[list[dict]], reals: list[str], base: str, size: int,
             inception_weights: str | None, ckpt: str | None, write: bool) -> Realism:
    """FID/KID (with the in-domain extractor when no other is given, and on ImageNet
    features), the C2ST on whole images and on box crops, the real-vs-real floor, and a
    grid of real images beside generated ones (`metrics/realism.png`)."""
    from factory.quality.backbone import MissingWeightsError

    measured = _in_domain_fidelity(gen, reals, base, size, inception_weights, ckpt, write)
    try:  # beside the in-domain numbers: a space shared by every line and run
        pretrained: Fidelity | Skipped = fidelity(gen, reals, size, pretrained="lite0")
    except MissingWeightsError as e:
        pretrained = Skipped(skipped=str(e))
    out = Realism(fidelity=measured, fidelity_pretrained=pretrained, c2st=c2st(gen, reals),
                  c2st_box_crops=_crop_c2st(gen, gen_boxes, reals), real_floor=real_floor(reals))
    if write:
        out["realism_grid"] = _write_grid(gen, reals, base)
    return out


def _in_domain_fidelity(gen: list[bytes], reals: list[str], base: str, size: int, inception_weights: str | None,
                        ckpt: str | None, write: bool) -> Fidelity:
    """FID/KID on the given extractor, else on an in-domain one trained here on the real
    images (kept beside the version as `metrics/indomain-extractor.pt` when writing)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="factory-metrics-") as tmp:
        weights = None
        if not inception_weights and not ckpt:
            weights = str(train_indomain_extractor(reals, Path(tmp) / "indomain.pt"))
            if write:
                U.write_bytes(U.join(extras_for(base), "metrics", "indomain-extractor.pt"), Path(weights).read_bytes())
        return fidelity(gen, reals, size, inception_weights, ckpt, indomain_weights=weights)


def _write_grid(gen: list[bytes], reals: list[str], base: str) -> str:
    """Up to 8 real images beside 8 generated ones, as `metrics/realism.png` beside the version; its URI."""
    from PIL import Image

    n = min(8, len(gen), len(reals))
    tiles, captions = [], []
    for i in range(n):
        tiles += [to_rgb(np.asarray(Image.open(reals[i]).convert("L"))), to_rgb(np.asarray(Image.open(io.BytesIO(gen[i])).convert("L")))]
        captions += ["real", "generated"]
    uri = U.join(extras_for(base), "metrics", "realism.png")
    U.write_bytes(uri, png_bytes(grid(tiles, cols=4, captions=captions, tile_size=160)))
    return uri


def dataset_metrics(ref: str, real: str | None = None, root: str | None = None, inception_weights: str | None = None,
                    extractor_checkpoint: str | None = None, size: int = 128, max_images: int | None = 2000,
                    write: bool = True) -> DatasetMetrics:
    """All metrics of a published version; written to `<name>/_extras/v<N>/metrics/quality.json`
    (beside the version, never inside it: a published version never changes)."""
    reg, name, version, base, manifest = _version(ref, root)
    files = list(manifest.get("files", {}))
    accepted = _read_parquets(base, "parquet/", files, ["boxes", "scores", "image"])
    rej_files = [f for f in U.list_files(base) if f.startswith("rejected/")]
    rejected = _read_parquets(base, "rejected/", rej_files, ["boxes", "scores", "reasons"])
    out = DatasetMetrics(dataset=f"{name}@{version}", version_uri=base, **gate_summary(accepted, rejected))
    if real:
        ckpt = extractor_checkpoint or ((manifest.get("spec") or {}).get("quality") or {}).get("anomaly_checkpoint")
        rows = [r for r in accepted if r.get("image")][:max_images or None]
        gen, gen_boxes = [r["image"] for r in rows], [r.get("boxes") or [] for r in rows]
        with U.as_local_dir(real) as d:
            reals = list_real_images(str(d), max_images)
            out.update(_realism(gen, gen_boxes, reals, base, size, inception_weights, None if inception_weights else ckpt,
                                write))
    if write:
        dest = U.join(extras_for(base), "metrics", "quality.json")
        U.write_bytes(dest, json.dumps(out, indent=2, sort_keys=True, default=str).encode())
        out["written_to"] = dest
    return out

