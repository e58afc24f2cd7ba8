"""report.html for a published version: one self-contained file (pictures inlined)
that anyone can open: counts, reject reasons, box size and position histograms per
class, requested vs published box sizes and aspects per class (the spec's
distributions and the planned boxes of the first plan items, recomputed here from
the spec: planning is deterministic), and image grids with the boxes drawn
(accepted, and a few rejected).
Presentation, so it lives with the pipeline, not in storage."""

from __future__ import annotations

import base64
import io
from typing import Any, NotRequired, Sequence, TypedDict

import numpy as np

from factory.core import Box, BoxRow
from factory.pipeline.records import BoxTuple
from factory.planning import plan
from factory.spec import DatasetSpec
from factory.spec.model import Distribution
from factory.viz import decode_png, draw_boxes, grid, png_bytes


class GridSample(TypedDict):
    """The columns of a parquet (or rejected) row that the report's image grids read."""

    image: bytes
    boxes: list[BoxRow]
    reasons: NotRequired[list[str]]  # rejected rows


class BoxSizes(TypedDict):
    """One class's row of the report's requested-vs-published box table."""

    name: str
    planned_n: int
    published_n: int
    size_spec: str
    size_planned: str
    size_published: str
    aspect_spec: str
    aspect_planned: str
    aspect_published: str


def _boxes(rows: Sequence[BoxRow]) -> list[Box]:
    return [Box.from_dict(b) for b in rows or []]


def sample_grid(samples: Sequence[GridSample], captions: Sequence[str] | None = None, cols: int = 4) -> bytes | None:
    if not samples:
        return None
    tiles = [draw_boxes(decode_png(s["image"]), _boxes(s["boxes"])) for s in samples]
    return png_bytes(grid(tiles, cols=cols, captions=captions))


MAX_PLANNED = 2000  # requested boxes: those of the first this many plan items
QUANTILES = (0.1, 0.5, 0.9)


def planned_box_rows(spec: DatasetSpec, n: int = MAX_PLANNED) -> list[BoxTuple]:
    """(class_id, x1, y1, x2, y2) of the boxes the planner asked for in the first
    min(count, n) plan items: the same items, in the same order, a run starts from."""
    return [(b.class_id, b.x1, b.y1, b.x2, b.y2) for it in plan(spec, n=min(spec.count, n)) for b in it.boxes]


def _size_aspect(rows: Sequence[BoxTuple], width: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(class ids, size = sqrt(w h / (W H)), aspect = w / h) of box rows."""
    a = np.array(rows, dtype=float).reshape(-1, 5)
    w, h = a[:, 3] - a[:, 1], a[:, 4] - a[:, 2]
    return a[:, 0], np.sqrt(w * h / (width * height)), w / np.maximum(h, 1e-9)


def _describe(d: Distribution) -> str:
    """A spec distribution in a few characters: `uniform 0.08..0.24`."""
    extra = ""
    if d.dist in ("normal", "lognormal"):  # (mean may be left to the range's middle)
        extra = (f", mean {d.mean:g}" if d.mean is not None else "") + f", std {d.std:g}"
    return f"{d.dist} {d.min:g}..{d.max:g}{extra}"


def box_comparison(spec: DatasetSpec, box_rows: Sequence[BoxTuple], planned_rows: Sequence[BoxTuple]) -> list[BoxSizes]:
    """Per class: the spec's size and aspect distributions, and the 10/50/90% quantiles
    of the planned (requested) and published (tight) boxes' size and aspect."""
    W, H = spec.image.width, spec.image.height
    got, want = _size_aspect(box_rows, W, H), _size_aspect(planned_rows, W, H)

    def q(v: np.ndarray) -> str:
        return " / ".join(f"{x:.3g}" for x in np.quantile(v, QUANTILES)) if len(v) else "-"

    out: list[BoxSizes] = []
    for c, d in enumerate(spec.defects):
        g, p = got[0] == c, want[0] == c
        out.append({
            "name": d.class_name, "planned_n": int(p.sum()), "published_n": int(g.sum()),
            "size_spec": _describe(d.boxes.size), "size_planned": q(want[1][p]), "size_published": q(got[1][g]),
            "aspect_spec": _describe(d.boxes.aspect), "aspect_planned": q(want[2][p]), "aspect_published": q(got[2][g]),
        })
    return out


def box_histograms(class_names: Sequence[str], box_rows: Sequence[BoxTuple], width: int, height: int,
                   planned_rows: Sequence[BoxTuple] = ()) -> bytes | None:
    """Per class: box size (side / image side), aspect (w/h, log scale) and centre
    positions; the planned (requested) boxes' size and aspect as black outlines."""
    if not box_rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a = np.array(box_rows, dtype=float)  # class_id, x1, y1, x2, y2
    gc, gsize, gaspect = _size_aspect(box_rows, width, height)
    pc, psize, paspect = _size_aspect(planned_rows, width, height)
    present = [c for c in range(len(class_names)) if (a[:, 0] == c).any()]
    fig, axes = plt.subplots(len(present), 3, figsize=(10, 2.4 * len(present)), squeeze=False)
    for row, c in enumerate(present):
        b, size, lg = a[gc == c], gsize[gc == c], np.log2(gaspect[gc == c])
        ax = axes[row]
        size_range = (0, max(0.5, float(size.max())))
        ax[0].hist(size, bins=20, range=size_range, color="#0072B2", density=True, label="published")
        ax[0].set_title(f"{class_names[c]}: box size (n={len(b)})", fontsize=9)
        aspect_range = (min(float(lg.min()), -0.1), max(float(lg.max()), 0.1))
        ax[1].hist(lg, bins=20, range=aspect_range, color="#E69F00", density=True, label="published")
        ax[1].set_title("log2 aspect (w/h)", fontsize=9)
        if (pc == c).any():
            ax[0].hist(psize[pc == c], bins=20, range=size_range, histtype="step", color="black", density=True,
                       label="planned")
            ax[1].hist(np.log2(paspect[pc == c]), bins=20, range=aspect_range, histtype="step", color="black",
                       density=True, label="planned")
            ax[0].legend(fontsize=7)
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


def build_report(spec: DatasetSpec, manifest: dict[str, Any], box_rows: Sequence[BoxTuple],
                 samples: tuple[list[GridSample], list[GridSample]]) -> tuple[bytes, bytes]:
    """(report.html, grid.png) of a version about to be published, from the
    Jinja2 template `templates/report.html.j2` (autoescaped)."""
    import jinja2

    accepted, rejected = samples
    grid_png = sample_grid(accepted) or png_bytes(np.zeros((8, 8), np.uint8))
    rej_png = sample_grid(rejected, captions=[", ".join(r["reasons"])[:60] for r in rejected]) if rejected else None
    planned = planned_box_rows(spec)
    hist_png = box_histograms(spec.class_names, box_rows, spec.image.width, spec.image.height, planned)
    env = jinja2.Environment(loader=jinja2.PackageLoader("factory.pipeline", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined)

    def b64(data: bytes | None) -> str | None:
        return base64.b64encode(data).decode() if data else None

    doc = env.get_template("report.html.j2").render(
        spec=spec, manifest=manifest, counts=manifest["counts"], grid=b64(grid_png), hist=b64(hist_png),
        box_table=box_comparison(spec, box_rows, planned), planned_items=min(spec.count, MAX_PLANNED),
        rejected=b64(rej_png), reasons=sorted(manifest["reject_reasons"].items(), key=lambda kv: -kv[1]))
    return doc.encode(), grid_png
