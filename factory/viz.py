"""Pictures people look at instead of reading numbers: image grids with boxes and
class names drawn. Used by `factory preview`, the version report, the retrain
report and the docs grids."""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from factory.core import Box

# distinct, colour-blind-friendly colours (Okabe-Ito + extras), one per class id
PALETTE = [
    (230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178),
    (213, 94, 0), (204, 121, 167), (255, 255, 255), (160, 82, 45), (127, 255, 0),
]


def color_for(class_id: int) -> tuple[int, int, int]:
    return PALETTE[class_id % len(PALETTE)]


def _font(size: int = 11) -> ImageFont.ImageFont:
    try:  # matplotlib ships DejaVuSans; no font is downloaded
        import matplotlib

        path = f"{matplotlib.get_data_path()}/fonts/ttf/DejaVuSans.ttf"
        return ImageFont.truetype(path, size)
    except Exception:
        return ImageFont.load_default()


def to_rgb(image: np.ndarray) -> Image.Image:
    """HxW, HxWx1 or HxWx3 uint8 -> an RGB PIL image."""
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    return Image.fromarray(a).convert("RGB")


def draw_boxes(image: np.ndarray | Image.Image, boxes: Sequence[Box], label: bool = True, width: int = 2) -> Image.Image:
    im = image.copy().convert("RGB") if isinstance(image, Image.Image) else to_rgb(image)
    d = ImageDraw.Draw(im)
    font = _font()
    for b in boxes:
        c = color_for(b.class_id)
        d.rectangle([b.x1, b.y1, b.x2 - 1, b.y2 - 1], outline=c, width=width)
        if label:
            tx, ty = b.x1 + 1, max(0, b.y1 - 13)
            tw = d.textlength(b.class_name, font=font)
            d.rectangle([tx - 1, ty, tx + tw + 1, ty + 12], fill=(0, 0, 0))
            d.text((tx, ty), b.class_name, fill=c, font=font)
    return im


def grid(
    tiles: Sequence[Image.Image],
    cols: int = 4,
    captions: Sequence[str] | None = None,
    tile_size: int | None = None,
    pad: int = 4,
) -> Image.Image:
    """Lay tiles out on a dark canvas, optionally with a caption under each."""
    if not tiles:
        raise ValueError("nothing to draw: no images")
    size = tile_size or max(max(t.size) for t in tiles)
    tiles = [t if t.size == (size, size) else _fit(t, size) for t in tiles]
    cap_h = 16 if captions else 0
    cols = max(1, min(cols, len(tiles)))
    rows = -(-len(tiles) // cols)
    canvas = Image.new("RGB", (cols * (size + pad) + pad, rows * (size + pad + cap_h) + pad), (24, 24, 24))
    d = ImageDraw.Draw(canvas)
    font = _font()
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        x, y = pad + c * (size + pad), pad + r * (size + pad + cap_h)
        canvas.paste(t, (x, y))
        if captions:
            d.text((x + 2, y + size + 1), captions[i][: size // 6], fill=(220, 220, 220), font=font)
    return canvas


def _fit(tile: Image.Image, size: int) -> Image.Image:
    """Scale to fit a size x size square (boxes already drawn scale with it)."""
    t = tile.copy()
    t.thumbnail((size, size))
    out = Image.new("RGB", (size, size), (24, 24, 24))
    out.paste(t, ((size - t.width) // 2, (size - t.height) // 2))
    return out


def png_bytes(image: np.ndarray | Image.Image) -> bytes:
    im = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image).squeeze())
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=False, compress_level=1)
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes -> HxWxC uint8 (C = 1 or 3)."""
    a = np.asarray(Image.open(io.BytesIO(data)))
    return a[:, :, None] if a.ndim == 2 else a


def box_crop(image: np.ndarray, box: Box, scale: float = 1.5, size: int = 64) -> np.ndarray:
    """A square grey crop centred on a box, `scale` times its longer side (edge pixels
    repeat past the image border), resized to size x size: the defect with as much of
    its surroundings as judges of realism should see."""
    a = np.asarray(image)
    a = a[:, :, 0] if a.ndim == 3 else a
    side = max(2, int(round(scale * max(box.width, box.height))))
    cy, cx = (box.y1 + box.y2) // 2, (box.x1 + box.x2) // 2
    y0, x0 = cy - side // 2, cx - side // 2
    pad = max(0, -y0, -x0, y0 + side - a.shape[0], x0 + side - a.shape[1])
    if pad:
        a, y0, x0 = np.pad(a, pad, mode="edge"), y0 + pad, x0 + pad
    crop = Image.fromarray(np.ascontiguousarray(a[y0:y0 + side, x0:x0 + side]))
    return np.asarray(crop.resize((size, size), Image.BILINEAR if side > size else Image.NEAREST))


def box_crops(images: Sequence[tuple[np.ndarray, Sequence[Box]]], scale: float = 1.5, size: int = 64) -> list[np.ndarray]:
    """`box_crop` of every box of every (image, boxes), in order."""
    return [box_crop(im, b, scale, size) for im, boxes in images for b in boxes]
