"""`domain.style: fit`: estimate the procedural renderer's style from real defect-free
images of the target line (`domain.references`), instead of hand-tuning numbers.

Measured per reference (grey, resized to WORK px), then summarised over the set
(10th-90th percentile ranges, medians for single values):
- brightness: mean of the cell's interior; texture: its relative std (the
  `contrast` range is a factor on the median), its radial amplitude spectrum in
  TEX_BINS bands and its quantiles (dark spots on a bright base are skewed);
- busbars: dark dips of the row profile (count, width at half depth, depth), and
  their dash pattern along the row (share of the row that is dark, segments);
- fingers: the strongest period of the detrended column profile (pitch, depth);
- sensor noise: std of the residual to a 1-px blur; cell border: mean level of
  the outer frame and its width.
The result is written onto the spec's `domain` (ranges + `fitted`), so the plan,
the spec hash and the published manifest all carry it.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage, signal

from factory.core import WorkItem
from factory.generators.procedural.render import TEX_BINS, TEX_LEVELS, radial_band, render_el
from factory.generators.references import read_grey

WORK = 256
MAX_REFERENCES = 64  # evenly spaced over the sorted references: enough for percentiles, fast


def measure(img: np.ndarray) -> dict[str, float]:
    """Style measurements of one defect-free cell (HxW uint8 or float 0..255)."""
    from PIL import Image

    a = np.asarray(Image.fromarray(np.asarray(img, np.uint8)).resize((WORK, WORK), Image.BILINEAR), np.float32) / 255.0
    border = _border_width(a)
    inner = a[border:WORK - border, border:WORK - border]
    rows = inner.mean(1)
    base = ndimage.median_filter(rows, size=31, mode="nearest")
    dip = base - rows
    peaks, props = signal.find_peaks(dip, height=max(0.08 * float(np.median(rows)), 0.02), distance=WORK // 14, width=1)
    bar_rows = np.zeros(len(rows), bool)
    widths, depths, duties, segments = [], [], [], []
    for p, w in zip(peaks, props["widths"]):
        half = max(1, int(round(w / 2)))
        bar_rows[max(0, p - half - 1):p + half + 2] = True
        widths.append(w / WORK)
        depths.append(float(dip[p] / max(base[p], 1e-3)))
        line = inner[p] < (base[p] + rows[p]) / 2  # dark along the busbar's row
        duties.append(float(line.mean()))
        segments.append(float(np.count_nonzero(np.diff(line.astype(np.int8)) == 1) + line[0]))
    body = inner[~bar_rows] if (~bar_rows).sum() > 8 else inner
    mean = float(body.mean())
    pitch, finger = _fingers(body)
    tex = _texture(body)
    return {**tex,
        "brightness": mean,
        "contrast": tex["tex_std"],
        "busbars": float(len(peaks)),
        "busbar_width": float(np.median(widths)) if widths else float("nan"),
        "busbar_depth": float(np.median(depths)) if depths else float("nan"),
        "busbar_duty": float(np.median(duties)) if duties else float("nan"),
        "busbar_segments": float(np.median(segments)) if segments else float("nan"),
        "grid_pitch": pitch,
        "finger_depth": finger,
        "noise": float(np.std(body - ndimage.gaussian_filter(body, 1.0))),
        "background": float(np.concatenate([a[:2].ravel(), a[-2:].ravel(), a[:, :2].ravel(), a[:, -2:].ravel()]).mean()),
        "margin": border / WORK,
    }


def _texture(body: np.ndarray) -> dict[str, float]:
    """Relative texture (image / mean - 1, its smooth shading removed): its std, radial amplitude spectrum per band
    (normalised to the strongest) and quantiles in units of its std."""
    t = body / max(float(body.mean()), 1e-3) - 1.0
    t = t - ndimage.gaussian_filter(t, WORK / 16, mode="reflect")  # shading is the vignette's, not texture
    std = float(t.std())
    power = np.abs(np.fft.rfft2(t)) ** 2
    r, edges = radial_band(*t.shape)
    amps = [float(np.sqrt(power[(r >= lo) & (r < hi)].mean())) if ((r >= lo) & (r < hi)).any() else 0.0
            for lo, hi in zip(edges[:-1], edges[1:])]
    top = max(amps) or 1.0
    q = np.quantile(t / max(std, 1e-6), TEX_LEVELS)
    return {"tex_std": std, **{f"tex_a{i}": a / top for i, a in enumerate(amps)},
            **{f"tex_q{i}": float(v) for i, v in enumerate(q)}}


def _border_width(a: np.ndarray) -> int:
    """Rows/columns from the edge until the profile reaches half the cell's level."""
    level = float(np.median(a))
    widths = []
    for prof in (a.mean(1), a.mean(1)[::-1], a.mean(0), a.mean(0)[::-1]):
        inside = np.nonzero(prof[: WORK // 8] > level / 2)[0]
        widths.append(int(inside[0]) if len(inside) else 0)
    return int(np.clip(np.median(widths), 1, WORK // 10))


def _fingers(body: np.ndarray) -> tuple[float, float]:
    """(pitch px, relative depth) of the strongest periodic column pattern with period 2..20 px."""
    cols = body.mean(0)
    detr = cols - ndimage.gaussian_filter1d(cols, 6.0)
    spec = np.abs(np.fft.rfft(detr * np.hanning(len(detr))))
    freqs = np.fft.rfftfreq(len(detr))
    ok = (freqs >= 1 / 20) & (freqs <= 1 / 2.5)
    if not ok.any() or spec[ok].max() <= 0:
        return float("nan"), 0.0
    k = np.nonzero(ok)[0][int(np.argmax(spec[ok]))]
    amp = 2 * spec[k] / np.hanning(len(detr)).sum()
    return float(1 / freqs[k]), float(amp / max(cols.mean(), 1e-3))


def fit_style(paths: list[str]) -> dict[str, float]:
    """Summaries over reference images (URIs or paths): `<key>_lo/_hi` for ranges, medians for the rest."""
    if not paths:
        raise ValueError("no reference images to fit a style to")
    step = max(1, len(paths) // MAX_REFERENCES)
    ms = [measure(read_grey(p)) for p in paths[::step][:MAX_REFERENCES]]
    col = {k: np.array([m[k] for m in ms], float) for k in ms[0]}
    med = {k: float(np.nanmedian(v)) if np.isfinite(v).any() else float("nan") for k, v in col.items()}
    out = {k: v for k, v in med.items() if k not in ("brightness", "contrast", "busbars", "grid_pitch")}
    for k in ("brightness", "contrast", "grid_pitch", "busbars"):
        v = col[k][np.isfinite(col[k])]
        out[f"{k}_lo"], out[f"{k}_hi"] = (float(np.percentile(v, 10)), float(np.percentile(v, 90))) if len(v) else (np.nan, np.nan)
    return {k: round(float(v), 4) for k, v in out.items()}


def _calibrate(brightness, extra: dict, f: dict, pitch, busbars, cells: int = 3) -> tuple[tuple[float, float], float]:
    """Render a few cells with the fitted values and no sensor noise, measure them like
    the references, and correct what the renderer adds on its own: the brightness
    (vignette, fingers and busbars darken the mean) and the noise (the fitted texture
    spectrum already carries the references' fine grain)."""
    style = {**extra, "brightness": float(np.mean(brightness)), "contrast": 1.0, "grid_pitch": float(np.mean(pitch)),
             "busbars": float(round(np.mean(busbars))), "noise": 0.0}
    got = [measure(render_el(WorkItem(f"fit{i}", i, "procedural", None, WORK, WORK, 1, seed=i, style=style))[0][:, :, 0])
           for i in range(cells)]
    scale = (f["brightness_lo"] + f["brightness_hi"]) / 2 / max(np.median([g["brightness"] for g in got]), 1e-3)
    lo, hi = (float(np.clip(b * scale, 0.0, 1.0)) for b in brightness)
    rendered_noise = float(np.median([g["noise"] for g in got]))
    return (round(lo, 4), round(hi, 4)), round(float(np.sqrt(max(extra.get("noise", 0.0) ** 2 - rendered_noise ** 2, 0.0))), 4)


def fitted_domain(domain, paths: list[str]):
    """A copy of `domain` with ranges and renderer values fitted to the references."""
    f = fit_style(paths)
    lo_hi = lambda k, lo, hi, d: (  # noqa: E731
        (float(np.clip(f[f"{k}_lo"], lo, hi)), float(np.clip(f[f"{k}_hi"], lo, hi))) if np.isfinite(f[f"{k}_lo"]) else d)
    busbars = lo_hi("busbars", 0, 12, domain.busbars)
    keys = ["busbar_width", "busbar_depth", "busbar_duty", "busbar_segments", "finger_depth", "noise", "background",
            "margin", "tex_std", *(f"tex_a{i}" for i in range(TEX_BINS)), *(f"tex_q{i}" for i in range(len(TEX_LEVELS)))]
    extra = {k: f[k] for k in keys if np.isfinite(f[k])}
    brightness = lo_hi("brightness", 0.0, 1.0, domain.brightness)
    pitch = lo_hi("grid_pitch", 2.0, 64.0, domain.grid_pitch)
    brightness, extra["noise"] = _calibrate(brightness, extra, f, pitch, busbars)
    contrast = domain.contrast  # fitted: a factor on the median texture std (tex_std)
    if np.isfinite(f["contrast_lo"]) and f.get("tex_std", 0) > 0:
        contrast = (round(max(f["contrast_lo"] / f["tex_std"], 0.05), 4), round(max(f["contrast_hi"] / f["tex_std"], 0.05), 4))
    return domain.model_copy(update={
        "brightness": brightness,
        "contrast": contrast,
        "grid_pitch": pitch,
        "busbars": (int(round(busbars[0])), int(round(busbars[1]))),
        "fitted": extra,
    })
