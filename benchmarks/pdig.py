"""PDIG throughput and peak memory: PDIG with TIDSC vs PDIG without TIDSC vs plain
diffusers StableDiffusionPipeline, on random weights (speed does not depend on them).

    python benchmarks/pdig.py            # CPU-small: tiny config, 64 px, 10 steps (TIDSC on 5), batch 1 and 4
    python benchmarks/pdig.py --full     # GPU: SD1.5-sized UNet/VAE/text encoder, 512 px, 60 steps (TIDSC 30), fp16

Each (variant, batch) runs in a fresh subprocess so its peak memory is its own:
peak RSS on the CPU, torch.cuda.max_memory_allocated on a GPU. On a shared CPU the
wall-clock numbers swing with other load; the CPU-seconds column (one torch thread)
is the steadier cost measure there.
"""

from __future__ import annotations

from common import machine  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
import argparse
import json
import os
import subprocess
import sys
import time

VARIANTS = ("pdig+tidsc", "pdig", "diffusers-sd")


def run_one(variant: str, full: bool, batch: int, steps: int, tidsc_steps: int, size: int, reps: int, threads: int) -> dict:
    """Build the model, warm up once, time `reps` calls."""
    import resource

    import torch

    from factory.generators.pdig.base_model import SD15, TINY, build_random_base
    from factory.generators.pdig.lisa import install_lisa
    from factory.generators.pdig.pipeline import BoxPrompt, PDIGPipeline
    from factory.generators.pdig.sce import add_tokens, build_prompt

    torch.set_num_threads(threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32
    base = build_random_base(SD15 if full else TINY, image_encoder=False)
    base.to(device, dtype)
    embed_dim = 1024 if full else 32  # ViT-H/14 (full) or the tiny encoder's width; embeddings are random
    if variant == "diffusers-sd":
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline(vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer, unet=base.unet,
                                       scheduler=base.scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
        prompts = ["A photo of an electroluminescence image of a solar cell with a crack"] * batch

        def call():
            pipe(prompts, height=size, width=size, num_inference_steps=steps, guidance_scale=7.5, output_type="np")
    else:
        add_tokens(base.tokenizer, base.text_encoder, ["crack"])
        adapter = install_lisa(base.unet, embed_dim, 4)
        pipe = PDIGPipeline(base.vae, base.text_encoder, base.tokenizer, base.unet, base.scheduler, None, adapter)
        s = size
        boxes = [[BoxPrompt((s // 4, s // 4, s // 2, s // 2), "<pdig-crack>", torch.randn(embed_dim))] for _ in range(batch)]
        prompts = [build_prompt(["crack"])] * batch
        ts = tidsc_steps if variant == "pdig+tidsc" else 0

        def call():
            pipe(prompts, boxes, height=size, width=size, num_inference_steps=steps, guidance_scale=7.5, tidsc_steps=ts)
    pipe.set_progress_bar_config(disable=True)
    call()  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t, c = time.perf_counter(), time.process_time()
    for _ in range(reps):
        call()
    if device == "cuda":
        torch.cuda.synchronize()
    dt, cpu = time.perf_counter() - t, time.process_time() - c
    peak = (torch.cuda.max_memory_allocated() if device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"variant": variant, "batch": batch, "images_per_s": batch * reps / dt, "s_per_image": dt / (batch * reps),
            "cpu_s_per_image": cpu / (batch * reps),
            "peak_mib": peak / 2**20, "peak_kind": "cuda allocated" if device == "cuda" else "process RSS"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="SD1.5-sized random weights, 512 px, 60 steps, TIDSC 30 (needs a GPU)")
    ap.add_argument("--batches", default=None, help="comma-separated batch sizes (default: 1,4 small; 1,2,4,8 full)")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=None, help="override the DDIM steps (smoke tests)")
    ap.add_argument("--size", type=int, default=None, help="override the image side (smoke tests)")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one case, print JSON
    a = ap.parse_args()
    steps, tidsc_steps, size = (60, 30, 512) if a.full else (10, 5, 64)
    if a.steps:
        steps, tidsc_steps = a.steps, a.steps // 2
    size = a.size or size
    reps = a.reps or (2 if a.full else 3)
    if a.one:
        variant, batch = a.one.split(":")
        print(json.dumps(run_one(variant, a.full, int(batch), steps, tidsc_steps, size, reps, a.threads)))
        return
    if a.full:
        import torch

        if not torch.cuda.is_available():
            sys.exit("--full needs a GPU (SD1.5 size at 512 px, 60 steps); none found")
    batches = [int(b) for b in (a.batches or ("1,2,4,8" if a.full else "1,4")).split(",")]
    rows = []
    for batch in batches:
        for variant in VARIANTS:
            cmd = [sys.executable, __file__, "--one", f"{variant}:{batch}", "--reps", str(reps), "--threads", str(a.threads),
                   "--steps", str(steps), "--size", str(size)]
            cmd += ["--full"] if a.full else []
            proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ | {"HF_HUB_OFFLINE": "1"})
            if proc.returncode != 0:
                rows.append({"variant": variant, "batch": batch, "error": proc.stderr.strip().splitlines()[-1]})
                continue
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(f"machine: {machine()}, torch threads {a.threads}")
    print(f"config: {'SD1.5-sized random' if a.full else 'tiny random'}, {size}x{size}, {steps} DDIM steps, "
          f"TIDSC on the first {tidsc_steps} (pdig+tidsc), guidance 7.5, {reps} timed calls after 1 warm-up")
    print(f"{'variant':<14} {'batch':>5} {'images/s':>10} {'s/image':>9} {'cpu s/image':>12} {'peak MiB':>10}  peak")
    for r in rows:
        if "error" in r:
            print(f"{r['variant']:<14} {r['batch']:>5}  error: {r['error']}")
        else:
            print(f"{r['variant']:<14} {r['batch']:>5} {r['images_per_s']:>10.3f} {r['s_per_image']:>9.3f} {r['cpu_s_per_image']:>12.3f} "
                  f"{r['peak_mib']:>10.0f}  {r['peak_kind']}")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
