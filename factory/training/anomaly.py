"""Train the quality gate's UIIDD anomaly model on defect-free images under Ray Train.

    train_anomaly(normal="file:///data/ok", out="file:///ckpt/uiidd")

The driver loads and preprocesses the images, hands them to a `TorchTrainer` as a
Ray Dataset (each worker trains on its shard; DDP when there are several), takes
the final checkpoint back, calibrates it (term normalization + thresholds by F1-max,
Youden and recall >= 90%, on a held-out split) and writes `<out>/model.pt` with its
thresholds and preprocessing config. No labels and no defect images are needed:
thresholds come from synthetic defects painted on held-out images unless real
anomalies with masks are given (`val_anomalous`).
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from factory.data.folders import list_images
from factory.ray_runtime import ensure_ray


@dataclass
class AnomalyTrainConfig:
    image_size: int = 128
    width: int = 16
    fused: int = 32
    bottleneck: int = 16
    heads: int = 2
    tau: float = 1.0
    epochs: int = 20
    batch_size: int = 16
    lr: float = 2e-4
    noise_std: float = 0.02  # eq. 12 Gaussian noise on the input (a denoising objective)
    flips: bool = True  # eq. 12 augmentation: random horizontal/vertical flips
    val_fraction: float = 0.2
    seed: int = 0
    lcn: bool = False
    homomorphic: bool = False
    backbone: str | None = None  # a local backbone state dict to start from
    threads: int = 1  # torch threads per worker (more spin-waits badly on a busy, shared CPU)
    losses: dict[str, float] = field(default_factory=dict)  # overrides of LossWeights
    max_images: int | None = None

    def model_config(self):
        from factory.quality.anomaly.model import ModelConfig

        return ModelConfig(self.image_size, 1, self.width, self.fused, self.bottleneck, self.heads, self.tau)

    def preprocess_config(self):
        from factory.quality.anomaly.preprocess import PreprocessConfig

        return PreprocessConfig(image_size=self.image_size, lcn=self.lcn, homomorphic=self.homomorphic)


# --- data ---------------------------------------------------------------------


def read_gray(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("L"))


def load_folder(uri: str, pre, max_images: int | None = None, with_masks: bool = False):
    """Preprocess every image under a folder/URI -> N x 1 x S x S float32 (and N x S x S bool
    masks from `X.png` beside `X.jpg`, >= 128, when with_masks)."""
    from PIL import Image

    from factory.quality.anomaly.preprocess import preprocess
    from factory.storage.uri import as_local_dir

    with as_local_dir(uri) as root:
        paths = list_images(root)
        if max_images:
            paths = paths[:max_images]
        if not paths:
            raise FileNotFoundError(f"no images under {uri}")
        x = np.stack([preprocess(read_gray(p), pre) for p in paths]).astype(np.float32)
        if not with_masks:
            return x
        masks = []
        for p in paths:
            m = p.with_suffix(".png")
            if p.suffix.lower() == ".png" or not m.exists():
                raise FileNotFoundError(f"no mask {m.name} beside {p}")
            with Image.open(m) as im:
                im = im.convert("L").resize((pre.image_size, pre.image_size), Image.NEAREST)
                masks.append(np.asarray(im) >= 128)
        return x, np.stack(masks)


def split(x: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    idx = np.random.default_rng(seed).permutation(len(x))
    n_val = max(1, int(round(len(x) * val_fraction))) if len(x) > 1 else 0
    return x[idx[n_val:]], x[idx[:n_val]]


# --- the training step (plain torch; also used without Ray in tests) ---------


def augment(x, noise_std: float, flips: bool, gen):
    """Eq. 12: x_tilde = T(x) + noise; T = random flips. Returns (noisy input, clean target)."""
    import torch

    if flips:
        if torch.rand((), generator=gen) < 0.5:
            x = x.flip(-1)
        if torch.rand((), generator=gen) < 0.5:
            x = x.flip(-2)
    noisy = x + noise_std * torch.randn(x.shape, generator=gen) if noise_std > 0 else x
    return noisy, x


def train_step(gen_net, disc_net, opt_g, opt_d, x_in, x_target, w) -> dict[str, float]:
    """One adversarial step: discriminator (eq. 13) then generator (eq. 14)."""
    import torch

    from factory.quality.anomaly.loss import discriminator_loss, generator_loss

    out = gen_net(x_in)
    x_hat = out["x_hat"]
    B = len(x_target)
    logits, _, _ = disc_net(torch.cat([x_target, x_hat.detach()]))
    d_loss = discriminator_loss(logits[:B], logits[B:], _unwrap(disc_net), w.d_reg)
    opt_d.zero_grad(set_to_none=True)
    d_loss.backward()
    opt_d.step()

    logits, feats, _ = disc_net(torch.cat([x_target, x_hat]))
    parts = generator_loss(x_target, out, logits[B:], [f[:B] for f in feats], [f[B:] for f in feats], _unwrap(gen_net).ae, w)
    opt_g.zero_grad(set_to_none=True)
    parts["total"].backward()
    opt_g.step()
    return {"d": d_loss.item(), **{f"g_{k}": v.item() for k, v in parts.items()}}


def _unwrap(m):
    return getattr(m, "module", m)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train worker: trains on its dataset shard; rank 0 reports the final checkpoint."""
    import ray.train
    import torch
    from ray.train.torch import prepare_model

    from factory.quality.anomaly.loss import LossWeights
    from factory.quality.anomaly.model import UIIDDModel

    cfg = AnomalyTrainConfig(**config)
    torch.set_num_threads(max(1, cfg.threads))
    ctx = ray.train.get_context()
    torch.manual_seed(cfg.seed + ctx.get_world_rank())
    gen = torch.Generator().manual_seed(cfg.seed + 1000 + ctx.get_world_rank())
    model = UIIDDModel(cfg.model_config())
    if cfg.backbone:
        model.load_backbone(cfg.backbone)
    weights = LossWeights(**cfg.losses)
    g_net = prepare_model(model.generator)
    d_net = prepare_model(model.discriminator)
    opt_g = torch.optim.Adam(g_net.parameters(), lr=cfg.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d_net.parameters(), lr=cfg.lr, betas=(0.5, 0.999))
    shard = ray.train.get_dataset_shard("train")
    device = ray.train.torch.get_device()
    t0 = time.time()
    for epoch in range(cfg.epochs):
        sums, n = {}, 0
        for batch in shard.iter_torch_batches(batch_size=cfg.batch_size, local_shuffle_buffer_size=256, drop_last=False):
            x = batch["data"].float()
            x_in, x_t = augment(x, cfg.noise_std, cfg.flips, gen)
            logs = train_step(g_net, d_net, opt_g, opt_d, x_in.to(device), x_t.to(device), weights)
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + v
            n += 1
        metrics = {k: v / max(n, 1) for k, v in sums.items()} | {"epoch": epoch, "seconds": time.time() - t0}
        if epoch < cfg.epochs - 1:
            ray.train.report(metrics)
            continue
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if ctx.get_world_rank() == 0:
                torch.save({"model_config": asdict(cfg.model_config()), "state_dict": model.state_dict()},
                           os.path.join(tmp, "weights.pt"))
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=checkpoint)


