"""report.html for a published version: one self-contained file (pictures inlined)
that anyone can open: counts, reject reasons, box size and position histograms per
class, and image grids with the boxes drawn (accepted, and a few rejected).
Presentation, so it lives with the pipeline, not in storage."""

from __future__ import annotations

import base64
import io
from typing import Any, Sequence

import numpy as np

from factory.core import Box
from factory.viz import decode_png, draw_boxes, grid, png_bytes


def _boxes(rows: Sequence[dict[str, Any]]) -> list[Box]:
    return [Box.from_dict(b) for b in rows or []]


def sample_grid(samples: Sequence[dict[str, Any]], captions: Sequence[str] | None = None, cols: int = 4) -> bytes | None:
    if not samples:
        return None
    tiles = [draw_boxes(decode_png(s["image"]), _boxes(s["boxes"])) for s in samples]
    return png_bytes(grid(tiles, cols=cols, captions=captions))


def box_histograms(class_names: Sequence[str], box_rows: Sequence[tuple], width: int, height: int) -> bytes | None:
    """Per class: box size (side / image side), aspect (w/h, log scale) and centre positions."""
    if not box_rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a = np.array(box_rows, dtype=float)  # class_id, x1, y1, x2, y2
    present = [c for c in range(len(class_names)) if (a[:, 0] == c).any()]
    fig, axes = plt.subplots(len(present), 3, figsize=(10, 2.4 * len(present)), squeeze=False)
    for row, c in enumerate(present):
        b = a[a[:, 0] == c]
        w, h = b[:, 3] - b[:, 1], b[:, 4] - b[:, 2]
        size = np.sqrt(w * h / (width * height))
        ax = axes[row]
        ax[0].hist(size, bins=20, range=(0, max(0.5, float(size.max()))), color="#0072B2")
        ax[0].set_title(f"{class_names[c]}: box size (n={len(b)})", fontsize=9)
        ax[1].hist(np.log2(w / h), bins=20, color="#E69F00")
        ax[1].set_title("log2 aspect (w/h)", fontsize=9)
        cx, cy = (b[:, 1] + b[:, 3]) / 2 / width, (b[:, 2] + b[:, 4]) / 2 / height
        ax[2].hist2d(cx, cy, bins=10, range=[[0, 1], [0, 1]], cmap="viridis")
        ax[2].invert_yaxis()
        ax[2].set_aspect("equal")
        ax[2].set_title("centre position", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()


def build_report(spec, manifest: dict[str, Any], box_rows: Sequence[tuple],
                 samples: tuple[list[dict[str, Any]], list[dict[str, Any]]]) -> tuple[bytes, bytes]:
    """(report.html, grid.png) of a version about to be published, from the
    Jinja2 template `templates/report.html.j2` (autoescaped)."""
    import jinja2

    accepted, rejected = samples
    grid_png = sample_grid(accepted) or png_bytes(np.zeros((8, 8), np.uint8))
    rej_png = sample_grid(rejected, captions=[", ".join(r["reasons"])[:60] for r in rejected]) if rejected else None
    hist_png = box_histograms(spec.class_names, box_rows, spec.image.width, spec.image.height)
    env = jinja2.Environment(loader=jinja2.PackageLoader("factory.pipeline", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined)
    b64 = lambda data: base64.b64encode(data).decode() if data else None  # noqa: E731
    doc = env.get_template("report.html.j2").render(
        spec=spec, manifest=manifest, counts=manifest["counts"], grid=b64(grid_png), hist=b64(hist_png),
        rejected=b64(rej_png), reasons=sorted(manifest["reject_reasons"].items(), key=lambda kv: -kv[1]))
    return doc.encode(), grid_png
