"""Benchmark of the per-class box check (factory/quality/box_check.py): does a box's content
score as its class? Per class, AUROC of P(class) on real instances vs the same box erased, on
held-out real images that neither the fit nor the thresholds saw.

    python benchmarks/box_check.py                                 # DeepPCB, 300 train instances a class, every val board
    python benchmarks/box_check.py --datasets deeppcb mt --threads 1   # + magnetic tile; 1 thread on a busy machine
    python benchmarks/box_check.py --blocks 3 4 5 --crop-size 128  # other features
    python benchmarks/box_check.py --smoke                         # seconds: checks the script, numbers mean nothing

Data (../shared/data, or --data):
- deeppcb: the adapter's split by board group (val = 4 whole groups). Train: up to --max-train
  instances a class of the train boards, each with the same box on its aligned template as the
  negative; its thresholds come from out-of-fold scores, one train board group a fold. Val: every
  instance of the val boards (or --max-val a class) on its tested board vs the same box on its
  template (the box erased by the golden twin).
- mt: magnetic tile, the adapter's seeded per-file split (20% val). Negatives: the same relative
  box on a random defect-free MT_Free tile of the same split.
Columns: AUROC P(class) is the check's own score; AUROC P(defect) = 1 - P(no defect), any class:
where it is higher than P(class), the real instances lose to other classes, not to the erased
boxes ("as another class" = share of real instances whose top class is another defect class).
"kept" / "erased rej." are the val shares at the thresholds calibrated on the train split;
"calib AUROC" the out-of-fold AUROC on the train split that set them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from common import SMOKE_HELP, machine, table  # noqa: E402

DATA = Path(os.environ.get("FACTORY_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def sets(name: str, root: Path):
    """(class names, train Labelled, train normals, val Labelled, val normals) of a data set."""
    from factory.data.adapters import load_real
    from factory.quality.box_crops import Labelled

    if name == "deeppcb":
        real = load_real("deeppcb", root / "deeppcb")
    elif name == "mt":
        real = load_real("magnetic_tile", root / "magnetic_tile")
    else:
        raise ValueError(f"unknown data set {name!r}: deeppcb or mt")

    def group(s) -> str:  # DeepPCB: the board (groupNNNNN/NNNNN/...), held out whole when calibrating; else the image
        return s.image_path.parent.parent.name if name == "deeppcb" else s.stem

    def part(split: str):
        rows = [s for s in real.samples if s.split == split]
        lab = [Labelled(str(s.image_path), s.boxes, str(s.template) if s.template else None, group(s)) for s in rows if s.boxes]
        return lab, [str(s.image_path) for s in rows if not s.boxes]

    return (real.class_names, *part("train"), *part("val"))


def run(name: str, args) -> tuple[list[list], dict]:
    import torch

    from factory.quality.anomaly.thresholds import auroc
    from factory.quality.box_check import BoxCheckConfig
    from factory.quality.box_crops import collect_crops
    from factory.quality.box_fit import fit_box_check

    cfg = BoxCheckConfig(blocks=tuple(args.blocks), crop_size=args.crop_size, crop_scale=args.crop_scale, seed=args.seed)
    names, train, train_free, val, val_free = sets(name, args.data)
    t0 = time.perf_counter()
    tr = collect_crops(train, cfg, train_free, args.max_train or None, args.seed)
    va = collect_crops(val, cfg, val_free, args.max_val or None, args.seed + 1)
    t_crop = time.perf_counter() - t0
    t0 = time.perf_counter()
    check, rep = fit_box_check(tr, names, cfg)
    t_fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    feats = check.features(va.crops, va.places)
    t_val = time.perf_counter() - t0
    p = check.probabilities(feats).numpy()
    scores = check.class_scores(feats, va.classes)
    classes, K = np.array(va.classes), len(names)
    train_classes = np.array(tr.classes)
    rows = []
    for k, c in enumerate(names):
        m = classes == c
        pos, y = m & va.defect, va.defect[m]
        t = check.threshold(c)
        top = p[pos].argmax(1)
        other = float(((top != k) & (top != K)).mean()) if len(top) else float("nan")
        rows.append([name, c, int(((train_classes == c) & tr.defect).sum()), int(pos.sum()),
                     auroc(scores[m], y), auroc(1 - p[m, K], y), other, round(t, 3),
                     float((scores[pos] >= t).mean()), float((scores[m & ~va.defect] < t).mean()),
                     rep["per_class"][c]["auroc"]])
    summary = {"data": name, "config": cfg.to_dict(), "train_crops": len(tr), "val_crops": len(va), "crop_seconds": round(t_crop, 1),
               "fit_seconds": round(t_fit, 1), "fit_feature_seconds": rep["feature_seconds"], "val_crops_per_s": round(len(va) / t_val, 1),
               "device": str(check.device), "threads": torch.get_num_threads(), "rows": rows}
    return rows, summary


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", nargs="+", default=["deeppcb"], choices=["deeppcb", "mt"])
    ap.add_argument("--data", type=Path, default=DATA, help="the shared data folder")
    ap.add_argument("--max-train", type=int, default=300, help="train instances a class (seeded; each with its erased twin; 0: all)")
    ap.add_argument("--max-val", type=int, default=None, help="val instances a class (default: all)")
    ap.add_argument("--blocks", nargs="+", type=int, default=[3, 4])
    ap.add_argument("--crop-size", type=int, default=96)
    ap.add_argument("--crop-scale", type=float, default=1.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's; 1 is much faster "
                    "than 2 on a machine whose cores are busy with other work)")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--smoke", action="store_true", help=SMOKE_HELP + "; 6 train / 3 val instances a class, 32 px crops")
    args = ap.parse_args()
    if args.smoke:
        args.max_train, args.max_val, args.crop_size, args.threads = 6, 3, 32, args.threads or 1
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    print(machine(), flush=True)
    all_rows, out = [], []
    for name in args.datasets:
        rows, summary = run(name, args)
        all_rows += rows
        out.append(summary)
        print(f"{name}: {summary['train_crops']} train crops (fit {summary['fit_seconds']} s, of which features "
              f"{summary['fit_feature_seconds']} s), {summary['val_crops']} val crops at {summary['val_crops_per_s']} crops/s "
              f"({summary['device']}, {summary['threads']} threads); cropping {summary['crop_seconds']} s", flush=True)
    print(table(["data", "class", "train inst.", "val inst.", "AUROC P(class)", "AUROC P(defect)", "as another class",
                 "threshold", "kept", "erased rej.", "calib AUROC"], all_rows))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=float))


if __name__ == "__main__":
    main()
