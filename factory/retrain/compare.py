"""The numbers a retrain run exists for: per arm, mean +- std over seeds; per seed,
the paired gain of each synthetic arm over real only (same seed, same real
images, same step budget), its mean and a 95% t interval."""

from __future__ import annotations

import math
import statistics
from typing import TYPE_CHECKING, NotRequired, TypedDict

from scipy import stats

from factory.retrain.config import ARM_LABELS, RetrainSettings

if TYPE_CHECKING:
    from factory.retrain.records import ArmMetrics

METRICS = ("map50", "map50_95", "precision", "recall")
RUN_FIELDS = ("steps", "epochs", "images_seen", "train_images", *METRICS)


class MeanStd(TypedDict):
    mean: float
    std: float | None  # None for one value
    n: int


class Paired(MeanStd):
    ci95: list[float] | None  # two-sided 95% t interval (None for one seed)


class Gain(Paired):
    per_seed: dict[str, float]  # seed -> the arm's score minus real only's


class RunRow(TypedDict):
    """One (arm, seed) in comparison.json: its budget and scores (`RUN_FIELDS`), per-class AP50,
    curve, times, validations and phases."""

    steps: int
    epochs: float
    images_seen: int
    train_images: int
    map50: float
    map50_95: float
    precision: float
    recall: float
    per_class_ap50: dict[str, float | None]
    curve: dict[str, list]
    train_seconds: float | None
    val_seconds: float | None
    validations: dict | None
    schedule: str | None
    phases: list[dict]


class ArmSummary(TypedDict):
    """Mean +- std over seeds of each of `RUN_FIELDS` (as keys), per-class AP50 and times."""

    steps: MeanStd
    epochs: MeanStd
    images_seen: MeanStd
    train_images: MeanStd
    map50: MeanStd
    map50_95: MeanStd
    precision: MeanStd
    recall: MeanStd
    per_class_ap50: dict[str, MeanStd | None]
    train_seconds: MeanStd
    val_seconds: MeanStd


class ArmResult(TypedDict):
    label: str
    seeds: dict[str, RunRow]
    summary: ArmSummary


class Convergence(TypedDict):
    converged: bool | None  # None: unknown (no evaluation during training)
    moved: dict[str, float]  # arm -> mean mAP50 change over the second half of training
    tolerance: float
    note: str


class Comparison(TypedDict):
    """comparison.json: `compare`'s numbers, and what the launcher adds about the run."""

    seeds: list[int]
    budget: str
    steps_matched: bool
    steps_per_arm: dict[str, list[int]]
    budget_note: str
    arms: dict[str, ArmResult]
    gains: dict[str, dict[str, Gain]]  # "<arm>_vs_real" -> metric -> gain
    min_gain: float | None
    schedule: str
    finetune_fraction: float | None
    protocol: str
    evals: int
    convergence: Convergence
    gain: dict[str, float] | None  # the mixed arm's mean gain per metric
    verdict: str
    flagged: bool
    # added by the launcher (`factory.retrain.launch.retrain`)
    run_id: NotRequired[str]
    version: NotRequired[str]
    synthetic: NotRequired[str]
    real_train: NotRequired[str]
    real_eval: NotRequired[str]
    settings: NotRequired[dict]
    data: NotRequired[dict[str, dict]]
    manifest_version: NotRequired[int | None]
    wall_seconds: NotRequired[float]
    created_at: NotRequired[str]
    skipped: NotRequired[bool]


def mean_std(values: list[float]) -> MeanStd:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None, "n": len(values)}


def paired(values: list[float]) -> Paired:
    """Mean of per-seed differences with a two-sided 95% t interval (None for one seed)."""
    m = mean_std(values)
    ci95 = None
    if len(values) > 1:
        half = stats.t.ppf(0.975, len(values) - 1) * m["std"] / math.sqrt(len(values))
        ci95 = [m["mean"] - half, m["mean"] + half]
    return {**m, "ci95": ci95}


def _run_row(m: ArmMetrics) -> RunRow:
    row = {k: m[k] for k in RUN_FIELDS}
    row["per_class_ap50"] = {n: c["ap50"] for n, c in m["per_class"].items()}
    row["curve"] = m.get("curve", {})
    for k in ("train_seconds", "val_seconds", "validations", "schedule"):
        row[k] = m.get(k)
    row["phases"] = [{k: p.get(k) for k in ("data", "steps", "epochs", "images_seen", "train_images", "loaded", "train_seconds")}
                     for p in m.get("phases", [])]
    return row


PROTOCOLS = {
    "mix": "mix: the mixed arm trains on real and synthetic images together",
    "pretrain_finetune": "pretrain_finetune: the mixed arm trains on synthetic images only for {pre:.0%} of the steps, "
                         "then fine-tunes those weights on real images only for the other {post:.0%}",
}


def protocol_note(s: RetrainSettings) -> str:
    return PROTOCOLS[s.schedule].format(pre=1 - s.finetune_fraction, post=s.finetune_fraction)


