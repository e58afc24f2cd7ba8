"""The numbers a retrain run exists for: per arm, mean +- std over seeds; per seed,
the paired gain of each synthetic arm over real only (same seed, same real
images, same step budget), its mean and a 95% t interval."""

from __future__ import annotations

import math
import statistics
from typing import Any

from scipy import stats

from factory.retrain.config import ARM_LABELS, RetrainSettings

METRICS = ("map50", "map50_95", "precision", "recall")
RUN_FIELDS = ("steps", "epochs", "images_seen", "train_images", *METRICS)


def mean_std(values: list[float]) -> dict[str, float | None]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None, "n": len(values)}


def paired(values: list[float]) -> dict[str, Any]:
    """Mean of per-seed differences with a two-sided 95% t interval (None for one seed)."""
    out: dict[str, Any] = mean_std(values)
    if len(values) > 1:
        half = stats.t.ppf(0.975, len(values) - 1) * out["std"] / math.sqrt(len(values))
        out["ci95"] = [out["mean"] - half, out["mean"] + half]
    else:
        out["ci95"] = None
    return out


def _run_row(m: dict[str, Any]) -> dict[str, Any]:
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


def convergence(arms: dict[str, Any], tolerance: float = 0.02) -> dict[str, Any]:
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


def compare(runs: dict[str, dict[int, dict[str, Any]]], s: RetrainSettings) -> dict[str, Any]:
    """`runs[arm][seed]` = that run's metrics.json -> the comparison (comparison.json's body)."""
    seeds = sorted({seed for by_seed in runs.values() for seed in by_seed})
    arms: dict[str, Any] = {}
    for arm, by_seed in runs.items():
        rows = {str(seed): _run_row(by_seed[seed]) for seed in sorted(by_seed)}
        summary = {k: mean_std([r[k] for r in rows.values()]) for k in RUN_FIELDS}
        names = list(next(iter(rows.values()))["per_class_ap50"])
        summary["per_class_ap50"] = {
            n: mean_std(v) if (v := [r["per_class_ap50"][n] for r in rows.values() if r["per_class_ap50"][n] is not None])
            else None for n in names}
        summary["train_seconds"] = mean_std([r["train_seconds"] or 0.0 for r in rows.values()])
        summary["val_seconds"] = mean_std([r["val_seconds"] or 0.0 for r in rows.values()])
        label = "synthetic, then real (fine-tune)" if arm == "mixed" and s.schedule == "pretrain_finetune" else ARM_LABELS[arm]
        arms[arm] = {"label": label, "seeds": rows, "summary": summary}
    gains: dict[str, Any] = {}
    if "real" in runs:
        for arm in (a for a in ("mixed", "synthetic") if a in runs):
            g: dict[str, Any] = {}
            for k in METRICS:
                per_seed = {str(sd): runs[arm][sd][k] - runs["real"][sd][k] for sd in seeds}
                g[k] = {"per_seed": per_seed, **paired(list(per_seed.values()))}
            gains[f"{arm}_vs_real"] = g
    steps = {arm: sorted({r["steps"] for r in a["seeds"].values()}) for arm, a in arms.items()}
    matched = len({n for v in steps.values() for n in v}) == 1
    if s.budget == "steps":
        budget_note = (f"every arm ran the same number of optimizer steps ({steps[next(iter(steps))][0]})" if matched
                       else f"step budget not met exactly: optimizer steps per arm {steps}")
    else:
        budget_note = (f"budget: epochs: every arm ran {s.epochs} epochs, so the arms had different optimizer step counts "
                       f"({', '.join(f'{ARM_LABELS[a]} {v}' for a, v in steps.items())}); a gain here mixes the "
                       "synthetic data's effect with the extra steps") if not matched else \
            f"budget: epochs ({s.epochs}); the arms happen to match in steps ({steps})"
    out: dict[str, Any] = {"seeds": seeds, "budget": s.budget, "steps_matched": matched, "steps_per_arm": steps,
                           "budget_note": budget_note, "arms": arms, "gains": gains, "min_gain": s.min_gain,
                           "schedule": s.schedule, "finetune_fraction": s.finetune_fraction if s.schedule != "mix" else None,
                           "protocol": protocol_note(s), "evals": s.evals, "convergence": convergence(arms)}
    main = gains.get("mixed_vs_real", {}).get("map50")
    if main is not None:
        ci = main["ci95"]
        if ci is None:
            verdict = ("helped" if main["mean"] > 0 else "hurt" if main["mean"] < 0 else "made no difference") + \
                " (one seed: no interval)"
        else:
            verdict = "helped" if ci[0] > 0 else "hurt" if ci[1] < 0 else "made no clear difference (the 95% interval spans 0)"
        out["gain"] = {k: gains["mixed_vs_real"][k]["mean"] for k in METRICS}
        out["verdict"] = verdict
        out["flagged"] = s.min_gain is not None and main["mean"] < s.min_gain
    else:
        out["gain"], out["verdict"], out["flagged"] = None, "no comparison (the real and mixed arms are both needed)", False
    return out
