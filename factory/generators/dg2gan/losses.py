"""DG2GAN objective, eq. 1-6 of Deng et al., "DG2GAN: improving defect recognition
performance with generated defect image sample".

Discriminators output logits; D(x) = sigmoid(logit), so log D = logsigmoid(logit)
and log(1 - D) = logsigmoid(-logit), computed stably. Expectations over PatchGAN
outputs are means over batch and patches. Readings of the paper where it is vague:

- eq. 1: ||.||_1 is the mean absolute error per pixel (the CycleGAN convention).
- eq. 2: the paper gives D2d's loss as  mu * DJS + E[log D2d(d)] + E[log(1 - D2d(G(n)))]
  and says the discriminator minimizes it, i.e. D2d is pushed to D2d(d) -> 0 and
  D2d(G(n)) -> 1, the reward of eq. 4. Read literally, that sum is unbounded below
  (log D2d(d) -> -inf), so it cannot be minimized as written; we minimize the
  bounded cross-entropy with the same preference and optimum, -eq. 4 =
  -E[log D2d(G(n))] - E[log(1 - D2d(d))], plus mu * DJS. DJS(P_g || P_r) is not defined further;
  we estimate it with the variational bound (Nowozin et al., f-GAN):
      DJS >= log 2 - 1/2 (E_r[softplus(-T)] + E_g[softplus(T)])
  where T is a trainable per-patch critic head on the discriminator's features
  (the paper's "new trainable parameters defined in the discriminator" that
  "compute and return the DJS loss in the forward pass"). The head ascends the
  bound (a supremum over critics) and the trunk descends it (see
  `model.PatchDiscriminator`). Penalizing the divergence of D2's *features*
  keeps the real and generated feature distributions overlapping on their
  support, the effect the paper attributes to DJS (its ref. 34).
- eq. 3-5: the discriminators maximize their terms (D1 rewards real, D2 rewards
  generated); the generators minimize eq. 6. For the generators' update we use
  the non-saturating form of each term (-log D1(G(n)) for log(1 - D1(G(n))), and
  -log(1 - D2(G(n))) for log D2(G(n))): same fixed points, usable gradients
  early in training (Goodfellow et al., 2014). `dg2_adversarial` returns the
  exact eq. 5 value for reporting.
- eq. 6: the second L_DG2gan term is F's, on D1n and D2n (the paper repeats
  "D2d" there by a slip); L_cycle enters with weight 1 (`cycle_weight`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as Fn

from factory.generators.dg2gan.model import DG2GANConfig

LOG2 = math.log(2.0)


def log_d(logits: torch.Tensor) -> torch.Tensor:
    """E[log D(x)]."""
    return Fn.logsigmoid(logits).mean()


def log_1m_d(logits: torch.Tensor) -> torch.Tensor:
    """E[log(1 - D(x))]."""
    return Fn.logsigmoid(-logits).mean()


def cycle_loss(n, rec_n, d, rec_d) -> torch.Tensor:
    """Eq. 1: E||F(G(n)) - n||_1 + E||G(F(d)) - d||_1."""
    return (rec_n - n).abs().mean() + (rec_d - d).abs().mean()


def l_gan1(d1_real: torch.Tensor, d1_fake: torch.Tensor) -> torch.Tensor:
    """Eq. 3: E[log D1(real)] + E[log(1 - D1(generated))] (D1 maximizes it)."""
    return log_d(d1_real) + log_1m_d(d1_fake)


def l_gan2(d2_real: torch.Tensor, d2_fake: torch.Tensor) -> torch.Tensor:
    """Eq. 4: E[log D2(generated)] + E[log(1 - D2(real))] (D2 maximizes it)."""
    return log_d(d2_fake) + log_1m_d(d2_real)


def dg2_adversarial(d1_real, d1_fake, d2_real, d2_fake, lambda_: float, beta: float) -> torch.Tensor:
    """Eq. 5: lambda * L_gan1 + beta * L_gan2 (the value, for one direction)."""
    return lambda_ * l_gan1(d1_real, d1_fake) + beta * l_gan2(d2_real, d2_fake)


def djs_estimate(t_real: torch.Tensor, t_fake: torch.Tensor) -> torch.Tensor:
    """Variational lower bound of the Jensen-Shannon divergence between the real
    and generated distributions given critic values T (0 for T = 0, at most log 2)."""
    return LOG2 - 0.5 * (Fn.softplus(-t_real).mean() + Fn.softplus(t_fake).mean())


def d1_loss(d1_real, d1_fake) -> torch.Tensor:
    """What D1n/D1d minimize: -eq. 3."""
    return -l_gan1(d1_real, d1_fake)


def d2_loss(d2_real, d2_fake, t_real=None, t_fake=None, mu: float = 0.05, use_djs: bool = True) -> torch.Tensor:
    """Eq. 2 in its bounded form (see the module notes): mu * DJS - eq. 4.

    With `use_djs=False` (the DG2GAN-no-DJS ablation) the DJS term is dropped.
    """
    loss = -l_gan2(d2_real, d2_fake)
    if use_djs:
        if t_real is None or t_fake is None:
            raise ValueError("use_djs=True needs the D2 critic outputs (build the discriminators with use_djs=True)")
        loss = loss + mu * djs_estimate(t_real, t_fake)
    return loss


def discriminator_losses(out: dict, cfg: DG2GANConfig) -> dict[str, torch.Tensor]:
    """The four discriminator losses from `Discriminators.forward` outputs (fakes detached)."""
    losses = {}
    for dom in ("n", "d"):
        r1, f1 = out[f"D1{dom}"]
        r2, f2 = out[f"D2{dom}"]
        t = out[f"T2{dom}"]
        losses[f"D1{dom}"] = d1_loss(r1, f1)
        losses[f"D2{dom}"] = d2_loss(r2, f2, *(t or (None, None)), mu=cfg.mu, use_djs=cfg.use_djs)
        if t is not None:
            losses[f"DJS{dom}"] = djs_estimate(*t).detach()
    losses["D"] = losses["D1n"] + losses["D1d"] + losses["D2n"] + losses["D2d"]
    return losses


def generator_losses(fakes: dict, scores: dict, n, d, cfg: DG2GANConfig) -> dict[str, torch.Tensor]:
    """Eq. 6 from the generators' side: lambda/beta-weighted adversarial terms for
    G (on D1d, D2d) and F (on D1n, D2n), non-saturating, plus cycle_weight * eq. 1."""
    adv_g = cfg.lambda_ * -log_d(scores["D1d"]) + cfg.beta * -log_1m_d(scores["D2d"])
    adv_f = cfg.lambda_ * -log_d(scores["D1n"]) + cfg.beta * -log_1m_d(scores["D2n"])
    cyc = cycle_loss(n, fakes["rec_n"], d, fakes["rec_d"])
    return {"adv_G": adv_g, "adv_F": adv_f, "cycle": cyc, "G": adv_g + adv_f + cfg.cycle_weight * cyc}
