"""Realism without downloaded weights.

- `c2st`: a classifier two-sample test. A small CNN, trained from scratch, learns to
  tell generated from real images (grey, `size` px, flips as augmentation); its
  k-fold held-out accuracy is the score: 0.5 = indistinguishable, 1.0 = trivially
  separable. Both sides are subsampled to the same count.
- `IndomainExtractor`: a feature extractor for KID/FID learned from the real
  images alone (the same small CNN trained to tell which of 4 rotations an image
  was given), so FID/KID need neither Inception weights nor an anomaly checkpoint.
  It never sees the generated images. Numbers compare arms within one domain and
  one extractor; they are not comparable with Inception FIDs.

Everything runs on the CPU in seconds to a minute at 64 px; torch is imported
inside the functions (this module is imported by the CLI).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Sequence, TypedDict

import numpy as np

INDOMAIN_EXTRACTOR = "indomain-rotnet"
WIDTHS = (8, 16, 32, 64)  # the first conv has stride 2: 64 px in, 4 x 4 before pooling


class C2ST(TypedDict):
    c2st_accuracy: float  # mean held-out accuracy over the folds: 0.5 = indistinguishable
    c2st_std: float
    folds: list[float]  # each fold's accuracy
    images_per_side: int
    size: int
    epochs: int
    seed: int


def load_grey(items: Sequence[Any], size: int) -> np.ndarray:
    """N x size x size float32 in [0, 1] from encoded bytes, file paths or HxW[xC] uint8 arrays."""
    from PIL import Image

    out = np.empty((len(items), size, size), np.float32)
    for i, it in enumerate(items):
        if isinstance(it, np.ndarray):
            im = Image.fromarray(it[:, :, 0] if it.ndim == 3 else it).convert("L")
        else:
            im = Image.open(io.BytesIO(it) if isinstance(it, bytes) else it).convert("L")
        out[i] = np.asarray(im.resize((size, size), Image.BILINEAR), np.float32) / 255.0
    return out


def _net(n_out: int):
    """A strided conv, then conv-BN-ReLU-pool x 3, global average pool, linear: ~25k
    parameters, ~4 MFLOP per 64 px image (a C2ST of 2 x 400 images takes a minute on one core)."""
    import torch.nn as nn

    layers = [nn.Conv2d(1, WIDTHS[0], 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(WIDTHS[0]), nn.ReLU(inplace=True)]
    c_in = WIDTHS[0]
    for c in WIDTHS[1:]:
        layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        c_in = c
    trunk = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return nn.Sequential(trunk, nn.Linear(c_in, n_out))


MIN_STEPS = 100  # small sets still get enough optimizer steps


def _train(x, y, n_out: int, epochs: int, seed: int, augment_flips: bool = True, batch: int = 32, lr: float = 2e-3):
    """Train from scratch for `epochs` (at least MIN_STEPS steps); then re-estimate the
    BatchNorm statistics over the training set, so eval mode matches what was learned."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    torch.manual_seed(seed)
    net = _net(n_out)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-3)
    g = torch.Generator().manual_seed(seed)
    net.train()
    steps = max(epochs * -(-len(x) // batch), MIN_STEPS)
    done = 0
    while done < steps:
        order = torch.randperm(len(x), generator=g)
        for s in range(0, len(x), batch):
            if done == steps:
                break
            idx = order[s:s + batch]
            xb, yb = x[idx], y[idx]
            if augment_flips:
                flip = torch.rand(len(xb), generator=g) < 0.5
                xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
                flip = torch.rand(len(xb), generator=g) < 0.5
                xb = torch.where(flip[:, None, None, None], xb.flip(2), xb)
            loss = F.cross_entropy(net(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            done += 1
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # a plain average over the pass below
    with torch.no_grad():
        for s in range(0, len(x), 256):
            net(x[s:s + 256])
    return net.eval()


def c2st(generated: Sequence[Any], real: Sequence[Any], size: int = 64, folds: int = 5, epochs: int = 10,
         seed: int = 0, threads: int = 1, max_images: int | None = 500) -> C2ST:
    """k-fold accuracy of a from-scratch CNN telling generated from real images."""
    import torch

    torch.set_num_threads(threads)
    rng = np.random.default_rng(seed)
    n = min(len(generated), len(real), max_images or 10**9)
    if n < folds * 2:
        raise ValueError(f"C2ST needs at least {folds * 2} images per side, got {len(generated)} generated, {len(real)} real")
    gi = rng.choice(len(generated), n, replace=False)
    ri = rng.choice(len(real), n, replace=False)
    x = np.concatenate([load_grey([generated[i] for i in gi], size), load_grey([real[i] for i in ri], size)])
    y = np.concatenate([np.zeros(n, np.int64), np.ones(n, np.int64)])
    # stratified folds: the same share of each side in every fold
    fold = np.concatenate([rng.permutation(n) % folds, rng.permutation(n) % folds])
    xt, yt = torch.from_numpy(x[:, None]), torch.from_numpy(y)
    accs = []
    for k in range(folds):
        tr, te = np.nonzero(fold != k)[0], np.nonzero(fold == k)[0]
        net = _train(xt[tr], yt[tr], 2, epochs, seed + k)
        with torch.no_grad():
            pred = net(xt[te]).argmax(1).numpy()
        accs.append(float((pred == y[te]).mean()))
    return C2ST(c2st_accuracy=float(np.mean(accs)), c2st_std=float(np.std(accs)), folds=accs, images_per_side=int(n),
                size=size, epochs=epochs, seed=seed)


def train_indomain_extractor(real: Sequence[Any], out: str | Path, size: int = 64, epochs: int = 10, seed: int = 0,
                             threads: int = 1, max_images: int = 1000) -> Path:
    """Train the rotation-prediction CNN on real images only; save its state dict to `out`."""
    import torch

    torch.set_num_threads(threads)
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(real), min(len(real), max_images), replace=False)
    x = load_grey([real[i] for i in idx], size)
    rot = rng.integers(0, 4, len(x))
    x = np.stack([np.rot90(a, k) for a, k in zip(x, rot)])
    net = _train(torch.from_numpy(np.ascontiguousarray(x)[:, None]), torch.from_numpy(rot.astype(np.int64)), 4,
                 epochs, seed, augment_flips=False)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": net.state_dict(), "size": size, "widths": WIDTHS}, out)
    return out


def grey_extractor_class(missing: str, load, features):
    """A torch-fidelity extractor over a network trained on grey images: `load(weights
    path) -> (net, input side)`, `features(net, x) -> N x D`. `missing` is the error
    when no weights path is given. Both in-domain extractors (this module's and the
    UIIDD backbone in `factory.quality.fidelity`) are built by it."""
    import torch
    import torch.nn.functional as F
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase

    class GreyExtractor(FeatureExtractorBase):
        def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
            super().__init__(name, features_list)
            if not feature_extractor_weights_path:
                raise ValueError(missing)
            self.net, self.size = load(feature_extractor_weights_path)

        @staticmethod
        def get_provided_features_list():
            return ("pool",)

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return "pool"

        @staticmethod
        def can_be_compiled():
            return False

        @staticmethod
        def get_dummy_input_for_compile():
            return torch.zeros(1, 3, 64, 64, dtype=torch.uint8)

        def forward(self, x):
            x = x.float().mean(1, keepdim=True) / 255.0
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
            return (features(self.net, x).double(),)

    return GreyExtractor


def _load_trunk(path: str):
    import torch

    saved = torch.load(path, map_location="cpu", weights_only=True)
    net = _net(4)
    net.load_state_dict(saved["state_dict"])
    return net[0].eval(), int(saved["size"])


def _extractor_class():
    """torch-fidelity extractor over `train_indomain_extractor`'s trunk (weights path = its file)."""
    return grey_extractor_class(f"{INDOMAIN_EXTRACTOR} needs the file written by train_indomain_extractor",
                                _load_trunk, lambda trunk, x: trunk(x))


def register_indomain() -> None:
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

    if INDOMAIN_EXTRACTOR not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor(INDOMAIN_EXTRACTOR, _extractor_class())