def convergence(arms: dict[str, ArmResult], tolerance: float = 0.02) -> Convergence:
    """Has training levelled off? Per arm, the mean over seeds of how far mAP50 moved
    between the evaluation nearest half the run and the final score; converged when
    no arm moved more than `tolerance`. Unknown without evaluations during training."""
    moved: dict[str, float] = {}
    for arm, a in arms.items():
        deltas = []
        for r in a["seeds"].values():
            c = r.get("curve") or {}
            steps, m = c.get("steps", [])[:-1], c.get("map50", [])[:-1]  # the last point is the final score
            if not steps:
                continue
            half = c["steps"][-1] / 2
            i = min(range(len(steps)), key=lambda j: abs(steps[j] - half))
            deltas.append(r["map50"] - m[i])
        if deltas:
            moved[arm] = statistics.fmean(deltas)
    if len(moved) < len(arms):
        return {"converged": None, "moved": moved, "tolerance": tolerance,
                "note": "unknown: no evaluation during training (evals: 0)"}
    ok = all(abs(v) <= tolerance for v in moved.values())
    worst = max(moved, key=lambda k: abs(moved[k]))
    return {"converged": ok, "moved": moved, "tolerance": tolerance,
            "note": (f"converged: no arm's mAP50 moved more than {tolerance} over the second half of training"
                     if ok else f"not converged: {ARM_LABELS[worst]} moved {moved[worst]:+.3f} mAP50 over the second "
                     f"half of training (more than {tolerance}); train longer before reading the gain")}


def compare(runs: dict[str, dict[int, ArmMetrics]], s: RetrainSettings) -> Comparison:
    """`runs[arm][seed]` = that run's metrics.json -> the comparison (comparison.json's body)."""
    seeds = sorted({seed for by_seed in runs.values() for seed in by_seed})
    arms = {arm: _arm_result(arm, by_seed, s) for arm, by_seed in runs.items()}
    gains: dict[str, dict[str, Gain]] = {}
    if "real" in runs:
        for arm in (a for a in ("mixed", "synthetic") if a in runs):
            g: dict[str, Gain] = {}
            for k in METRICS:
                per_seed = {str(sd): runs[arm][sd][k] - runs["real"][sd][k] for sd in seeds}
                g[k] = {"per_seed": per_seed, **paired(list(per_seed.values()))}
            gains[f"{arm}_vs_real"] = g
    steps = {arm: sorted({r["steps"] for r in a["seeds"].values()}) for arm, a in arms.items()}
    matched = len({n for v in steps.values() for n in v}) == 1
    main = gains.get("mixed_vs_real", {}).get("map50")
    return {"seeds": seeds, "budget": s.budget, "steps_matched": matched, "steps_per_arm": steps,
            "budget_note": _budget_note(s, steps, matched), "arms": arms, "gains": gains, "min_gain": s.min_gain,
            "schedule": s.schedule, "finetune_fraction": s.finetune_fraction if s.schedule != "mix" else None,
            "protocol": protocol_note(s), "evals": s.evals, "convergence": convergence(arms),
            "gain": {k: gains["mixed_vs_real"][k]["mean"] for k in METRICS} if main is not None else None,
            "verdict": _verdict(main), "flagged": main is not None and s.min_gain is not None and main["mean"] < s.min_gain}


def _arm_result(arm: str, by_seed: dict[int, ArmMetrics], s: RetrainSettings) -> ArmResult:
    """One arm: its runs by seed and their mean +- std."""
    rows = {str(seed): _run_row(by_seed[seed]) for seed in sorted(by_seed)}
    summary = {k: mean_std([r[k] for r in rows.values()]) for k in RUN_FIELDS}
    names = list(next(iter(rows.values()))["per_class_ap50"])
    summary["per_class_ap50"] = {
        n: mean_std(v) if (v := [r["per_class_ap50"][n] for r in rows.values() if r["per_class_ap50"][n] is not None])
        else None for n in names}
    summary["train_seconds"] = mean_std([r["train_seconds"] or 0.0 for r in rows.values()])
    summary["val_seconds"] = mean_std([r["val_seconds"] or 0.0 for r in rows.values()])
    label = "synthetic, then real (fine-tune)" if arm == "mixed" and s.schedule == "pretrain_finetune" else ARM_LABELS[arm]
    return {"label": label, "seeds": rows, "summary": summary}


def _budget_note(s: RetrainSettings, steps: dict[str, list[int]], matched: bool) -> str:
    if s.budget == "steps":
        return (f"every arm ran the same number of optimizer steps ({steps[next(iter(steps))][0]})" if matched
                else f"step budget not met exactly: optimizer steps per arm {steps}")
    if matched:
        return f"budget: epochs ({s.epochs}); the arms happen to match in steps ({steps})"
    return (f"budget: epochs: every arm ran {s.epochs} epochs, so the arms had different optimizer step counts "
            f"({', '.join(f'{ARM_LABELS[a]} {v}' for a, v in steps.items())}); a gain here mixes the "
            "synthetic data's effect with the extra steps")


def _verdict(main: Gain | None) -> str:
    """What the mixed arm's paired mAP50 gain says."""
    if main is None:
        return "no comparison (the real and mixed arms are both needed)"
    ci = main["ci95"]
    if ci is None:
        return ("helped" if main["mean"] > 0 else "hurt" if main["mean"] < 0 else "made no difference") + \
            " (one seed: no interval)"
    return "helped" if ci[0] > 0 else "hurt" if ci[1] < 0 else "made no clear difference (the 95% interval spans 0)"
