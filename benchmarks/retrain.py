"""Does synthetic data help a detector on real EL cracks? (issue 7)

pv_vision_crack: train on `train`, evaluate on `val` (held out, all images incl.
defect-free cells). Two arms per seed with identical settings: real only, and
real + procedural synthetic cells (crack / cross_crack / dark_area, published as
a registry version first). Every arm runs through the product's own path:
`factory.training.detector.retrain` (Ray Train + ultralytics, from yolov8n.yaml,
no pretrained weights). Prints mAP50 per seed and the mean +- std of the gain.

    python benchmarks/retrain.py                 # CPU-sized (default): 500 real cells, 160 px, 16 epochs, 1 seed
    python benchmarks/retrain.py --full          # all images, 416 px, 100 epochs, 5 seeds, both arms on one GPU

CPU-sized numbers (~500 real cells, ~500-1000 optimizer steps per arm, ~11-17 min per seed on
2 cores) are small but non-zero: they show whether the loop learns and which way a
change moves a weak, early detector on one seed. They cannot say whether the
synthetic data helps a converged detector; that needs --full on a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "0")
os.environ.setdefault("FACTORY_NO_NETWORK", "1")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# box sizes/aspects read off the pv_vision train masks (10th-90th percentiles)
SYN_DEFECTS = [
    {"class": "crack", "weight": 0.5, "boxes": {"count": [1, 3], "overlap": True,
                                                 "size": {"dist": "loguniform", "min": 0.04, "max": 0.35},
                                                 "aspect": {"dist": "loguniform", "min": 0.3, "max": 5.0}}},
    {"class": "cross_crack", "weight": 0.25, "boxes": {"count": [1, 2], "size": {"min": 0.05, "max": 0.15}}},
    {"class": "dark_area", "weight": 0.25, "boxes": {"count": [1, 1], "size": {"min": 0.1, "max": 0.35},
                                                      "aspect": {"dist": "loguniform", "min": 0.4, "max": 3.0}}},
]

SIZES = {
    # CPU: enough optimizer steps for a from-scratch YOLOv8n to detect something. nbs=batch makes
    # every batch an optimizer step (ultralytics' default nbs=64 accumulates 4 batches of 16), and a
    # 1-epoch warm-up instead of 3. Scoring the 172 eval cells at 160 px takes ~5 s, so the learning
    # curves are kept (only the final weights are scored for the table either way).
    "cpu": dict(train_images=500, synthetic_ratio=1.0, imgsz=160, epochs=16, batch=16, seeds=[0], syn_px=256, gpus=0,
                val_each_epoch=True, train_args={"nbs": 16, "warmup_epochs": 1}),
    "full": dict(train_images=None, synthetic_ratio=1.0, imgsz=416, epochs=100, batch=32, seeds=[0, 1, 2, 3, 4],
                 syn_px=400, gpus=0.5, val_each_epoch=True, train_args={}),
}


def build_inputs(work: Path, data_root: Path, train_images: int | None, syn_count: int, syn_px: int, seed: int = 0):
    """Real train subset + full real val as YOLO folders; the synthetic set as a published registry version."""
    import numpy as np

    from factory.data.adapters import RealSet, pv_vision_crack, write_yolo, write_yolo_arrays
    from factory.generators.procedural import ProceduralELGenerator
    from factory.planning.plan import plan
    from factory.spec.load import spec_from_dict
    from factory.storage.registry import Registry

    real = pv_vision_crack(data_root / "pv_vision_crack")
    train = [s for s in real.samples if s.split == "train"]
    if train_images is not None and train_images < len(train):
        # a seeded subset with the data set's own share of defect-free cells
        keep = np.random.default_rng(seed).choice(len(train), size=train_images, replace=False)
        train = [train[i] for i in sorted(keep)]
    val = [s for s in real.samples if s.split == "val"]
    write_yolo(RealSet("pv-train", real.class_names, train, real.source), str(work / "real"))
    write_yolo(RealSet("pv-val", real.class_names, val, real.source), str(work / "real-eval"))

    spec = spec_from_dict({"name": "pv-synthetic", "version": 1, "seed": seed, "count": syn_count,
                           "image": {"width": syn_px, "height": syn_px, "channels": 1}, "defects": SYN_DEFECTS,
                           "classes_per_image": [1, 2], "negatives": 0.1})
    samples = ProceduralELGenerator().generate(plan(spec))
    tree = work / "syn-tree"
    write_yolo_arrays([(s.image, s.boxes) for s in samples], spec.class_names, tree)
    extra = {f"yolo/{p.relative_to(tree)}": p.read_bytes() for p in sorted(tree.rglob("*")) if p.is_file()}
    version = Registry(str(work / "registry")).publish(
        spec.name, 1, [], extra, {"spec_hash": spec.spec_hash(), "classes": spec.class_names, "spec": spec.to_yaml_dict()})
    counts = {"real_train_images": len(train), "real_train_with_defects": sum(1 for s in train if s.boxes),
              "real_eval_images": len(val), "real_eval_boxes": sum(len(s.boxes) for s in val), "synthetic_images": syn_count}
    return version, str(work / "real"), str(work / "real-eval"), counts


def overfit_check(work: Path) -> dict:
    """Can the scoring path report anything but zero? Train on 8 procedural cells
    and score on the same 8 (SGD, every batch a step, no warm-up, 150 epochs):
    a detector that memorizes them must reach mAP50 near 1."""
    import yaml

    from factory.data.adapters import write_yolo_arrays
    from factory.generators.procedural import ProceduralELGenerator
    from factory.planning.plan import plan
    from factory.spec.load import spec_from_dict
    from factory.training import detector as D

    spec = spec_from_dict({"name": "overfit", "count": 8, "seed": 1, "image": {"width": 128, "height": 128},
                           "defects": [{"class": "dark_area", "boxes": {"size": {"min": 0.3, "max": 0.5}}},
                                       {"class": "black_spot", "boxes": {"size": {"min": 0.25, "max": 0.4}}}]})
    tree = write_yolo_arrays([(s.image, s.boxes) for s in ProceduralELGenerator().generate(plan(spec))],
                             spec.class_names, work / "overfit-set")
    data = yaml.safe_load((tree / "data.yaml").read_text())
    (tree / "data.yaml").write_text(yaml.safe_dump({**data, "val": "images/train"}))
    cfg = D.RetrainConfig(epochs=150, imgsz=96, batch=8, workers=0, train_args={
        "val": False, "warmup_epochs": 0, "mosaic": 0.0, "nbs": 8, "optimizer": "SGD", "lr0": 0.02, "plots": False})
    data_yaml, _ = D.prepare_datasets(work / "overfit-work" / "data", tree, tree, None, cfg)
    t = time.time()
    m = D.train_arm("real_only", work / "overfit-work", data_yaml, cfg)
    out = {k: m[k] for k in ("map50", "map50_95", "precision", "recall")} | {"seconds": round(time.time() - t, 1)}
    print(f"overfit check (train = eval = 8 procedural cells): {out}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="full size (GPU machine)")
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--seeds", type=int, nargs="+")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--imgsz", type=int)
    ap.add_argument("--train-images", type=int)
    ap.add_argument("--batch", type=int)
    ap.add_argument("--gpus", type=float)
    ap.add_argument("--work", type=Path, help="work folder [default: a temporary one]")
    ap.add_argument("--out", type=Path, default=Path("benchmark-retrain.json"))
    ap.add_argument("--overfit-check", action="store_true", help="only check that the scoring path can report non-zero mAP")
    a = ap.parse_args()
    if a.overfit_check:
        overfit_check(a.work or Path(tempfile.mkdtemp(prefix="bench-overfit-")))
        return
    size = dict(SIZES["full" if a.full else "cpu"])
    for k in ("seeds", "epochs", "imgsz", "train_images", "batch", "gpus"):
        if getattr(a, k) is not None:
            size[k] = getattr(a, k)

    import ray

    from factory.training.detector import RetrainConfig, retrain

    work = a.work or Path(tempfile.mkdtemp(prefix="bench-retrain-"))
    t0 = time.time()
    n_train = size["train_images"] or 972
    version, real_train, real_eval, counts = build_inputs(
        work, a.data, size["train_images"], round(size["synthetic_ratio"] * n_train), size["syn_px"])
    prep_s = time.time() - t0
    ray.init(log_to_driver=False, configure_logging=False, include_dashboard=False)
    rows = []
    for seed in size["seeds"]:
        cfg = RetrainConfig(epochs=size["epochs"], imgsz=size["imgsz"], batch=size["batch"], seed=seed,
                            synthetic_ratio=size["synthetic_ratio"], gpus=size["gpus"], workers=2 if size["gpus"] else 0,
                            train_args={**size["train_args"], **({} if size["val_each_epoch"] else {"val": False})})
        t = time.time()
        c = retrain(version, real_train, real_eval, cfg)
        r, m = c["arms"]["real_only"], c["arms"]["real_plus_synthetic"]
        rows.append({"seed": seed, "real_only": r["map50"], "real_plus_synthetic": m["map50"], "gain": c["gain"]["map50"],
                     "real_only_map50_95": r["map50_95"], "real_plus_synthetic_map50_95": m["map50_95"],
                     "per_class_ap50": {arm: {k: v["ap50"] for k, v in c["arms"][arm]["per_class"].items()} for arm in c["arms"]},
                     "seconds": round(time.time() - t, 1), "report": f"{version}/retrain/{c['run_id']}/report.html"})
        print(f"seed {seed}: mAP50 real-only {r['map50']:.4f}  real+synthetic {m['map50']:.4f}  gain {c['gain']['map50']:+.4f}"
              f"  ({rows[-1]['seconds']} s)", flush=True)

    def ms(key):
        v = [row[key] for row in rows]
        return statistics.mean(v), (statistics.stdev(v) if len(v) > 1 else 0.0)

    from common import machine  # benchmarks/ is on sys.path when run as a script

    summary = {"mode": "full" if a.full else "cpu", "machine": machine(), "settings": size, "counts": counts, "rows": rows,
               "prep_seconds": round(prep_s, 1), "total_seconds": round(time.time() - t0, 1),
               **{f"{k}_mean_std": ms(k) for k in ("real_only", "real_plus_synthetic", "gain")}}
    a.out.write_text(json.dumps(summary, indent=2))
    print("\n| arm | mAP50 (mean +- std over seeds) |\n|---|---|")
    for k in ("real_only", "real_plus_synthetic", "gain"):
        mean, std = summary[f"{k}_mean_std"]
        print(f"| {k} | {mean:+.4f} +- {std:.4f} |" if k == "gain" else f"| {k} | {mean:.4f} +- {std:.4f} |")
    print(f"\ncounts {counts}; {len(rows)} seeds; total {summary['total_seconds']} s; results {a.out}; work {work}")
    print(f"machine: {summary['machine']}")


if __name__ == "__main__":
    main()
