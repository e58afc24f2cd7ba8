"""Train PDIG's SCE tokens and LISA adapter on a frozen Stable Diffusion base, under
Ray Train (TorchTrainer, DDP over workers). Paper settings: AdamW, lr 1e-4, weight
decay 0.01, MSE noise-prediction loss (eq. 1-2). The checkpoint holds only the
trained parts plus a bank of image-prompt embeddings per class (adapter.py).
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TypedDict

import numpy as np

from factory.data.vocab import PV_VISION_VALUES
from factory.generators.pdig.data import load_examples, read_image

RESUME_STATE = "train_state.pt"  # in Ray Train checkpoints only


@dataclass
class PDIGTrainConfig:
    data: str
    base: str
    out: str
    mask_classes: dict[int, str] = field(default_factory=lambda: dict(PV_VISION_VALUES))
    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 0.01
    num_tokens: int = 4
    resolution: int | None = None  # default: the base's native size (512 for SD1.5)
    limit: int | None = None  # use at most this many images
    bank_size: int = 32  # image-prompt embeddings kept per class
    drop_text: float = 0.05  # condition dropout, so classifier-free guidance works for both branches
    drop_image: float = 0.05
    num_workers: int = 1
    cpus_per_worker: float = 1.0  # a share below 1 lets workers fit beside other actors on a small node
    use_gpu: bool = False
    seed: int = 0
    storage_path: str | None = None


def _module(base, parts):
    import torch
    from torch import nn
    from torch.nn import functional as F

    class Model(nn.Module):
        """Frozen base + trainable parts; forward = the LDM loss of one batch."""

        def __init__(self):
            super().__init__()
            self.unet, self.vae, self.text_encoder = base.unet, base.vae, base.text_encoder
            self.projection = parts.lisa.projection
            self.scheduler = base.scheduler
            self.context = parts.lisa.context

        def forward(self, pixels, input_ids, image_embeds):
            with torch.no_grad():
                latents = self.vae.encode(pixels).latent_dist.sample() * self.vae.config.scaling_factor
            noise = torch.randn_like(latents)
            t = torch.randint(0, self.scheduler.config.num_train_timesteps, (latents.shape[0],), device=latents.device)
            noisy = self.scheduler.add_noise(latents, noise, t)
            text = self.text_encoder(input_ids)[0]
            self.context.num_text_tokens = text.shape[1]
            self.context.alpha = self.context.beta = 1.0
            cond = torch.cat([text, self.projection(image_embeds)], 1)
            pred = self.unet(noisy, t, encoder_hidden_states=cond).sample
            return F.mse_loss(pred.float(), noise.float())

    return Model()


def _prepare(example, size: int, rng: np.random.Generator):
    """(image tensor in [-1, 1] at size x size, its classes, one defect crop)."""
    import torch
    from PIL import Image

    from factory.generators.pdig.image_prompt import crop_and_align

    img = read_image(example.image)
    x = np.asarray(Image.fromarray(img).resize((size, size), Image.BICUBIC), dtype=np.float32) / 127.5 - 1.0
    cls, *box = example.boxes[int(rng.integers(len(example.boxes)))]
    crop = crop_and_align(img, tuple(box))
    return torch.from_numpy(x).permute(2, 0, 1), [c for c, *_ in example.boxes], crop


def build_bank(base, examples, classes, bank_size: int, device):
    """Up to `bank_size` CLIP embeddings of defect crops per class: the image prompts
    the generator draws from, so generation needs no extra files."""
    from factory.generators.pdig.data import read_image
    from factory.generators.pdig.image_prompt import crop_and_align, encode_crops

    crops: dict[str, list] = {c: [] for c in classes}
    for ex in examples:
        if all(len(v) >= bank_size for v in crops.values()):
            break
        img = None
        for c, *box in ex.boxes:
            if len(crops[c]) < bank_size:
                img = read_image(ex.image) if img is None else img
                crops[c].append(crop_and_align(img, tuple(box)))
    return {c: encode_crops(base.image_encoder, v, base.image_size, base.image_mean, base.image_std, device).float().cpu()
            for c, v in crops.items() if v} if crops else {}


def _load_examples(cfg: PDIGTrainConfig):
    from factory.storage import uri as storage

    with storage.as_local_dir(cfg.data) as root:
        return load_examples(root, {int(k): v for k, v in cfg.mask_classes.items()}, limit=cfg.limit)


class WorkerConfig(TypedDict):
    """`train_loop_config` of the PDIG `TorchTrainer`."""

    cfg: PDIGTrainConfig


@dataclass
class _Worker:
    """What one Ray Train worker trains: the frozen base, the trainable parts, its data."""

    cfg: PDIGTrainConfig
    rank: int
    device: Any  # torch.device
    rng: np.random.Generator
    examples: list
    classes: list[str]
    base: Any  # base_model.Base
    size: int  # training image side
    parts: Any  # adapter.Parts
    opt: Any  # torch.optim.AdamW
    step: int = 0
    losses: list[float] = field(default_factory=list)


def train_loop(config: WorkerConfig) -> None:
    """One Ray Train worker: load the base, add the parts, train on its Ray Data shard
    of example indices. Ray splits the indices equally, so every rank runs the same
    number of steps (DDP never waits on a rank that has finished). Rank 0 reports a
    checkpoint (parts + optimizer + position) every epoch; a restarted worker group
    resumes from `ray.train.get_checkpoint()`."""
    import ray.train
    import ray.train.torch

    w = _start_worker(config["cfg"])
    start_epoch = _restore(w)
    model = ray.train.torch.prepare_model(_module(w.base, w.parts))
    shard = ray.train.get_dataset_shard("train")
    cfg = w.cfg
    for epoch in range(start_epoch, cfg.epochs):
        if cfg.max_steps and w.step >= cfg.max_steps:
            break
        _train_epoch(w, model, shard, epoch)
        done = epoch == cfg.epochs - 1 or bool(cfg.max_steps and w.step >= cfg.max_steps)
        _report(w, epoch, done)
        if done:
            break


def _start_worker(cfg: PDIGTrainConfig) -> _Worker:
    import ray.train
    import ray.train.torch
    import torch

    from factory.generators.pdig.adapter import create_parts
    from factory.generators.pdig.base_model import load_base

    rank = ray.train.get_context().get_world_rank()
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.seed + rank)
    rng = np.random.default_rng([cfg.seed, rank])
    examples = _load_examples(cfg)
    classes = sorted({c for ex in examples for c, *_ in ex.boxes})
    base = load_base(cfg.base, device=str(device))
    parts = create_parts(base, classes, cfg.num_tokens)
    opt = torch.optim.AdamW(parts.trainable_parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return _Worker(cfg, rank, device, rng, examples, classes, base, cfg.resolution or base.native_size, parts, opt)


def _restore(w: _Worker) -> int:
    """Resume from the Ray Train checkpoint of a restarted worker group, if any; the first epoch to run."""
    import ray.train
    import torch

    restored = ray.train.get_checkpoint()
    if not restored:
        return 0
    with restored.as_directory() as d:
        state = torch.load(Path(d) / RESUME_STATE, map_location="cpu", weights_only=True)
    with torch.no_grad():
        for p, v in zip(w.parts.trainable_parameters(), state["params"]):
            p.copy_(v)
    w.opt.load_state_dict(state["optimizer"])
    w.step = int(state["step"])
    return int(state["epoch"]) + 1


def _train_epoch(w: _Worker, model, shard, epoch: int) -> None:
    """One pass over this rank's shard (or up to `max_steps`)."""
    import torch

    from factory.generators.pdig.image_prompt import encode_crops
    from factory.generators.pdig.sce import build_prompt

    cfg, base, device, rng = w.cfg, w.base, w.device, w.rng
    for batch_idx in shard.iter_batches(batch_size=cfg.batch_size, batch_format="numpy",
                                        local_shuffle_buffer_size=max(2 * cfg.batch_size, 16),
                                        local_shuffle_seed=cfg.seed * 1000 + epoch * 10 + w.rank):
        batch = [_prepare(w.examples[int(i)], w.size, rng) for i in batch_idx["id"]]
        pixels = torch.stack([b[0] for b in batch]).to(device)
        prompts = ["" if rng.random() < cfg.drop_text else build_prompt(b[1]) for b in batch]
        ids = base.tokenizer(prompts, padding="max_length", max_length=base.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids.to(device)
        embeds = encode_crops(base.image_encoder, [b[2] for b in batch], base.image_size, base.image_mean,
                              base.image_std, device)
        keep = torch.tensor([rng.random() >= cfg.drop_image for _ in batch], device=device)
        embeds = embeds * keep[:, None].to(embeds.dtype)
        loss = model(pixels, ids, embeds)
        w.opt.zero_grad(set_to_none=True)
        loss.backward()
        w.opt.step()
        w.losses.append(float(loss.detach()))
        w.step += 1
        if cfg.max_steps and w.step >= cfg.max_steps:
            break


def _report(w: _Worker, epoch: int, done: bool) -> None:
    """Every rank reports the epoch's metrics; rank 0 with a checkpoint (the image-prompt bank in the last one)."""
    import ray.train
    import torch
    from ray.train import Checkpoint

    from factory.generators.pdig.adapter import save_parts

    cfg = w.cfg
    metrics = {"loss": float(np.mean(w.losses[-20:])) if w.losses else float("nan"), "steps": w.step,
               "epochs": epoch + 1, "images": len(w.examples), "classes": w.classes}
    if w.rank != 0:
        ray.train.report(metrics)
        return
    if done:
        w.parts.bank = build_bank(w.base, w.examples, w.classes, cfg.bank_size, w.device)
    with tempfile.TemporaryDirectory() as tmp:
        save_parts(w.parts, tmp, extra={"base": cfg.base, "train": asdict(cfg) | {"steps": w.step}, "resolution": w.size})
        torch.save({"params": [p.detach().cpu() for p in w.parts.trainable_parameters()],
                    "optimizer": w.opt.state_dict(), "step": w.step, "epoch": epoch}, Path(tmp) / RESUME_STATE)
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp))


def train_pdig(cfg: PDIGTrainConfig) -> dict[str, Any]:
    """Run the TorchTrainer and copy the trained parts to `cfg.out`; returns the metrics."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from factory.storage import uri as storage

    storage_path = cfg.storage_path or tempfile.mkdtemp(prefix="pdig-train-")
    # absolute: the workers read them from a working directory that is not ours (and the base is recorded)
    cfg = replace(cfg, data=storage.absolute(cfg.data), base=storage.absolute(cfg.base))
    n = len(_load_examples(cfg))
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=WorkerConfig(cfg=cfg),
        # example indices, materialized (no read tasks competing with the workers for CPUs); Ray gives each rank an equal share
        datasets={"train": ray.data.range(n).materialize()},
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker={"CPU": cfg.cpus_per_worker}),
        run_config=RunConfig(name="pdig", storage_path=str(Path(storage_path).resolve())),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"PDIG training produced no checkpoint: {result.error}")
    with result.checkpoint.as_directory() as d:
        (Path(d) / RESUME_STATE).unlink(missing_ok=True)  # training state, not part of the product
        storage.upload_dir(d, cfg.out)
    return dict(result.metrics or {}) | {"out": cfg.out}
