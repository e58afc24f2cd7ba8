"""The anomaly model under Ray Train: the worker loop (each rank trains on an equal
shard for the same number of steps, reports a checkpoint of plain state dicts every
epoch and resumes from `ray.train.get_checkpoint()`), and `fit_anomaly_model`, the
driver side that runs the `TorchTrainer` and loads the last checkpoint."""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, TypedDict

import numpy as np

from factory.ray_runtime import ensure_ray
from factory.training.anomaly import AnomalyTrainConfig
from factory.training.anomaly_steps import augment, disc_batch, head_step, train_step
from factory.training.common import unwrap

if TYPE_CHECKING:
    import torch

    from factory.quality.anomaly.loss import LossWeights
    from factory.quality.anomaly.simulate import DefectBank


class WorkerConfig(TypedDict):
    """`train_loop_config` of the anomaly `TorchTrainer`."""

    cfg: dict  # dataclasses.asdict(AnomalyTrainConfig)
    steps_per_epoch: int
    bank: dict[str, list[np.ndarray]] | None  # DefectBank.to_arrays()


def _nets_and_optimizers(cfg: AnomalyTrainConfig) -> tuple[dict, dict]:
    """The generator and discriminator (and, for uiidd-disc, the head) by key g/d/h, with their
    Adam optimizers; seeded, so every rank starts from the same weights."""
    import torch

    from factory.quality.anomaly.disc_head import DiscHead
    from factory.quality.anomaly.model import UIIDDModel

    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    model = UIIDDModel(cfg.model_config())
    head = DiscHead(1, cfg.head_width) if cfg.method == "uiidd-disc" else None
    if cfg.backbone:
        model.load_backbone(cfg.backbone)
    nets = {"g": model.generator, "d": model.discriminator} | ({"h": head} if head is not None else {})
    lrs = {"g": cfg.lr, "d": cfg.lr, "h": cfg.head_lr}
    opts = {k: torch.optim.Adam(n.parameters(), lr=lrs[k], betas=(0.5, 0.999) if k != "h" else (0.9, 0.999)) for k, n in nets.items()}
    return nets, opts


def read_checkpoint(checkpoint) -> tuple[dict, dict]:
    """(the state dicts `net_<k>`, `opt_<k>`; progress.json) of a Ray Train checkpoint of this loop."""
    import torch

    with checkpoint.as_directory() as d:
        state = torch.load(os.path.join(d, "state.pt"), map_location="cpu", weights_only=True)
        with open(os.path.join(d, "progress.json")) as f:
            return state, json.load(f)


def _resume(nets: dict, opts: dict) -> int:
    """Load the latest checkpoint of this run (if any) into the nets and optimizers; the epoch to start at."""
    import ray.train

    resumed = ray.train.get_checkpoint()
    if not resumed:
        return 0
    state, progress = read_checkpoint(resumed)
    for k in nets:
        nets[k].load_state_dict(state[f"net_{k}"])
        opts[k].load_state_dict(state[f"opt_{k}"])
    return progress["epoch"] + 1


@dataclass
class _Worker:
    """One rank's training: its (DDP-wrapped) nets and optimizers by key g/d/h."""

    cfg: AnomalyTrainConfig
    nets: dict
    opts: dict
    weights: LossWeights
    device: torch.device
    bank: DefectBank | None
    rank: int

    def step(self, x, gen, rng) -> dict[str, float]:
        """One batch: the adversarial step (and, for uiidd-disc, the head's step); the losses."""
        cfg, nets, opts = self.cfg, self.nets, self.opts
        if "h" not in nets:
            x_in, x_t = augment(x, cfg.noise_std, cfg.flips, gen)
            logs, _ = train_step(nets["g"], nets["d"], opts["g"], opts["d"], x_in.to(self.device), x_t.to(self.device), self.weights)
            return logs
        x_in, x_t, m = disc_batch(x, cfg, gen, rng, self.bank)
        x_in, x_t = x_in.to(self.device), x_t.to(self.device)
        logs, x_hat = train_step(nets["g"], nets["d"], opts["g"], opts["d"], x_in, x_t, self.weights)
        logs["head"] = head_step(nets["h"], opts["h"], x_in, x_hat, m.to(self.device))
        return logs

    def epoch(self, shard, epoch: int, steps: int) -> dict[str, float]:
        """`steps` batches of this rank's shard (seeded per epoch and rank); the mean of each loss."""
        import torch

        cfg, rank = self.cfg, self.rank
        gen = torch.Generator().manual_seed(cfg.seed + 1000 * epoch + rank)
        rng = np.random.default_rng([cfg.seed, epoch, rank])
        sums: dict[str, float] = {}
        n = 0
        for batch in shard.iter_torch_batches(batch_size=cfg.batch_size, local_shuffle_buffer_size=256, drop_last=True,
                                              local_shuffle_seed=cfg.seed + 1000 * epoch + rank):
            if n == steps:
                break
            for k, v in self.step(batch["data"].float().cpu() / 255.0, gen, rng).items():
                sums[k] = sums.get(k, 0.0) + v
            n += 1
        if n != steps:
            raise RuntimeError(f"rank {rank} got {n} batches in epoch {epoch}, expected {steps} (unequal shards)")
        return {k: v / max(n, 1) for k, v in sums.items()}

    def checkpoint(self, folder: str, epoch: int):
        """Write the nets' and optimizers' state dicts + progress.json into `folder`; its Ray Train checkpoint."""
        import ray.train
        import torch

        state = {f"net_{k}": unwrap(w).state_dict() for k, w in self.nets.items()}
        state |= {f"opt_{k}": o.state_dict() for k, o in self.opts.items()}
        torch.save(state, os.path.join(folder, "state.pt"))
        with open(os.path.join(folder, "progress.json"), "w") as f:
            json.dump({"epoch": epoch, "method": self.cfg.method}, f)
        return ray.train.Checkpoint.from_directory(folder)


