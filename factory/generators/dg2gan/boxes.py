"""Box-targeted DG2GAN generation.

DG2GAN translates whole images and takes no boxes. To put a defect where a spec
asks, for each requested box we cut a square crop of the defect-free reference
around the box (side = `context` x the box's longer side, the same framing the
training crops used), translate it with G, and add G's change back through a
feathered weight: 1 inside the box, falling linearly to 0 at the crop's edge.
Pixels outside the crop are never written. The annotation is measured, not
assumed: the pixels whose value changed by more than `threshold` (|G(n) - n|
after feathering), grouped into connected components (components smaller than
`min_area` are dropped as noise), give the box (their union's bounding box,
which lies inside the crop by construction).

The change is computed at the model's resolution and upsampled as a residual
(crop + up(G(x) - x)), so where G leaves the texture alone the reference keeps
its full-resolution detail.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as Fn

from factory.core import Box


@dataclass(frozen=True)
class CropPlan:
    """Where one requested box is translated: the crop square and the box inside it."""

    box: Box
    x1: int
    y1: int
    x2: int
    y2: int
    flip_h: bool = False
    flip_v: bool = False


def plan_crop(box: Box, width: int, height: int, context: float, flip_h=False, flip_v=False) -> CropPlan:
    """A square crop around the box, shifted (never shrunk below the box) to fit the image."""
    side = int(round(context * max(box.width, box.height)))
    side = max(side, box.width, box.height, 8)
    side = min(side, width, height)
    cx, cy = (box.x1 + box.x2) / 2, (box.y1 + box.y2) / 2
    x1 = int(np.clip(round(cx - side / 2), 0, width - side))
    y1 = int(np.clip(round(cy - side / 2), 0, height - side))
    x2, y2 = x1 + side, y1 + side
    # a box longer than the image's short side cannot sit in a square: crop is then clipped to the box span
    if box.width > side:
        x1, x2 = box.x1, box.x2
    if box.height > side:
        y1, y2 = box.y1, box.y2
    return CropPlan(box, x1, y1, x2, y2, flip_h, flip_v)


def feather(plan: CropPlan) -> np.ndarray:
    """(h, w) weights over the crop: 1 on the box, linear ramps to 0 at the crop's edge."""

    def ramp(c1: int, c2: int, b1: int, b2: int) -> np.ndarray:
        b1, b2 = max(b1, c1), min(b2, c2)
        pos = np.arange(c1, c2) + 0.5
        w = np.ones(c2 - c1)
        if b1 > c1:
            left = pos < b1
            w[left] = (pos[left] - c1) / (b1 - c1)
        if c2 > b2:
            right = pos >= b2
            w[right] = (c2 - pos[right]) / (c2 - b2)
        return w

    b = plan.box
    return np.outer(ramp(plan.y1, plan.y2, b.y1, b.y2), ramp(plan.x1, plan.x2, b.x1, b.x2)).astype(np.float32)


def _to_model_channels(x: torch.Tensor, c: int) -> torch.Tensor:
    if x.shape[1] == c:
        return x
    return x.mean(1, keepdim=True) if c == 1 else x.repeat(1, c, 1, 1)


def translate_crops(G: torch.nn.Module, crops: list[np.ndarray], size: int, channels: int, device: str, batch_size: int = 16) -> list[np.ndarray]:
    """For float HxWxC crops in [0, 1], the change G makes, (hw C) float at crop resolution:
    up(G(down(crop)) - down(crop))."""
    dtype = next(G.parameters()).dtype
    out: list[np.ndarray] = []
    for i in range(0, len(crops), batch_size):
        chunk = crops[i : i + batch_size]
        xs = []
        for c in chunk:
            t = torch.from_numpy(np.ascontiguousarray(c)).permute(2, 0, 1)[None].float()
            xs.append(Fn.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True))
        x = _to_model_channels(torch.cat(xs) * 2 - 1, channels).to(device=device, dtype=dtype)
        with torch.no_grad():
            delta = ((G(x) - x) / 2).float().cpu()
        for c, dl in zip(chunk, delta):
            h, w, ch = c.shape
            up = Fn.interpolate(dl[None], size=(h, w), mode="bilinear", align_corners=False)[0]
            up = _to_model_channels(up[None], ch)[0]
            out.append(up.permute(1, 2, 0).numpy())
    return out


def measured_box(change: np.ndarray, plan: CropPlan, threshold: float, min_area: int) -> tuple[Box | None, np.ndarray]:
    """The box of the pixels that changed (> threshold) in connected components of at
    least `min_area` pixels, in image coordinates; and the crop-sized defect mask."""
    from scipy import ndimage

    changed = change > threshold
    labels, n = ndimage.label(changed)
    if n == 0:
        return None, changed
    areas = ndimage.sum(changed, labels, index=np.arange(1, n + 1))
    keep = np.isin(labels, 1 + np.flatnonzero(areas >= min_area))
    if not keep.any():
        return None, keep
    ys, xs = np.nonzero(keep)
    b = plan.box
    box = Box(b.class_id, b.class_name, plan.x1 + int(xs.min()), plan.y1 + int(ys.min()), plan.x1 + int(xs.max()) + 1, plan.y1 + int(ys.max()) + 1)
    return box, keep


def apply_boxes(
    image: np.ndarray,
    plans: list[CropPlan],
    deltas: list[np.ndarray],
    threshold: float,
    min_area: int,
) -> tuple[np.ndarray, list[Box], np.ndarray, list[dict]]:
    """Blend each crop's change into the float HxWxC image in [0, 1], in order.

    Returns the new image, the measured boxes (requests whose change stayed under
    the threshold get none), the HxW uint8 mask (k = 1 + index in the boxes), and
    one info dict per request (requested box, crop, measured box or None).
    """
    out = image.copy()
    mask = np.zeros(image.shape[:2], np.uint8)
    boxes: list[Box] = []
    info = []
    for plan, delta in zip(plans, deltas):
        if plan.flip_h:
            delta = delta[:, ::-1]
        if plan.flip_v:
            delta = delta[::-1]
        sl = (slice(plan.y1, plan.y2), slice(plan.x1, plan.x2))
        before = out[sl].copy()
        out[sl] = np.clip(before + feather(plan)[:, :, None] * delta, 0.0, 1.0)
        change = np.abs(out[sl] - before).max(axis=2)
        box, keep = measured_box(change, plan, threshold, min_area)
        if box is not None:
            boxes.append(box)
            mask[sl][keep] = len(boxes)
        info.append({"requested": plan.box.to_dict(), "crop": [plan.x1, plan.y1, plan.x2, plan.y2], "measured": box.to_dict() if box else None})
    return out, boxes, mask, info
