"""The UIIDD model as a plain torch module (paper 002, sections 3.1-3.2).

The paper's equation images did not survive in our copy of the text, so every
block below follows the prose that names each symbol; where the prose leaves a
choice open, the docstring says which one we took.

Data flow (one forward pass):
    x --backbone (eq. 2)--> F1 (S/2), F2 (S/4), F3 (S/8)
      --MDAAE fusion (eq. 3-4): alpha_l = softmax_l(w_l^T GAP(F_l) / tau), each level
        projected (1x1), deconvolved to S/2, weighted, concatenated, 1x1 fused,
        layer-normalized--> Z
      --feature autoencoder (eq. 1, 5): encoder to an S/8 bottleneck h, a
        self-attention block (Fig. 5), decoder--> Z_hat
      --generator head (deconv)--> x_hat          (the GAN's generator is this whole path)
    discriminator (eq. 13): conv encoder + self-attention + layer norm -> logit, and
    its intermediate features phi_l used for feature matching and the score (eq. 15).

Backbone weights: no ImageNet weights can be downloaded here, so the backbone is
a small CNN that either loads a local checkpoint (`load_backbone`) or is trained
from scratch on the domain's own defect-free images *as part of the generator's
objective*: its only gradients come from reconstructing the (noise-augmented)
image through Z -> Z_hat -> x_hat, plus the discriminator's feature matching and
adversarial terms. That is self-supervised (no labels) and keeps Z informative;
Z is layer-normalized so the feature reconstruction target cannot collapse to 0.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ModelConfig:
    image_size: int = 128  # S: images are resized to S x S
    in_channels: int = 1
    width: int = 16  # backbone channels at S/2; doubles per level
    fused: int = 32  # channels of the fused feature Z
    bottleneck: int = 16  # channels of the autoencoder's bottleneck h (S/8)
    heads: int = 2  # self-attention heads (eq. 11)
    tau: float = 1.0  # temperature of the level weights (eq. 3)

    def to_dict(self) -> dict:
        return asdict(self)


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(min(8, cout), cout), nn.LeakyReLU(0.2))


def _deconv(cin: int, cout: int, factor: int) -> nn.ConvTranspose2d:
    """A learned x`factor` upsampling (the 'deconvolution' of eq. 4)."""
    return nn.ConvTranspose2d(cin, cout, kernel_size=2 * factor, stride=factor, padding=factor // 2)


class SelfAttention(nn.Module):
    """Fig. 5 with eq. 10-11: 1x1 convs f (query), g (key), h (value); softmax(f^T g / sqrt(d))
    per head; weighted sum of h; 1x1 output conv; residual scaled by gamma (0 at init, eq. 12)."""

    def __init__(self, channels: int, heads: int = 1):
        super().__init__()
        self.heads = max(1, heads)
        self.dk = max(1, channels // 8)
        self.f = nn.Conv2d(channels, self.dk * self.heads, 1)
        self.g = nn.Conv2d(channels, self.dk * self.heads, 1)
        self.h = nn.Conv2d(channels, channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (output, attention averaged over heads: B x N x N, rows sum to 1)."""
        B, C, H, W = x.shape
        N, nh = H * W, self.heads
        q = self.f(x).view(B, nh, self.dk, N).transpose(2, 3)  # B h N dk
        k = self.g(x).view(B, nh, self.dk, N)  # B h dk N
        v = self.h(x).view(B, nh, C // nh, N).transpose(2, 3)  # B h N C/h
        attn = torch.softmax(q @ k / math.sqrt(self.dk), dim=-1)  # eq. 10
        y = (attn @ v).transpose(2, 3).reshape(B, C, H, W)  # concat heads (eq. 11)
        return x + self.gamma * self.out(y), attn.mean(1)


class Backbone(nn.Module):
    """Eq. 2: F_l = sigma(W_l * F_{l-1} + b_l), three levels at S/2, S/4, S/8."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        c = cfg.width
        self.levels = nn.ModuleList(
            [
                nn.Sequential(_conv(cfg.in_channels, c, 2), _conv(c, c)),
                nn.Sequential(_conv(c, 2 * c, 2), _conv(2 * c, 2 * c)),
                nn.Sequential(_conv(2 * c, 4 * c, 2), _conv(4 * c, 4 * c)),
            ]
        )
        self.channels = [c, 2 * c, 4 * c]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for level in self.levels:
            x = level(x)
            feats.append(x)
        return feats


class MultiLevelFusion(nn.Module):
    """Eq. 3-4: attention weights over levels from GAP with temperature tau, levels
    projected to a common width, deconvolved to S/2, weighted, concatenated and fused by a 1x1 conv."""

    def __init__(self, channels: list[int], fused: int, tau: float):
        super().__init__()
        self.tau = tau
        self.w = nn.ParameterList([nn.Parameter(torch.zeros(c)) for c in channels])  # w_l of eq. 3
        self.proj = nn.ModuleList([nn.Conv2d(c, fused, 1) for c in channels])
        self.up = nn.ModuleList([nn.Identity()] + [_deconv(fused, fused, 2**i) for i in range(1, len(channels))])
        self.fuse = nn.Conv2d(fused * len(channels), fused, 1)
        self.norm = nn.GroupNorm(1, fused)  # layer norm: fixes Z's scale (no collapse)

    def level_weights(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """Eq. 3: alpha (B x L), softmax over levels of w_l^T GAP(F_l) / tau."""
        logits = torch.stack([(f.mean((2, 3)) * w).sum(1) for f, w in zip(feats, self.w)], dim=1)
        return torch.softmax(logits / self.tau, dim=1)

    def forward(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        alpha = self.level_weights(feats)
        size = feats[0].shape[-2:]
        parts = []
        for i, (f, proj, up) in enumerate(zip(feats, self.proj, self.up)):
            p = up(proj(f))
            if p.shape[-2:] != size:
                p = F.interpolate(p, size=size, mode="bilinear", align_corners=False)
            parts.append(alpha[:, i, None, None, None] * p)
        return self.norm(self.fuse(torch.cat(parts, 1))), alpha


class FeatureAutoencoder(nn.Module):
    """Eq. 1/5: encoder E compresses Z (S/2) to the bottleneck h (S/8) where the generator's
    self-attention block runs; decoder D reconstructs Z_hat."""

    def __init__(self, fused: int, bottleneck: int, heads: int):
        super().__init__()
        self.encoder = nn.Sequential(_conv(fused, 2 * fused, 2), nn.Conv2d(2 * fused, bottleneck, 3, 2, 1))
        self.attn = SelfAttention(bottleneck, heads)
        self.decoder = nn.Sequential(
            _deconv(bottleneck, 2 * fused, 2), nn.LeakyReLU(0.2), _deconv(2 * fused, fused, 2), nn.LeakyReLU(0.2),
            nn.Conv2d(fused, fused, 3, 1, 1),
        )

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.encoder(z)
        h, attn = self.attn(h)
        return self.decoder(h), h, attn


class Generator(nn.Module):
    """The GAN's generator: backbone -> MDAAE fusion -> feature AE -> image head (x_hat)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.backbone = Backbone(cfg)
        self.fusion = MultiLevelFusion(self.backbone.channels, cfg.fused, cfg.tau)
        self.ae = FeatureAutoencoder(cfg.fused, cfg.bottleneck, cfg.heads)
        self.head = nn.Sequential(_deconv(cfg.fused, cfg.width, 2), nn.LeakyReLU(0.2), nn.Conv2d(cfg.width, cfg.in_channels, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.backbone(x)
        z, alpha = self.fusion(feats)
        z_hat, h, attn = self.ae(z)
        return {"x_hat": self.head(z_hat), "z": z, "z_hat": z_hat, "h": h, "alpha": alpha, "attn": attn}


class Discriminator(nn.Module):
    """Eq. 13's discriminator: conv encoder, self-attention at S/8, layer norm, logit head.
    Returns the logit, the intermediate features phi_l, and the attention matrix."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        c = cfg.width
        self.levels = nn.ModuleList([_conv(cfg.in_channels, c, 2), _conv(c, 2 * c, 2), _conv(2 * c, 4 * c, 2)])
        self.attn = SelfAttention(4 * c, cfg.heads)
        self.norm = nn.GroupNorm(1, 4 * c)
        self.head = nn.Linear(4 * c, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        feats = []
        for level in self.levels:
            x = level(x)
            feats.append(x)
        y, attn = self.attn(x)
        y = self.norm(y)
        feats[-1] = y
        return self.head(y.mean((2, 3))).squeeze(1), feats, attn


class UIIDDModel(nn.Module):
    def __init__(self, cfg: ModelConfig | None = None):
        super().__init__()
        self.cfg = cfg or ModelConfig()
        self.generator = Generator(self.cfg)
        self.discriminator = Discriminator(self.cfg)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.generator(x)

    def load_backbone(self, path: str) -> None:
        """Load a local backbone state dict (e.g. one trained elsewhere on the domain)."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        self.generator.backbone.load_state_dict(state.get("backbone", state))


def init_weights(module: nn.Module) -> None:
    """Eq. 12: Xavier-uniform conv/linear weights, zero biases; self-attention gamma stays 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
