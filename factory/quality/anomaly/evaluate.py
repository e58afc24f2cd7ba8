"""Evaluate a gate checkpoint on labelled images it never saw: image AUROC, pixel AUROC
where masks exist, and F1 with the confusion counts at the checkpoint's own threshold
(so the numbers say how the gate will behave, not how good an oracle threshold is)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from factory.quality.anomaly.thresholds import auroc


def confusion(pred: np.ndarray, truth: np.ndarray) -> dict:
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    tp, fp = int((pred & truth).sum()), int((pred & ~truth).sum())
    fn, tn = int((~pred & truth).sum()), int((~pred & ~truth).sum())
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn, "f1": 2 * tp / max(2 * tp + fp + fn, 1)}


def evaluate_heat(det, h_normal: Sequence[np.ndarray], h_defect: Sequence[np.ndarray], masks: Sequence[np.ndarray | None],
                  rule: str = "f1") -> dict:
    """Metrics from a detector's heat maps (any size; a mask, when given, has its heat map's shape)
    at its own thresholds. Pixel metrics pool the normal images' pixels (all negative) with the
    masked defect images."""
    image_threshold, pixel_threshold = det.threshold("image", rule), det.threshold("pixel", rule)
    scores = np.r_[[det.image_score(h) for h in h_normal], [det.image_score(h) for h in h_defect]]
    labels = np.r_[np.zeros(len(h_normal), bool), np.ones(len(h_defect), bool)]
    out = {"normal": len(h_normal), "defective": len(h_defect), "image_auroc": auroc(scores, labels),
           "image_threshold": image_threshold, "image": confusion(scores >= image_threshold, labels)}
    with_mask = [(h, m) for h, m in zip(h_defect, masks) if m is not None]
    if with_mask:
        pix = np.concatenate([np.ravel(h) for h in h_normal] + [np.ravel(h) for h, _ in with_mask])
        plab = np.concatenate([np.zeros(np.size(h), bool) for h in h_normal] + [np.ravel(m).astype(bool) for _, m in with_mask])
        out |= {"masked_defective": len(with_mask), "pixel_auroc": auroc(pix, plab), "pixel_threshold": pixel_threshold,
                "pixel": confusion(pix >= pixel_threshold, plab)}
    return out


def evaluate(det, normal: Sequence[np.ndarray], defective: Sequence[np.ndarray], masks: Sequence[np.ndarray | None] | None = None,
             rule: str = "f1") -> dict:
    """Score images (HxW[xC] uint8) with a detector; masks are at each defect image's size."""
    masks = list(masks) if masks is not None else [None] * len(defective)
    h_norm = det.heat_maps(list(normal), original_size=True)
    h_def = det.heat_maps(list(defective), original_size=True)
    res = evaluate_heat(det, h_norm, h_def, masks, rule)
    return res | {"rule": rule, "method": getattr(det, "method", "uiidd")}
