"""The discriminative segmentation head (DRAEM's idea on top of UIIDD): a small U-Net that
takes the image and the UIIDD reconstruction (2 channels) and outputs a per-pixel
anomaly logit. It learns *what a difference between x and x_hat that matters looks
like* from simulated anomalies with exact masks (`simulate.py`), instead of trusting
the raw reconstruction error, which is high wherever the normal texture is hard."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1), nn.GroupNorm(min(8, cout), cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, 1, 1), nn.GroupNorm(min(8, cout), cout), nn.ReLU(inplace=True))


class DiscHead(nn.Module):
    """U-Net with three levels (P, P/2, P/4) and skip connections; input B x 2C x P x P."""

    def __init__(self, in_channels: int = 1, width: int = 16):
        super().__init__()
        c = width
        self.enc1, self.enc2, self.enc3 = _block(2 * in_channels, c), _block(c, 2 * c), _block(2 * c, 4 * c)
        self.dec2, self.dec1 = _block(4 * c + 2 * c, 2 * c), _block(2 * c + c, c)
        self.out = nn.Conv2d(c, 1, 1)

    def forward(self, x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
        """Anomaly logits B x 1 x P x P."""
        e1 = self.enc1(torch.cat([x, x_hat], 1))
        e2 = self.enc2(F.max_pool2d(e1, 2))
        e3 = self.enc3(F.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([F.interpolate(e3, size=e2.shape[-2:], mode="bilinear", align_corners=False), e2], 1))
        d1 = self.dec1(torch.cat([F.interpolate(d2, size=e1.shape[-2:], mode="bilinear", align_corners=False), e1], 1))
        return self.out(d1)


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Binary focal loss (DRAEM trains its head with focal loss: anomalous pixels are rare)."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = torch.exp(-bce)
    return ((1 - p_t) ** gamma * bce).mean()


def head_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Focal loss plus a soft-Dice term (keeps small masks from being ignored)."""
    p = torch.sigmoid(logits)
    inter = (p * target).sum((1, 2, 3))
    denom = p.sum((1, 2, 3)) + target.sum((1, 2, 3))
    dice = 1 - (2 * inter + 1) / (denom + 1)
    return focal_loss(logits, target) + 0.5 * dice.mean()
