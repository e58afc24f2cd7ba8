"""The quality gate: a generated defect should be anomalous inside its box and
normal outside it, and should not leak out of its box.

Per sample, from the anomaly heat map (normalized units; thresholds from the checkpoint):
- every box must contain a defect: max heat inside >= the pixel threshold (unless a
  per-class box check judges the boxes instead: `box_heat=False`, or the generator knows
  its background: the exact tests of quality/outside.py then say whether a defect was
  drawn, which a coarse heat map misjudges for small ones);
- spillover (see `spillover.py`) of every box <= `spillover_max`; the defect's extent
  is the generator's own mask when it has one, else the heat map's components;
- outside the boxes the image looks normal: anomalous components that touch no box
  cover at most `max_outside_fraction` of the image, or what the checkpoint's
  defect-free calibration images show at the same threshold if that is more
  (`Calibration.outside_fractions`: a clean background must pass); not judged where
  the generator knows its background (the exact outside test is);
- a negative (no boxes) must score below the image threshold.
Reasons are short `code: detail` strings ("spillover: 0.31 > 0.20") that the
pipeline's report counts by code.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from factory.core import Box, Reason, Sample
from factory.quality.anomaly.postprocess import MIN_ANOMALY_AREA
from factory.quality.base import Verdict
from factory.quality.spillover import box_mask, extents_from_binary, sample_extents, spillover, spillover_reasons


class AnomalyGate:
    name = "anomaly"

    def __init__(self, detector, spillover_max: float = 0.2, rule: str = "f1", use_sample_masks: bool = True,
                 margin: float = 0.25, max_outside_fraction: float = 0.005, pixel_threshold: float | None = None,
                 image_threshold: float | None = None, min_area: int = MIN_ANOMALY_AREA, batch_size: int = 16,
                 mask_spillover_reasons: bool = True, extent_rel: float = 0.5, box_heat: bool = True):
        self.detector = detector
        self.spillover_max = spillover_max
        self.rule = rule
        self.use_sample_masks = use_sample_masks
        self.margin = margin
        # what clean images show at the rule's own threshold (not at an overriding pixel_threshold)
        calibrated = detector.calib.outside_fractions.get(rule, 0.0) if pixel_threshold is None else 0.0
        self.max_outside_fraction = max(max_outside_fraction, calibrated)
        self.min_area = min_area
        self.batch_size = batch_size
        self.extent_rel = extent_rel  # heat-map extent = pixels >= extent_rel x the defect's peak
        self.mask_spillover_reasons = mask_spillover_reasons  # off where another check already rejects mask spillover
        # off where the per-class box check asks "is there a real defect of this class in the box?": a
        # subtle real defect (a faint uneven patch, a 7 px blowhole) need not light a coarse heat map
        self.box_heat = box_heat
        self.pixel_threshold = pixel_threshold if pixel_threshold is not None else detector.threshold("pixel", rule)
        self.image_threshold = image_threshold if image_threshold is not None else detector.threshold("image", rule)

    @property
    def tolerance_px(self) -> float:
        """Heat-map extents are blurred (smoothing; PatchCore's patch grid too); spillover from
        them ignores pixels within this many model pixels of the box (scaled in `assess`)."""
        return self.detector.heat_tolerance_px

    def assess(self, heat: np.ndarray, boxes: Sequence[Box], extents: list[np.ndarray] | None = None,
               background_known: bool = False) -> Verdict:
        """Judge one sample from its heat map (HxW, the image's size) and boxes;
        `extents` are the generator's exact per-box defect extents when known;
        `background_known`: the exact tests (quality/outside.py) judge the pixels
        outside the boxes and whether each box has a defect drawn, so neither the
        heat outside nor a cold box is turned into a reason."""
        H, W = heat.shape
        thr, ithr = self.pixel_threshold, self.image_threshold
        binary = heat >= thr
        image_score = self.detector.image_score(heat)
        scores = {"anomaly.image_score": image_score}
        reasons: list[Reason] = []
        if not boxes:
            if image_score >= ithr:
                reasons.append(Reason("anomalous_negative", f"{image_score:.2f} >= {ithr:.2f}"))
            return Verdict(scores, reasons)

        heat_extents, stray = extents_from_binary(binary, boxes, self.margin, self.min_area, heat, self.extent_rel)
        from_mask = extents is not None
        if extents is None:
            extents = heat_extents
        inside = [float(heat[b.y1 : b.y2, b.x1 : b.x2].max()) for b in boxes]
        cold = [k for k, s in enumerate(inside) if s < thr] if self.box_heat and not background_known else []
        if cold:
            reasons.append(Reason("no_defect", f"box {cold[0]} {inside[cold[0]]:.2f} < {thr:.2f}"))
        scale = self.detector.image_px_per_model_px(H, W)
        tol = 0 if from_mask else int(round(self.tolerance_px * scale))
        spills = [spillover(e, _grow(b, tol, W, H)) for e, b in zip(extents, boxes)]
        if self.mask_spillover_reasons or not from_mask:
            reasons += spillover_reasons(spills, self.spillover_max)
        grown = np.zeros((H, W), bool)
        for b in boxes:
            grown |= box_mask(b, H, W, self.margin)
        outside_frac = float(stray.mean())
        if outside_frac > self.max_outside_fraction and not background_known:
            reasons.append(Reason("outside_anomaly", f"{outside_frac:.3f} > {self.max_outside_fraction:.3f}"))
        valid = [v for v in spills if v == v]
        scores.update({
            "anomaly.inside_min": min(inside),
            "anomaly.outside_max": float(heat[~grown].max()) if (~grown).any() else float("nan"),
            "anomaly.outside_fraction": outside_frac,
            "spillover.max": max(valid, default=float("nan")),
            "spillover.mean": float(np.mean(valid)) if valid else float("nan"),
            "spillover.from_mask": float(from_mask),
        })
        return Verdict(scores, reasons)

    def needs_heat(self, s: Sample) -> bool:
        """Whether the heat map can decide anything about `s`. Not for a sample with boxes
        whose generator knows its background and its mask, where mask spillover is another
        check's (`mask_spillover_reasons=False`, as in `build_scorers`): the exact tests and
        that check judge it, so its map (most of the gate's cost) is not computed and its
        verdict has no `anomaly.*` scores."""
        known = bool(s.boxes) and s.background is not None and s.mask is not None and self.use_sample_masks
        return not (known and not self.mask_spillover_reasons)

    def score(self, samples: Sequence[Sample]) -> list[Verdict]:
        out: list[Verdict] = [Verdict() for _ in samples]
        todo = [k for k, s in enumerate(samples) if self.needs_heat(s)]
        for i in range(0, len(todo), self.batch_size):
            batch = todo[i : i + self.batch_size]
            heats = self.detector.heat_maps([samples[k].image for k in batch], original_size=True)
            for k, h in zip(batch, heats):
                s = samples[k]
                ext = sample_extents(s) if self.use_sample_masks else None
                out[k] = self.assess(h, s.boxes, ext, s.background is not None)
        return out


def _grow(b: Box, px: int, width: int, height: int) -> Box:
    if px <= 0:
        return b
    return Box(b.class_id, b.class_name, max(0, b.x1 - px), max(0, b.y1 - px), min(width, b.x2 + px), min(height, b.y2 + px))
