"""One (arm, seed): lay out its data, train ultralytics YOLO, score it on the real
eval set, upload what it made. This is the body of one Ray Train worker.

The optimizer steps are counted from the optimizer itself (a step hook), not
derived from the arguments, and a step budget is enforced by stopping
ultralytics' own loop after exactly that many steps. Ray's environment is left
as Ray set it: each run is a one-worker TorchTrainer, so ultralytics sees
RANK 0 of a world of 1 and trains on its own.
"""

from __future__ import annotations

import contextlib
import csv
import json
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from factory.retrain.config import RetrainError, RetrainSettings, settings_from
from factory.retrain.data import select, write_arm
from factory.retrain.offline import network_attempts, setup_ultralytics_offline
from factory.storage.uri import as_local_dir, join, upload_dir, write_bytes


@dataclass
class ArmPlan:
    """How long one arm trains (the launcher sizes it so arms match in steps)."""

    epochs: int  # the schedule's length (lr decay, warm-up) in this arm's epochs
    stop_steps: int | None  # stop after exactly this many optimizer steps (None: run all epochs)
    warmup_epochs: float  # the same warm-up in optimizer steps for every arm
    close_mosaic: int  # the same mosaic-free tail in optimizer steps, as near as whole epochs allow


class StepCounter:
    """ultralytics callbacks: count optimizer steps, batches and images as they
    happen, stop at the budget, and note the step count at each epoch's end."""

    def __init__(self, stop_steps: int | None):
        self.stop_steps, self.steps, self.batches, self.images = stop_steps, 0, 0, 0
        self.epoch_steps: list[tuple[int, bool]] = []  # (steps so far, validated this epoch?)
        self._in_epoch = 0

    def attach(self, model) -> None:
        model.add_callback("on_train_start", self._on_train_start)
        model.add_callback("on_train_epoch_start", self._on_epoch_start)
        model.add_callback("on_train_batch_end", self._on_batch_end)
        model.add_callback("on_fit_epoch_end", self._on_fit_epoch_end)

    def _on_train_start(self, trainer) -> None:
        self.n_images = len(trainer.train_loader.dataset)
        self.batch = trainer.batch_size

        def hook(*_):
            self.steps += 1

        trainer.optimizer.register_step_post_hook(hook)

    def _on_epoch_start(self, trainer) -> None:
        self._in_epoch = 0

    def _on_batch_end(self, trainer) -> None:
        self.images += min(self.batch, self.n_images - self._in_epoch * self.batch)
        self._in_epoch += 1
        self.batches += 1
        if self.stop_steps is not None and self.steps >= self.stop_steps:
            trainer.stop = True  # ultralytics leaves its batch loop, validates and saves last.pt

    def _on_fit_epoch_end(self, trainer) -> None:
        # with val=False ultralytics validates only at the end; other epochs repeat stale numbers
        self.epoch_steps.append((self.steps, bool(trainer.args.val or trainer.stop)))


def _metrics_of(m, names: list[str]) -> dict[str, Any]:
    """ultralytics DetMetrics -> plain numbers (mAP50, mAP50-95, P, R, per class)."""
    box = m.box
    nt = getattr(m, "nt_per_class", None)
    per_class = {}
    for i, c in enumerate(box.ap_class_index):
        c = int(c)
        per_class[names[c]] = {
            "ap50": float(box.ap50[i]), "ap50_95": float(box.ap[i]), "precision": float(box.p[i]), "recall": float(box.r[i]),
            "instances": int(nt[c]) if nt is not None else None,
        }
    for c, n in enumerate(names):  # classes absent from the eval set: no AP, said so
        per_class.setdefault(n, {"ap50": None, "ap50_95": None, "precision": None, "recall": None,
                                 "instances": int(nt[c]) if nt is not None else 0})
    return {"map50": float(box.map50), "map50_95": float(box.map), "precision": float(box.mp), "recall": float(box.mr),
            "per_class": per_class}


def _curve(results_csv: Path, epoch_steps: list[tuple[int, bool]]) -> dict[str, list[float]]:
    """mAP50 on the eval set after each validated epoch (ultralytics' own validation), with the step count there."""
    if not results_csv.exists():
        return {}
    rows = [{k.strip(): v for k, v in r.items()} for r in csv.DictReader(results_csv.open())]
    kept = [(r, steps) for r, (steps, validated) in zip(rows, epoch_steps) if validated]
    rows = [r for r, _ in kept]
    return {"epoch": [int(float(r["epoch"])) for r in rows], "steps": [steps for _, steps in kept],
            "map50": [float(r.get("metrics/mAP50(B)", "nan")) for r in rows],
            "box_loss": [float(r.get("train/box_loss", "nan")) for r in rows]}


