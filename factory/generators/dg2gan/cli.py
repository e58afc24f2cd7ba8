"""`factory train dg2gan`: train one DG2GAN (defect-free -> one defect class) with Ray Train.

Registered by `factory.cli` from this family (`register`), which turns the errors
the command raises into its one-line messages. Heavy imports (torch, ray) happen
inside the command body, so `factory --help` stays fast.
"""

from __future__ import annotations

from typing import Optional

import typer

from factory.ray_runtime import ensure_ray


def register(train: typer.Typer) -> None:
    """Add this family's subcommand to `factory train`."""
    train.command("dg2gan")(train_dg2gan)


def train_dg2gan(
    defect_free: str = typer.Option(..., "--defect-free", help="Folder/URI of defect-free images (masks beside them are used to avoid defects)."),
    defective: str = typer.Option(..., "--defective", help="Folder/URI of defective images; with masks, training uses crops around the defects."),
    class_name: str = typer.Option(..., "--class", help="Defect class this model draws (the spec's defects[].class)."),
    out: str = typer.Option(..., "--out", help="Checkpoint URI (file:// or s3://); training resumes from the last checkpoint there."),
    image_size: int = typer.Option(128, help="Training crop side in pixels (multiple of 4)."),
    channels: int = typer.Option(1, help="1 (grayscale) or 3 (RGB)."),
    batch_size: int = typer.Option(8, help="Global batch size, split over the workers (paper: 8)."),
    lr: float = typer.Option(2e-4, help="Adam learning rate (paper: 2e-4)."),
    epochs_constant: int = typer.Option(100, help="Epochs at constant learning rate (paper: 100)."),
    epochs_decay: int = typer.Option(100, help="Epochs of linear decay to zero (paper: 100)."),
    epoch_scale: float = typer.Option(1.0, help="Multiplies both epoch counts (e.g. 0.05 for a quick run)."),
    max_steps_per_epoch: Optional[int] = typer.Option(None, help="Cap on steps per epoch (quick runs)."),
    workers: int = typer.Option(1, help="Ray Train workers (DDP)."),
    gpu: bool = typer.Option(False, help="One GPU per worker."),
    no_djs: bool = typer.Option(False, "--no-djs", help="Drop the DJS term of eq. 2 (the paper's DG2GAN-no-DJS ablation)."),
    holdout: float = typer.Option(0.0, help="Share of each folder's images left out of training (seeded), for evaluation."),
    max_images: Optional[int] = typer.Option(None, help="Use at most this many images per domain."),
    ngf: int = typer.Option(64, help="Generator base channels."),
    n_blocks: int = typer.Option(6, help="Generator residual blocks."),
    ndf: int = typer.Option(64, help="Discriminator base channels."),
    n_layers: int = typer.Option(3, help="PatchGAN layers (3 = 70x70 patches)."),
    seed: int = typer.Option(0),
    address: Optional[str] = typer.Option(None, envvar="RAY_ADDRESS", help="Ray cluster address (default: an embedded local cluster)."),
) -> None:
    """Train DG2GAN (eq. 1-6 of the paper) with a Ray Train TorchTrainer; writes checkpoints + config to --out."""
    if channels not in (1, 3):
        raise ValueError(f"--channels must be 1 or 3, got {channels}")
    if image_size % 4:
        raise ValueError(f"--image-size must be a multiple of 4, got {image_size}")
    from factory.generators.dg2gan.train import TrainConfig, check_sources, train

    tc = TrainConfig(
        defect_free=defect_free, defective=defective, out=out, class_name=class_name, image_size=image_size,
        channels=channels, batch_size=batch_size, lr=lr, epochs_constant=epochs_constant, epochs_decay=epochs_decay,
        epoch_scale=epoch_scale, max_steps_per_epoch=max_steps_per_epoch, num_workers=workers, use_gpu=gpu,
        use_djs=not no_djs, holdout=holdout, max_images=max_images, ngf=ngf, n_blocks=n_blocks, ndf=ndf,
        n_layers=n_layers, seed=seed,
    )
    check_sources(tc)
    ensure_ray(address)
    c, d = tc.epochs
    typer.echo(f"training DG2GAN {class_name} for {c}+{d} epochs on {workers} worker(s) -> {out}")
    result = train(tc)
    m = result["metrics"]
    state = "already complete" if not result["trained"] else "done"
    typer.echo(
        f"{state}: epoch {result['epoch'] + 1}, checkpoint {result['checkpoint']}"
        + (f" (cycle {m['cycle']:.4f}, G {m['G']:.4f}, D {m['D']:.4f})" if "cycle" in m else "")
    )
