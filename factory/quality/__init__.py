"""The quality gate: scorers that accept or reject generated samples (with reasons).

    scorers = build_scorers(spec)          # from the spec's `quality` section
    verdicts = score_all(scorers, samples)

Heavy imports (torch) happen only when an anomaly checkpoint is configured.
"""

from __future__ import annotations

from factory.quality.base import Scorer, Verdict, score_all
from factory.quality.sanity import NearDuplicateScorer, SanityScorer
from factory.quality.spillover import SpilloverScorer


def build_scorers(spec, device: str = "cpu", mask_spillover: bool = False) -> list[Scorer]:
    """The gate's scorers for a spec: sanity (replaces the pipeline's basic one, same
    name), near-duplicates, and the anomaly gate when `quality.anomaly_checkpoint` is set.

    Mask-based spillover is already rejected by the pipeline's `BoxScorer`
    (factory/pipeline/checks.py); pass `mask_spillover=True` when using these scorers
    on their own, to add `SpilloverScorer` and the gate's mask-spillover reasons."""
    q = spec.quality
    scorers: list[Scorer] = [
        SanityScorer(spec.image.width, spec.image.height, spec.image.channels, q.min_std, q.max_saturated),
        NearDuplicateScorer(q.duplicate_distance),
    ]
    if q.anomaly_checkpoint:
        from factory.quality.anomaly.detector import AnomalyDetector
        from factory.quality.gate import AnomalyGate

        det = AnomalyDetector.load(q.anomaly_checkpoint, device=device)
        scorers.append(AnomalyGate(det, q.spillover_max, q.threshold_rule, q.use_generator_masks, q.box_margin,
                                   q.max_outside_fraction, q.pixel_threshold, q.image_threshold,
                                   mask_spillover_reasons=mask_spillover))
    elif mask_spillover:
        scorers.append(SpilloverScorer(q.spillover_max))
    return scorers


def gate_gpus(spec) -> float:
    """GPUs one scoring actor asks for: the anomaly gate's network can use one; the
    other checks are numpy and never do."""
    return float(spec.quality.gpus) if spec.quality.anomaly_checkpoint else 0.0


__all__ = ["gate_gpus", "NearDuplicateScorer", "SanityScorer", "Scorer", "SpilloverScorer", "Verdict", "build_scorers", "score_all"]
