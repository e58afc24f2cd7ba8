"""Putting one real defect instance into a background.

1. `vary`: a new shape from a real instance, seeded: flips, a 90-degree turn when it
   fits the box's aspect better, scale to the planned box (within `scale` and
   `max_distortion`), a smooth elastic deformation, and a contrast change of the
   defect against its own surroundings. The instance's context (what the spot
   looked like without it) is turned and scaled with it, never deformed.
2. `place`: where it goes. `context`: where the background looks most like that
   context (normalized cross-correlation; on binary images the exact pixel
   agreement), a seeded choice among the best `top_k` separated positions (within
   `tolerance` of the best) that overlap nothing pasted; on binary images, spots where
   it changes the topology as it did in its source first (`Variant.fits_topology`).
   `random`: centred on the planned box.
   Either way an instance cut at its image's border keeps those sides (turned and
   flipped with it) at the new image's border.
3. `paste`: match its intensity to the spot, then blend: `hard`, `alpha` (a
   feathered mask) or `poisson` (seamless cloning, solved with a sparse solver so
   nothing outside the region moves). Binary images keep their two grey levels.

Only pixels within `margin(feather)` of the pasted mask change: the reported box is
the tight box of the pasted mask and the mask goes to the quality gate, so
spillover is measured exactly.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage, sparse
from scipy.sparse.linalg import spsolve

from factory.core import Box
from factory.generators.transplant.bank import CROSS, MID_GREY, SQUARE, Instance, topology

BLENDS = ("hard", "alpha", "poisson")
ELASTIC_SHARE = 0.1  # elastic deformation: at most this share of the defect's shorter side
HALO_MAX = 8  # px: the most of an instance's own surroundings a grey paste carries past its mask
LEVEL_BAND = 24  # grey levels either side of a mode that still count as that level (JPEG q75 rings up to ~20)
BINARY_SHARE = 0.98  # share of pixels within the two modes' bands that makes an image binary
LEVEL_GAP = 128  # the two modes at least this far apart (a grey image's two peaks are closer)
TOPOLOGY_SEARCH = 16  # context placement on binary images looks this many times top_k deep for spots of the right topology


def margin(feather: float) -> int:
    """How far (px) outside the pasted mask (and its `halo`) blending may change the background."""
    return int(math.ceil(feather)) + 1


def halo(v: "Variant", levels: np.ndarray | None) -> int:
    """How far (px) a paste on a grey image carries the instance's own surroundings past
    its mask: the defect's half-thickness, at most HALO_MAX. A soft defect (an EL spot
    that fades out) cut at its mask shows a crisp rim on a new background (pv cross
    cracks: crops told apart 0.85-0.90); its own fade-out, intensity-matched, keeps it
    soft. Binary images: 0 (their defects are their masks)."""
    return 0 if levels is not None else int(min(HALO_MAX, math.ceil(v.half_thickness)))


def grey_levels(image: np.ndarray) -> np.ndarray | None:
    """The two grey levels of a binary or near-binary image (a binarized PCB scan),
    or None for a grey image."""
    hist = np.bincount(np.clip(np.round(image), 0, 255).astype(np.uint8).ravel(), minlength=256)
    lo, hi = int(np.argmax(hist[:128])), 128 + int(np.argmax(hist[128:]))
    near = hist[max(0, lo - LEVEL_BAND):lo + LEVEL_BAND + 1].sum() + hist[hi - LEVEL_BAND:hi + LEVEL_BAND + 1].sum()
    return np.array([lo, hi], np.float32) if hi - lo >= LEVEL_GAP and near >= BINARY_SHARE * image.size else None


def quantize(values: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Each value to the nearer of the two levels."""
    return np.where(np.abs(values - levels[0]) <= np.abs(values - levels[1]), levels[0], levels[1]).astype(np.float32)


