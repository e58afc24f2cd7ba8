"""TIDSC (paper eq. 5-18): losses on the cross-attention maps H (S x K, rows x
columns) of the defect tokens and the binary masks M of their boxes.

Every function takes a stack of maps (N, S, K) with one box per map, so a whole
batch's maps cost one set of tensor ops per guided step, not one per map.
Choices the paper leaves open, stated once here (tests pin each to hand-worked values):
- Maps are scaled to [0, 1] by their maximum before the losses (they are compared
  with 0/1 masks; raw attention probabilities of one token are far below 1).
- P (top-k of eq. 5 and 7) has one meaning per setting: `P` is a fraction in
  (0, 1] of the box's cells, k = max(1, round(P * cells)) (P = 1: every cell of the
  box); `P_count`, when set, is a count of cells instead. The outer loss uses the
  same k. k is capped at the cells of the region it ranks (box for eq. 5, the rest
  of the map for eq. 7); a box covering the whole map has an outer loss of 0.
- L (eq. 11, 14): "L error terms around x1, x2". Each edge (the boundary between
  cell e-1 and cell e) samples the window [e - L/4, e + L/4] in cell units, and a
  cell's weight is its overlap with the window: L/2 terms' worth per edge, half
  inside and half outside the box, for every L. L = 4: the last cell inside and
  the first outside at each edge; L = 2: those cells at weight 1/2; odd L the
  same way (L = 1: 1/4 each; L = 5: 1 and 1/4 per side). Terms sampled twice (a
  one-cell box) count twice. The loss is the weighted mean, i.e. 1/L times the
  weighted sum; weight falling outside the map is dropped and the mean is over
  what remains.
- Smoothness (eq. 15-16): forward differences and central second differences,
  counted at the mask's cells where they exist inside the map, divided by S*K as written.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

Cells = tuple[int, int, int, int]  # c1, r1, c2, r2 on the map (c2, r2 exclusive)


@dataclass(frozen=True)
class TIDSCConfig:
    P: float = 0.2  # fraction of the box's cells in (0, 1]
    L: int = 4
    lambda1: float = 1.0
    lambda2: float = 1.0
    P_count: int | None = None  # when set: top-k count in cells, replaces P

    def __post_init__(self):
        if not 0 < self.P <= 1:
            raise ValueError(f"P is a fraction of the box's cells in (0, 1], got {self.P}; for a count use P_count")
        if self.P_count is not None and (int(self.P_count) != self.P_count or self.P_count < 1):
            raise ValueError(f"P_count is a number of cells >= 1, got {self.P_count}")
        if self.L < 1:
            raise ValueError(f"L must be >= 1, got {self.L}")


def box_to_cells(box: tuple[float, float, float, float], image_hw: tuple[int, int], map_hw: tuple[int, int]) -> Cells:
    """Pixel box (x1, y1, x2, y2; x2/y2 exclusive) -> map cells covering it, at least one cell."""
    (H, W), (S, K) = image_hw, map_hw
    x1, y1, x2, y2 = box
    c1 = min(K - 1, max(0, math.floor(x1 * K / W)))
    r1 = min(S - 1, max(0, math.floor(y1 * S / H)))
    c2 = max(c1 + 1, min(K, math.ceil(x2 * K / W)))
    r2 = max(r1 + 1, min(S, math.ceil(y2 * S / H)))
    return c1, r1, c2, r2


def box_masks(cells: list[Cells], map_hw: tuple[int, int], device=None) -> torch.Tensor:
    """(N, S, K) 0/1 masks, one per box."""
    c = torch.tensor(cells, device=device).reshape(-1, 4)
    rows = torch.arange(map_hw[0], device=device)
    cols = torch.arange(map_hw[1], device=device)
    in_r = (rows >= c[:, 1:2]) & (rows < c[:, 3:4])  # (N, S)
    in_c = (cols >= c[:, 0:1]) & (cols < c[:, 2:3])  # (N, K)
    return (in_r[:, :, None] & in_c[:, None, :]).float()


def normalize(a: torch.Tensor) -> torch.Tensor:
    """Each map over its own maximum."""
    return a / a.amax(dim=(-2, -1), keepdim=True).clamp_min(1e-12)


def top_k(cfg: TIDSCConfig, box_cells: torch.Tensor) -> torch.Tensor:
    """k of eq. 5/7 per map from the number of cells in its box (see the module notes)."""
    if cfg.P_count is not None:
        return torch.full_like(box_cells, int(cfg.P_count))
    return (cfg.P * box_cells).round().clamp_min(1)


def _mean_top(values: torch.Tensor, region: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Per map: mean of the k largest `values` among the cells where `region` is 1
    (k capped at the region's size; 0 for an empty region)."""
    n = values.shape[0]
    flat = values.reshape(n, -1).masked_fill(region.reshape(n, -1) == 0, float("-inf"))
    k = torch.minimum(k, region.reshape(n, -1).sum(1))
    ranked = flat.sort(dim=1, descending=True).values
    take = torch.arange(ranked.shape[1], device=values.device)[None, :] < k[:, None]
    return torch.where(take, ranked, torch.zeros_like(ranked)).sum(1) / k.clamp_min(1)


