"""The paper's three threshold rules (section 4): F1-max on a validation split,
Youden's index, and a fixed operating point with recall >= 90%.

A sample is predicted anomalous when score >= threshold. Candidates are the
distinct scores themselves (exact; the paper's 0.01 grid is a coarser version)."""

from __future__ import annotations

import numpy as np


def _curve(scores, labels):
    """(distinct scores, high to low; true and false positives at each as a threshold; P; N)."""
    from sklearn.metrics import roc_curve  # scikit-learn takes a second to import: only when used

    s = np.asarray(scores, np.float64).ravel()
    y = np.asarray(labels, bool).ravel()
    if y.all() or not y.any():
        raise ValueError("threshold selection needs both normal and anomalous samples")
    P, N = float(y.sum()), float((~y).sum())
    fpr, tpr, t = roc_curve(y, s, drop_intermediate=False)  # every distinct score; [0] is the (inf, 0, 0) start
    return t[1:], np.rint(tpr[1:] * P), np.rint(fpr[1:] * N), P, N  # rint: the exact counts back


def f1_max_threshold(scores, labels) -> float:
    t, tp, fp, P, _ = _curve(scores, labels)
    f1 = 2 * tp / (tp + fp + P)
    return float(t[int(np.argmax(f1))])


def youden_threshold(scores, labels) -> float:
    t, tp, fp, P, N = _curve(scores, labels)
    return float(t[int(np.argmax(tp / P - fp / N))])


def recall_threshold(scores, labels, min_recall: float = 0.9) -> float:
    """Among thresholds with recall >= min_recall, the one with the highest precision
    (ties: the highest threshold)."""
    t, tp, fp, P, _ = _curve(scores, labels)
    ok = tp / P >= min_recall - 1e-12
    prec = np.where(ok, tp / np.maximum(tp + fp, 1), -1.0)
    best = prec.max()
    return float(t[ok & (prec == best)].max())


RULES = {"f1": f1_max_threshold, "youden": youden_threshold, "recall90": recall_threshold}


def select_thresholds(scores, labels) -> dict[str, float]:
    return {name: fn(scores, labels) for name, fn in RULES.items()}


def auroc(scores, labels) -> float:
    """Area under the ROC curve (scikit-learn's); nan with one class only or a nan score."""
    from sklearn.metrics import roc_auc_score

    s = np.asarray(scores, np.float64).ravel()
    y = np.asarray(labels, bool).ravel()
    if y.all() or not y.any() or np.isnan(s).any():
        return float("nan")
    if np.isinf(s).any():  # scikit-learn refuses infinities; the area depends on the order alone
        s = np.unique(s, return_inverse=True)[1].astype(np.float64)
    return float(roc_auc_score(y, s))
