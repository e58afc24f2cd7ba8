"""Fitting the per-class box check (`factory.quality.box_check`): the classifier head by
full-batch L-BFGS, and each class's threshold from out-of-fold scores (folds of image
or board groups, so no instance is scored by a model that saw its image)."""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from factory.quality.box_check import BoxCheck, BoxCheckConfig, Head
from factory.quality.box_crops import CropSet


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
                     "auroc": auroc(np.r_[pos, neg], np.r_[np.ones(len(pos)), np.zeros(len(neg))]),  # nan: one side empty
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

