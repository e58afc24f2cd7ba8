"""A procedural renderer of photovoltaic electroluminescence (EL) cell images.

What an EL cell image looks like (pv-vision, ELPV): a dark background around a
bright cell, a mottled emission texture, thin dark finger lines (the grid) at a
regular pitch, 2-5 darker busbars across the fingers, darker corners and edges
(vignetting), sensor noise. Defects darken the emission locally.

Values fitted to a line's references (`domain.style: fit`, see fit.py) arrive in
the item's style and replace the renderer's own random draws (busbar width, depth
and dashes, finger depth, texture mix, noise, border); the draws still happen, so
items without fitted values render exactly as before.

Every defect is rendered into the window of its box only, so its mask lies
inside its box by construction, and the reported box is the tight box of what
was actually drawn. Each defect is drawn to span its window (lines run from one
side to the opposite ones, blobs are stretched to their window by `_fill`), so
that tight box is the planned box: published boxes follow the spec's size and
aspect distributions. All drawing is array arithmetic over the box window; the only
Python loops run over boxes, polyline segments and finger rows.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from scipy import ndimage

from factory.core import Box, WorkItem

# threshold on a defect's darkening (0..1) above which a pixel counts as defect
MASK_THRESHOLD = 0.12


def render_el(item: WorkItem, cell: np.ndarray | None = None) -> tuple[np.ndarray, list[Box], np.ndarray]:
    """Render one item: (HxWxC uint8 image, tight boxes, HxW uint8 mask with k = box index + 1).
    `cell`: a real defect-free image (HxW float 0..1) to draw the defects on instead of a rendered cell."""
    image, boxes, mask, _ = render_el_with_background(item, cell)
    return image, boxes, mask


def render_el_with_background(item: WorkItem, cell: np.ndarray | None = None) -> tuple[np.ndarray, list[Box], np.ndarray, np.ndarray]:
    """`render_el` plus the background: the same item drawn without its defects (same cell,
    same sensor noise), equal to the image outside every box by construction, so the
    gate can test the outside exactly (quality/outside.py)."""
    # separate streams: adding or moving a defect changes nothing outside its box
    cell_rng, defect_rng, noise_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(item.seed).spawn(3))
    H, W = item.height, item.width
    style = item.style
    brightness = style.get("brightness", 0.55)
    contrast = style.get("contrast", 1.0)
    pitch = max(2.0, style.get("grid_pitch", 8.0))
    n_busbars = int(style.get("busbars", 3))

    if cell is None:
        cell = _cell(cell_rng, H, W, brightness, contrast, pitch, n_busbars, style)
    darkening = np.zeros((H, W), np.float32)
    mask = np.zeros((H, W), np.uint8)
    boxes: list[Box] = []
    for k, box in enumerate(item.boxes, start=1):
        draw = DEFECTS.get(box.class_name)
        if draw is None:
            raise ValueError(f"procedural generator cannot draw class {box.class_name!r}; it draws {', '.join(DEFECTS)}")
        h, w = box.height, box.width
        effect = _fill(np.clip(draw(defect_rng, h, w, pitch), 0.0, 1.0).astype(np.float32))
        local = effect > MASK_THRESHOLD
        if not local.any():  # a tiny box: make sure the defect exists
            effect[h // 2, w // 2] = 0.5
            local[h // 2, w // 2] = True
        win = (slice(box.y1, box.y2), slice(box.x1, box.x2))
        darkening[win] = np.maximum(darkening[win], effect)
        mask[win][local] = k
        ys, xs = np.nonzero(local)
        boxes.append(Box(box.class_id, box.class_name, box.x1 + int(xs.min()), box.y1 + int(ys.min()),
                         box.x1 + int(xs.max()) + 1, box.y1 + int(ys.max()) + 1))

    sigma = 0.012 + 0.01 * noise_rng.random()
    noise = noise_rng.normal(0.0, style.get("noise", sigma), cell.shape).astype(np.float32)  # sensor noise
    return _to_uint8(cell * (1.0 - darkening) + noise, item.channels), boxes, mask, _to_uint8(cell + noise, item.channels)


def _to_uint8(img: np.ndarray, channels: int) -> np.ndarray:
    img8 = (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return np.repeat(img8[:, :, None], 3, axis=2) if channels == 3 else img8[:, :, None]


def _smooth_noise(rng: np.random.Generator, H: int, W: int, sigma: float) -> np.ndarray:
    """Zero-mean, unit-std smooth noise: white noise at a coarse grid, blurred and
    upsampled (cheap at any resolution)."""
    step = max(1, int(sigma / 2))
    h, w = -(-H // step), -(-W // step)
    n = ndimage.gaussian_filter(rng.standard_normal((h, w)).astype(np.float32), sigma / step, mode="wrap")
    if step > 1:
        n = ndimage.zoom(n, (H / h, W / w), order=1)[:H, :W]
    n -= n.mean()
    return n / (n.std() + 1e-6)


TEX_BINS = 12  # radial frequency bands, log-spaced from 1 cycle per image to Nyquist
TEX_LEVELS = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)


def radial_band(H: int, W: int) -> tuple[np.ndarray, np.ndarray]:
    """(radius in cycles per image side of every rfft2 coefficient, the TEX_BINS band edges)."""
    r = np.hypot(np.fft.fftfreq(H)[:, None] * H, np.fft.rfftfreq(W)[None, :] * W)
    return r, np.geomspace(1.0, min(H, W) / 2, TEX_BINS + 1)


def spectral_texture(rng: np.random.Generator, H: int, W: int, amps, quantiles) -> np.ndarray:
    """Noise with a given radial amplitude spectrum (per band), mapped to a given
    distribution (quantiles at TEX_LEVELS, in units of its std): dark spots on a bright
    base stay dark spots, not symmetric blobs."""
    from scipy.special import ndtr

    r, edges = radial_band(H, W)
    centers = np.sqrt(edges[:-1] * edges[1:])
    gain = np.interp(np.log(np.maximum(r, 1e-6)), np.log(centers), amps) * (r >= 1.0)
    tex = np.fft.irfft2(np.fft.rfft2(rng.standard_normal((H, W))) * gain, s=(H, W))
    tex = (tex - tex.mean()) / (tex.std() + 1e-9)
    return np.interp(ndtr(tex), TEX_LEVELS, quantiles).astype(np.float32)


def _cell(
    rng: np.random.Generator, H: int, W: int, brightness: float, contrast: float, pitch: float, n_busbars: int,
    fit: dict[str, float] | None = None,
) -> np.ndarray:
    """The defect-free cell: background, emission texture, fingers, busbars, vignette.
    `fit` values (when present) replace the matching draws. The draws stay in this
    order (outline, texture, fingers, busbars, vignette, background): the pixels of a
    seed must not change."""
    fit = fit or {}
    yy = np.arange(H, dtype=np.float32)[:, None]
    xx = np.arange(W, dtype=np.float32)[None, :]
    edge_soft, multi = _outline(rng, H, W, xx, yy, fit)
    cell = _emission(rng, H, W, brightness, contrast, multi, fit)
    cell = cell * _fingers(rng, xx, pitch, contrast, fit)
    if n_busbars:
        cell = cell * _busbars(rng, H, W, xx, yy, n_busbars, fit)

    # vignette: darker towards corners and edges
    r2 = ((xx - W / 2) / (W / 2)) ** 2 + ((yy - H / 2) / (H / 2)) ** 2
    cell = cell * (1.0 - rng.uniform(0.05, 0.2) * r2 / 2)

    background = fit.get("background", rng.uniform(0.02, 0.08))
    out = background + (cell - background) * edge_soft
    return out.astype(np.float32)


def _outline(rng: np.random.Generator, H: int, W: int, xx: np.ndarray, yy: np.ndarray,
             fit: dict[str, float]) -> tuple[np.ndarray, bool]:
    """(the cell's soft-edged inside, multi-crystalline?): a small dark margin, small
    chamfered corners on mono cells."""
    margin = fit.get("margin", rng.uniform(0.0, 0.03)) * min(H, W)
    u = (xx - W / 2) / (W / 2 - margin)
    v = (yy - H / 2) / (H / 2 - margin)
    multi = rng.random() < 0.5
    chamfer = 9.0 if multi else rng.uniform(1.85, 1.95)
    inside = (np.abs(u) <= 1) & (np.abs(v) <= 1) & (np.abs(u) + np.abs(v) <= chamfer)
    return ndimage.gaussian_filter(inside.astype(np.float32), 1.0), multi


def _emission(rng: np.random.Generator, H: int, W: int, brightness: float, contrast: float, multi: bool,
              fit: dict[str, float]) -> np.ndarray:
    """The emission texture: mono cells are smooth, multi cells show grains and dark
    dislocation clusters; fitted: the references' texture spectrum and intensity distribution."""
    side = min(H, W)
    if "tex_a0" in fit:
        amps = [fit[f"tex_a{i}"] for i in range(TEX_BINS)]
        quantiles = [fit[f"tex_q{i}"] for i in range(len(TEX_LEVELS))]
        return brightness * (1.0 + contrast * fit["tex_std"] * spectral_texture(rng, H, W, amps, quantiles))
    tex = 0.6 * _smooth_noise(rng, H, W, side / 8) + 0.4 * _smooth_noise(rng, H, W, side / 30)
    cell = brightness * (1.0 + 0.06 * contrast * tex)
    if multi:
        grains = _smooth_noise(rng, H, W, side / 50)
        clusters = np.clip(_smooth_noise(rng, H, W, side / 120) - 1.2, 0, None) * (grains > 0.3)
        cell = cell * (1.0 + 0.05 * contrast * np.tanh(2 * grains)) * (1.0 - np.clip(0.5 * contrast * clusters, 0, 0.6))
    return cell


def _fingers(rng: np.random.Generator, xx: np.ndarray, pitch: float, contrast: float, fit: dict[str, float]) -> np.ndarray:
    """The fingers' darkening factor: faint thin dark lines across the busbars, every `pitch` pixels."""
    phase = rng.uniform(0, pitch)
    d = np.abs(((xx + phase) % pitch) - pitch / 2) - pitch / 2  # 0 at the finger line
    finger = rng.uniform(0.02, 0.07) * contrast
    if "finger_depth" in fit:  # measured: the mean darkening's fundamental -> a 0.6-px line's depth
        finger = float(np.clip(fit["finger_depth"] * pitch / 2.1, 0.0, 0.5))
    return 1.0 - finger * np.exp(-((d / 0.6) ** 2))


def _busbars(rng: np.random.Generator, H: int, W: int, xx: np.ndarray, yy: np.ndarray, n_busbars: int,
             fit: dict[str, float]) -> np.ndarray:
    """The busbars' darkening factor: dark horizontal bands evenly spread over the cell
    (dashed where the fitted duty is below 0.9)."""
    busbar_y = np.array([(i + 0.5) * H / max(n_busbars, 1) for i in range(n_busbars)], np.float32)
    bw = max(1.5, fit.get("busbar_width", rng.uniform(0.015, 0.03)) * H)
    dist = np.min(np.abs(yy[None, :, :] - busbar_y[:, None, None]), axis=0)
    core = np.clip(bw / 2 + 0.5 - dist, 0, 1)  # anti-aliased band
    depth = rng.uniform(0.45, 0.65)
    depth = fit.get("busbar_depth", depth)
    duty = fit.get("busbar_duty", 1.0)
    if duty < 0.9:  # dashed: dark segments along the busbar
        period = W / max(1.0, fit.get("busbar_segments", 6.0))
        core = core * ((((xx + rng.uniform(0, period)) / period) % 1.0) < duty)
    return 1.0 - depth * core - 0.06 * np.exp(-((dist / (2 * bw)) ** 2))


# --- defects: each returns a (h, w) darkening map in [0, 1] for its box window ---


def _polyline_distance(h: int, w: int, pts: np.ndarray) -> np.ndarray:
    """Distance of every pixel of an (h, w) window to a polyline (K points, x/y)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    best = np.full((h, w), np.inf, np.float32)
    for (x0, y0), (x1, y1) in zip(pts[:-1], pts[1:]):
        dx, dy = x1 - x0, y1 - y0
        t = np.clip(((xx - x0) * dx + (yy - y0) * dy) / max(dx * dx + dy * dy, 1e-6), 0, 1)
        best = np.minimum(best, np.hypot(xx - (x0 + t * dx), yy - (y0 + t * dy)))
    return best


def _walk(rng: np.random.Generator, h: int, w: int, jitter: float, n: int = 12) -> np.ndarray:
    """A jittered path from one corner region of the window to the opposite one, along
    its long axis, scaled to touch all four sides (so its tight box is the window)."""
    t = np.linspace(0.0, 1.0, n)
    wobble = np.cumsum(rng.normal(0, jitter, n))
    wobble -= np.linspace(wobble[0], wobble[-1], n) - rng.uniform(-0.15, 0.15)
    across = (t if rng.random() < 0.5 else 1.0 - t) + wobble
    across = (across - across.min()) / max(float(np.ptp(across)), 1e-6)
    if w >= h:
        return np.stack([t * (w - 1), across * (h - 1)], axis=1)
    return np.stack([across * (w - 1), t * (h - 1)], axis=1)


def _fill(effect: np.ndarray) -> np.ndarray:
    """Stretch a darkening map so the tight box of its mask (effect > MASK_THRESHOLD) is
    the whole window: linear resampling, or nearest (which keeps every edge pixel) when
    the linear one loses an edge. Maps that already span their window come back as they are."""
    local = effect > MASK_THRESHOLD
    if not local.any():
        return effect
    h, w = effect.shape
    ys, xs = np.nonzero(local.any(1))[0], np.nonzero(local.any(0))[0]
    if ys[0] == 0 and ys[-1] == h - 1 and xs[0] == 0 and xs[-1] == w - 1:
        return effect
    grid = np.meshgrid(np.linspace(ys[0], ys[-1], h), np.linspace(xs[0], xs[-1], w), indexing="ij")
    out = ndimage.map_coordinates(effect, grid, order=1, mode="nearest").astype(np.float32)
    m = out > MASK_THRESHOLD
    if not (m[0].any() and m[-1].any() and m[:, 0].any() and m[:, -1].any()):
        out = ndimage.map_coordinates(effect, grid, order=0, mode="nearest").astype(np.float32)
    return out


def _crack(rng, h, w, pitch):
    pts = _walk(rng, h, w, jitter=0.08)
    width = rng.uniform(0.6, 1.3)
    line = np.exp(-((_polyline_distance(h, w, pts) / width) ** 2))
    out = rng.uniform(0.55, 0.85) * line
    if rng.random() < 0.5 and min(h, w) > 6:  # a branch
        start = pts[rng.integers(2, len(pts) - 2)]
        end = np.array([rng.uniform(0, w - 1), rng.uniform(0, h - 1)])
        branch = np.linspace(start, end, 6) + rng.normal(0, 0.5, (6, 2))
        out = np.maximum(out, rng.uniform(0.4, 0.7) * np.exp(-((_polyline_distance(h, w, branch) / width) ** 2)))
    return out


def _cross_crack(rng, h, w, pitch):
    a = _crack(rng, h, w, pitch)
    b = _crack(rng, w, h, pitch).T  # the same along the other axis
    return np.maximum(a, b)


def _black_spot(rng, h, w, pitch):
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = (h - 1) / 2, (w - 1) / 2
    ry, rx = max(h / 2, 1.0), max(w / 2, 1.0)
    ang = rng.uniform(0, 2 * np.pi, 1)
    lobes = 1.0 + 0.15 * np.sin(3 * np.arctan2(yy - cy, xx - cx) + ang)
    r = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2) / lobes
    return rng.uniform(0.45, 0.85) * np.clip(1.0 - r**3, 0, 1)


def _dark_area(rng, h, w, pitch):
    """An inactive region: a large, fairly uniform dark patch with a ragged edge."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    edge = 0.5 + 0.5 * np.tanh(4 * (xx / max(w - 1, 1) - rng.uniform(0.2, 0.5) + 0.1 * np.sin(yy / max(h, 1) * 6 + rng.uniform(0, 6))))
    return rng.uniform(0.5, 0.8) * edge


def _scratch(rng, h, w, pitch):
    # a straight, faint line corner to corner (flip to the other diagonal half the time)
    if rng.random() < 0.5:
        pts = np.array([[0, 0], [w - 1, h - 1]], np.float32)
    else:
        pts = np.array([[0, h - 1], [w - 1, 0]], np.float32)
    mid = (pts[0] + pts[1]) / 2 + rng.normal(0, 0.03 * max(h, w), 2)
    pts = np.stack([pts[0], mid, pts[1]])
    return rng.uniform(0.35, 0.6) * np.exp(-((_polyline_distance(h, w, pts) / 0.7) ** 2))


def _broken_gate(rng, h, w, pitch):
    """Interrupted fingers: the stripes beside a few neighbouring (vertical) fingers
    go dark, fading away from where the finger broke."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    reach = max(h * rng.uniform(0.5, 1.0), 1.0)
    fade = np.exp(-yy / reach) if rng.random() < 0.5 else np.exp(-(h - 1 - yy) / reach)
    band = np.zeros((h, w), np.float32)
    cols = max(1, int(w / pitch))
    p = w / cols
    for i in range(cols):
        if rng.random() < 0.75 or i in (0, cols - 1):  # the outer fingers break: the damage spans the box
            lo = i * p + 0.15 * p if i else 0.0
            hi = (i + 1) * p - 0.15 * p if i < cols - 1 else float(w)
            band = np.maximum(band, ((xx >= lo) & (xx < hi)).astype(np.float32))
    return rng.uniform(0.35, 0.6) * band * (0.4 + 0.6 * fade)


def _unjoined_weld(rng, h, w, pitch):
    """A dark band along the (horizontal) busbar direction: the ribbon is not
    soldered there, so the area it collects from goes dark."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    across = np.exp(-(((yy - (h - 1) / 2) / max(h / 2.2, 1.0)) ** 4))
    t = xx / max(w - 1, 1)
    along = 0.6 + 0.4 * t if rng.random() < 0.5 else 1.0 - 0.4 * t
    return rng.uniform(0.45, 0.75) * across * along


DEFECTS: dict[str, Callable[..., np.ndarray]] = {
    "crack": _crack,
    "black_spot": _black_spot,
    "scratch": _scratch,
    "broken_gate": _broken_gate,
    "unjoined_weld": _unjoined_weld,
    # pv-vision's own labels, so its real data can be mirrored by name
    "cross_crack": _cross_crack,
    "dark_area": _dark_area,
}