def train_loop_per_worker(config: WorkerConfig) -> None:
    """Ray Train worker: `steps_per_epoch` batches of its shard per epoch (equal on every rank);
    a checkpoint every epoch (rank 0 writes it); resumes from the latest one."""
    import ray.train
    import torch
    from ray.train.torch import get_device, prepare_model

    from factory.quality.anomaly.loss import LossWeights
    from factory.quality.anomaly.simulate import DefectBank

    cfg = AnomalyTrainConfig(**config["cfg"])
    steps = int(config["steps_per_epoch"])
    bank = DefectBank(**config["bank"]) if config.get("bank") else None
    torch.set_num_threads(max(1, cfg.threads))
    rank = ray.train.get_context().get_world_rank()
    nets, opts = _nets_and_optimizers(cfg)
    start = _resume(nets, opts)
    worker = _Worker(cfg, {k: prepare_model(n) for k, n in nets.items()}, opts, LossWeights(**cfg.losses), get_device(),
                     bank, rank)
    shard = ray.train.get_dataset_shard("train")
    t0 = time.time()
    for epoch in range(start, cfg.epochs):
        metrics = worker.epoch(shard, epoch, steps) | {"epoch": epoch, "steps": steps, "seconds": time.time() - t0,
                                                       "first_epoch": start}  # > 0: resumed
        with tempfile.TemporaryDirectory() as tmp:
            ray.train.report(metrics, checkpoint=worker.checkpoint(tmp, epoch) if rank == 0 else None)


# --- driver -------------------------------------------------------------------


def fit_anomaly_model(patches: np.ndarray, cfg: AnomalyTrainConfig, bank=None, num_workers: int = 1, use_gpu: bool = False,
                      storage_path: str | None = None, run_name: str | None = None):
    """Run the TorchTrainer on uint8 patches (N x 1 x P x P); returns (UIIDDModel, DiscHead | None,
    Ray Train result). The same `storage_path` + `run_name` resumes an interrupted run."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from factory.quality.anomaly.disc_head import DiscHead
    from factory.quality.anomaly.model import UIIDDModel

    ensure_ray()
    steps = (len(patches) // num_workers) // cfg.batch_size
    if steps < 1:
        raise ValueError(f"{len(patches)} patches cannot give each of {num_workers} workers one batch of {cfg.batch_size}")
    cpus = cfg.cpus_per_worker or max(1, min(cfg.threads, int(ray.cluster_resources().get("CPU", 1))))
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=WorkerConfig(cfg=asdict(cfg), steps_per_epoch=steps, bank=bank.to_arrays() if bank else None),
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu, resources_per_worker={"CPU": cpus}),
        datasets={"train": ray.data.from_numpy(patches)},
        run_config=RunConfig(name=run_name or f"{cfg.method}-{int(time.time())}",
                             storage_path=storage_path or tempfile.mkdtemp(prefix="anomaly-ray-")),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"Ray Train finished without a checkpoint: {result.error}")
    state, _ = read_checkpoint(result.checkpoint)
    model = UIIDDModel(cfg.model_config())
    model.generator.load_state_dict(state["net_g"])
    model.discriminator.load_state_dict(state["net_d"])
    head = None
    if cfg.method == "uiidd-disc":
        head = DiscHead(1, cfg.head_width)
        head.load_state_dict(state["net_h"])
    return model, head, result

