"""Inference wrapper: preprocessing + UIIDD model + heat map (eq. 15) + calibration
(per-term normalization and thresholds), saved and loaded as one checkpoint file.

Heat map (eq. 15, our reading of it): per pixel,
    A(p) = w_rec * n(|x - x_hat|^2)
         + w_feat * n(1 - SSIM(Z, Z_hat))                 (eq. 7, on the fused features)
         + lambda_d * n(sum_l |phi_l(x) - phi_l(x_hat)|^2 * N diag(A_D))
where n() standardizes each term on defect-free calibration images (so the weights
mean the same on every data set): per position by default (`normalize: position`,
a mean and std map per term, the std floored at a quarter of the term's global std),
because on roughly aligned parts (tiles, cells) the normal error is not uniform:
tile edges, curved borders and lighting gradients reconstruct worse everywhere and
a single global mean/std lets them dominate the image score (magnetic tile, 64 px:
image AUROC 0.48 with global, 0.61 with per-position normalization; see BENCHMARKS.md);
`normalize: global` uses one mean/std per term. The discriminator term
is weighted at the attention level by the diagonal of the discriminator's
self-attention (N diag(A) = 1 for uniform attention), then Gaussian smoothing.
The image score is the maximum of the smoothed map.

Two methods share this wrapper (`method`): "uiidd" scores with eq. 15; "uiidd-disc"
scores with the discriminative head (`disc_head.py`), the sigmoid of its per-pixel
logit given the image and the UIIDD reconstruction. With `patch` set (every new
checkpoint), images are scored at their native scale in overlapping P x P tiles and
the map is stitched back (`patches.py`); n() is then global (tiles are not aligned).
Without it (old checkpoints, tiny tests) images are squashed to image_size.

Checkpoint: `<uri>/model.pt` holds plain state dicts only (loaded with
weights_only=True) and `<uri>/config.json` everything else (configs, calibration).
`AnomalyDetector.load` also reads `--method patchcore` checkpoints (format patchcore-v1)
and returns a `PatchCoreDetector` (`patchcore.py`), which has the same scoring interface.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from factory.generators.base import CheckpointError
from factory.quality.anomaly.disc_head import DiscHead
from factory.quality.anomaly.model import ModelConfig, UIIDDModel
from factory.quality.anomaly.patches import PatchConfig, rescale, stitch, tiles
from factory.quality.anomaly.postprocess import gaussian_smooth
from factory.quality.anomaly.preprocess import PreprocessConfig, preprocess_batch

FORMAT = "uiidd-v2"
LEGACY_FORMAT = "uiidd-v1"  # one pickled dict in model.pt (configs inside); still loadable
PATCHCORE_FORMAT = "patchcore-v1"  # a `factory.quality.anomaly.patchcore` checkpoint; `load` returns a PatchCoreDetector
METHODS = ("uiidd", "uiidd-disc")
TERMS = ("rec", "feat", "disc")


@dataclass
class ScoreConfig:
    w_rec: float = 1.0
    w_feat: float = 1.0
    lambda_d: float = 0.5  # eq. 15's discriminator weight
    sigma: float = 2.0  # Gaussian smoothing, in model pixels (image_size)
    ssim_window: int = 5
    normalize: str = "position"  # "position": per-pixel mean/std maps of each term; "global": one mean/std per term

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Calibration:
    """Per-term normalization and the thresholds chosen by each rule."""

    term_mean: dict[str, float] = field(default_factory=lambda: {t: 0.0 for t in TERMS})
    term_std: dict[str, float] = field(default_factory=lambda: {t: 1.0 for t in TERMS})
    term_mean_map: dict[str, list] = field(default_factory=dict)  # term -> S x S mean (nested lists), for normalize=position
    term_std_map: dict[str, list] = field(default_factory=dict)  # term -> S x S std (floored), for normalize=position
    image_thresholds: dict[str, float] = field(default_factory=dict)  # rule -> threshold on image scores
    pixel_thresholds: dict[str, float] = field(default_factory=dict)  # rule -> threshold on heat-map values
    # rule -> share of a defect-free image above that rule's pixel threshold (a high quantile over the
    # calibration split): the gate's outside-the-boxes limit is never below it (empty: older checkpoints)
    outside_fractions: dict[str, float] = field(default_factory=dict)
    source: str = ""  # what the thresholds were chosen on

    def threshold(self, level: str, rule: str) -> float:
        """The `image` or `pixel` threshold of a rule (`f1`, `youden`, `recall90`)."""
        table = self.image_thresholds if level == "image" else self.pixel_thresholds
        if rule not in table:
            raise ValueError(f"the anomaly checkpoint has no {level} threshold for rule {rule!r}; it has {sorted(table)}")
        return table[rule]


def local_ssim(a: torch.Tensor, b: torch.Tensor, window: int = 5, c1: float = 1e-4, c2: float = 9e-4) -> torch.Tensor:
    """Eq. 7's local structural similarity per position, averaged over channels: B x 1 x H x W."""
    pad = window // 2
    mu_a = F.avg_pool2d(a, window, 1, pad, count_include_pad=False)
    mu_b = F.avg_pool2d(b, window, 1, pad, count_include_pad=False)
    var_a = F.avg_pool2d(a * a, window, 1, pad, count_include_pad=False) - mu_a**2
    var_b = F.avg_pool2d(b * b, window, 1, pad, count_include_pad=False) - mu_b**2
    cov = F.avg_pool2d(a * b, window, 1, pad, count_include_pad=False) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.mean(1, keepdim=True)


