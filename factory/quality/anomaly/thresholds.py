"""The paper's three threshold rules (section 4): F1-max on a validation split,
Youden's index, and a fixed operating point with recall >= 90%.

A sample is predicted anomalous when score >= threshold. Candidates are the
distinct scores themselves (exact; the paper's 0.01 grid is a coarser version)."""

from __future__ import annotations

import numpy as np


def _curve(scores, labels):
    s = np.asarray(scores, np.float64).ravel()
    y = np.asarray(labels, bool).ravel()
    if y.all() or not y.any():
        raise ValueError("threshold selection needs both normal and anomalous samples")
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    tp = np.cumsum(y)
    fp = np.cumsum(~y)
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # last index of each distinct score
    return s[last], tp[last].astype(float), fp[last].astype(float), float(y.sum()), float((~y).sum())


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
    """Area under the ROC curve (Mann-Whitney U with tie correction)."""
    from scipy.stats import rankdata

    s = np.asarray(scores, np.float64).ravel()
    y = np.asarray(labels, bool).ravel()
    P, N = y.sum(), (~y).sum()
    if P == 0 or N == 0:
        return float("nan")
    r = rankdata(s)
    return float((r[y].sum() - P * (P + 1) / 2) / (P * N))