def augment(bg: np.ndarray, rng: np.random.Generator, jitter: float,
            binary: bool = False) -> tuple[np.ndarray, tuple[str, ...]]:
    """A background variant, never the identity (so no output is a byte copy of a
    reference), and the turns and flips that made it (`turn`, `move_boxes`). Grey
    images: random flips and a small gain/offset/gamma change. Binary images keep
    their levels: one of the non-identity flips and turns."""
    if binary:
        if bg.shape[0] == bg.shape[1]:  # one of the 7 other elements of the square's symmetry group
            k = 1 + int(rng.integers(7))
            ops = ("r",) * (k % 4) + (("h",) if k >= 4 else ())
        else:
            ops = [("h",), ("v",), ("h", "v")][int(rng.integers(3))]
        return np.ascontiguousarray(turn(bg, ops), dtype=np.float32), ops
    ops = (("h",) if rng.random() < 0.5 else ()) + (("v",) if rng.random() < 0.5 else ())
    out = turn(bg, ops)
    sign = lambda: 1.0 if rng.random() < 0.5 else -1.0  # noqa: E731
    gain = 1.0 + sign() * rng.uniform(0.25, 1.0) * jitter
    gamma = 1.0 + sign() * rng.uniform(0.0, 1.0) * jitter
    offset = sign() * rng.uniform(0.25, 1.0) * jitter * 0.25
    x = np.clip(out / 255.0, 0.0, 1.0) ** gamma
    return np.ascontiguousarray(np.clip((x * gain + offset) * 255.0, 0.0, 255.0), dtype=np.float32), ops


def turn(a: np.ndarray, ops: tuple[str, ...]) -> np.ndarray:
    """Apply turns (`r`: 90 degrees counter-clockwise) and flips (`h`: left-right, `v`: up-down) in order."""
    for op in ops:
        a = np.rot90(a) if op == "r" else a[:, ::-1] if op == "h" else a[::-1]
    return a


def move_boxes(boxes: tuple[Box, ...], ops: tuple[str, ...], height: int, width: int) -> list[Box]:
    """The boxes of an image after `turn(image, ops)`."""
    out = list(boxes)
    for op in ops:
        if op == "r":
            out = [Box(b.class_id, b.class_name, b.y1, width - b.x2, b.y2, width - b.x1) for b in out]
            height, width = width, height
        elif op == "h":
            out = [Box(b.class_id, b.class_name, width - b.x2, b.y1, width - b.x1, b.y2) for b in out]
        else:
            out = [Box(b.class_id, b.class_name, b.x1, height - b.y2, b.x2, height - b.y1) for b in out]
    return out


