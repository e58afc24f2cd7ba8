"""`factory train anomaly` and `factory metrics`: the quality gate's commands.
Heavy imports (torch, ray, torch-fidelity) happen inside the command bodies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from factory.cli.app import app, train_app
from factory.cli.common import console, friendly_errors
from factory.ray_runtime import ensure_ray


@train_app.command("anomaly")
def train_anomaly_cmd(
    normal: str = typer.Option(..., "--normal", help="folder or URI of defect-free images"),
    out: str = typer.Option(..., "--out", help="where to write model.pt + thresholds.json (folder or URI)"),
    image_size: int = typer.Option(128, help="images are resized to this square size"),
    epochs: int = typer.Option(20),
    batch_size: int = typer.Option(16),
    lr: float = typer.Option(2e-4),
    width: int = typer.Option(16, help="backbone width (channels at the first level)"),
    workers: int = typer.Option(1, help="Ray Train workers (DDP when > 1)"),
    threads: int = typer.Option(1, help="torch threads (and CPUs) per worker"),
    gpu: bool = typer.Option(False, "--gpu/--no-gpu", help="one GPU per worker"),
    lcn: bool = typer.Option(False, help="local contrast normalization (illumination robustness)"),
    homomorphic: bool = typer.Option(False, help="homomorphic filtering (illumination robustness)"),
    backbone: Optional[Path] = typer.Option(None, help="local backbone state dict to start from (else trained from scratch)"),
    val_anomalous: Optional[str] = typer.Option(None, help="defect images with X.png masks beside X.jpg, for the thresholds (else synthetic defects)"),
    max_images: Optional[int] = typer.Option(None, help="use at most this many images"),
    seed: int = typer.Option(0),
    address: Optional[str] = typer.Option(None, help="Ray cluster address (default: an embedded local cluster)"),
) -> None:
    """Train the UIIDD anomaly model on defect-free images (Ray Train), calibrate its thresholds, save it."""
    with friendly_errors():
        from factory.training.anomaly import AnomalyTrainConfig, train_anomaly

        ensure_ray(address)
        cfg = AnomalyTrainConfig(image_size=image_size, epochs=epochs, batch_size=batch_size, lr=lr, width=width,
                                 lcn=lcn, homomorphic=homomorphic, backbone=str(backbone) if backbone else None,
                                 seed=seed, threads=threads, max_images=max_images)
        res = train_anomaly(normal, out, cfg, num_workers=workers, use_gpu=gpu, val_anomalous=val_anomalous)
        console.print(f"trained on {res['train_images']} images ({res['val_images']} held out) in {res['train_seconds']:.0f} s")
        console.print(f"calibration ({res['source']} anomalies): image AUROC {res['image_auroc']:.3f}, pixel AUROC {res['pixel_auroc']:.3f}")
        console.print(f"image thresholds {json.dumps({k: round(v, 3) for k, v in res['image_thresholds'].items()})}")
        console.print(f"pixel thresholds {json.dumps({k: round(v, 3) for k, v in res['pixel_thresholds'].items()})}")
        console.print(f"wrote {res['model']}  (set quality.anomaly_checkpoint: {out})")


@app.command("metrics")
def metrics_cmd(
    dataset: str = typer.Argument(..., help="NAME@VERSION (or ROOT/NAME@VERSION)"),
    real: Optional[str] = typer.Option(None, "--real", help="folder or URI of real reference images for FID/KID"),
    root: str = typer.Option("file://./datasets", help="registry root, when DATASET names none"),
    inception_weights: Optional[Path] = typer.Option(None, help="local torch-fidelity Inception weights file (standard FID, and IS)"),
    extractor: Optional[str] = typer.Option(None, help="UIIDD checkpoint for the FID/KID extractor (default: the spec's quality.anomaly_checkpoint; "
                                            "without one, a small CNN is trained on the real images)"),
    size: int = typer.Option(128, help="images are resized to this size before feature extraction"),
    max_images: int = typer.Option(2000, help="at most this many images per side"),
) -> None:
    """Pass rate, spillover rate, per-class counts; with --real, FID/KID and the classifier two-sample test
    (C2ST: 0.5 = generated and real indistinguishable, 1.0 = trivially told apart)."""
    with friendly_errors():
        from factory.quality.metrics import dataset_metrics

        res = dataset_metrics(dataset, real, root, str(inception_weights) if inception_weights else None, extractor,
                              size, max_images)
        console.print(f"[bold]{res['dataset']}[/]  {res['accepted']}/{res['samples']} accepted (pass rate {res['pass_rate']:.1%}), "
                      f"spillover rate {res['spillover_rate']:.1%}")
        console.print(f"reject reasons: {res['reject_reasons']}")
        console.print(f"images per class: {res['images_per_class']}")
        if "fidelity" in res:
            f = res["fidelity"]
            line = f"FID {f['fid']:.2f}  KID {f['kid_mean']:.4f} ± {f['kid_std']:.4f}"
            if "is_mean" in f:
                line += f"  IS {f['is_mean']:.2f}"
            console.print(f"{line}   [dim]extractor: {f['extractor']}[/]")
            c = res["c2st"]
            console.print(f"C2ST accuracy {c['c2st_accuracy']:.3f} ± {c['c2st_std']:.3f} ({len(c['folds'])}-fold, "
                          f"{c['images_per_side']} images per side at {c['size']} px; 0.5 = indistinguishable)")
            console.print(f"real beside generated: {res['realism_grid']}", highlight=False)
        console.print(f"wrote {res['written_to']}")
