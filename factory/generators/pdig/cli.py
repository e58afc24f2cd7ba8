"""`factory train pdig` (SCE + LISA under Ray Train) and `factory train pdig-tiny-base`
(a tiny random base model, so the CPU path runs end to end without external weights).

Registered by `factory.cli` from this family (`register`), which turns the errors
the commands raise into its one-line messages. Heavy imports happen inside the
command bodies."""

from __future__ import annotations

from typing import Optional

import typer

from factory.ray_runtime import ensure_ray


def register(train: typer.Typer) -> None:
    """Add this family's subcommands to `factory train`."""
    train.command("pdig")(train_pdig_cmd)
    train.command("pdig-tiny-base")(tiny_base_cmd)


def _mask_classes(text: str) -> dict[int, str]:
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        value, _, name = part.partition(":")
        if not name or not value.strip().isdigit():
            raise ValueError(f"--mask-classes wants VALUE:NAME pairs separated by commas, got {part!r}")
        out[int(value)] = name.strip()
    return out


def train_pdig_cmd(
    data: str = typer.Option(..., "--data", help="Folder/URI of images with class masks (*/img + */ann) or YOLO labels (images/ + labels/)."),
    base: str = typer.Option(..., "--base", help="Folder/URI of the base model: diffusers SD1.5 layout + image_encoder/ (open_clip)."),
    out: str = typer.Option(..., "--out", help="Where the trained parts go (file:// or s3://)."),
    mask_classes: str = typer.Option("1:dark_area,2:cross_crack,3:crack", help="Mask value -> class, VALUE:NAME,... (default: pv_vision; 4 = busbar is structure)."),
    epochs: int = typer.Option(1, help="Passes over the data (the paper trains > 1000)."),
    max_steps: Optional[int] = typer.Option(None, help="Stop after this many optimizer steps (quick runs)."),
    batch_size: int = typer.Option(8, help="Batch size per worker (paper: 8)."),
    lr: float = typer.Option(1e-4, help="AdamW learning rate (paper: 1e-4)."),
    weight_decay: float = typer.Option(0.01, help="AdamW weight decay (paper: 0.01)."),
    num_tokens: int = typer.Option(4, help="LISA image tokens N."),
    resolution: Optional[int] = typer.Option(None, help="Training image side (default: the base's native size)."),
    max_images: Optional[int] = typer.Option(None, help="Use at most this many images."),
    workers: int = typer.Option(1, help="Ray Train workers (DDP)."),
    gpu: bool = typer.Option(False, help="One GPU per worker."),
    seed: int = typer.Option(0),
    address: Optional[str] = typer.Option(None, envvar="RAY_ADDRESS", help="Ray cluster address (default: an embedded local cluster)."),
) -> None:
    """Train PDIG's SCE tokens and LISA adapter (frozen base) with a Ray Train TorchTrainer."""
    from factory.generators.pdig.train import PDIGTrainConfig, train_pdig

    cfg = PDIGTrainConfig(
        data=data, base=base, out=out, mask_classes=_mask_classes(mask_classes), epochs=epochs, max_steps=max_steps,
        batch_size=batch_size, lr=lr, weight_decay=weight_decay, num_tokens=num_tokens, resolution=resolution,
        limit=max_images, num_workers=workers, use_gpu=gpu, seed=seed,
    )
    ensure_ray(address)
    typer.echo(f"training PDIG (SCE + LISA) on {data} over base {base}, {workers} worker(s) -> {out}")
    m = train_pdig(cfg)
    typer.echo(f"done: {m.get('steps')} steps, loss {m.get('loss', float('nan')):.4f}, classes {m.get('classes')}; checkpoint {out}")


def tiny_base_cmd(
    out: str = typer.Option(..., "--out", help="Folder to write the tiny random base model to."),
    seed: int = typer.Option(0),
) -> None:
    """Write a tiny random Stable Diffusion base (64 px, ~3M parameters) in the layout `--base` reads: for demos and tests only."""
    from factory.generators.pdig.base_model import write_tiny_base
    from factory.storage import uri as storage

    folder = write_tiny_base(storage.local_path(out), seed=seed)
    typer.echo(f"tiny random PDIG base written to {folder} (random weights: images are noise-like)")
