"""PDIG throughput and peak memory: PDIG with TIDSC vs PDIG without TIDSC vs plain
diffusers StableDiffusionPipeline, on random weights (speed does not depend on them).

    python benchmarks/pdig.py            # CPU-small: tiny config, 64 px, 10 steps (TIDSC on 5), batch 1 and 4
    python benchmarks/pdig.py --full     # GPU: SD1.5-sized UNet/VAE/text encoder, 512 px, 60 steps (TIDSC 30), fp16
    python benchmarks/pdig.py --smoke    # seconds: checks the script, numbers mean nothing

On the CPU each (variant, batch) runs in a fresh subprocess so its peak memory is
its own (peak RSS). On a GPU (or with --same-process) every case shares one process
and one random base, and the peak is torch.cuda.max_memory_allocated, reset per case.
On a shared CPU the wall-clock numbers swing with other load; the CPU-seconds column
(one torch thread) is the steadier cost measure there. `--compile` adds a PDIG + TIDSC
row with the UNet's guidance passes under torch.compile (GPU; compile time reported apart).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from common import SMOKE_HELP, machine  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

VARIANTS = ("pdig+tidsc", "pdig", "diffusers-sd")


def build(full: bool, device: str):
    import torch
    from diffusers import DDIMScheduler

    from factory.generators.pdig.base_model import SCHEDULER, SD15, TINY, build_random_base

    dtype = torch.float16 if device == "cuda" else torch.float32
    with torch.device(device):  # SD1.5 size: initialize on the GPU (seconds, not a minute of CPU init)
        base = build_random_base(SD15 if full else TINY, image_encoder=False)
    base.scheduler = DDIMScheduler(**SCHEDULER)  # its tables on the CPU, as from_pretrained makes them
    return base.to(device, dtype)


def make_call(base, variant: str, full: bool, batch: int, steps: int, tidsc_steps: int, size: int):
    """A function generating one batch with `variant`, and what it costs to set up."""
    import torch
    from diffusers.models.attention_processor import AttnProcessor2_0

    from factory.generators.pdig.lisa import install_lisa
    from factory.generators.pdig.pipeline import BoxPrompt, PDIGPipeline
    from factory.generators.pdig.sce import add_tokens, build_prompt

    embed_dim = 1024 if full else 32  # ViT-H/14 (full) or the tiny encoder's width; embeddings are random
    if variant == "diffusers-sd":
        from diffusers import StableDiffusionPipeline

        base.unet.set_attn_processor(AttnProcessor2_0())  # plain SD: undo any LISA processors of an earlier case
        pipe = StableDiffusionPipeline(vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer, unet=base.unet,
                                       scheduler=base.scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
        prompts = ["A photo of an electroluminescence image of a solar cell with a crack"] * batch
        pipe.set_progress_bar_config(disable=True)
        return lambda n=steps: pipe(prompts, height=size, width=size, num_inference_steps=n, guidance_scale=7.5, output_type="np")
    if "<pdig-crack>" not in base.tokenizer.get_vocab():
        add_tokens(base.tokenizer, base.text_encoder, ["crack"])
    adapter = install_lisa(base.unet, embed_dim, 4)
    pipe = PDIGPipeline(base.vae, base.text_encoder, base.tokenizer, base.unet, base.scheduler, None, adapter)
    pipe.set_progress_bar_config(disable=True)
    if variant.endswith("+compile"):
        pipe.compile_unet()
    s = size
    boxes = [[BoxPrompt((s // 4, s // 4, s // 2, s // 2), "<pdig-crack>", torch.randn(embed_dim))] for _ in range(batch)]
    prompts = [build_prompt(["crack"])] * batch
    tidsc = variant.startswith("pdig+tidsc")

    def call(n=steps):
        pipe(prompts, boxes, height=size, width=size, num_inference_steps=n, guidance_scale=7.5,
             tidsc_steps=(tidsc_steps if n == steps else 1) if tidsc else 0)
    return call


def measure(base, variant: str, full: bool, batch: int, steps: int, tidsc_steps: int, size: int, reps: int) -> dict:
    """Warm up (a short call; all of it when compiling), then time `reps` full calls."""
    import resource

    import torch

    device = base.unet.device.type
    call = make_call(base, variant, full, batch, steps, tidsc_steps, size)
    t = time.perf_counter()
    call(steps if variant.endswith("+compile") else 2)
    warm = time.perf_counter() - t
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
            "cpu_s_per_image": cpu / (batch * reps), "warmup_s": warm,
            "peak_mib": peak / 2**20, "peak_kind": "cuda allocated" if device == "cuda" else "process RSS"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="SD1.5-sized random weights, 512 px, 60 steps, TIDSC 30 (needs a GPU)")
    ap.add_argument("--batches", default=None, help="comma-separated batch sizes (default: 1,4 small; 1,4,8 full)")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=None, help="override the DDIM steps (TIDSC on the first half)")
    ap.add_argument("--size", type=int, default=None, help="override the image side (smoke tests)")
    ap.add_argument("--compile", action="store_true", help="also PDIG + TIDSC with torch.compile (at the largest batch)")
    ap.add_argument("--same-process", action="store_true", help="every case in this process (the default on a GPU)")
    ap.add_argument("--jsonl", default=None, help="append one JSON row per case here")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one case, print JSON
    ap.add_argument("--smoke", action="store_true", help=SMOKE_HELP + "; batch 1, 2 steps, 64 px, 1 rep, one process")
    a = ap.parse_args()
    if a.smoke:
        a.full, a.same_process, a.batches, a.steps, a.size, a.reps = False, True, "1", 2, 64, 1
    import torch

    torch.set_num_threads(a.threads)
    steps, tidsc_steps, size = (60, 30, 512) if a.full else (10, 5, 64)
    if a.steps:
        steps, tidsc_steps = a.steps, a.steps // 2
    size = a.size or size
    reps = a.reps or (1 if a.full else 3)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if a.one:
        variant, batch = a.one.split(":")
        print(json.dumps(measure(build(a.full, device), variant, a.full, int(batch), steps, tidsc_steps, size, reps)))
        return
    if a.full and device != "cuda":
        sys.exit("--full needs a GPU (SD1.5 size at 512 px, 60 steps); none found")
    batches = [int(b) for b in (a.batches or ("1,4,8" if a.full else "1,4")).split(",")]
    cases = [(v, b) for b in batches for v in ("diffusers-sd", "pdig", "pdig+tidsc")]
    cases += [("pdig+tidsc+compile", batches[-1])] if a.compile else []
    rows = []
    if a.same_process or device == "cuda":
        base = build(a.full, device)
        for variant, batch in cases:
            try:
                rows.append(measure(base, variant, a.full, batch, steps, tidsc_steps, size, reps))
            except Exception as e:  # noqa: BLE001 - one failing case (e.g. out of memory) is a row, not the end
                rows.append({"variant": variant, "batch": batch, "error": f"{type(e).__name__}: {e}"[:200]})
    else:
        for variant, batch in cases:
            cmd = [sys.executable, __file__, "--one", f"{variant}:{batch}", "--reps", str(reps), "--threads", str(a.threads),
                   "--steps", str(steps), "--size", str(size)] + (["--full"] if a.full else [])
            proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ | {"HF_HUB_OFFLINE": "1"})
            if proc.returncode != 0:
                rows.append({"variant": variant, "batch": batch, "error": proc.stderr.strip().splitlines()[-1]})
                continue
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    config = (f"{'SD1.5-sized random' if a.full else 'tiny random'}, {size}x{size}, {steps} DDIM steps, TIDSC on the first "
              f"{tidsc_steps}, guidance 7.5, {device}{' fp16' if device == 'cuda' else ''}, {reps} timed calls after a warm-up")
    if a.jsonl:
        with open(a.jsonl, "a") as f:
            for r in rows:
                f.write(json.dumps(r | {"section": "pdig", "config": config}) + "\n")
    print(f"machine: {machine()}, torch threads {a.threads}")
    print(f"config: {config}")
    print(f"{'variant':<20} {'batch':>5} {'images/s':>10} {'s/image':>9} {'cpu s/image':>12} {'peak MiB':>10}  peak")
    for r in rows:
        if "error" in r:
            print(f"{r['variant']:<20} {r['batch']:>5}  error: {r['error']}")
        else:
            print(f"{r['variant']:<20} {r['batch']:>5} {r['images_per_s']:>10.3f} {r['s_per_image']:>9.3f} "
                  f"{r['cpu_s_per_image']:>12.3f} {r['peak_mib']:>10.0f}  {r['peak_kind']}")
    by = {(r["variant"], r["batch"]): r for r in rows if "error" not in r}
    for b in batches:
        if ("pdig", b) in by and ("pdig+tidsc", b) in by and ("diffusers-sd", b) in by:
            key = "cpu_s_per_image" if device == "cpu" else "s_per_image"
            print(f"batch {b}: TIDSC / no-TIDSC {by['pdig+tidsc', b][key] / by['pdig', b][key]:.2f}x, "
                  f"PDIG no-TIDSC / diffusers {by['pdig', b][key] / by['diffusers-sd', b][key]:.2f}x ({key})")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