def raw_terms(model: UIIDDModel, x: torch.Tensor, window: int = 5) -> dict[str, torch.Tensor]:
    """The three un-normalized per-pixel terms of eq. 15, each B x 1 x S x S."""
    S = x.shape[-1]
    out = model.generator(x)
    x_hat = out["x_hat"]
    rec = (x - x_hat).pow(2).mean(1, keepdim=True)
    feat = 1.0 - local_ssim(out["z"], out["z_hat"], window)
    feat = F.interpolate(feat, size=(S, S), mode="bilinear", align_corners=False)
    _, fr, attn = model.discriminator(x)
    _, ff, _ = model.discriminator(x_hat)
    disc = torch.zeros_like(rec)
    for i, (a, b) in enumerate(zip(fr, ff)):
        d = (F.group_norm(a, 1) - F.group_norm(b, 1)).pow(2).mean(1, keepdim=True)
        if i == len(fr) - 1:  # attention level: weight by N * diag(attention)
            n = attn.shape[-1]
            diag = torch.diagonal(attn, dim1=1, dim2=2).reshape(d.shape) * n
            d = d * diag
        disc = disc + F.interpolate(d, size=(S, S), mode="bilinear", align_corners=False)
    return {"rec": rec, "feat": feat, "disc": disc / len(fr)}


def save_checkpoint(uri: str, weights: dict, config: dict) -> str:
    """A gate checkpoint, whatever its method: `<uri>/model.pt` (tensors, loaded with
    `weights_only=True`) + `<uri>/config.json`; returns the model URI."""
    import json

    from factory.storage.uri import join, write_bytes

    buf = io.BytesIO()
    torch.save(weights, buf)
    target = join(uri, "model.pt")
    write_bytes(target, buf.getvalue())
    write_bytes(join(uri, "config.json"), json.dumps(config, indent=1, sort_keys=True, default=float).encode())
    return target