def _tight(binary: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(binary)
    return int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1


@dataclass
class Variant:
    """One seeded shape of an instance, ready to place: all arrays h x w float32."""

    patch: np.ndarray  # the defect with a margin of its surroundings
    alpha: np.ndarray  # the defect's pixels, 0..1
    context: np.ndarray  # what placement matches: the template's patch, or the patch itself
    weight: np.ndarray | None  # which context pixels count (None: all: a template has no defect in it)
    frame: np.ndarray  # 1 inside the instance's hand-drawn box (how loosely its annotator boxed it), if any
    scale: float  # the geometric mean scale applied
    edges: frozenset[str] = frozenset()  # the patch's sides that were its image's border (see `bank`)
    topology: tuple[int, int] | None = None  # what the instance did to its source's topology (`Instance.topology`)

    @property
    def binary(self) -> np.ndarray:
        return self.alpha >= min(0.5, 0.5 * float(self.alpha.max()))

    def fits_topology(self, window: np.ndarray, after: np.ndarray | None = None) -> bool:
        """Whether pasting into the binary `window` (the canvas under the patch) changes it
        as the instance changed its source; `after`: the window once pasted, else what a hard paste gives.
        True where there is nothing to repeat. The instance's own topology, not this
        variant's: a short whose deformed ends miss its own traces is a stub, not a short."""
        if self.topology is None:
            return True
        before = window > MID_GREY
        after = np.where(self.binary, self.patch > MID_GREY, before) if after is None else after > MID_GREY
        return topology(before, after) == self.topology

    @functools.cached_property
    def half_thickness(self) -> float:
        """px: the largest distance from a defect pixel to the defect's edge (0: no defect)."""
        b = self.binary
        return float(ndimage.distance_transform_edt(b).max()) if b.any() else 0.0


def vary(inst: Instance, box: Box, rng: np.random.Generator, max_distortion: float, scale: tuple[float, float],
         flips: bool = True, rotate: bool = True, elastic: float = 0.0, contrast: tuple[float, float] = (1.0, 1.0)) -> Variant:
    """A seeded new shape of `inst` sized for `box` (see the module's docstring)."""
    patch, alpha = inst.patch.astype(np.float32), inst.alpha.astype(np.float32)
    context = patch if inst.context is None else inst.context.astype(np.float32)
    stack, edges = [patch, alpha, context, inst.frame_mask], inst.edges
    if flips and rng.random() < 0.5:
        stack, edges = [a[:, ::-1] for a in stack], _moved(edges, "h")
    if flips and rng.random() < 0.5:
        stack, edges = [a[::-1] for a in stack], _moved(edges, "v")
    y1, y2, x1, x2 = _extent(stack)
    target = math.log(box.width / box.height)
    own = math.log((x2 - x1) / (y2 - y1))
    if rotate and abs(-own - target) < abs(own - target):
        stack, edges = [np.rot90(a) for a in stack], _moved(edges, "r")
        y1, y2, x1, x2 = _extent(stack)
    sx, sy = box.width / (x2 - x1), box.height / (y2 - y1)
    g = min(max(math.sqrt(sx * sy), scale[0]), scale[1])
    d = min(max(sx / sy, 1.0 / max_distortion), max_distortion)
    sx, sy = g * math.sqrt(d), g / math.sqrt(d)
    h, w = stack[0].shape
    size = (max(1, round(w * sx)), max(1, round(h * sy)))
    interp = cv2.INTER_AREA if sx * sy < 1 else cv2.INTER_LINEAR
    patch, alpha, context, frame = (cv2.resize(np.ascontiguousarray(a), size, interpolation=i)
                                    for a, i in zip(stack, (interp, cv2.INTER_LINEAR, interp, cv2.INTER_NEAREST)))
    alpha = np.clip(alpha, 0.0, 1.0)
    if elastic > 0:  # at most a tenth of the defect's shorter side: a 10 px cross crack keeps its cross
        patch, alpha = _elastic(patch, alpha, min(elastic, ELASTIC_SHARE * min(sy * (y2 - y1), sx * (x2 - x1))), rng)
    ring = alpha < 0.05
    if contrast != (1.0, 1.0) and ring.sum() >= 2:
        k = float(rng.uniform(*contrast))
        patch = np.clip(patch + (k - 1.0) * alpha * (patch - float(patch[ring].mean())), 0.0, 255.0)
    weight = None if inst.context is not None else ndimage.binary_erosion(ring, SQUARE, iterations=1).astype(np.float32)
    return Variant(patch.astype(np.float32), alpha, context.astype(np.float32), weight, frame >= 0.5, g, edges,
                   inst.topology)


_MOVES = {"h": {"left": "right", "right": "left"}, "v": {"top": "bottom", "bottom": "top"},
          "r": {"top": "left", "left": "bottom", "bottom": "right", "right": "top"}}  # np.rot90: counter-clockwise


def _moved(edges: frozenset[str], op: str) -> frozenset[str]:
    """Where a patch's sides go under `turn(patch, (op,))`."""
    return frozenset(_MOVES[op].get(e, e) for e in edges)


def turned(v: Variant) -> Variant:
    """The variant turned 90 degrees (context placement tries both: a vertical trace
    takes the turned open)."""
    r = lambda a: None if a is None else np.ascontiguousarray(np.rot90(a))  # noqa: E731
    return Variant(r(v.patch), r(v.alpha), r(v.context), r(v.weight), r(v.frame), v.scale, _moved(v.edges, "r"),
                   v.topology)


def _at_edges(edges: frozenset[str], H: int, W: int, h: int, w: int) -> tuple[slice, slice]:
    """The windows (rows, columns of top-left corners) that put these patch sides on the image's border."""
    rows = slice(0, 1) if "top" in edges else slice(H - h, H - h + 1) if "bottom" in edges else slice(0, H - h + 1)
    cols = slice(0, 1) if "left" in edges else slice(W - w, W - w + 1) if "right" in edges else slice(0, W - w + 1)
    return rows, cols


def _extent(stack: list[np.ndarray]) -> tuple[int, int, int, int]:
    """The rectangle a planned box's size refers to: the hand-drawn frame where there is
    one (stack[3]), else the defect's tight box (stack[1])."""
    if stack[3].any():
        return _tight(stack[3] >= 0.5)
    return _tight(stack[1] >= 0.5 * float(stack[1].max()))


def _elastic(patch: np.ndarray, alpha: np.ndarray, amplitude: float, rng: np.random.Generator):
    """A smooth random displacement of at most `amplitude` px (a field smoothed over a
    quarter of the patch), applied to the defect and its patch alike."""
    h, w = patch.shape
    sigma = max(2.0, min(h, w) / 4)
    field = [ndimage.gaussian_filter(rng.uniform(-1, 1, (h, w)), sigma) for _ in range(2)]
    peak = max(float(np.abs(f).max()) for f in field) or 1.0
    dx, dy = (f / peak * amplitude for f in field)
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    mx, my = (gx + dx).astype(np.float32), (gy + dy).astype(np.float32)
    warp = lambda a: cv2.remap(a, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)  # noqa: E731
    return warp(patch), np.clip(warp(alpha), 0.0, 1.0)


def place(canvas: np.ndarray, v: Variant, box: Box, rng: np.random.Generator, placement: str, top_k: int,
          forbidden: np.ndarray, exact_match: bool, tolerance: float = 0.05,
          keep_topology: bool = False) -> tuple[int, int, float | None]:
    """(top, left) of the variant's window in the canvas and its match score (None for
    `random`): a seeded choice among the `top_k` best separated spots that score within
    `tolerance` of the best, none of whose defect pixels' box touches `forbidden`.
    `random`: centred on the planned box, or a seeded free spot where that is taken.
    `context` falls back to the planned box when nothing fits. `keep_topology` (binary
    images): only spots where a hard paste changes the topology as the instance did in
    its source (`Variant.fits_topology`), looking TOPOLOGY_SEARCH times deeper for
    them; where none does, the best spots as without it (the paste is checked again)."""
    y1, y2, x1, x2 = _tight(v.binary)
    planned = (int(round((box.y1 + box.y2) / 2 - (y1 + y2) / 2)), int(round((box.x1 + box.x2) / 2 - (x1 + x2) / 2)))
    H, W = canvas.shape
    h, w = v.patch.shape
    fits = h <= H and w <= W
    if fits and v.edges:  # an instance cut at its image's border goes to the same border
        rows, cols = _at_edges(v.edges, H, W, h, w)
        planned = (min(max(planned[0], rows.start), rows.stop - 1), min(max(planned[1], cols.start), cols.stop - 1))
    if placement != "context" or not fits or (v.weight is not None and v.weight.sum() < 8):
        py, px = planned
        taken = forbidden[max(0, py + y1):max(0, py + y2), max(0, px + x1):max(0, px + x2)].any()
        if not (taken and fits):
            return (*planned, None)
        score = rng.random((H - h + 1, W - w + 1))  # any free spot will do: a seeded random one
        matched = False
    elif exact_match:  # binary: the share of context pixels that agree exactly
        n = float(h * w if v.weight is None else v.weight.sum())
        score = 1.0 - cv2.matchTemplate(canvas, v.context, cv2.TM_SQDIFF, mask=v.weight) / (n * 255.0 ** 2)
        matched = True
    else:
        score = cv2.matchTemplate(canvas, v.context, cv2.TM_CCOEFF_NORMED, mask=v.weight)
        matched = True
    score = np.where(np.isfinite(score), score, -np.inf).astype(np.float64)
    if forbidden.any():  # windows whose defect would touch an earlier paste or a kept box
        ii = np.pad(forbidden.astype(np.int32).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
        hm, wm = score.shape
        touched = (ii[y2:y2 + hm, x2:x2 + wm] - ii[y1:y1 + hm, x2:x2 + wm]
                   - ii[y2:y2 + hm, x1:x1 + wm] + ii[y1:y1 + hm, x1:x1 + wm])
        score[touched > 0] = -np.inf
    if v.edges:
        at_edge = np.zeros(score.shape, bool)
        at_edge[_at_edges(v.edges, H, W, h, w)] = True
        score[~at_edge] = -np.inf
    check = keep_topology and matched and v.topology is not None
    picks, others = [], []
    for _ in range(top_k * (TOPOLOGY_SEARCH if check else 1)):
        i = int(np.argmax(score))
        oy, ox = divmod(i, score.shape[1])
        if not np.isfinite(score[oy, ox]):
            break
        ok = not check or v.fits_topology(canvas[oy:oy + h, ox:ox + w])
        (picks if ok else others).append((oy, ox, float(score[oy, ox])))
        score[max(0, oy - h // 2):oy + h // 2 + 1, max(0, ox - w // 2):ox + w // 2 + 1] = -np.inf
        if len(picks) == top_k:
            break
    if not picks:
        picks = others[:top_k]
    if not picks:
        return (*planned, None)
    if not matched:
        return (picks[0][0], picks[0][1], None)
    picks = [q for q in picks if q[2] >= picks[0][2] - tolerance]  # only spots nearly as good as the best
    return picks[int(rng.integers(len(picks)))]


def frame_box(v: Variant, at: tuple[int, int], shape: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """(y1, y2, x1, x2) of the variant's hand-drawn box pasted at `at`, clipped to the
    image; None when it has none (its box is its mask's)."""
    if not v.frame.any():
        return None
    y1, y2, x1, x2 = _tight(v.frame)
    y1, y2 = max(0, y1 + at[0]), min(shape[0], y2 + at[0])
    x1, x2 = max(0, x1 + at[1]), min(shape[1], x2 + at[1])
    return (y1, y2, x1, x2) if y2 > y1 and x2 > x1 else None


def paste(canvas: np.ndarray, v: Variant, at: tuple[int, int], exact: bool, blend: str, feather: float,
          levels: np.ndarray | None) -> np.ndarray:
    """Paste the variant with its window's top-left at `at` into `canvas` (HxW float32,
    changed in place); returns the HxW bool mask of the pasted defect (clipped to the
    image). `levels`: the background's two grey levels (binary images), kept."""
    H, W = canvas.shape
    oy, ox = at
    patch, alpha, binary = v.patch.copy(), v.alpha, v.binary
    d = halo(v, levels)
    core = ndimage.binary_dilation(binary, CROSS, iterations=d) if d else binary  # the defect and its own fade-out
    R = margin(feather) + d
    P = R + 1 + max(patch.shape)  # a canvas padded so the window and the blend region fit inside
    big = np.pad(canvas, P, mode="edge")
    h, w = patch.shape
    win = (slice(oy + P, oy + P + h), slice(ox + P, ox + P + w))
    inside = np.zeros_like(big, bool)
    inside[P:P + H, P:P + W] = True
    if levels is None:
        _match_intensity(patch, alpha, big[win], inside[win])
    else:  # binary: the instance takes the background's two levels
        patch = quantize(patch, levels)
    pasted = np.zeros_like(big, bool)
    pasted[win] = binary
    pasted &= inside
    if not pasted.any():
        return np.zeros((H, W), bool)
    region = ndimage.binary_dilation(pasted, SQUARE, iterations=R) & inside
    src = big.copy()
    src[win] = patch
    if blend == "poisson":
        big[region] = _poisson(src, big, region)
    elif blend == "hard":
        hard = np.zeros_like(big, bool)
        hard[win] = core
        hard &= inside
        big[hard] = src[hard]
    else:
        a = np.zeros_like(big)
        if exact:
            soft = ndimage.gaussian_filter(core.astype(np.float32), feather / 2) if feather > 0 else core
            a[win] = np.maximum(core.astype(np.float32), soft)
        else:
            a[win] = alpha
        a = np.where(region, a, 0.0)
        big = big * (1.0 - a) + src * a
    if levels is not None:
        big[region] = quantize(big[region], levels)
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