# --- driver -------------------------------------------------------------------


def fit_anomaly_model(x_train: np.ndarray, cfg: AnomalyTrainConfig, num_workers: int = 1, use_gpu: bool = False,
                      storage_path: str | None = None):
    """Run the Ray Train TorchTrainer on preprocessed images (N x 1 x S x S); returns
    (UIIDDModel, Ray Train result)."""
    import ray
    import torch
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from factory.quality.anomaly.model import ModelConfig, UIIDDModel

    ensure_ray()
    cpus = max(1, min(cfg.threads, int(ray.cluster_resources().get("CPU", 1))))
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=asdict(cfg),
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu, resources_per_worker={"CPU": cpus}),
        datasets={"train": ray.data.from_numpy(x_train)},
        run_config=RunConfig(name=f"uiidd-{int(time.time())}", storage_path=storage_path or tempfile.mkdtemp(prefix="uiidd-ray-")),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"Ray Train finished without a checkpoint: {result.error}")
    with result.checkpoint.as_directory() as d:
        state = torch.load(os.path.join(d, "weights.pt"), map_location="cpu", weights_only=False)
    model = UIIDDModel(ModelConfig(**state["model_config"]))
    model.load_state_dict(state["state_dict"])
    return model, result


def train_anomaly(normal: str, out: str | None, cfg: AnomalyTrainConfig | None = None, num_workers: int = 1,
                  use_gpu: bool = False, val_anomalous: str | None = None, storage_path: str | None = None,
                  x: np.ndarray | None = None) -> dict:
    """Train, calibrate and save (when `out` is given); returns a summary (paths, timings,
    calibration AUROCs) with the detector under "detector". `x` passes preprocessed
    images directly (then `normal` only names them)."""
    import torch

    from factory.quality.anomaly.calibrate import calibrate
    from factory.quality.anomaly.detector import AnomalyDetector

    cfg = cfg or AnomalyTrainConfig()
    if cfg.backbone and not Path(cfg.backbone).exists():
        raise FileNotFoundError(f"backbone checkpoint not found: {cfg.backbone} (give a local state-dict file, or omit it to train from scratch)")
    pre = cfg.preprocess_config()
    if x is None:
        x = load_folder(normal, pre, cfg.max_images)
    x_train, x_val = split(x, cfg.val_fraction, cfg.seed)
    if len(x_val) == 0:
        raise ValueError(f"need at least 2 defect-free images under {normal} (one for training, one held out), got {len(x)}")
    t0 = time.time()
    model, result = fit_anomaly_model(x_train, cfg, num_workers, use_gpu, storage_path)
    train_s = time.time() - t0
    det = AnomalyDetector(model, pre, meta={
        "trained_on": normal, "train_images": int(len(x_train)), "val_images": int(len(x_val)),
        "train_config": asdict(cfg), "backbone": cfg.backbone or "trained from scratch on the defect-free images",
        "train_seconds": round(train_s, 1), "workers": num_workers,
    })
    x_anom = masks = None
    if val_anomalous:
        xa, ma = load_folder(val_anomalous, pre, with_masks=True)
        x_anom, masks = torch.from_numpy(xa), torch.from_numpy(ma)
    report = calibrate(det, torch.from_numpy(x_val), x_anom, masks, seed=cfg.seed)
    det.meta["calibration"] = report
    model_uri = det.save(out) if out else None
    return {"model": model_uri, "train_seconds": train_s, "train_images": len(x_train), "val_images": len(x_val),
            "metrics": result.metrics, **report, "image_thresholds": det.calib.image_thresholds,
            "pixel_thresholds": det.calib.pixel_thresholds, "detector": det}
