"""The UIIDD loss terms, one function each so each can be tested alone.

eq. 1/6  mdaae_loss          feature reconstruction + bottleneck sparsity + L2 weight penalty
eq. 9    generator_ns_loss   non-saturating generator loss, -log D(G(x))
eq. 13   discriminator_loss  real/fake cross-entropy + discriminator parameter penalty
eq. 14   feature_matching    || LN(phi_l(x)) - LN(phi_l(x_hat)) ||^2 over discriminator layers
         generator_loss      image reconstruction + weighted MDAAE, feature-matching and adversarial terms

In eq. 13 the paper lists the feature-matching weight among the discriminator's
symbols; a discriminator that *minimizes* feature matching would fight its own
classification, so (as in Salimans et al. and GANomaly) the term is applied to
the generator, and the discriminator keeps cross-entropy + parameter penalty.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class LossWeights:
    rec: float = 1.0  # image reconstruction, ||x - x_hat||^2
    feat: float = 1.0  # eq. 1 feature reconstruction
    sparse: float = 1e-3  # eq. 6 bottleneck sparsity
    l2: float = 1e-6  # eq. 1 L2 weight regularization (autoencoder weights)
    fm: float = 0.1  # eq. 14 feature matching
    adv: float = 0.01  # eq. 14 adversarial (non-saturating) weight
    d_reg: float = 1e-6  # eq. 13 discriminator parameter penalty

    def to_dict(self) -> dict:
        return asdict(self)


def l2_penalty(module: nn.Module) -> torch.Tensor:
    """Sum of squared Frobenius norms of the module's weight matrices (not biases/norms)."""
    terms = [p.pow(2).sum() for n, p in module.named_parameters() if p.dim() > 1]
    return torch.stack(terms).sum() if terms else torch.zeros(())


def mdaae_loss(z: torch.Tensor, z_hat: torch.Tensor, h: torch.Tensor, ae: nn.Module | None = None,
               sparse: float = 1e-3, l2: float = 1e-6) -> torch.Tensor:
    """Eq. 1 + eq. 6: mean ||Z - D(E(Z))||^2 + sparse * mean|h| + l2 * sum ||W||_F^2.
    Z is the target and carries no gradient (the backbone learns from the image path)."""
    loss = F.mse_loss(z_hat, z.detach()) + sparse * h.abs().mean()
    if ae is not None and l2 > 0:
        loss = loss + l2 * l2_penalty(ae)
    return loss


def generator_ns_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Eq. 9: maximize log D(G(x)) instead of minimizing log(1 - D(G(x))): -log sigmoid(logit)."""
    return F.softplus(-fake_logits).mean()


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, disc: nn.Module | None = None,
                       reg: float = 0.0) -> torch.Tensor:
    """Eq. 13: -log D(x) - log(1 - D(x_hat)) + reg * ||theta_D||^2."""
    loss = F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
    if disc is not None and reg > 0:
        loss = loss + reg * l2_penalty(disc)
    return loss


def feature_matching(real_feats: list[torch.Tensor], fake_feats: list[torch.Tensor]) -> torch.Tensor:
    """Eq. 14's feature term: mean over layers of ||LN(phi_l(x)) - LN(phi_l(x_hat))||^2 (real side detached)."""
    terms = []
    for r, f in zip(real_feats, fake_feats):
        r = F.group_norm(r.detach(), 1)
        f = F.group_norm(f, 1)
        terms.append(F.mse_loss(f, r))
    return torch.stack(terms).mean()


def generator_loss(x: torch.Tensor, out: dict[str, torch.Tensor], fake_logits: torch.Tensor,
                   real_feats: list[torch.Tensor], fake_feats: list[torch.Tensor], ae: nn.Module,
                   w: LossWeights) -> dict[str, torch.Tensor]:
    """Eq. 14: the generator's total loss, with its parts (for logging)."""
    parts = {
        "rec": F.mse_loss(out["x_hat"], x),
        "feat": mdaae_loss(out["z"], out["z_hat"], out["h"], ae, w.sparse, w.l2),
        "fm": feature_matching(real_feats, fake_feats),
        "adv": generator_ns_loss(fake_logits),
    }
    parts["total"] = w.rec * parts["rec"] + w.feat * parts["feat"] + w.fm * parts["fm"] + w.adv * parts["adv"]
    return parts