class AnomalyDetector:
    """A trained UIIDD model (+ optional discriminative head) ready to score images
    (numpy HxW[xC] uint8 in, heat maps out)."""

    def __init__(self, model: UIIDDModel, pre: PreprocessConfig, score: ScoreConfig | None = None,
                 calib: Calibration | None = None, meta: dict | None = None, device: str = "cpu",
                 head: DiscHead | None = None, patch: PatchConfig | None = None):
        self.model = model.to(device).eval()
        self.head = head.to(device).eval() if head is not None else None
        self.method = "uiidd-disc" if head is not None else "uiidd"
        self.patch = patch
        self.pre = pre
        self.score_cfg = score or ScoreConfig()
        self.calib = calib or Calibration()
        self.meta = meta or {}
        self.device = device

    # --- scoring --------------------------------------------------------------
    def to_tensor(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(preprocess_batch(images, self.pre)).to(self.device)

    @torch.no_grad()
    def terms(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return raw_terms(self.model, x, self.score_cfg.ssim_window)

    def norm_stats(self, term: str) -> tuple[float | torch.Tensor, float | torch.Tensor]:
        """(mean, std) used by n() for one term: S x S maps when normalizing per position and the
        calibration has them (else the global scalars, e.g. for checkpoints calibrated before maps)."""
        c = self.calib
        if self.score_cfg.normalize == "position" and self.patch is None and term in c.term_mean_map and term in c.term_std_map:
            cache = self.__dict__.setdefault("_map_cache", {})
            key = (term, id(c.term_mean_map[term]), id(c.term_std_map[term]))
            if key not in cache:
                cache[key] = (torch.as_tensor(c.term_mean_map[term], dtype=torch.float32, device=self.device),
                              torch.as_tensor(c.term_std_map[term], dtype=torch.float32, device=self.device).clamp(min=1e-8))
            return cache[key]
        return c.term_mean[term], max(c.term_std[term], 1e-8)

    @torch.no_grad()
    def raw_heat(self, x: torch.Tensor) -> torch.Tensor:
        """Un-smoothed maps B x 1 x S x S: the head's anomaly probability, or eq. 15's weighted sum."""
        if self.head is not None:
            return torch.sigmoid(self.head(x, self.model.generator(x)["x_hat"]))
        s = self.score_cfg
        w = {"rec": s.w_rec, "feat": s.w_feat, "disc": s.lambda_d}
        stats = {k: self.norm_stats(k) for k in TERMS if w[k]}
        t = self.terms(x)
        return sum(w[k] * (t[k] - stats[k][0]) / stats[k][1] for k in stats)

    @torch.no_grad()
    def heat_from_tensor(self, x: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        """Smoothed heat maps B x S x S for preprocessed inputs (whole-image mode, or one tile each)."""
        maps = [gaussian_smooth(self.raw_heat(x[i : i + batch_size].to(self.device)), self.score_cfg.sigma)[:, 0]
                for i in range(0, len(x), batch_size)]
        return torch.cat(maps).cpu()

    @torch.no_grad()
    def heat_scaled(self, images: Sequence[np.ndarray], batch_size: int = 64, rescaled: bool = False) -> list[np.ndarray]:
        """Patch mode: stitched, smoothed heat maps at the model's scale (each image rescaled
        by patch.scale; `rescaled=True` when the inputs already are, as float HxW)."""
        xs = [np.asarray(im, np.float32) if rescaled else rescale(im, self.patch) for im in images]
        cut = [tiles(x, self.patch) for x in xs]
        flat = torch.from_numpy(np.concatenate([t for t, _ in cut]))
        raw = torch.cat([self.raw_heat(flat[i : i + batch_size].to(self.device)).cpu() for i in range(0, len(flat), batch_size)])
        out, k = [], 0
        for x, (t, pos) in zip(xs, cut):
            m = stitch(raw[k : k + len(t), 0].numpy(), pos, x.shape)
            k += len(t)
            out.append(gaussian_smooth(torch.from_numpy(m)[None, None], self.score_cfg.sigma)[0, 0].numpy())
        return out

    def heat_maps(self, images: Sequence[np.ndarray], original_size: bool = False) -> list[np.ndarray]:
        """Heat maps at the model's resolution, or resized back to each image's size."""
        heat = self.heat_scaled(images) if self.patch else list(self.heat_from_tensor(self.to_tensor(images)).numpy())
        if not original_size:
            return heat
        out = []
        for h, im in zip(heat, images):
            H, W = im.shape[:2]
            t = torch.as_tensor(h)[None, None]
            out.append(t[0, 0].numpy() if t.shape[-2:] == (H, W) else
                       F.interpolate(t, size=(H, W), mode="bilinear", align_corners=False)[0, 0].numpy())
        return out

    def image_score(self, heat: np.ndarray) -> float:
        """An image's score from its heat map (any size): the maximum (eq. 15's map is already smoothed)."""
        return float(np.max(heat))

    def image_scores(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return np.array([self.image_score(h) for h in self.heat_maps(images)])

    @property
    def heat_tolerance_px(self) -> float:
        """How far (model pixels) heat spreads past a defect: the smoothing."""
        return float(self.score_cfg.sigma)

    def image_px_per_model_px(self, height: int, width: int) -> float:
        """How many image pixels one heat-map pixel spans (the gate scales its tolerances by it)."""
        if self.patch:
            return 1.0 / self.patch.scale
        return (height / self.pre.image_size + width / self.pre.image_size) / 2

    def threshold(self, level: str, rule: str) -> float:
        return self.calib.threshold(level, rule)

    # --- persistence ----------------------------------------------------------
    def config(self) -> dict:
        """Everything but the weights, JSON-ready."""
        return {
            "format": FORMAT, "method": self.method, "model_config": self.model.cfg.to_dict(),
            "head_width": self.head.enc1[0].out_channels if self.head is not None else None,
            "patch": self.patch.to_dict() if self.patch else None, "preprocess": self.pre.to_dict(),
            "score": self.score_cfg.to_dict(), "calibration": asdict(self.calib), "meta": self.meta,
        }

    def weights(self) -> dict:
        w = {"uiidd": {k: v.cpu() for k, v in self.model.state_dict().items()}}
        if self.head is not None:
            w["head"] = {k: v.cpu() for k, v in self.head.state_dict().items()}
        return w

    def save(self, uri: str) -> str:
        """Write `<uri>/model.pt` (state dicts) + `<uri>/config.json`; returns the model URI."""
        return save_checkpoint(uri, self.weights(), self.config())

    @classmethod
    def from_parts(cls, config: dict, weights: dict, device: str = "cpu") -> "AnomalyDetector":
        if config.get("format") == PATCHCORE_FORMAT:  # `--method patchcore`: same interface, its own class
            from factory.quality.anomaly.patchcore import PatchCoreDetector

            return PatchCoreDetector.from_parts(config, weights, device)
        if config.get("format") not in (FORMAT, LEGACY_FORMAT):
            raise ValueError(f"not a UIIDD anomaly checkpoint (format {config.get('format')!r}, expected {FORMAT!r})")
        model = UIIDDModel(ModelConfig(**config["model_config"]))
        model.load_state_dict(weights["uiidd"] if "uiidd" in weights else weights["state_dict"])
        head = None
        if config.get("method", "uiidd") == "uiidd-disc":
            head = DiscHead(model.cfg.in_channels, config["head_width"])
            head.load_state_dict(weights["head"])
        patch = PatchConfig(**config["patch"]) if config.get("patch") else None
        return cls(model, PreprocessConfig.from_dict(config["preprocess"]), ScoreConfig(**config["score"]),
                   Calibration(**config["calibration"]), config.get("meta", {}), device, head, patch)

    @classmethod
    def load(cls, uri: str, device: str = "cpu") -> "AnomalyDetector":
        """Load from a checkpoint folder (model.pt + config.json) or the model.pt file itself."""
        import json

        from factory.storage.uri import StorageError, exists, join, read_bytes

        uri = str(uri)
        folder = uri[: -len("/model.pt")] if uri.endswith("/model.pt") else uri
        target = join(folder, "model.pt")
        try:
            if not exists(target):
                raise CheckpointError(
                    f"anomaly checkpoint not found at {target}: train one with "
                    "`factory train anomaly --normal DIR --out URI` and set quality.anomaly_checkpoint to that URI"
                )
            weights = torch.load(io.BytesIO(read_bytes(target)), map_location="cpu", weights_only=True)
            config_uri = join(folder, "config.json")
            config = json.loads(read_bytes(config_uri)) if exists(config_uri) else weights  # legacy: all in model.pt
        except StorageError as e:
            raise CheckpointError(f"cannot read anomaly checkpoint: {e}") from e
        return cls.from_parts(config, weights, device)
