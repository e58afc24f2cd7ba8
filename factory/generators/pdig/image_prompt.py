"""LISA's image prompt: crop-and-align around a defect box, then the frozen CLIP
image encoder's global embedding (the paper's Fig. 3a)."""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F


def crop_and_align(image: np.ndarray, box: tuple[int, int, int, int], context: float = 2.0, min_side: int = 16) -> np.ndarray:
    """A square crop centred on the box, `context` times its longer side (at least
    `min_side` px), shifted to stay inside the image, so every defect is seen at a
    comparable scale and centred, whatever its size and position."""
    h, w = image.shape[:2]
    x1, y1, x2, y2 = box
    side = int(round(max(x2 - x1, y2 - y1) * context))
    side = max(min_side, min(side, h, w))
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    left = int(round(min(max(cx - side / 2, 0), w - side)))
    top = int(round(min(max(cy - side / 2, 0), h - side)))
    return image[top : top + side, left : left + side]


@torch.no_grad()
def encode_crops(encoder, crops: list[np.ndarray], size: int, mean, std, device, dtype=torch.float32) -> torch.Tensor:
    """uint8 HxW(xC) crops -> (B, D) CLIP image embeddings."""
    batch = []
    for c in crops:
        x = torch.from_numpy(np.ascontiguousarray(c)).float() / 255.0
        x = x[..., None] if x.ndim == 2 else x
        x = x.permute(2, 0, 1)
        if x.shape[0] == 1:
            x = x.repeat(3, 1, 1)
        x = F.interpolate(x[None, :3], size=(size, size), mode="bicubic", align_corners=False)[0].clamp(0, 1)
        batch.append(x)
    x = torch.stack(batch)
    x = (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    return encoder(x.to(device=device, dtype=dtype))