def train_arm(arm: str, seed: int, work: Path, data_yaml: Path, s: RetrainSettings, plan: ArmPlan) -> dict[str, Any]:
    """Train and score one arm with ultralytics in this process (any node)."""
    setup_ultralytics_offline()
    import torch
    import yaml
    from ultralytics import YOLO

    if s.model.endswith(".pt") and not Path(s.model).exists():
        raise RetrainError(f"{s.model}: weights not found; give a local .pt or a model .yaml (nothing is downloaded)")
    device = "0" if s.gpus and torch.cuda.is_available() else "cpu"  # Ray set CUDA_VISIBLE_DEVICES to this run's GPU
    runs, name = work / "runs", f"{arm}-s{seed}"
    args = dict(data=str(data_yaml), epochs=plan.epochs, imgsz=s.imgsz, batch=s.batch, seed=seed, deterministic=True,
                workers=s.workers, device=device, amp=False, project=str(runs), name=name, exist_ok=True, plots=True,
                verbose=False, nbs=s.batch, warmup_epochs=plan.warmup_epochs, close_mosaic=plan.close_mosaic)
    if not s.model.endswith(".pt"):
        args["pretrained"] = False  # a .yaml trains from scratch; a .pt starts from its own weights
    args.update({k: v for k, v in s.train_args.items() if k not in ("warmup_epochs", "close_mosaic")})
    model = YOLO(s.model)
    counter = StepCounter(plan.stop_steps)
    counter.attach(model)
    t0 = time.time()
    model.train(**args)
    train_s = time.time() - t0
    names = list(yaml.safe_load(data_yaml.read_text())["names"])
    # score the final weights: best.pt was picked on the eval set and would flatter every arm
    m = YOLO(str(runs / name / "weights" / "last.pt")).val(
        data=str(data_yaml), split="val", imgsz=s.imgsz, batch=s.batch, device=device, project=str(runs),
        name=f"{name}-eval", exist_ok=True, plots=True, verbose=False)
    out = _metrics_of(m, names)
    nb = -(-counter.n_images // counter.batch)
    out.update(arm=arm, seed=seed, steps=counter.steps, batches=counter.batches, images_seen=counter.images,
               epochs=round(counter.batches / nb, 3), train_images=counter.n_images, plan=asdict(plan),
               curve=_curve(runs / name / "results.csv", counter.epoch_steps), train_seconds=round(train_s, 2),
               device=device)
    return out


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """What one Ray Train worker runs: fetch the inputs (any node, any URI), select
    and lay out this arm's data, train, upload weights/plots/metrics, report."""
    import ray.train

    s = settings_from(config["settings"])
    arm, seed, out = config["arm"], config["seed"], config["out_uri"]
    work = Path(tempfile.mkdtemp(prefix=f"factory-retrain-{arm}-s{seed}-"))
    try:
        with contextlib.ExitStack() as stack:
            real_train = stack.enter_context(as_local_dir(config["real_train"]))
            real_eval = stack.enter_context(as_local_dir(config["real_eval"]))
            synthetic = stack.enter_context(as_local_dir(config["synthetic"])) if arm != "real" else None
            sel = select(real_train, real_eval, synthetic, s, seed, (config["real_train"], config["real_eval"], config["synthetic"]))
            data_yaml = write_arm(work / "data", sel, arm)
            with network_attempts() as attempts:  # ultralytics must not download anything
                metrics = train_arm(arm, seed, work, data_yaml, s, ArmPlan(**config["plan"]))
        if attempts and config.get("no_network"):
            raise RetrainError(f"{arm}: training tried to reach the network: {sorted(set(attempts))[:5]}")
        metrics["data"] = sel.counts
        metrics["network_attempts"] = sorted(set(attempts))
        runs, name, dst = work / "runs", f"{arm}-s{seed}", join(out, arm, f"seed{seed}")
        upload_dir(runs / name / "weights", join(dst, "weights"))
        for sub, src in (("train", runs / name), ("eval", runs / f"{name}-eval")):
            for p in sorted(src.glob("*")):
                if p.is_file():  # plots, results.csv, args.yaml
                    write_bytes(join(dst, sub, p.name), p.read_bytes())
        write_bytes(join(dst, "metrics.json"), json.dumps(metrics, indent=2).encode())
        # no Ray checkpoint: the weights already live next to the version; the driver reads metrics.json
        ray.train.report({k: metrics[k] for k in ("map50", "map50_95", "steps")})
    finally:
        shutil.rmtree(work, ignore_errors=True)
