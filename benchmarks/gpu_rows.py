"""The non-PDIG rows of `benchmarks/gpu.sh`, one section per call, each appending JSON
rows to `--jsonl` (gpu.sh prints them as one table). Random weights throughout:
these rows measure speed, not quality. `--dry-run` runs the same code on the CPU
at tiny sizes (it checks the script, its numbers mean nothing).

    python benchmarks/gpu_rows.py dg2gan|anomaly|trainers|job[,...] --work DIR --jsonl ROWS [--dry-run]

Several sections (comma-separated) run in this one process, in order; one that fails
becomes a row saying why and the next still runs.

- dg2gan:   G of `--preset full` (128 px, 64-channel G, 6 blocks) translating a batch: images/s.
- anomaly:  the quality gate's UIIDD heat maps (128 px, paper-like width), calibrated on
            random inputs and saved to DIR/anomaly for the job: heat maps/s.
- trainers: a few optimizer steps of each trainer's own step (DG2GAN `train_step` at
            the paper's batch 8, UIIDD `train_step`, PDIG's LDM loss with SCE + LISA
            at SD1.5 size) and ultralytics YOLO epochs through `factory.retrain.arm.train_arm`.
- job:      `run_dataset` (Ray Data) with the pdig generator on a random base and the
            anomaly gate from the `anomaly` section, GPU generator + GPU scoring;
            GPU utilisation sampled with nvidia-smi while it runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
for k, v in {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1",
             "TRANSFORMERS_OFFLINE": "1"}.items():
    os.environ.setdefault(k, v)


def _timed(fn, reps: int, sync) -> float:
    """Seconds per call after one warm-up call."""
    fn()
    sync()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    sync()
    return (time.perf_counter() - t) / reps


def dg2gan(dev: str, dry: bool, work: Path) -> list[dict]:
    import torch
    from dg2gan import PRESETS

    from factory.generators.dg2gan.model import DG2GANConfig, build

    p = PRESETS["cpu-small" if dry else "full"]
    cfg = DG2GANConfig(image_size=32 if dry else p["image_size"], ngf=p["ngf"], n_blocks=p["n_blocks"], ndf=p["ndf"],
                       n_layers=p["n_layers"])
    gens, _ = build(cfg, seed=0)
    G = gens.G.to(dev).eval()
    batch = 4 if dry else 32
    x = torch.rand(batch, 1, cfg.image_size, cfg.image_size, device=dev) * 2 - 1
    amp = torch.autocast("cuda", dtype=torch.float16) if dev == "cuda" else torch.autocast("cpu", enabled=False)

    def run():
        with torch.no_grad(), amp:
            G(x)
    s = _timed(run, 2 if dry else 20, _sync(dev))
    preset = "cpu-small at 32 px" if dry else "full"
    return [{"what": "DG2GAN G, translation", "config": f"--preset {preset}, {cfg.image_size} px, batch {batch}, "
             f"{'fp16 autocast' if dev == 'cuda' else 'fp32'}", "value": f"{batch / s:.1f} images/s"}]


def anomaly(dev: str, dry: bool, work: Path) -> list[dict]:
    import torch

    from factory.quality.anomaly.calibrate import calibrate
    from factory.quality.anomaly.detector import AnomalyDetector, ScoreConfig
    from factory.quality.anomaly.model import ModelConfig, UIIDDModel
    from factory.quality.anomaly.preprocess import PreprocessConfig

    S = 32 if dry else 128
    torch.manual_seed(0)
    model = UIIDDModel(ModelConfig(image_size=S, width=8 if dry else 16))
    det = AnomalyDetector(model, PreprocessConfig(image_size=S), ScoreConfig(sigma=1.0), device=dev)
    x = torch.rand(8 if dry else 64, 1, S, S)
    calibrate(det, x)
    det.device = "cpu"
    det.save(f"file://{work / 'anomaly'}")  # for the job section (loaded there on its scoring device)
    det.device = dev
    n = 16 if dry else 512
    xs = torch.rand(n, 1, S, S, device=dev)
    s = _timed(lambda: det.heat_from_tensor(xs, batch_size=32 if dry else 128), 1 if dry else 3, _sync(dev))
    return [{"what": "anomaly gate (UIIDD) heat maps", "config": f"{S} px, width {8 if dry else 16}, batch "
             f"{32 if dry else 128}, fp32, random weights", "value": f"{n / s:.0f} heat maps/s"}]


def trainers(dev: str, dry: bool, work: Path) -> list[dict]:
    rows = []
    for name, fn in (("DG2GAN", _train_dg2gan), ("UIIDD anomaly", _train_anomaly), ("PDIG (SCE + LISA)", _train_pdig),
                     ("YOLO detector (ultralytics)", _train_yolo)):
        try:
            config, value = fn(dev, dry, work)
        except Exception as e:  # noqa: BLE001 - one trainer failing is a row that says why
            config, value = "", f"failed: {type(e).__name__}: {str(e)[:160]}"
        rows.append({"what": f"trainer: {name}", "config": config, "value": value})
    return rows


def _train_dg2gan(dev, dry, work):
    import torch
    from dg2gan import PRESETS

    from factory.generators.dg2gan.model import DG2GANConfig, build
    from factory.generators.dg2gan.steps import make_optimizers, train_step

    p = PRESETS["cpu-small" if dry else "full"]
    cfg = DG2GANConfig(image_size=32 if dry else p["image_size"], ngf=p["ngf"], n_blocks=p["n_blocks"], ndf=p["ndf"],
                       n_layers=p["n_layers"])
    gens, discs = build(cfg, seed=0)
    gens, discs = gens.to(dev), discs.to(dev)
    opt_g, opt_d = make_optimizers(gens, discs, 2e-4)
    n, d = (torch.rand(8, 1, cfg.image_size, cfg.image_size, device=dev) * 2 - 1 for _ in range(2))
    steps = 2 if dry else 20
    s = _timed(lambda: train_step(gens, discs, opt_g, opt_d, n, d, cfg), steps, _sync(dev))
    return f"{cfg.image_size} px, batch 8 (paper), fp32, {steps} steps", f"{1 / s:.2f} steps/s ({8 / s:.1f} images/s)"


def _train_anomaly(dev, dry, work):
    import torch

    from factory.quality.anomaly.loss import LossWeights
    from factory.quality.anomaly.model import ModelConfig, UIIDDModel
    from factory.training.anomaly_steps import train_step

    S, B = (32, 4) if dry else (128, 16)
    model = UIIDDModel(ModelConfig(image_size=S, width=8 if dry else 16)).to(dev)
    og = torch.optim.Adam(model.generator.parameters(), 2e-4, betas=(0.5, 0.999))
    od = torch.optim.Adam(model.discriminator.parameters(), 2e-4, betas=(0.5, 0.999))
    x = torch.rand(B, 1, S, S, device=dev)
    steps = 2 if dry else 20
    s = _timed(lambda: train_step(model.generator, model.discriminator, og, od, x, x, LossWeights()), steps, _sync(dev))
    return f"{S} px, batch {B}, fp32, {steps} steps", f"{1 / s:.2f} steps/s ({B / s:.1f} images/s)"


def _train_pdig(dev, dry, work):
    import torch
    from diffusers import DDIMScheduler

    from factory.generators.pdig.adapter import create_parts
    from factory.generators.pdig.base_model import SCHEDULER, SD15, TINY, build_random_base
    from factory.generators.pdig.train import _module

    with torch.device(dev):
        base = build_random_base(TINY if dry else SD15)  # with the image encoder: LISA is sized by its embedding
    base.scheduler = DDIMScheduler(**SCHEDULER)
    parts = create_parts(base, ["crack"], 4)
    model = _module(base, parts).to(dev)
    opt = torch.optim.AdamW(parts.trainable_parameters(), lr=1e-4, weight_decay=0.01)
    size, B = (64, 2) if dry else (512, 8)
    pixels = torch.rand(B, 3, size, size, device=dev) * 2 - 1
    ids = base.tokenizer(["a photo of <pdig-crack>"] * B, padding="max_length", max_length=77, return_tensors="pt").input_ids.to(dev)
    embeds = torch.randn(B, base.image_embed_dim, device=dev)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if dev == "cuda" else torch.autocast("cpu", enabled=False)

    def step():
        with amp:
            loss = model(pixels, ids, embeds)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    steps = 2 if dry else 10
    s = _timed(step, steps, _sync(dev))
    cfg = f"{'tiny' if dry else 'SD1.5-sized'} random base, {size} px, batch {B}, {'bf16 autocast' if dev == 'cuda' else 'fp32'}"
    return f"{cfg}, {steps} steps", f"{1 / s:.2f} steps/s ({B / s:.1f} images/s)"


def _train_yolo(dev, dry, work):
    from PIL import Image

    from factory.retrain.arm import train_arm
    from factory.retrain.data import Selection
    from factory.retrain.records import ArmPlan
    from factory.spec.retrain import RetrainSettings

    root = work / "yolo"
    n, size = (8, 64) if dry else (256, 512)
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n if split == "train" else max(4, n // 8)):
            Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(root / "images" / split / f"{i}.png")
            (root / "labels" / split / f"{i}.txt").write_text("0 0.5 0.5 0.2 0.3\n")
    (root / "data.yaml").write_text("train: images/train\nval: images/val\nnames: {0: crack}\n")
    epochs = 1 if dry else 3
    cfg = RetrainSettings(epochs=epochs, imgsz=size, batch=8 if dry else 32, workers=0, gpus=1 if dev == "cuda" else 0,
                          evals=0, train_args={"plots": False})
    items = {split: [(p, ["0 0.5 0.5 0.2 0.3"]) for p in sorted((root / "images" / split).glob("*.png"))]
             for split in ("train", "val")}
    out = train_arm("real", 0, work / "yolo-runs", Selection(["crack"], items["train"], [], items["val"]), cfg,
                    ArmPlan(epochs=epochs, stop_steps=None, warmup_epochs=0.0, close_mosaic=0))
    return (f"yolov8n.yaml from scratch, {n} images at {size} px, batch {cfg.batch}, {epochs} epoch(s), train + val",
            f"{n * epochs / out['train_seconds']:.1f} train images/s ({out['train_seconds']:.1f} s, start-up included)")


def job(dev: str, dry: bool, work: Path) -> list[dict]:
    import ray

    from factory.generators.pdig.base_model import SD15, build_random_base, save_base, write_tiny_base
    from factory.pipeline import RunOptions, run_dataset
    from factory.spec import spec_from_dict

    if not (work / "anomaly").exists():
        raise SystemExit("run the anomaly section first (it writes the gate's checkpoint)")
    base_dir = work / "base"
    if not base_dir.exists():
        if dry:
            write_tiny_base(base_dir)
        else:
            import torch

            with torch.device("cuda"):
                base = build_random_base(SD15, image_encoder=False)
            save_base(base.to("cuda", torch.float16), base_dir)  # loaded by the generator actor as fp16
            del base
            torch.cuda.empty_cache()
    size, count, steps = (64, 8, 2) if dry else (512, 48, 20)
    spec = spec_from_dict({
        "name": "gpu-bench", "seed": 0, "count": count, "image": {"width": size, "height": size, "channels": 1},
        "defects": [{"class": "crack", "weight": 1.0, "boxes": {"count": [1, 1], "size": {"dist": "uniform", "min": 0.2, "max": 0.4}}}],
        "generators": [{"kind": "pdig", "params": {"base": str(base_dir), "steps": steps, "tidsc_steps": steps // 2}}],
        # the gate computes every heat map, but its thresholds are opened so random-weight images pass:
        # this row is the rate of generation + scoring + writing, not of acceptance
        "quality": {"anomaly_checkpoint": f"file://{work / 'anomaly'}", "gpus": 0.25 if dev == "cuda" else 0,
                    "duplicate_distance": -1, "min_std": 0.0, "max_saturated": 1.0, "pixel_threshold": -1e9,
                    "image_threshold": 1e9, "max_outside_fraction": 1.0, "spillover_max": 1.0},
        "output": {"uri": f"file://{work / 'datasets'}", "shard_size": 16 if not dry else 8},
    })
    ray.init(num_cpus=2 if dry else None, include_dashboard=False, log_to_driver=False)
    util = _UtilSampler() if dev == "cuda" else None
    t = time.perf_counter()
    try:
        res = run_dataset(spec, RunOptions(report=False, batch_size=16 if not dry else 8))
    finally:
        samples = util.stop() if util else []
        ray.shutdown()
    s = time.perf_counter() - t
    m = res.manifest.get("counts", {})
    made = m.get("processed", m.get("accepted", count)) if isinstance(m, dict) else count
    gpu = f"{np.mean(samples):.0f}% mean, {np.percentile(samples, 90):.0f}% p90 ({len(samples)} samples)" if samples else \
        "n/a (no nvidia-smi)"
    return [{"what": "Ray Data job: pdig generator + anomaly gate", "config":
             f"{'tiny' if dry else 'SD1.5-sized'} random base, {count} images at {size} px, {steps} steps (TIDSC {steps // 2}), "
             f"{'CPU' if dev == 'cpu' else 'generator 1 GPU, scoring 0.25 GPU'}, gate thresholds opened, start-up included",
             "value": f"{count / s:.2f} images/s ({s:.0f} s, {made} made); GPU util {gpu}"}]


class _UtilSampler:
    """nvidia-smi utilization.gpu every 250 ms while a section runs."""

    def __init__(self):
        self.proc = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "250"],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    def stop(self) -> list[float]:
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=10)
        return [float(v) for v in out.split() if v.replace(".", "").isdigit()]


def _sync(dev: str):
    import torch

    return torch.cuda.synchronize if dev == "cuda" else (lambda: None)


SECTIONS = {"dg2gan": dg2gan, "anomaly": anomaly, "trainers": trainers, "job": job}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sections", help=f"comma-separated, from {', '.join(SECTIONS)}")
    ap.add_argument("--work", required=True, help="scratch folder shared by the sections (the job reads the gate's checkpoint)")
    ap.add_argument("--jsonl", required=True)
    ap.add_argument("--dry-run", action="store_true")
    a = ap.parse_args()
    import torch

    dev = "cpu" if a.dry_run or not torch.cuda.is_available() else "cuda"
    torch.set_num_threads(2 if dev == "cpu" else torch.get_num_threads())
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    names = a.sections.split(",")
    if unknown := [n for n in names if n not in SECTIONS]:
        ap.error(f"unknown sections {unknown}; choose from {', '.join(SECTIONS)}")
    for name in names:
        try:
            rows = SECTIONS[name](dev, a.dry_run, work)
        except Exception as e:  # noqa: BLE001 - reported as the section's row; the exit status says so too
            rows = [{"what": name, "value": f"failed: {type(e).__name__}: {str(e)[:160]}"}]
        with open(a.jsonl, "a") as f:
            for r in rows:
                f.write(json.dumps(r | {"section": name}) + "\n")


if __name__ == "__main__":
    main()
