"""Gate audit benchmark: train a gate on the spec's own defect-free renders, then run
`factory.quality.audit` (good samples kept? broken ones rejected?) for each method.

    python benchmarks/gate_audit.py                         # demo spec (procedural generator), CPU-small
    python benchmarks/gate_audit.py --spec SPEC --normal DIR  # a spec whose line has real defect-free images
    python benchmarks/gate_audit.py --smoke                 # seconds of training: checks the script, numbers mean nothing
    python benchmarks/gate_audit.py --methods patchcore uiidd-disc   # the pretrained-feature gate beside the trained one
    python benchmarks/gate_audit.py --spec SPEC --normal DIR --methods none patchcore --box-check URI
                                                            # with a per-class box check (`factory train box-check`)
    python benchmarks/gate_audit.py --as-generated          # the gate as the pipeline runs it: samples keep their
                                                            # generator's background and masks (the exact tests)

Without `--normal`, the defect-free training images are the spec's own generator's
negatives (its plan items with the boxes removed, other seeds than the audited
samples), the only clean images of a procedural line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from common import SMOKE_HELP, machine, smoke_ray, table  # noqa: E402

DEMO = Path(__file__).resolve().parents[1] / "specs" / "demo-pv-el.yaml"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--spec", default=str(DEMO))
    ap.add_argument("--normal", default=None, help="defect-free images of the line (default: the spec's own negatives)")
    ap.add_argument("--n-normal", type=int, default=200)
    ap.add_argument("--n", type=int, default=100, help="audited samples (each with 4 broken variants)")
    ap.add_argument("--methods", nargs="+", default=["uiidd", "uiidd-disc"],
                    help="anomaly gates to train and audit (uiidd, uiidd-disc, patchcore; none: no anomaly gate)")
    ap.add_argument("--box-check", default=None, help="a box check URI (`factory train box-check --out`) in the gate of every row")
    ap.add_argument("--real", default=None, help="the line's labelled real set (NAME@VERSION): each row also scores its val "
                    "images, framed like the outputs (`real kept`: what the gate does to real defects)")
    ap.add_argument("--as-generated", action="store_true", help="samples keep their generator's background and masks: the "
                    "gate as the pipeline runs it, exact tests included (default: stripped, only pixels decide)")
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--patch", type=int, default=32)
    ap.add_argument("--patches-per-image", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0], help="gate training seeds (one row each)")
    ap.add_argument("--defects", type=int, default=0,
                    help="train the head with this many of the spec's own labelled defects (other plan items) among its simulated anomalies; "
                         "a transplant spec's are the same source instances its audited samples paste")
    ap.add_argument("--pc-size", type=int, default=224, help="patchcore: network input side")
    ap.add_argument("--pc-coreset", type=int, default=10000, help="patchcore: memory bank size")
    ap.add_argument("--json", default=None)
    ap.add_argument("--smoke", action="store_true", help=SMOKE_HELP + "; 16 normal images, 4 audited, 1 epoch")
    args = ap.parse_args()
    if args.smoke:
        args.n_normal, args.n, args.patches_per_image, args.epochs, args.width = 16, 4, 2, 1, 4
        args.pc_size, args.pc_coreset = 64, 200
        smoke_ray()

    import torch

    torch.set_num_threads(1)
    from factory.generators.checks import check_spec
    from factory.quality.anomaly.patches import PatchConfig
    from factory.quality.audit import audit, generate, labelled_defects, save_defect_free_renders
    from factory.spec import load_spec
    from factory.training.anomaly import AnomalyTrainConfig, pairs_at_scale, train_anomaly

    spec = check_spec(load_spec(args.spec), args.spec)  # as `factory quality audit` does: fills references
    tmp = Path(tempfile.mkdtemp(prefix="gate-audit-"))
    normal = args.normal
    if normal is None:
        (tmp / "normal").mkdir()
        save_defect_free_renders(spec, args.n_normal, tmp / "normal")
        normal = str(tmp / "normal")
    samples = generate(spec, args.n)
    pairs = pairs_at_scale(labelled_defects(spec, args.defects), PatchConfig(size=args.patch, scale=args.scale)) if args.defects else None
    rows, out = [], {}
    for method in args.methods:
        for seed in args.seeds if method != "none" else [0]:
            ckpt, res, t = None, {"train_images": 0, "val_images": 0}, time.time()
            if method != "none":
                cfg = AnomalyTrainConfig(method=method, patch_size=args.patch, scale=args.scale,
                                         patches_per_image=args.patches_per_image, epochs=args.epochs, width=args.width,
                                         fused=2 * args.width, bottleneck=args.width, head_width=args.width, seed=seed,
                                         image_size=args.pc_size, coreset_size=args.pc_coreset)
                ckpt = f"file://{tmp}/gate-{method}-{seed}"
                res = train_anomaly(normal, ckpt, cfg, defect_pairs=pairs if method == "uiidd-disc" else None)
            train_s = time.time() - t
            rep = audit(spec, ckpt, samples=samples, box_check=args.box_check, real=args.real, as_generated=args.as_generated)
            out[f"{method} seed {seed}"] = rep | {"train_s": train_s}
            v = rep["variants"]
            rows.append([method, seed, f"{res['train_images']} / {res['val_images']}", f"{train_s:.0f}",
                         f"{v['good']['kept_rate']:.0%} of {v['good']['n']}",
                         *[f"{v[k]['rejected_rate']:.0%} of {v[k]['n']}" for k in ("erased", "moved", "blank", "saturated")],
                         f"{rep['broken_rejected_rate']:.0%}", json.dumps(v["good"]["reasons"]),
                         *([f"{v['real']['kept_rate']:.0%} of {v['real']['n']}", json.dumps(v["real"]["reasons"])] if args.real else [])])
            print(json.dumps(out[f"{method} seed {seed}"], default=float), flush=True)
    print(f"\nGate audit of {spec.name} ({args.spec}) on {machine()}")
    print(f"{args.patch} px patches at scale {args.scale}, {args.patches_per_image} per image, {args.epochs} epochs, width {args.width}; "
          f"normal images: {'the spec generator negatives' if args.normal is None else args.normal}; "
          f"labelled defects in the head's simulated anomalies: {args.defects or 'none'}; box check: {args.box_check or 'none'}; "
          f"samples {'as generated (background and masks kept)' if args.as_generated else 'stripped to pixels'}\n")
    print(table(["method", "seed", "train / calib images", "train s", "good kept", "erased rejected", "moved rejected", "blank rejected",
                 "saturated rejected", "all broken rejected", "why good ones were rejected",
                 *(["real kept", "why real ones were rejected"] if args.real else [])], rows))
    by = rep["variants"]["erased"]["erased_by"]
    print(f"\nerased samples: {by['clean render']} drawn by their generator without the defect, {by['inpainting']} inpainted")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=float))


if __name__ == "__main__":
    main()
