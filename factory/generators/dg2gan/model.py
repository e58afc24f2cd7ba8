"""DG2GAN networks: two ResNet generators (G: n -> d, F: d -> n) and four PatchGAN
discriminators (D1n, D1d, D2n, D2d), as plain torch modules.

The generator is the CycleGAN encoder-decoder (c7s1, two stride-2 downsamplings,
residual blocks, two upsamplings, c7s1 + tanh); the discriminator is the 70x70
PatchGAN when `n_layers=3`. Sizes are configurable so tests run with a few
channels. The added discriminators D2n/D2d carry the "new trainable parameters"
the paper's DJS-optimized loss needs (eq. 2): a 1x1 critic head on the
discriminator's penultimate features (see `losses.djs_estimate`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn


@dataclass
class DG2GANConfig:
    """Everything needed to rebuild the networks and the objective; saved beside
    every checkpoint as JSON. Loss weights default to the paper's values."""

    channels: int = 1
    image_size: int = 128
    ngf: int = 64
    n_blocks: int = 6
    ndf: int = 64
    n_layers: int = 3
    lambda_: float = 0.8  # eq. 5: weight of L_gan1 (D1 discriminators, quality)
    beta: float = 0.5  # eq. 5: weight of L_gan2 (D2 discriminators, diversity)
    mu: float = 0.05  # eq. 2: weight of DJS in the D2 discriminators' loss
    cycle_weight: float = 1.0  # eq. 6 adds L_cycle with weight 1
    use_djs: bool = True  # False = the paper's "DG2GAN-no-DJS" ablation
    class_name: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DG2GANConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


class ResnetBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.block = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, 3),
            nn.InstanceNorm2d(dim),
            nn.ReLU(True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, 3),
            nn.InstanceNorm2d(dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class ResnetGenerator(nn.Module):
    """Image-to-image translator in [-1, 1]; input sides must be multiples of 4."""

    def __init__(self, channels: int = 1, ngf: int = 64, n_blocks: int = 6):
        super().__init__()
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(channels, ngf, 7),
            nn.InstanceNorm2d(ngf),
            nn.ReLU(True),
        ]
        for i in range(2):
            m = 2**i
            layers += [nn.Conv2d(ngf * m, ngf * m * 2, 3, stride=2, padding=1), nn.InstanceNorm2d(ngf * m * 2), nn.ReLU(True)]
        layers += [ResnetBlock(ngf * 4) for _ in range(n_blocks)]
        for i in range(2):
            m = 2 ** (2 - i)
            layers += [
                nn.ConvTranspose2d(ngf * m, ngf * m // 2, 3, stride=2, padding=1, output_padding=1),
                nn.InstanceNorm2d(ngf * m // 2),
                nn.ReLU(True),
            ]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, channels, 7), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class PatchDiscriminator(nn.Module):
    """PatchGAN: one real/fake logit per receptive-field patch.

    With `djs_head=True` it also returns, from the same penultimate features, a
    per-patch critic value T used to estimate DJS (eq. 2). The head's own weights
    pass through a gradient-reversal op, so one backward of eq. 2 as written
    makes the head *ascend* the variational DJS bound (that is what makes it an
    estimate of DJS: a supremum over critics) while the discriminator's trunk
    *descends* it, as eq. 2 asks ("by minimizing DJS, the entire discriminative
    loss is minimized").
    """

    def __init__(self, channels: int = 1, ndf: int = 64, n_layers: int = 3, djs_head: bool = False):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(channels, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, 4, stride=stride, padding=1),
                nn.InstanceNorm2d(ndf * mult),
                nn.LeakyReLU(0.2, True),
            ]
        self.trunk = nn.Sequential(*layers)
        self.out = nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1)
        self.djs_head = nn.Conv2d(ndf * mult, 1, 1) if djs_head else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.trunk(x))

    def forward_with_critic(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.trunk(x)
        critic = None
        if self.djs_head is not None:
            w = _GradReverse.apply(self.djs_head.weight)
            b = _GradReverse.apply(self.djs_head.bias)
            critic = nn.functional.conv2d(h, w, b)
        return self.out(h), critic


class _GradReverse(torch.autograd.Function):
    """Identity forward, negated gradient backward (Ganin & Lempitsky, 2015)."""

    @staticmethod
    def forward(ctx, x):  # noqa: D401
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -grad


class Generators(nn.Module):
    """G and F together, so DDP wraps one module and one forward computes the cycle."""

    def __init__(self, cfg: DG2GANConfig):
        super().__init__()
        self.G = ResnetGenerator(cfg.channels, cfg.ngf, cfg.n_blocks)  # defect-free -> defective
        self.F = ResnetGenerator(cfg.channels, cfg.ngf, cfg.n_blocks)  # defective -> defect-free

    def forward(self, n: torch.Tensor, d: torch.Tensor) -> dict[str, torch.Tensor]:
        fake_d = self.G(n)
        fake_n = self.F(d)
        return {"fake_d": fake_d, "fake_n": fake_n, "rec_n": self.F(fake_d), "rec_d": self.G(fake_n)}


class Discriminators(nn.Module):
    """D1n, D1d (reward real) and D2n, D2d (reward generated; DJS critic heads).

    `forward` scores real and generated images of both domains in one call (one
    DDP forward per discriminator step); the returned dict holds logits and, for
    the D2 pair when DJS is on, critic values.
    """

    def __init__(self, cfg: DG2GANConfig):
        super().__init__()
        c, ndf, nl = cfg.channels, cfg.ndf, cfg.n_layers
        self.D1n = PatchDiscriminator(c, ndf, nl)
        self.D1d = PatchDiscriminator(c, ndf, nl)
        self.D2n = PatchDiscriminator(c, ndf, nl, djs_head=cfg.use_djs)
        self.D2d = PatchDiscriminator(c, ndf, nl, djs_head=cfg.use_djs)

    def forward(self, real_n, fake_n, real_d, fake_d) -> dict[str, tuple[torch.Tensor, torch.Tensor] | None]:
        out: dict[str, tuple[torch.Tensor, torch.Tensor] | None] = {}
        for dom, real, fake in (("n", real_n, fake_n), ("d", real_d, fake_d)):
            d1, d2 = getattr(self, f"D1{dom}"), getattr(self, f"D2{dom}")
            both = torch.cat([real, fake])
            l1 = d1(both)
            l2, t2 = d2.forward_with_critic(both)
            k = real.shape[0]
            out[f"D1{dom}"] = (l1[:k], l1[k:])
            out[f"D2{dom}"] = (l2[:k], l2[k:])
            out[f"T2{dom}"] = (t2[:k], t2[k:]) if t2 is not None else None
        return out

    def score_fakes(self, fake_n: torch.Tensor, fake_d: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits of generated images only (the generator step needs nothing else)."""
        return {"D1n": self.D1n(fake_n), "D2n": self.D2n(fake_n), "D1d": self.D1d(fake_d), "D2d": self.D2d(fake_d)}


def init_weights(module: nn.Module, gain: float = 0.02) -> None:
    """N(0, 0.02) convolution weights, as in pix2pix/CycleGAN."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def build(cfg: DG2GANConfig, seed: int | None = None) -> tuple[Generators, Discriminators]:
    if seed is not None:
        torch.manual_seed(seed)
    gens, discs = Generators(cfg), Discriminators(cfg)
    init_weights(gens)
    init_weights(discs)
    return gens, discs
