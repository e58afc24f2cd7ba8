"""One (arm, seed): lay out its data, train ultralytics YOLO, score it on the real
eval set, upload what it made. This is the body of one Ray Train worker.

The optimizer steps are counted from the optimizer itself (a step hook), not
derived from the arguments, and a step budget is enforced by stopping
ultralytics' own loop after exactly that many steps. ultralytics' own
validation (per epoch, at its last epoch, of best.pt) is off: a run validates
at `evals` points evenly spaced in steps, plus the final score of its last
weights, and counts what ultralytics actually validated. `pretrain_finetune`'s
mixed arm is two train() calls in one worker: synthetic only, then real only
from the first one's last.pt. Ray's environment is left
as Ray set it: each run is a one-worker TorchTrainer, so ultralytics sees
RANK 0 of a world of 1 and trains on its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from factory.retrain.config import RetrainError, RetrainSettings, settings_from
from factory.retrain.data import Selection, select, write_arm
from factory.retrain.offline import network_attempts, setup_ultralytics_offline
from factory.retrain.records import ArmMetrics, ArmPlan, ArmRun, Phase, PhaseRecord, Scores
from factory.storage.uri import as_local_dir, join, upload_dir, write_bytes


def eval_points(total_steps: int | None, evals: int) -> list[int]:
    """Where a run validates while training: `evals` points evenly spaced in optimizer
    steps strictly inside the run (step T * i / (evals + 1)); the end of the run is
    the final score of its last weights, so it is never validated twice."""
    if not total_steps or evals <= 0:
        return []
    return sorted({p for i in range(1, evals + 1) if 0 < (p := round(total_steps * i / (evals + 1))) < total_steps})


class Evaluations:
    """The validations of one run (all its phases): which points are still due, the
    curve they make, their time, and how many validations ultralytics actually ran
    (counted by its validator's `on_val_start` callback)."""

    def __init__(self, points: list[int], total_steps: int | None):
        self.pending, self.total = list(points), total_steps
        self.curve: dict[str, list] = {"steps": [], "epoch": [], "map50": [], "map50_95": [], "phase": []}
        self.seconds = 0.0
        self.ran = 0  # validations ultralytics ran (on_val_start), training and final score together

    def on_val_start(self, _validator) -> None:
        self.ran += 1

    def due(self, steps: int) -> bool:
        """Has the run crossed an evaluation point? (Several crossed in one epoch: one validation.)"""
        crossed = [p for p in self.pending if p <= steps]
        if not crossed:
            return False
        self.pending = [p for p in self.pending if p > steps]
        return self.total is None or steps < self.total


class StepCounter:
    """ultralytics callbacks: count optimizer steps, batches and images as they
    happen, stop at the budget, and validate at the evaluation points. The
    trainer's own validation (every epoch with `val`, and even with `val=False`
    at the last epoch, plus best.pt after training) is switched off: the run
    validates only where `Evaluations` says, and the driver scores last.pt."""

    def __init__(self, stop_steps: int | None, evals: Evaluations | None = None, offset_steps: int = 0,
                 offset_epochs: float = 0.0, phase: str = ""):
        self.stop_steps, self.steps, self.batches, self.images = stop_steps, 0, 0, 0
        self.evals = evals or Evaluations([], None)
        self.offset_steps, self.offset_epochs, self.phase = offset_steps, offset_epochs, phase
        self.loaded: list[str] = []  # the train images ultralytics loaded (its dataset's files)
        self._in_epoch = 0
        self._validate = None

    def attach(self, model) -> None:
        model.add_callback("on_pretrain_routine_end", self._take_over_validation)
        model.add_callback("on_train_start", self._on_train_start)
        model.add_callback("on_train_epoch_start", self._on_epoch_start)
        model.add_callback("on_train_batch_end", self._on_batch_end)
        model.add_callback("on_train_epoch_end", self._on_train_epoch_end)
        model.add_callback("on_val_start", self.evals.on_val_start)  # the trainer's validator shares these callbacks

    def _take_over_validation(self, trainer) -> None:
        from ultralytics.utils.torch_utils import strip_optimizer

        self._validate = trainer.validate

        def skipped():  # what ultralytics calls at its last epoch / stop even with val=False
            return trainer.metrics, trainer.fitness

        def final_eval():  # ultralytics would validate best.pt here; only strip the checkpoints
            for f in (trainer.last, trainer.best):
                if f.exists():
                    strip_optimizer(f)

        trainer.validate, trainer.final_eval = skipped, final_eval

    def _on_train_start(self, trainer) -> None:
        import torch

        self.n_images = len(trainer.train_loader.dataset)
        self.batch = trainer.batch_size
        self.nb = len(trainer.train_loader)
        self.loaded = [str(f) for f in getattr(trainer.train_loader.dataset, "im_files", [])]
        self.threads = torch.get_num_threads()

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
            trainer.stop = True  # ultralytics leaves its batch loop and saves last.pt (it does not validate: see above)

    def _on_train_epoch_end(self, trainer) -> None:
        at = self.offset_steps + self.steps
        if not self.evals.due(at) or self._validate is None:
            return
        trainer.ema.update_attr(trainer.model, include=["yaml", "nc", "args", "names", "stride", "class_weights"])
        t = time.time()
        metrics, _ = self._validate()  # the EMA weights on the eval set; fitness is left alone (no best.pt, no early stop)
        self.evals.seconds += time.time() - t
        if metrics:
            trainer.metrics = metrics  # results.csv shows the real numbers at this epoch
            c = self.evals.curve
            c["steps"].append(at)
            c["epoch"].append(round(self.offset_epochs + self.batches / max(self.nb, 1), 3))
            c["map50"].append(float(metrics.get("metrics/mAP50(B)", float("nan"))))
            c["map50_95"].append(float(metrics.get("metrics/mAP50-95(B)", float("nan"))))
            c["phase"].append(self.phase)


def _metrics_of(m, names: list[str]) -> Scores:
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


def _origin_counts(loaded: list[str], sources: dict[str, set[str]]) -> dict[str, int]:
    """How many of the images ultralytics loaded are real, synthetic or neither (by the file each link points at)."""
    out = {k: 0 for k in sources} | {"other": 0}
    for f in loaded:
        target = os.path.realpath(f)
        kind = next((k for k, files in sources.items() if target in files), "other")
        out[kind] += 1
    return out


def train_arm(arm: str, seed: int, work: Path, sel: Selection, s: RetrainSettings, plan: ArmPlan,
              cpus: int = 1) -> ArmMetrics:
    """Lay out, train and score one arm with ultralytics in this process (any node):
    one train() call per phase (one, or two for pretrain_finetune's mixed arm: the
    second starts from the first's last.pt), validations only at the evaluation
    points, then the final score of the last weights on the eval set. On the CPU
    torch uses the `cpus` this worker holds."""
    setup_ultralytics_offline()
    import torch

    if s.model.endswith(".pt") and not Path(s.model).exists():
        raise RetrainError(f"{s.model}: weights not found; give a local .pt or a model .yaml (nothing is downloaded)")
    device = "0" if s.gpus and torch.cuda.is_available() else "cpu"  # Ray set CUDA_VISIBLE_DEVICES to this run's GPU
    threads = max(1, cpus) if device == "cpu" else 0
    runs, name = work / "runs", f"{arm}-s{seed}"
    sources = {"real": {os.path.realpath(p) for p, _ in sel.real}, "synthetic": {os.path.realpath(p) for p, _ in sel.synthetic}}
    phases = plan.phase_list(arm)
    evals = Evaluations(eval_points(plan.total_steps, s.evals), plan.total_steps)
    weights, done, wall = s.model, [], 0.0
    for k, ph in enumerate(phases):
        pname = name if k == len(phases) - 1 else f"{name}-{ph['data']}"
        data_yaml = write_arm(work / f"data-{k}", sel, ph["data"])
        record, seconds = _train_phase(weights, data_yaml, ph, runs, pname, seed, device, threads, s, evals, done, sources)
        done.append(record)
        wall += seconds
        weights = str(runs / pname / "weights" / "last.pt")
    # score the final weights: best.pt was picked on the eval set and would flatter every arm
    during = evals.ran
    scores, final_s = _final_score(weights, data_yaml, runs, f"{name}-eval", device, threads, s, evals, list(sel.class_names))
    steps, epochs = sum(d["steps"] for d in done), round(sum(d["epochs"] for d in done), 3)
    curve = {k: list(v) for k, v in evals.curve.items()}
    for k, v in (("steps", steps), ("epoch", epochs), ("map50", scores["map50"]), ("map50_95", scores["map50_95"]),
                 ("phase", "final")):
        curve[k].append(v)
    return ArmMetrics(
        **scores, arm=arm, seed=seed, steps=steps, batches=sum(d["batches"] for d in done),
        images_seen=sum(d["images_seen"] for d in done), epochs=epochs, train_images=sum(d["train_images"] for d in done),
        plan=asdict(plan), curve=curve, schedule=s.schedule if arm == "mixed" else "mix", phases=done,
        train_seconds=round(wall - evals.seconds, 2), val_seconds=round(evals.seconds + final_s, 2),
        validations={"during_training": during, "final": evals.ran - during, "total": evals.ran,
                     "points": eval_points(plan.total_steps, s.evals), "limit": s.evals + 1},
        device=device)


def _use_threads(model, threads: int) -> None:
    """ultralytics pins torch to min(8, CPUs - 1) threads whenever it picks the CPU (one
    thread on 2 cores, a core left idle); set the worker's own count after it does."""
    if threads:
        import torch

        def use(*_):
            torch.set_num_threads(threads)

        model.add_callback("on_pretrain_routine_start", use)  # after the trainer's select_device
        model.add_callback("on_val_start", use)  # after a standalone validator's select_device


def _train_phase(weights: str, data_yaml: Path, ph: Phase, runs: Path, pname: str, seed: int, device: str, threads: int,
                 s: RetrainSettings, evals: Evaluations, done: list[PhaseRecord],
                 sources: dict[str, set[str]]) -> tuple[PhaseRecord, float]:
    """One train() call from `weights` on `data_yaml`, its steps counted (after the `done`
    phases) and stopped at the phase's budget; (what it did, its wall seconds)."""
    import yaml
    from ultralytics import YOLO

    args = dict(data=str(data_yaml), epochs=ph["epochs"], imgsz=s.imgsz, batch=s.batch, seed=seed, deterministic=True,
                workers=s.workers, device=device, amp=False, project=str(runs), name=pname, exist_ok=True, plots=True,
                verbose=False, nbs=s.batch, warmup_epochs=ph["warmup_epochs"], close_mosaic=ph["close_mosaic"])
    if not weights.endswith(".pt"):
        args["pretrained"] = False  # a .yaml trains from scratch; a .pt starts from its own weights
    args.update({k: v for k, v in s.train_args.items() if k not in ("warmup_epochs", "close_mosaic")})
    args["val"] = False  # validation is ours: at the evaluation points only
    model = YOLO(weights)
    counter = StepCounter(ph["stop_steps"], evals, sum(d["steps"] for d in done), sum(d["epochs"] for d in done), ph["data"])
    counter.attach(model)
    _use_threads(model, threads)
    val_before, t0 = evals.seconds, time.time()
    model.train(**args)
    seconds = time.time() - t0
    nb = -(-counter.n_images // counter.batch)
    return PhaseRecord(data=ph["data"], steps=counter.steps, batches=counter.batches, images_seen=counter.images,
                       epochs=round(counter.batches / nb, 3), train_images=counter.n_images,
                       train_seconds=round(seconds - (evals.seconds - val_before), 2),
                       loaded=_origin_counts(counter.loaded, sources),
                       train_dirs=yaml.safe_load(data_yaml.read_text())["train"], threads=counter.threads), seconds


def _final_score(weights: str, data_yaml: Path, runs: Path, name: str, device: str, threads: int, s: RetrainSettings,
                 evals: Evaluations, names: list[str]) -> tuple[Scores, float]:
    """The last weights scored on the eval set (its validation counted in `evals`); (scores, seconds)."""
    from ultralytics import YOLO

    final = YOLO(weights)
    final.add_callback("on_val_start", evals.on_val_start)
    _use_threads(final, threads)
    t = time.time()
    m = final.val(data=str(data_yaml), split="val", imgsz=s.imgsz, batch=s.batch, device=device, project=str(runs),
                  name=name, exist_ok=True, plots=True, verbose=False)
    return _metrics_of(m, names), time.time() - t


def train_loop_per_worker(config: ArmRun) -> None:
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
            with network_attempts() as attempts:  # ultralytics must not download anything
                metrics = train_arm(arm, seed, work, sel, s, ArmPlan(**config["plan"]), config["cpus"])
        if attempts and config.get("no_network"):
            raise RetrainError(f"{arm}: training tried to reach the network: {sorted(set(attempts))[:5]}")
        metrics["data"] = sel.counts
        metrics["network_attempts"] = sorted(set(attempts))
        runs, name, dst = work / "runs", f"{arm}-s{seed}", join(out, arm, f"seed{seed}")
        upload_dir(runs / name / "weights", join(dst, "weights"))
        pre = [("pretrain", runs / f"{name}-{p['data']}") for p in metrics["phases"][:-1]]
        for sub, src in (*pre, ("train", runs / name), ("eval", runs / f"{name}-eval")):
            for p in sorted(src.glob("*")):
                if p.is_file():  # plots, results.csv, args.yaml
                    write_bytes(join(dst, sub, p.name), p.read_bytes())
        write_bytes(join(dst, "metrics.json"), json.dumps(metrics, indent=2).encode())
        # no Ray checkpoint: the weights already live next to the version; the driver reads metrics.json
        ray.train.report({k: metrics[k] for k in ("map50", "map50_95", "steps")})
    finally:
        shutil.rmtree(work, ignore_errors=True)
