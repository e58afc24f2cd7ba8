"""`factory metrics`: a published version's pass rate, reject reasons and per-class counts, and
with real images its realism (FID/KID, C2ST). Heavy imports (torch, torch-fidelity) happen inside
the command body."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
from rich.markup import escape

from factory.cli.app import app
from factory.cli.common import console, friendly_errors, plural

if TYPE_CHECKING:
    from factory.quality.metrics import DatasetMetrics


@app.command("metrics")
def metrics_cmd(
    dataset: str = typer.Argument(..., help="NAME@VERSION (or ROOT/NAME@VERSION)"),
    real: Optional[str] = typer.Option(None, "--real", help="folder or URI of real reference images for FID/KID"),
    root: Optional[str] = typer.Option(None, show_default=False,
                                       help="registry root, when DATASET names none (default: env FACTORY_ROOT, else file://./datasets)"),
    inception_weights: Optional[Path] = typer.Option(None, help="local torch-fidelity Inception weights file (standard FID, and IS)"),
    extractor: Optional[str] = typer.Option(None, help="UIIDD checkpoint for the FID/KID extractor (default: the spec's quality.anomaly_checkpoint; "
                                            "without one, a small CNN is trained on the real images)"),
    size: int = typer.Option(128, help="images are resized to this size before feature extraction"),
    max_images: int = typer.Option(2000, help="at most this many images per side"),
    as_json: bool = typer.Option(False, "--json", help="print the metrics as JSON (for machines) instead of tables"),
) -> None:
    """Pass rate, spillover rate, per-class counts; with --real, FID/KID and the classifier two-sample test
    (C2ST: 0.5 = generated and real indistinguishable, 1.0 = trivially told apart)."""
    with friendly_errors():
        from factory.quality.metrics import dataset_metrics
        from factory.storage import default_root

        res = dataset_metrics(dataset, real, root or default_root(), str(inception_weights) if inception_weights else None, extractor,
                              size, max_images)
        if as_json:
            print(json.dumps(res, indent=1, sort_keys=True, default=str))
            return
        print_metrics(res)


def _pct(v: float) -> str:
    return "n/a" if v != v else f"{v:.1%}"


def print_metrics(res: DatasetMetrics) -> None:
    """`factory metrics` for people: a summary table, then per-class counts, reject reasons and realism."""
    from rich.table import Table

    summary = Table(title=f"[bold]{escape(res['dataset'])}[/]", show_header=False, title_justify="left")
    summary.add_column("metric", style="bold")
    summary.add_column("value", justify="right")
    summary.add_row("samples", str(res["samples"]))
    summary.add_row("accepted", f"{res['accepted']} (pass rate {_pct(res['pass_rate'])})")
    summary.add_row("rejected", str(res["rejected"]))
    spill = _pct(res["spillover_rate"])
    if res.get("spillover_measured"):
        spill += f" (mean spillover {res['spillover_mean']:.3f} over {plural(res['spillover_measured'], 'sample')})"
    summary.add_row("spillover rate", spill)
    console.print(summary)
    _print_counts(res)
    if "fidelity" in res:
        console.print(_realism_table(res))
        console.print(f"real beside generated: {res['realism_grid']}", highlight=False)
    if "written_to" in res:
        console.print(f"wrote {res['written_to']}", highlight=False)


def _print_counts(res: DatasetMetrics) -> None:
    """Accepted samples per class, and why samples were rejected."""
    from rich.table import Table

    classes = sorted(set(res["images_per_class"]) | set(res["boxes_per_class"]))
    if classes:
        t = Table(title="accepted samples per class", title_justify="left")
        t.add_column("class")
        t.add_column("images", justify="right")
        t.add_column("boxes", justify="right")
        for c in classes:
            t.add_row(escape(c), str(res["images_per_class"].get(c, 0)), str(res["boxes_per_class"].get(c, 0)))
        console.print(t)
    if not res["reject_reasons"]:
        console.print("no sample was rejected")
        return
    t = Table(title="why samples were rejected", title_justify="left")
    t.add_column("reason")
    t.add_column("samples", justify="right")
    t.add_column("share of all", justify="right")
    for reason, n in res["reject_reasons"].items():
        t.add_row(escape(reason), str(n), _pct(n / res["samples"]) if res["samples"] else "n/a")
    console.print(t)


def _c2st_cell(x: dict) -> str:
    return f"{x['c2st_accuracy']:.3f} ± {x['c2st_std']:.3f}" if "c2st_accuracy" in x else "-"


def _kid_cell(x: dict) -> str:
    return f"{x['kid_mean']:.4f} ± {x['kid_std']:.4f}" if "kid_mean" in x else "-"


def _realism_table(res: DatasetMetrics):
    """Generated vs real beside real vs real (the floor): FID/KID, in-domain and on ImageNet
    features, IS, and the C2ST on whole images and on box crops."""
    from rich.table import Table

    f, c = res["fidelity"], res["c2st"]
    floor = res.get("real_floor") or {}
    t = Table(title="realism against the real images", title_justify="left")
    t.add_column("metric")
    t.add_column("generated vs real", justify="right")
    t.add_column(f"floor: real vs real ({floor.get('images_per_half', '-')} a half)", justify="right")
    t.add_column("notes")
    fp, floor_fp = res.get("fidelity_pretrained") or {}, floor.get("fidelity_pretrained") or {}
    t.add_row("FID", f"{f['fid']:.2f}", "", f"extractor: {escape(str(f['extractor']))}")
    t.add_row("KID", _kid_cell(f), "", "")
    if "fid" in fp:
        t.add_row("FID, ImageNet features", f"{fp['fid']:.2f}", f"{floor_fp['fid']:.2f}" if "fid" in floor_fp else "-",
                  f"extractor: {escape(str(fp['extractor']))}; comparable across lines and runs")
        t.add_row("KID, ImageNet features", _kid_cell(fp), _kid_cell(floor_fp), escape(floor_fp.get("skipped", "")))
    elif fp:
        t.add_row("FID/KID, ImageNet features", "-", "-", escape(fp["skipped"]))
    if "is_mean" in f:
        t.add_row("IS", f"{f['is_mean']:.2f}", "", "")
    fc = floor.get("c2st") or {}
    t.add_row("C2ST accuracy", _c2st_cell(c), _c2st_cell(fc),
              f"{len(c['folds'])}-fold, {c['images_per_side']} images per side at {c['size']} px; 0.5 = "
              f"indistinguishable{'; floor: ' + escape(fc['skipped']) if 'skipped' in fc else ''}")
    cc, fcc = res.get("c2st_box_crops") or {}, floor.get("c2st_box_crops") or {}
    if "c2st_accuracy" in cc:
        t.add_row("C2ST box crops", _c2st_cell(cc), _c2st_cell(fcc),
                  f"crops 1.5x each box, {cc['images_per_side']} per side: the defects, not the backgrounds"
                  f"{'; floor: ' + escape(fcc['skipped']) if 'skipped' in fcc else ''}")
    elif cc:
        t.add_row("C2ST box crops", "-", "-", escape(cc["skipped"]))
    return t
