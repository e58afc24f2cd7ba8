"""report.html for a published version: one self-contained file (pictures inlined)
that anyone can open: counts, reject reasons, box size and position histograms per
class, and image grids with the boxes drawn (accepted, and a few rejected)."""

from __future__ import annotations

import base64
import html
import io
from typing import Any, Sequence

import numpy as np

from factory.core import Box
from factory.viz import decode_png, draw_boxes, grid, png_bytes


def _img_tag(data: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    th = "".join(f"<th>{html.escape(str(h))}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


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
    """(report.html, grid.png) of a version about to be published."""
    accepted, rejected = samples
    counts = manifest["counts"]
    grid_png = sample_grid(accepted) or png_bytes(np.zeros((8, 8), np.uint8))
    rej_png = sample_grid(rejected, captions=[", ".join(r["reasons"])[:60] for r in rejected]) if rejected else None
    hist_png = box_histograms(spec.class_names, box_rows, spec.image.width, spec.image.height)
    title = f"{spec.name} v{manifest.get('version', '')}"
    parts = [
        f"<h1>{html.escape(spec.name)}</h1>",
        f"<p>spec hash <code>{manifest['spec_hash'][:16]}</code>, code {html.escape(manifest['code_version'])}, "
        f"{spec.image.width}x{spec.image.height}x{spec.image.channels}, gate: {html.escape(', '.join(manifest['gate']))}</p>",
        "<h2>Counts</h2>",
        _table(["published", "rejected", "surplus (not needed)", "processed", "pass rate", "negatives", "rounds"],
               [[counts["accepted"], counts["rejected"], counts["surplus"], counts["processed"],
                 f"{counts['pass_rate']:.1%}" if counts["pass_rate"] is not None else "-", counts["negatives"],
                 manifest["rounds"]]]),
        "<h2>Per class</h2>",
        _table(["class", "images", "boxes"],
               [[n, counts["images_per_class"][n], counts["boxes_per_class"][n]] for n in spec.class_names]),
        "<h2>Reject reasons</h2>",
        _table(["reason", "samples"], sorted(manifest["reject_reasons"].items(), key=lambda kv: -kv[1]))
        if manifest["reject_reasons"] else "<p>none</p>",
        "<h2>Boxes</h2>",
        _img_tag(hist_png, "box histograms") if hist_png else "<p>no boxes</p>",
        "<h2>Accepted samples</h2>",
        _img_tag(grid_png, "accepted samples"),
    ]
    if rej_png:
        parts += ["<h2>Rejected samples</h2>", _img_tag(rej_png, "rejected samples")]
    style = ("body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;margin:.5em 0}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#eee}img{max-width:100%}")
    parts += ["<h2>Detector retraining</h2>",
              "<p><a href='retrain/index.html'>real-only vs real + this version</a> "
              "(there once <code>factory retrain</code> or a publish trigger has run)</p>"]
    doc = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
           f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")
    return doc.encode(), grid_png
