"""Train DG2GAN under Ray Train: a `TorchTrainer` with DDP over N workers (gloo on
CPU, NCCL on GPU), as the paper trains it: Adam (lr 2e-4, betas 0.5/0.999), a
constant learning rate for the first `epochs_constant` epochs then linear decay
to zero over `epochs_decay` epochs (the paper's 100 + 100, scaled by
`epoch_scale`), batch 8 (global: split over the workers).

Data: the driver cuts both domains into crops (small image folders) and hands
them to Ray Train as two Ray Datasets; each worker holds its equal shard in memory
and draws unpaired random batches from it with a seed of its own. An epoch is
max(#defect-free, #defective) crops, as in CycleGAN, the same number of steps on
every rank.
Checkpoints: rank 0 reports weights + optimizer state + the config as a Ray Train
checkpoint after every `checkpoint_every` epochs and copies it to `out` (layout in
`factory.generators.dg2gan.checkpoint`). A restarted worker group resumes from
`ray.train.get_checkpoint()`; a run started again with the same `out` resumes
from the last epoch there.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any, TypedDict

import numpy as np

from factory.generators.dg2gan.steps import lr_factor, make_optimizers, sample_batch, train_step
from factory.ray_runtime import ensure_ray
from factory.training.common import unwrap


@dataclass
class TrainConfig:
    defect_free: str
    defective: str
    out: str
    class_name: str = "defect"
    image_size: int = 128
    channels: int = 1
    batch_size: int = 8
    lr: float = 2e-4
    epochs_constant: int = 100
    epochs_decay: int = 100
    epoch_scale: float = 1.0
    max_steps_per_epoch: int | None = None
    num_workers: int = 1
    cpus_per_worker: float = 1.0  # a share below 1 lets workers fit beside other actors on a small node
    use_gpu: bool = False
    seed: int = 0
    holdout: float = 0.0  # share of each domain's images left out (for evaluation), seeded split
    context: float = 1.5  # defect crop side / defect size; generation frames boxes the same way
    crops_per_image: int = 2  # defect-free crops per defect-free image
    max_images: int | None = None  # per domain, for quick runs
    checkpoint_every: int = 1
    # model
    ngf: int = 64
    n_blocks: int = 6
    ndf: int = 64
    n_layers: int = 3
    use_djs: bool = True
    mu: float = 0.05
    lambda_: float = 0.8
    beta: float = 0.5
    cycle_weight: float = 1.0

    @property
    def epochs(self) -> tuple[int, int]:
        """(constant, decay) epochs after scaling; at least one constant epoch."""
        return max(1, round(self.epochs_constant * self.epoch_scale)), max(0, round(self.epochs_decay * self.epoch_scale))

    def model_config(self):
        from factory.generators.dg2gan.model import DG2GANConfig

        return DG2GANConfig(
            channels=self.channels, image_size=self.image_size, ngf=self.ngf, n_blocks=self.n_blocks, ndf=self.ndf,
            n_layers=self.n_layers, lambda_=self.lambda_, beta=self.beta, mu=self.mu, cycle_weight=self.cycle_weight,
            use_djs=self.use_djs, class_name=self.class_name,
        )


def load_training_data(tc: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """(defect-free crops, defective crops) as uint8 N x S x S x C, train split only."""
    from factory.data.folders import scan
    from factory.storage.uri import as_local_dir
    from factory.training.images import load_crops, split_records

    out = []
    for role, src in (("defect-free", tc.defect_free), ("defective", tc.defective)):
        with as_local_dir(str(src)) as root:
            records, _ = split_records(scan(root), tc.holdout, tc.seed)
            if tc.max_images:
                records = records[: tc.max_images]
            out.append(load_crops(records, role, tc.image_size, tc.channels, context=tc.context, crops_per_image=tc.crops_per_image, seed=tc.seed))
    return out[0], out[1]


class WorkerConfig(TypedDict):
    """`train_loop_config` of the DG2GAN `TorchTrainer`."""

    tc: TrainConfig
    n_total: int  # defect-free crops over all ranks
    d_total: int  # defective crops over all ranks


@dataclass
class _Nets:
    """What one worker trains: the generators, the discriminators and their optimizers."""

    gens: Any  # model.Generators (DDP-wrapped after `prepare_model`)
    discs: Any  # model.Discriminators
    opt_g: Any  # torch.optim.Adam
    opt_d: Any


def train_loop_per_worker(config: WorkerConfig) -> None:
    """The Ray Train worker loop: resume, then train epoch by epoch; rank 0 checkpoints."""
    import ray.train
    import ray.train.torch
    import torch

    tc = config["tc"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(tc.seed)
    cfg = tc.model_config()
    data_n, data_d = _shard_array(ray.train.get_dataset_shard("n")), _shard_array(ray.train.get_dataset_shard("d"))
    nets, start_epoch, history = _resume(tc, cfg, device)

    constant, decay = tc.epochs
    per_worker = max(1, tc.batch_size // world)
    steps = math.ceil(max(config["n_total"], config["d_total"]) / (per_worker * world))  # equal on every rank
    if tc.max_steps_per_epoch:
        steps = min(steps, tc.max_steps_per_epoch)
    for epoch in range(start_epoch, constant + decay):
        for opt in (nets.opt_g, nets.opt_d):
            for group in opt.param_groups:
                group["lr"] = tc.lr * lr_factor(epoch, constant, decay)
        rng = np.random.default_rng([tc.seed, rank, epoch])
        sums: dict[str, float] = {}
        t0 = time.time()
        for _ in range(steps):
            n = sample_batch(data_n, per_worker, rng, device)
            d = sample_batch(data_d, per_worker, rng, device)
            for k, v in train_step(nets.gens, nets.discs, nets.opt_g, nets.opt_d, n, d, cfg).items():
                sums[k] = sums.get(k, 0.0) + v
        metrics = {k: v / steps for k, v in sums.items()}
        metrics.update(epoch=epoch, lr=nets.opt_g.param_groups[0]["lr"], seconds=time.time() - t0, steps=steps)
        history.append(metrics)
        _end_epoch(tc, cfg, nets, rank, epoch, history)


def _resume(tc: TrainConfig, cfg, device) -> tuple[_Nets, int, list[dict[str, float]]]:
    """Fresh networks, or the last checkpoint's (a restarted worker group's, else the one at `tc.out`),
    prepared for DDP; the first epoch to run and the metrics history so far."""
    import ray.train
    import ray.train.torch
    import torch

    from factory.generators.dg2gan.checkpoint import load_train_state, resolve
    from factory.generators.dg2gan.model import build
    from factory.storage.uri import to_uri

    gens, discs = build(cfg, seed=tc.seed)
    opt_g, opt_d = make_optimizers(gens, discs, tc.lr)
    start_epoch, history = 0, []
    restored = ray.train.get_checkpoint()
    with restored.as_directory() if restored else contextlib.nullcontext() as local:
        ck = resolve(to_uri(local)) if local else resolve(tc.out)
        if ck is not None:  # resume
            g_sd, d_sd, state = load_train_state(ck)
    if ck is not None:
        gens.load_state_dict(g_sd)
        discs.load_state_dict(d_sd)
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        start_epoch, history = int(state["epoch"]) + 1, list(state.get("history", []))
    gens = ray.train.torch.prepare_model(gens)
    discs = ray.train.torch.prepare_model(discs)
    for opt in (opt_g, opt_d):  # optimizer state follows the parameters' device
        for st in opt.state.values():
            for k, v in st.items():
                if torch.is_tensor(v):
                    st[k] = v.to(device)
    return _Nets(gens, discs, opt_g, opt_d), start_epoch, history


def _end_epoch(tc: TrainConfig, cfg, nets: _Nets, rank: int, epoch: int, history: list[dict[str, float]]) -> None:
    """Report the epoch; rank 0 prints it and, every `checkpoint_every` epochs and at the end,
    writes a checkpoint to `tc.out` and reports it to Ray Train."""
    import ray.train

    from factory.generators.dg2gan.checkpoint import save_checkpoint
    from factory.storage.uri import to_uri, upload_dir

    constant, decay = tc.epochs
    metrics = history[-1]
    last = epoch == constant + decay - 1
    if rank == 0:
        print(f"[dg2gan {tc.class_name}] epoch {epoch + 1}/{constant + decay} " + " ".join(f"{k}={metrics[k]:.4f}" for k in ("G", "cycle", "D") if k in metrics), flush=True)
    if rank == 0 and ((epoch + 1) % tc.checkpoint_every == 0 or last):
        state = {"opt_g": nets.opt_g.state_dict(), "opt_d": nets.opt_d.state_dict(), "epoch": epoch, "history": history}
        with tempfile.TemporaryDirectory() as tmp:
            save_checkpoint(to_uri(tmp), epoch, cfg, unwrap(nets.gens), unwrap(nets.discs), state, asdict(tc), metrics)
            upload_dir(tmp, tc.out)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
    else:
        ray.train.report(metrics)


def _shard_array(shard) -> np.ndarray:
    """A worker's whole Ray Data shard of crops as one uint8 N x S x S x C array."""
    return np.concatenate([b["data"] for b in shard.iter_batches(batch_size=4096, batch_format="numpy")])


