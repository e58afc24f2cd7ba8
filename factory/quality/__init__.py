"""The quality gate: scorers that accept or reject generated samples (with reasons).

    scorers = build_scorers(spec)          # from the spec's `quality` section
    verdicts = score_all(scorers, samples)

Heavy imports (torch) happen only when an anomaly or box-check checkpoint is configured.
"""

from __future__ import annotations

from factory.quality.base import Scorer, Verdict, score_all
from factory.quality.boxes import BoxScorer
from factory.quality.outside import OutsideExactScorer
from factory.quality.sanity import NearDuplicateScorer, SanityScorer
from factory.quality.spillover import SpilloverScorer


def build_scorers(spec, device: str = "cpu") -> list[Scorer]:
    """Every check a sample passes, from the spec's `quality` section, in order: image
    sanity, boxes, mask spillover (from the generator's own masks), the exact
    outside-the-box test (where the generator knows its background), near-duplicates,
    and the anomaly gate when `quality.anomaly_checkpoint` is set (its heat-map
    spillover covers samples without a generator mask; outside the boxes and "is a
    defect drawn in the box" it judges only samples whose background is not known),
    and the per-class box check when
    `quality.box_check` is set (every box must score as its class; it then replaces the
    anomaly gate's "heat above threshold somewhere in the box")."""
    q = spec.quality
    scorers: list[Scorer] = [
        SanityScorer(spec.image.width, spec.image.height, spec.image.channels, q.min_std, q.max_saturated),
        BoxScorer(spec.class_names),
        SpilloverScorer(q.spillover_max),
        OutsideExactScorer(),
        NearDuplicateScorer(q.duplicate_distance),
    ]
    if q.anomaly_checkpoint:
        from factory.quality.anomaly.detector import AnomalyDetector
        from factory.quality.gate import AnomalyGate

        det = AnomalyDetector.load(q.anomaly_checkpoint, device=device)
        scorers.append(AnomalyGate(det, q.spillover_max, q.threshold_rule, q.use_generator_masks, q.box_margin,
                                   q.max_outside_fraction, q.pixel_threshold, q.image_threshold,
                                   mask_spillover_reasons=False, box_heat=not q.box_check))
    if q.box_check:
        from factory.quality.box_check import BoxCheck, BoxClassScorer

        scorers.append(BoxClassScorer(BoxCheck.load(q.box_check, device=device), spec.class_names))
    return scorers


def gate_gpus(spec) -> float:
    """GPUs one scoring actor asks for: the anomaly gate's and the box check's networks
    can use one; the other checks are numpy and never do."""
    return float(spec.quality.gpus) if spec.quality.anomaly_checkpoint or spec.quality.box_check else 0.0


__all__ = ["BoxScorer", "gate_gpus", "NearDuplicateScorer", "OutsideExactScorer", "SanityScorer", "Scorer", "SpilloverScorer", "Verdict", "build_scorers", "score_all"]
