"""The anomaly model's training steps in plain torch (the Ray Train worker in
`factory.training.anomaly_ray` runs them; tests run them without Ray)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from factory.training.common import unwrap

if TYPE_CHECKING:
    from factory.training.anomaly import AnomalyTrainConfig

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


def train_step(gen_net, disc_net, opt_g, opt_d, x_in, x_target, w):
    """One adversarial step: discriminator (eq. 13) then generator (eq. 14).
    Returns (logs, the reconstruction of x_in, detached)."""
    import torch

    from factory.quality.anomaly.loss import discriminator_loss, generator_loss

    out = gen_net(x_in)
    x_hat = out["x_hat"]
    B = len(x_target)
    logits, _, _ = disc_net(torch.cat([x_target, x_hat.detach()]))
    d_loss = discriminator_loss(logits[:B], logits[B:], unwrap(disc_net), w.d_reg)
    opt_d.zero_grad(set_to_none=True)
    d_loss.backward()
    opt_d.step()

    logits, feats, _ = disc_net(torch.cat([x_target, x_hat]))
    parts = generator_loss(x_target, out, logits[B:], [f[:B] for f in feats], [f[B:] for f in feats], unwrap(gen_net).ae, w)
    opt_g.zero_grad(set_to_none=True)
    parts["total"].backward()
    opt_g.step()
    return {"d": d_loss.item(), **{f"g_{k}": v.item() for k, v in parts.items()}}, x_hat.detach()


def head_step(head, opt_h, x_in, x_hat, mask) -> float:
    """One step of the discriminative head on (image, reconstruction) -> simulated mask."""
    from factory.quality.anomaly.disc_head import head_loss

    loss = head_loss(head(x_in, x_hat), mask)
    opt_h.zero_grad(set_to_none=True)
    loss.backward()
    opt_h.step()
    return loss.item()


def disc_batch(x_clean, cfg: AnomalyTrainConfig, gen, rng, bank):
    """uiidd-disc inputs: (simulated anomalies + noise, clean target, mask), all B x 1 x P x P."""
    import torch

    from factory.quality.anomaly.simulate import simulate

    _, x_t = augment(x_clean, 0.0, cfg.flips, gen)
    xa, m = simulate(x_t.numpy(), rng, bank)
    xa = torch.from_numpy(xa)
    if cfg.noise_std > 0:
        xa = xa + cfg.noise_std * torch.randn(xa.shape, generator=gen)
    return xa, x_t, torch.from_numpy(m)

