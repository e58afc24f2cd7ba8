"""Heat-map post-processing (paper section 4: Gaussian filtering against noise,
connected components to merge adjacent anomalous areas)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage


def gaussian_smooth(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of B x 1 x H x W maps (reflect padding)."""
    if sigma <= 0:
        return maps
    r = max(1, int(round(3 * sigma)))
    t = torch.arange(-r, r + 1, dtype=maps.dtype, device=maps.device)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    x = F.pad(maps, (r, r, r, r), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1))
    return F.conv2d(x, k.view(1, 1, -1, 1))


def hottest_mean(heat: np.ndarray, n_px: int) -> float:
    """Mean of a heat map's `n_px` hottest values (its maximum when n_px <= 1): an image score that
    a whole defect raises, where one hot pixel of noise barely does."""
    flat = np.ravel(heat)
    n = min(max(int(n_px), 1), flat.size)
    return float(flat.max()) if n == 1 else float(np.partition(flat, flat.size - n)[flat.size - n :].mean())


MIN_ANOMALY_AREA = 4  # px: smaller anomalous components are noise (the gate's and its calibration's one rule)


def connected_components(binary: np.ndarray, min_area: int = 1) -> tuple[np.ndarray, int]:
    """8-connected components of a HxW bool map; components smaller than min_area are dropped.
    Returns (labels with 0 = background and 1..n, n)."""
    labels, n = ndimage.label(binary, structure=np.ones((3, 3), bool))
    if n and min_area > 1:
        areas = np.bincount(labels.ravel(), minlength=n + 1)
        keep = areas >= min_area
        keep[0] = False
        remap = np.zeros(n + 1, np.int32)
        remap[keep] = np.arange(1, int(keep.sum()) + 1)
        labels, n = remap[labels], int(keep.sum())
    return labels, n