def inner_loss(a: torch.Tensor, masks: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Eq. 5 per map: 1 - mean of the top-k responses of H * M."""
    return 1.0 - _mean_top(a, masks, k)


def outer_loss(a: torch.Tensor, masks: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Eq. 7 per map: mean of the top-k responses of H * (1 - M)."""
    return _mean_top(a, 1 - masks, k)


def edge_weights(e1: torch.Tensor, e2: torch.Tensor, L: int, size: int) -> torch.Tensor:
    """(N, size) weights of the error terms sampled around edges e1 and e2 (N each):
    each cell's overlap with [e - L/4, e + L/4] (module notes)."""
    h = L / 4
    i = torch.arange(size, device=e1.device, dtype=torch.float32)[None, :]
    w = torch.zeros(e1.shape[0], size, device=e1.device)
    for e in (e1, e2):
        e = e.float()[:, None]
        w = w + (torch.minimum(i + 1, e + h) - torch.maximum(i, e - h)).clamp_min(0)
    return w


def alignment_losses(a: torch.Tensor, masks: torch.Tensor, cells: list[Cells], L: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 9-14 per map: |max-projection of the mask - max-projection of the map|,
    weighted mean of the terms sampled near the box edges, x axis (columns) and y axis (rows)."""
    c = torch.tensor(cells, device=a.device).reshape(-1, 4)
    err_x = (masks.amax(1) - a.amax(1)).abs()  # eq. 9-10: (N, K)
    err_y = (masks.amax(2) - a.amax(2)).abs()  # eq. 12-13: (N, S)
    wx = edge_weights(c[:, 0], c[:, 2], L, a.shape[2]).to(a.dtype)
    wy = edge_weights(c[:, 1], c[:, 3], L, a.shape[1]).to(a.dtype)
    return (wx * err_x).sum(1) / wx.sum(1), (wy * err_y).sum(1) / wy.sum(1)


def smoothness_losses(a: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 15-16 per map: first- and second-order absolute differences at the mask's cells / (S*K)."""
    n = a.shape[1] * a.shape[2]
    dx = (a[:, :, 1:] - a[:, :, :-1]).abs() * masks[:, :, :-1]
    dy = (a[:, 1:, :] - a[:, :-1, :]).abs() * masks[:, :-1, :]
    dxx = (a[:, :, 2:] - 2 * a[:, :, 1:-1] + a[:, :, :-2]).abs() * masks[:, :, 1:-1]
    dyy = (a[:, 2:, :] - 2 * a[:, 1:-1, :] + a[:, :-2, :]).abs() * masks[:, 1:-1, :]
    return (dx.sum((1, 2)) + dy.sum((1, 2))) / n, (dxx.sum((1, 2)) + dyy.sum((1, 2))) / n


TERMS = ("inner", "outer", "align_x", "align_y", "smooth1", "smooth2")


def tidsc_terms(maps: torch.Tensor, cells: list[Cells], cfg: TIDSCConfig) -> dict[str, torch.Tensor]:
    """The six per-map terms (each (N,)) of maps (N, S, K) against their boxes' cells."""
    a = normalize(maps)
    masks = box_masks(cells, tuple(a.shape[1:]), a.device).to(a.dtype)
    k = top_k(cfg, masks.sum((1, 2)))
    lx, ly = alignment_losses(a, masks, cells, cfg.L)
    s1, s2 = smoothness_losses(a, masks)
    return dict(zip(TERMS, (inner_loss(a, masks, k), outer_loss(a, masks, k), lx, ly, s1, s2)))


def tidsc_loss(maps: torch.Tensor | list[torch.Tensor], cells: list[Cells], cfg: TIDSCConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. 6, 8, 17, 18: the sums over all (map, box) pairs given (every defect
    token's map, text and image tokens, of every image in the batch). Returns the
    loss and each term's sum (floats, for reporting)."""
    if len(cells) == 0:
        raise ValueError("TIDSC needs at least one (attention map, box) pair")
    stack = maps if isinstance(maps, torch.Tensor) else torch.stack(list(maps))
    t = tidsc_terms(stack, cells, cfg)
    total = (t["inner"] + t["outer"] + t["align_x"] + t["align_y"] + cfg.lambda1 * t["smooth1"] + cfg.lambda2 * t["smooth2"]).sum()
    sums = torch.stack([v.detach().sum() for v in t.values()]).tolist()  # one device sync, not six
    return total, dict(zip(TERMS, sums))


def inside_fraction(a: torch.Tensor, cells: Cells) -> float:
    """Share of a map's attention mass inside the box cells (a diagnostic, not a loss)."""
    mask = box_masks([cells], tuple(a.shape[-2:]), a.device)[0].to(a.dtype)
    return float((a * mask).sum() / a.sum().clamp_min(1e-12))
