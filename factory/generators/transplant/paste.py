"""Putting one real defect instance into a planned box of a background.

Fit (flip, rotate, scale the instance to the box: size exactly, aspect as close
as `max_distortion` allows), match its intensity to the local background, then
blend: `alpha` (a feathered mask) or `poisson` (seamless cloning: the pasted
region keeps the instance's gradients and takes its level from the background's
boundary; solved here with a sparse solver, so nothing outside the region moves).

Only pixels within `margin(feather)` of the pasted mask change: the reported box
is the tight box of the pasted mask and the mask goes to the quality gate, so
spillover is measured exactly.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from scipy import ndimage, sparse
from scipy.sparse.linalg import spsolve

from factory.core import Box
from factory.generators.transplant.bank import Instance

CROSS = ndimage.generate_binary_structure(2, 1)
SQUARE = np.ones((3, 3), bool)


def margin(feather: float) -> int:
    """How far (px) outside the pasted mask blending may change the background."""
    return int(math.ceil(feather)) + 1


def augment(bg: np.ndarray, rng: np.random.Generator, jitter: float) -> np.ndarray:
    """A background variant: random flips and a small gain/offset/gamma change (never
    the identity, so no output is a byte copy of a reference)."""
    out = bg[:, ::-1] if rng.random() < 0.5 else bg
    out = out[::-1] if rng.random() < 0.5 else out
    sign = lambda: 1.0 if rng.random() < 0.5 else -1.0  # noqa: E731
    gain = 1.0 + sign() * rng.uniform(0.25, 1.0) * jitter
    gamma = 1.0 + sign() * rng.uniform(0.0, 1.0) * jitter
    offset = sign() * rng.uniform(0.25, 1.0) * jitter * 0.25
    x = np.clip(out / 255.0, 0.0, 1.0) ** gamma
    return np.ascontiguousarray(np.clip((x * gain + offset) * 255.0, 0.0, 255.0), dtype=np.float32)


def _tight(binary: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(binary)
    return int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1


def fit_instance(inst: Instance, box: Box, rng: np.random.Generator, max_distortion: float) -> tuple[np.ndarray, np.ndarray]:
    """(patch, alpha) as floats, flipped/rotated/scaled so the defect's tight box
    matches the planned box's size (and its aspect within `max_distortion`)."""
    patch, alpha = inst.patch.astype(np.float32), inst.alpha.astype(np.float32)
    if rng.random() < 0.5:
        patch, alpha = patch[:, ::-1], alpha[:, ::-1]
    if rng.random() < 0.5:
        patch, alpha = patch[::-1], alpha[::-1]
    y1, y2, x1, x2 = _tight(alpha >= 0.5)
    target = math.log(box.width / box.height)
    if abs(-math.log((x2 - x1) / (y2 - y1)) - target) < abs(math.log((x2 - x1) / (y2 - y1)) - target):
        patch, alpha = np.rot90(patch), np.rot90(alpha)
        y1, y2, x1, x2 = _tight(alpha >= 0.5)
    sx, sy = box.width / (x2 - x1), box.height / (y2 - y1)
    g = math.sqrt(sx * sy)
    d = min(max(sx / sy, 1.0 / max_distortion), max_distortion)
    sx, sy = g * math.sqrt(d), g / math.sqrt(d)
    h, w = patch.shape
    size = (max(1, round(w * sx)), max(1, round(h * sy)))
    interp = cv2.INTER_AREA if sx * sy < 1 else cv2.INTER_LINEAR
    patch = cv2.resize(np.ascontiguousarray(patch), size, interpolation=interp)
    alpha = cv2.resize(np.ascontiguousarray(alpha), size, interpolation=cv2.INTER_LINEAR)
    return patch, np.clip(alpha, 0.0, 1.0)


def paste(canvas: np.ndarray, inst: Instance, box: Box, rng: np.random.Generator, blend: str,
          feather: float, max_distortion: float) -> np.ndarray:
    """Paste `inst` centred on `box` into `canvas` (HxW float32, changed in place);
    returns the HxW bool mask of the pasted defect (clipped to the image)."""
    H, W = canvas.shape
    patch, alpha = fit_instance(inst, box, rng, max_distortion)
    binary = alpha >= min(0.5, 0.5 * float(alpha.max()))
    y1, y2, x1, x2 = _tight(binary)
    oy = int(round((box.y1 + box.y2) / 2 - (y1 + y2) / 2))
    ox = int(round((box.x1 + box.x2) / 2 - (x1 + x2) / 2))
    R = margin(feather)
    # a canvas padded by R + 1, so the patch's window and the blend region fit inside
    P = R + 1 + max(patch.shape)
    big = np.pad(canvas, P, mode="edge")
    h, w = patch.shape
    win = (slice(oy + P, oy + P + h), slice(ox + P, ox + P + w))
    inside = np.zeros_like(big, bool)
    inside[P:P + H, P:P + W] = True
    _match_intensity(patch, alpha, big[win], inside[win])
    pasted = np.zeros_like(big, bool)
    pasted[win] = binary
    pasted &= inside
    if not pasted.any():
        return np.zeros((H, W), bool)
    region = ndimage.binary_dilation(pasted, SQUARE, iterations=R) & inside
    if blend == "poisson":
        src = big.copy()
        src[win] = patch
        big[region] = _poisson(src, big, region)
    else:
        a = np.zeros_like(big)
        if inst.exact:
            soft = ndimage.gaussian_filter(binary.astype(np.float32), feather / 2) if feather > 0 else binary
            a[win] = np.maximum(binary.astype(np.float32), soft)
        else:
            a[win] = alpha
        a = np.where(region, a, 0.0)
        src = big.copy()
        src[win] = patch
        big = big * (1.0 - a) + src * a
    canvas[:] = big[P:P + H, P:P + W]
    return pasted[P:P + H, P:P + W]


def _match_intensity(patch: np.ndarray, alpha: np.ndarray, under: np.ndarray, valid: np.ndarray) -> None:
    """Shift and scale the patch (in place) so its own surroundings (alpha ~ 0) match
    the background it lands on: the defect keeps its contrast to its surroundings."""
    ring = (alpha < 0.05) & valid
    if ring.sum() < 8:
        ring = valid
    if ring.sum() < 2:
        return
    mu_s, sd_s = float(patch[ring].mean()), float(patch[ring].std())
    mu_t, sd_t = float(under[ring].mean()), float(under[ring].std())
    k = min(max(sd_t / sd_s, 0.5), 2.0) if sd_s > 1e-3 else 1.0
    patch[:] = np.clip((patch - mu_s) * k + mu_t, 0.0, 255.0)


def _poisson(src: np.ndarray, dst: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Values in `region` whose Laplacian is src's and which meet dst at the region's
    boundary (Perez et al. 2003, seamless cloning). `region` must not touch the border."""
    ys, xs = np.nonzero(region)
    n = len(ys)
    idx = np.full(region.shape, -1, np.int64)
    idx[ys, xs] = np.arange(n)
    rows, cols, vals = [np.arange(n)], [np.arange(n)], [np.full(n, 4.0)]
    b = 4.0 * src[ys, xs].astype(np.float64)
    for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        ny, nx = ys + dy, xs + dx
        b -= src[ny, nx]
        inn = region[ny, nx]
        rows.append(np.nonzero(inn)[0])
        cols.append(idx[ny[inn], nx[inn]])
        vals.append(-np.ones(int(inn.sum())))
        b[~inn] += dst[ny[~inn], nx[~inn]]
    A = sparse.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
    return np.clip(spsolve(A, b), 0.0, 255.0).astype(np.float32)