def check_sources(tc: TrainConfig) -> None:
    """Fail before any Ray worker starts when a data folder is missing."""
    from factory.storage import uri as U

    for what, src in (("defect-free", tc.defect_free), ("defective", tc.defective)):
        if not U.is_folder(src):
            raise FileNotFoundError(f"{what} images: no such folder or prefix: {src}")


class TrainResult(TypedDict):
    """What `train` returns."""

    checkpoint: str  # the last epoch's folder
    epoch: int
    metrics: dict[str, float]  # the last epoch's
    resumed: bool  # nothing to train: `out` already held the last epoch
    trained: bool


def train(tc: TrainConfig, storage_path: str | None = None) -> TrainResult:
    """Run training with a Ray Train TorchTrainer; returns the last checkpoint's URI, epoch and metrics.

    Needs Ray to be initialized (or starts an embedded local cluster)."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from factory.generators.dg2gan.checkpoint import read_config, resolve
    from factory.storage.uri import to_uri

    check_sources(tc)
    if tc.out:  # absolute: the workers write it, and their working directory is not ours
        tc.out = to_uri(tc.out)
    ensure_ray()
    constant, decay = tc.epochs
    ck = resolve(tc.out)
    if ck is not None and read_config(ck)["epoch"] >= constant + decay - 1:
        return _result(ck, resumed=True, trained=False)
    data_n, data_d = load_training_data(tc)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=WorkerConfig(tc=tc, n_total=len(data_n), d_total=len(data_d)),
        datasets={"n": ray.data.from_numpy(data_n), "d": ray.data.from_numpy(data_d)},
        scaling_config=ScalingConfig(num_workers=tc.num_workers, use_gpu=tc.use_gpu,
                                     resources_per_worker={"CPU": tc.cpus_per_worker}),
        run_config=RunConfig(
            name=f"dg2gan-{tc.class_name}-{int(time.time())}",
            storage_path=storage_path or tempfile.mkdtemp(prefix="dg2gan-ray-"),
        ),
    )
    trainer.fit()
    ck = resolve(tc.out)
    if ck is None:
        raise RuntimeError(f"training finished but no checkpoint was written to {tc.out}")
    return _result(ck, resumed=False, trained=True)


def _result(ck: str, resumed: bool, trained: bool) -> TrainResult:
    from factory.generators.dg2gan.checkpoint import read_config

    c = read_config(ck)
    return TrainResult(checkpoint=ck, epoch=c["epoch"], metrics=c.get("metrics", {}), resumed=resumed, trained=trained)
