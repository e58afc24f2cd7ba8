"""The driver of a retrain run: size every arm's step budget, run each (arm, seed)
as its own Ray Train run (one-worker `TorchTrainer`s, side by side as Ray Tune
tasks, as many at once as the cluster's resources allow), then compare.

Everything lands next to the version, in `<version>/retrain/<run-id>/`:
`<arm>/seed<k>/{weights,train,eval}/` and `metrics.json`, then `report.html` and
`comparison.json` last (its presence means "done": the same trigger never
trains twice).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import time
from pathlib import Path

from factory.ray_runtime import ensure_ray
from factory.retrain.arm import train_loop_per_worker
from factory.retrain.compare import Comparison, compare
from factory.retrain.config import RetrainError, RetrainSettings, retrain_root, run_inputs, run_uri, yolo_uri
from factory.retrain.data import Selection, select
from factory.retrain.records import ArmPlan, ArmRun, Phase
from factory.retrain.report import render_index, render_report
from factory.storage.uri import as_local_dir, exists, join, list_files, local_path, on_disk, read_bytes, write_bytes

ULTRALYTICS_WARMUP_EPOCHS, ULTRALYTICS_CLOSE_MOSAIC = 3.0, 10  # ultralytics' defaults, kept in optimizer steps


def plan_arms(sel: Selection, s: RetrainSettings) -> dict[str, ArmPlan]:
    """Each arm's schedule. `budget: steps`: every arm stops after the same number
    of optimizer steps (`steps`, or the mixed arm's steps at `epochs`; the largest
    arm's when there is no synthetic data) and gets the same warm-up and mosaic-free
    tail in steps (those of `warmup_epochs` / `close_mosaic` epochs of the mixed
    arm, whichever arms run together, so a run's plan does not depend on its
    companions); its epoch count is what that budget takes on its data.
    `budget: epochs`: every arm runs `epochs` epochs with ultralytics' schedule.
    `schedule: pretrain_finetune`: the mixed arm runs two phases, synthetic only
    then real only from those weights, whose steps add up to the same budget."""
    warm = float(s.train_args.get("warmup_epochs", ULTRALYTICS_WARMUP_EPOCHS))
    close = int(s.train_args.get("close_mosaic", ULTRALYTICS_CLOSE_MOSAIC))
    acc = max(round(s.train_args.get("nbs", s.batch) / s.batch), 1)  # batches per optimizer step
    nb = {a: sel.batches_per_epoch(a, s.batch) for a in s.arms}
    if s.budget == "epochs":
        plans = {a: ArmPlan(s.epochs, None, warm, close, total_steps=s.epochs * nb[a] // acc) for a in s.arms}
        if s.schedule == "pretrain_finetune" and "mixed" in s.arms:
            e1 = max(1, round((1 - s.finetune_fraction) * s.epochs))
            e2 = max(1, s.epochs - e1)
            n1, n2 = sel.batches_per_epoch("synthetic", s.batch), sel.batches_per_epoch("real", s.batch)
            plans["mixed"] = ArmPlan(e1 + e2, None, warm, close, total_steps=(e1 * n1 + e2 * n2) // acc, phases=[
                Phase(data="synthetic", epochs=e1, stop_steps=None, warmup_epochs=warm, close_mosaic=0),
                Phase(data="real", epochs=e2, stop_steps=None, warmup_epochs=warm, close_mosaic=min(close, e2))])
        return plans
    if not all(nb.values()):
        raise RetrainError(f"an arm has no training images: batches per epoch {nb}")
    nb_ref = sel.batches_per_epoch("mixed", s.batch) if sel.synthetic else max(nb.values())
    target = s.steps or max(1, s.epochs * nb_ref // acc)
    slack = 1 if acc > 1 else 0  # warm-up steps accumulate less: slack

    def phase(data: str, n: int, steps: int, tail: bool) -> Phase:
        epochs = math.ceil(steps * acc / n) + slack
        return Phase(data=data, epochs=epochs, stop_steps=steps, warmup_epochs=round(warm * nb_ref / n, 4),
                    close_mosaic=min(epochs, round(close * nb_ref / n)) if tail else 0)

    plans = {}
    for a in s.arms:
        p = phase(a, nb[a], target, True)
        plans[a] = ArmPlan(epochs=p["epochs"], stop_steps=target, warmup_epochs=p["warmup_epochs"],
                           close_mosaic=p["close_mosaic"], total_steps=target)
    if s.schedule == "pretrain_finetune" and "mixed" in s.arms:
        if target < 2:
            raise RetrainError(f"schedule pretrain_finetune needs at least 2 optimizer steps (a budget of {target})")
        t2 = min(target - 1, max(1, round(s.finetune_fraction * target)))
        n1, n2 = sel.batches_per_epoch("synthetic", s.batch), sel.batches_per_epoch("real", s.batch)
        if not (n1 and n2):
            raise RetrainError(f"pretrain_finetune needs synthetic and real train images (batches per epoch {n1}, {n2})")
        # each phase warms up like a fresh run (its optimizer starts afresh); the mosaic-free tail ends phase 2
        phases = [phase("synthetic", n1, target - t2, False), phase("real", n2, t2, True)]
        plans["mixed"] = ArmPlan(epochs=sum(p["epochs"] for p in phases), stop_steps=target,
                                 warmup_epochs=phases[0]["warmup_epochs"], close_mosaic=phases[1]["close_mosaic"],
                                 total_steps=target, phases=phases)
    return plans


def _run_one(run: ArmRun) -> int:
    """One (arm, seed) as its own one-worker TorchTrainer run; returns its step count."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    gpus = run["settings"]["gpus"]
    trainer = TorchTrainer(
        train_loop_per_worker, train_loop_config=run,
        scaling_config=ScalingConfig(num_workers=1, use_gpu=gpus > 0,
                                     resources_per_worker={"GPU": gpus} if gpus else {"CPU": run["cpus"]}),
        run_config=RunConfig(name=f"{run['run_id']}-{run['arm']}-s{run['seed']}-{int(time.time())}",
                             storage_path=run["storage_path"]))
    try:
        result = trainer.fit()
    except Exception as e:  # ray.train's TrainingFailedError carries the worker's traceback
        raise RetrainError(f"{run['arm']} seed {run['seed']}: {e}") from e
    return int((result.metrics or {}).get("steps", -1))


def runs_that_fit(s: RetrainSettings) -> int:
    """How many runs the cluster holds at once now: its GPUs / `gpus`, else its CPUs (one per run)."""
    import ray

    have = ray.cluster_resources()
    return max(1, int(have.get("GPU", 0) // s.gpus) if s.gpus else int(have.get("CPU", 1)))


def cpus_per_run(s: RetrainSettings, at_once: int) -> int:
    """CPUs each CPU run holds: the cluster's CPUs shared by the runs that train at once
    (a lone run on 2 cores gets both; four runs on 16 get four each), at most one node's
    (a run's one worker lives on one node). 0 on GPUs."""
    import ray

    if s.gpus:
        return 0
    node = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"]), default=1)
    return max(1, min(int(ray.cluster_resources().get("CPU", 1)) // max(1, at_once), int(node)))


def _fit_all(runs: list[ArmRun], limit: int) -> None:
    """Runs side by side, at most `limit` at once: each TorchTrainer is driven from a
    zero-CPU Ray task, so only the training workers hold resources and no idle
    trainer waits."""
    import ray

    launch = ray.remote(num_cpus=0, max_retries=0)(_run_one)
    pending, waiting, errors = [], list(runs), []
    while waiting or pending:
        while waiting and len(pending) < limit:
            pending.append(launch.remote(waiting.pop(0)))
        done, pending = ray.wait(pending, num_returns=1)
        try:
            ray.get(done[0])
        except Exception as e:  # keep the others running; report every failure at the end
            errors.append(str(getattr(e, "cause", None) or e))
    if errors:
        raise RetrainError(f"retraining {runs[0]['run_id']} failed: {errors[0]}" + (f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""))


def retrain(version_uri: str, real_train: str, real_eval: str, s: RetrainSettings, *, run_id: str | None = None,
            force: bool = False, storage_path: str | None = None, address: str | None = None) -> Comparison:
    """Train every (arm, seed), compare them on the real eval set, write
    `comparison.json` + `report.html` into `<version>/retrain/<run-id>/`. A run
    already finished is returned without training (unless `force`)."""
    version_uri, real_train, real_eval, manifest, own_id = run_inputs(version_uri, real_train, real_eval, s)
    synthetic = yolo_uri(version_uri)
    run_id = run_id or own_id
    out = run_uri(version_uri, run_id)
    done = join(out, "comparison.json")
    if exists(done) and not force:
        comparison = json.loads(read_bytes(done))
        comparison["skipped"] = True  # already trained: the same trigger never trains twice
        return comparison
    if s.model.endswith(".pt") and not ((weights := on_disk(s.model)) and weights.exists()):
        raise RetrainError(f"{s.model}: weights not found; give a local .pt or a model .yaml (nothing is downloaded)")
    settings = s.model_dump(mode="json")
    if s.model.endswith(".pt"):
        settings["model"] = str(local_path(s.model).resolve())  # the workers' working directory is not ours
        s = RetrainSettings.model_validate(settings)
    t0 = time.time()
    plans: dict[int, dict[str, ArmPlan]] = {}
    counts: dict[int, dict] = {}
    with contextlib.ExitStack() as stack:  # the same selection the workers make, to size the budget
        dirs = [stack.enter_context(as_local_dir(u)) for u in (real_train, real_eval, synthetic)]
        for seed in s.seeds:
            sel = select(*dirs, s, seed, (real_train, real_eval, synthetic))
            plans[seed], counts[seed] = plan_arms(sel, s), sel.counts
    ensure_ray(address)
    storage = storage_path or str(Path(tempfile.gettempdir()) / "factory-ray-train")
    common = {"run_id": run_id, "out_uri": out, "real_train": real_train, "real_eval": real_eval, "synthetic": synthetic,
              "settings": settings, "storage_path": storage, "no_network": os.environ.get("FACTORY_NO_NETWORK") == "1"}
    at_once = min(s.parallel or runs_that_fit(s), len(s.seeds) * len(s.arms))  # `parallel` caps it; default: all that fit
    cpus = cpus_per_run(s, at_once)
    runs = [ArmRun(**common, arm=arm, seed=seed, plan=vars(plans[seed][arm]), cpus=cpus) for seed in s.seeds for arm in s.arms]
    _fit_all(runs, at_once)
    metrics = {arm: {seed: json.loads(read_bytes(join(out, arm, f"seed{seed}", "metrics.json"))) for seed in s.seeds}
               for arm in s.arms}
    comparison = compare(metrics, s)
    comparison.update(run_id=run_id, version=version_uri, synthetic=synthetic, real_train=real_train, real_eval=real_eval,
                      settings=settings, data={str(k): v for k, v in counts.items()},
                      manifest_version=(manifest or {}).get("version"), wall_seconds=round(time.time() - t0, 1),
                      created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    write_bytes(join(out, "report.html"), render_report(comparison).encode())
    write_bytes(done, json.dumps(comparison, indent=2).encode())  # last: its presence means "done"
    write_index(version_uri)
    comparison["skipped"] = False
    return comparison


def write_index(version_uri: str) -> str:
    """Rewrite `<name>/_extras/v<N>/retrain/index.html` from the finished runs' comparison.json."""
    root = retrain_root(version_uri)
    runs = [json.loads(read_bytes(join(root, f))) for f in list_files(root) if f.count("/") == 1 and f.endswith("/comparison.json")]
    write_bytes(join(root, "index.html"), render_index(runs).encode())
    return join(root, "index.html")
