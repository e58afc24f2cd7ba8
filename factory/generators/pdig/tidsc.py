"""TIDSC (paper eq. 5-18): losses on the cross-attention map H (S x K, rows x
columns) of a defect token and the binary mask M of its box.

Choices the paper leaves open, stated once here:
- Maps are scaled to [0, 1] by their maximum before the losses (they are compared
  with 0/1 masks; raw attention probabilities of one token are far below 1).
- P (top-k of eq. 5 and 7): an int >= 1 is a count; a float in (0, 1) is a
  fraction of the box's cells (at least 1), so one setting suits small and large
  boxes. The outer loss uses the same k.
- L (eq. 11, 14): "uniform sampling of L error terms around x1, x2": L/2
  consecutive columns centred on each edge (the last column inside and the first
  outside for L = 4), likewise rows for y. Mean over the terms that fall inside
  the map.
- Smoothness (eq. 15-16): forward differences, counted at cells of the mask,
  divided by S*K as written.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TIDSCConfig:
    P: float = 0.2
    L: int = 4
    lambda1: float = 1.0
    lambda2: float = 1.0


def box_to_cells(box: tuple[float, float, float, float], image_hw: tuple[int, int], map_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """Pixel box (x1, y1, x2, y2; x2/y2 exclusive) -> map cells covering it, at least one cell."""
    (H, W), (S, K) = image_hw, map_hw
    x1, y1, x2, y2 = box
    c1 = min(K - 1, max(0, math.floor(x1 * K / W)))
    r1 = min(S - 1, max(0, math.floor(y1 * S / H)))
    c2 = max(c1 + 1, min(K, math.ceil(x2 * K / W)))
    r2 = max(r1 + 1, min(S, math.ceil(y2 * S / H)))
    return c1, r1, c2, r2


def box_mask(cells: tuple[int, int, int, int], map_hw: tuple[int, int], device=None) -> torch.Tensor:
    c1, r1, c2, r2 = cells
    m = torch.zeros(map_hw, device=device)
    m[r1:r2, c1:c2] = 1.0
    return m


def normalize(a: torch.Tensor) -> torch.Tensor:
    return a / a.max().clamp_min(1e-12)


def _k(P: float, mask: torch.Tensor) -> int:
    if P >= 1:
        return int(P)
    return max(1, int(round(P * float(mask.sum()))))


def inner_loss(a: torch.Tensor, mask: torch.Tensor, P: float) -> torch.Tensor:
    """Eq. 5: 1 - mean of the top-P responses inside the mask."""
    k = min(_k(P, mask), a.numel())
    return 1.0 - (a * mask).flatten().topk(k).values.mean()


def outer_loss(a: torch.Tensor, mask: torch.Tensor, P: float) -> torch.Tensor:
    """Eq. 7: mean of the top-P responses outside the mask."""
    k = min(_k(P, mask), a.numel())
    return (a * (1 - mask)).flatten().topk(k).values.mean()


def edge_indices(e1: int, e2: int, L: int, size: int) -> list[int]:
    """L/2 consecutive indices centred on each edge (edges between index e-1 and e)."""
    n = max(1, L // 2)
    out: list[int] = []
    for e in (e1, e2):
        start = e - math.ceil(n / 2)
        out += [i for i in range(start, start + n) if 0 <= i < size]
    return sorted(set(out))


def alignment_losses(a: torch.Tensor, mask: torch.Tensor, cells: tuple[int, int, int, int], L: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 9-14: |max-projection of the mask - max-projection of the map| sampled near
    the box edges, on the x axis (columns) and the y axis (rows)."""
    c1, r1, c2, r2 = cells
    mx, ax = mask.max(0).values, a.max(0).values  # eq. 9-10, length K
    my, ay = mask.max(1).values, a.max(1).values  # eq. 12-13, length S
    ix = edge_indices(c1, c2, L, a.shape[1])
    iy = edge_indices(r1, r2, L, a.shape[0])
    lx = (mx[ix] - ax[ix]).abs().mean()
    ly = (my[iy] - ay[iy]).abs().mean()
    return lx, ly


def smoothness_losses(a: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 15-16: first- and second-order absolute differences inside the mask / (S*K)."""
    n = a.numel()
    dx = (a[:, 1:] - a[:, :-1]).abs() * mask[:, :-1]
    dy = (a[1:, :] - a[:-1, :]).abs() * mask[:-1, :]
    dxx = (a[:, 2:] - 2 * a[:, 1:-1] + a[:, :-2]).abs() * mask[:, 1:-1]
    dyy = (a[2:, :] - 2 * a[1:-1, :] + a[:-2, :]).abs() * mask[1:-1, :]
    return (dx.sum() + dy.sum()) / n, (dxx.sum() + dyy.sum()) / n


def tidsc_loss(maps: list[tuple[torch.Tensor, tuple[int, int, int, int]]], cfg: TIDSCConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. 6, 8, 17, 18 over all (map, box cells) pairs of one image: every defect
    token's map (text token and image tokens) against the mask of its box."""
    terms = {"inner": 0.0, "outer": 0.0, "align_x": 0.0, "align_y": 0.0, "smooth1": 0.0, "smooth2": 0.0}
    total = None
    for a, cells in maps:
        a = normalize(a)
        mask = box_mask(cells, tuple(a.shape), a.device).to(a.dtype)
        l_in = inner_loss(a, mask, cfg.P)
        l_out = outer_loss(a, mask, cfg.P)
        lx, ly = alignment_losses(a, mask, cells, cfg.L)
        s1, s2 = smoothness_losses(a, mask)
        loss = l_in + l_out + lx + ly + cfg.lambda1 * s1 + cfg.lambda2 * s2
        total = loss if total is None else total + loss
        for k, v in zip(terms, (l_in, l_out, lx, ly, s1, s2)):
            terms[k] += float(v.detach())
    if total is None:
        raise ValueError("TIDSC needs at least one (attention map, box) pair")
    return total, terms


def inside_fraction(a: torch.Tensor, cells: tuple[int, int, int, int]) -> float:
    """Share of a map's attention mass inside the box cells (a diagnostic, not a loss)."""
    mask = box_mask(cells, tuple(a.shape), a.device).to(a.dtype)
    return float((a * mask).sum() / a.sum().clamp_min(1e-12))
