"""DG2GAN's training step in plain torch: the learning-rate schedule, the optimizers,
one update of generators and discriminators, random unpaired batches, and a local
loop without Ray (`fit_local`). The Ray Train loop (`train`) runs the same step."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np

from factory.training.common import unwrap
from factory.training.images import to_tensor

if TYPE_CHECKING:
    from factory.generators.dg2gan.train import TrainConfig


def lr_factor(epoch: int, constant: int, decay: int) -> float:
    """Constant for `constant` epochs, then linear to zero over `decay` epochs."""
    if epoch < constant:
        return 1.0
    return max(0.0, 1.0 - (epoch - constant) / max(1, decay))


def make_optimizers(gens, discs, lr: float):
    import torch

    opt_g = torch.optim.Adam(unwrap(gens).parameters(), lr=lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(unwrap(discs).parameters(), lr=lr, betas=(0.5, 0.999))
    return opt_g, opt_d


def train_step(gens, discs, opt_g, opt_d, n, d, cfg) -> dict[str, float]:
    """One DG2GAN update: generators on eq. 6, then the four discriminators on
    eq. 2 / -eq. 3 / -eq. 4 with the generated images detached."""
    from factory.generators.dg2gan.losses import discriminator_losses, generator_losses

    raw_d = unwrap(discs)
    raw_d.requires_grad_(False)
    fakes = gens(n, d)
    scores = raw_d.score_fakes(fakes["fake_n"], fakes["fake_d"])
    gl = generator_losses(fakes, scores, n, d, cfg)
    opt_g.zero_grad(set_to_none=True)
    gl["G"].backward()
    opt_g.step()
    raw_d.requires_grad_(True)

    out = discs(n, fakes["fake_n"].detach(), d, fakes["fake_d"].detach())
    dl = discriminator_losses(out, cfg)
    opt_d.zero_grad(set_to_none=True)
    dl["D"].backward()
    opt_d.step()
    return {k: float(v.detach()) for k, v in {**gl, **dl}.items()}


def sample_batch(data, k: int, rng: np.random.Generator, device):
    """k random crops with random horizontal/vertical flips, as a [-1, 1] tensor."""

    idx = rng.integers(0, len(data), size=k)
    batch = data[idx].copy()
    for i in range(k):
        if rng.random() < 0.5:
            batch[i] = batch[i][:, ::-1]
        if rng.random() < 0.5:
            batch[i] = batch[i][::-1]
    return to_tensor(batch).to(device)


def fit_local(tc: TrainConfig, data_n: np.ndarray, data_d: np.ndarray, steps: int, on_step: Callable | None = None):
    """Train without Ray on arrays already in memory (tests, quick experiments):
    the same `train_step`, constant learning rate. Returns (gens, discs, per-step losses)."""
    import torch

    from factory.generators.dg2gan.model import build

    cfg = tc.model_config()
    gens, discs = build(cfg, seed=tc.seed)
    opt_g, opt_d = make_optimizers(gens, discs, tc.lr)
    rng = np.random.default_rng(tc.seed)
    history = []
    for step in range(steps):
        n = sample_batch(data_n, tc.batch_size, rng, torch.device("cpu"))
        d = sample_batch(data_d, tc.batch_size, rng, torch.device("cpu"))
        history.append(train_step(gens, discs, opt_g, opt_d, n, d, cfg))
        if on_step:
            on_step(step, history[-1])
    return gens, discs, history
