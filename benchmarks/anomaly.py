"""Benchmark of the quality gate's UIIDD anomaly detector (CPU-small by default).

    python benchmarks/anomaly.py                      # magnetic tile + ELPV + spillover check
    python benchmarks/anomaly.py --size 128 --epochs 30   # closer to the paper's setting (GPU)

Trained on defect-free images only (Ray Train, 1 worker), evaluated on held-out images:
- magnetic tile: MT_Free split 80/20 (seeded) as normal; every defect class as anomalies.
  Image AUROC, pixel AUROC, and per class F1/IoU of the map thresholded at the
  checkpoint's own pixel threshold (F1 rule, chosen on synthetic defects, so no
  test label is used), plus the F1 at the best threshold on the test set (oracle,
  for context only).
- ELPV (`elpv-dataset`): defect probability 0 (80/20 split) vs 1; image AUROC and F1.
- The gate's spillover estimate vs ground truth on procedural EL images with shifted boxes.
- Scores/s on this machine (heat maps of preprocessed images, batch 32).
Preprocessed arrays are cached under --cache (outside the repository).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

CLASSES = ["Blowhole", "Break", "Crack", "Fray", "Uneven"]


def machine() -> str:
    cpu = "cpu"
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except Exception:  # noqa: BLE001
        pass
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.node()}: {cpu} x{os.cpu_count()}, {gpu}"


def cached(path: Path, fn):
    if path.exists():
        d = np.load(path)
        return tuple(d[k] for k in sorted(d.files))
    out = fn()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{f"a{i}": a for i, a in enumerate(out)})
    return out


def magnetic_tile(root: Path, pre, cache: Path):
    from factory.training.anomaly import load_folder

    S = f"{pre.image_size}{'_lcn' if pre.lcn else ''}{'_hom' if pre.homomorphic else ''}"
    (free,) = cached(cache / f"mt_free_{S}.npz", lambda: (load_folder(str(root / "MT_Free"), pre),))
    anomalies = {}
    for c in CLASSES:
        anomalies[c] = cached(cache / f"mt_{c}_{S}.npz", lambda c=c: load_folder(str(root / f"MT_{c}"), pre, with_masks=True))
    return free, anomalies


def elpv(pre, cache: Path):
    def load():
        from elpv_dataset.utils import load_dataset

        from factory.quality.anomaly.preprocess import preprocess_batch

        images, probs, _ = load_dataset()
        keep = (probs == 0) | (probs == 1)
        return preprocess_batch(list(images[keep]), pre), probs[keep]

    return cached(cache / f"elpv_{pre.image_size}{'_lcn' if pre.lcn else ''}{'_hom' if pre.homomorphic else ''}.npz", load)


def f1_iou(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    tp = float((pred & gt).sum())
    fp = float((pred & ~gt).sum())
    fn = float((~pred & gt).sum())
    return 2 * tp / max(2 * tp + fp + fn, 1), tp / max(tp + fp + fn, 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache", default="/tmp/factory-bench-cache")
    ap.add_argument("--skip-elpv", action="store_true")
    ap.add_argument("--elpv-max", type=int, default=800, help="at most this many defect-free ELPV cells for training")
    ap.add_argument("--lcn", action="store_true", help="local contrast normalization (section 5.4)")
    ap.add_argument("--homomorphic", action="store_true", help="homomorphic filtering (section 5.4)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from factory.quality.anomaly.thresholds import auroc, f1_max_threshold
    from factory.quality.gate import AnomalyGate
    from factory.quality.validate import procedural_items, render, validate_spillover
    from factory.quality.anomaly.preprocess import preprocess_batch
    from factory.training.anomaly import AnomalyTrainConfig, train_anomaly

    cache = Path(args.cache)
    cfg = AnomalyTrainConfig(image_size=args.size, epochs=args.epochs, width=args.width, threads=args.threads,
                             lcn=args.lcn, homomorphic=args.homomorphic)
    pre = cfg.preprocess_config()
    rows: dict[str, dict] = {}

    # --- magnetic tile ---------------------------------------------------------------
    t0 = time.time()
    free, anomalies = magnetic_tile(Path(args.data) / "magnetic_tile", pre, cache)
    idx = np.random.default_rng(0).permutation(len(free))
    n_test = int(round(0.2 * len(free)))
    test_free, train_free = free[idx[:n_test]], free[idx[n_test:]]
    res = train_anomaly("magnetic_tile/MT_Free (80%)", None, cfg, x=train_free)
    det = res["detector"]
    h_norm = det.heat_from_tensor(torch.from_numpy(test_free)).numpy()
    thr = det.threshold("pixel", "f1")
    mt = {"train_images": res["train_images"], "train_s": round(res["train_seconds"], 1), "per_class": {}}
    all_s, all_y, pix, plab = [h_norm.reshape(len(h_norm), -1).max(1)], [np.zeros(len(h_norm), bool)], [h_norm.ravel()], [np.zeros(h_norm.size, bool)]
    t_score = time.time()
    n_scored = len(h_norm)
    for c, (xa, ma) in anomalies.items():
        ha = det.heat_from_tensor(torch.from_numpy(xa)).numpy()
        n_scored += len(ha)
        s = ha.reshape(len(ha), -1).max(1)
        all_s.append(s)
        all_y.append(np.ones(len(s), bool))
        pix.append(ha.ravel())
        plab.append(ma.ravel())
        f1, iou = f1_iou(ha >= thr, ma)
        oracle = f1_max_threshold(np.r_[h_norm.ravel(), ha.ravel()], np.r_[np.zeros(h_norm.size, bool), ma.ravel()])
        f1o, iouo = f1_iou(ha >= oracle, ma)
        mt["per_class"][c] = {"n": len(xa), "image_auroc": auroc(np.r_[all_s[0], s], np.r_[all_y[0], np.ones(len(s), bool)]),
                              "pixel_f1": f1, "pixel_iou": iou, "pixel_f1_oracle": f1o, "pixel_iou_oracle": iouo}
    mt["image_auroc"] = auroc(np.concatenate(all_s), np.concatenate(all_y))
    mt["pixel_auroc"] = auroc(np.concatenate(pix), np.concatenate(plab))
    mt["seconds"] = round(time.time() - t0, 1)
    rows["magnetic_tile"] = mt
    print(json.dumps(mt, indent=1), flush=True)

    # --- throughput ------------------------------------------------------------------
    x = torch.from_numpy(np.concatenate([test_free] * (1 + 128 // len(test_free)))[:128])
    t = time.time()
    det.heat_from_tensor(x, batch_size=32)
    rows["throughput"] = {"scores_per_s": 128 / (time.time() - t), "size": args.size, "threads": args.threads}

    # --- ELPV ------------------------------------------------------------------------
    if not args.skip_elpv:
        t0 = time.time()
        xe, pe = elpv(pre, cache)
        normal, defect = xe[pe == 0], xe[pe == 1]
        idx = np.random.default_rng(0).permutation(len(normal))
        n_test = int(round(0.2 * len(normal)))
        test_n, train_n = normal[idx[:n_test]], normal[idx[n_test:]][: args.elpv_max]
        res_e = train_anomaly("elpv p=0 (80%)", None, cfg, x=train_n)
        de = res_e["detector"]
        sn = de.heat_from_tensor(torch.from_numpy(test_n)).flatten(1).max(1).values.numpy()
        sd = de.heat_from_tensor(torch.from_numpy(defect)).flatten(1).max(1).values.numpy()
        s, y = np.r_[sn, sd], np.r_[np.zeros(len(sn), bool), np.ones(len(sd), bool)]
        ti = de.threshold("image", "f1")
        pred = s >= ti
        tp, fp, fn = (pred & y).sum(), (pred & ~y).sum(), (~pred & y).sum()
        rows["elpv"] = {"train_images": res_e["train_images"], "test_normal": len(sn), "test_defect": len(sd),
                        "image_auroc": auroc(s, y), "image_f1_at_checkpoint_threshold": float(2 * tp / max(2 * tp + fp + fn, 1)),
                        "seconds": round(time.time() - t0, 1)}
        print(json.dumps(rows["elpv"], indent=1), flush=True)

    # --- spillover estimate vs procedural ground truth -----------------------------------
    t0 = time.time()
    xp = preprocess_batch([r[0] for r in render(procedural_items(160, args.size, seed=5, with_defect=False))], pre)
    res_p = train_anomaly("procedural defect-free cells", None, cfg, x=xp)
    gate = AnomalyGate(res_p["detector"], use_sample_masks=False)
    v = validate_spillover(gate, n=100, size=args.size, seed=11)
    rows["spillover_validation"] = {k: v[k] for k in ("n", "mae", "corr", "missed")} | {"seconds": round(time.time() - t0, 1)}

    # --- table ---------------------------------------------------------------------------
    print(f"\nUIIDD quality gate benchmark on {machine()}; {args.size}px, {args.epochs} epochs, width {args.width}, "
          f"{args.threads} thread(s), lcn={args.lcn}, homomorphic={args.homomorphic}")
    print(f"| data | metric | value |\n|---|---|---|")
    print(f"| magnetic tile ({mt['train_images']} train) | image AUROC | {mt['image_auroc']:.3f} |")
    print(f"| magnetic tile | pixel AUROC | {mt['pixel_auroc']:.3f} |")
    for c, r in mt["per_class"].items():
        print(f"| MT {c} (n={r['n']}) | image AUROC / pixel F1 / IoU (oracle F1 / IoU) | {r['image_auroc']:.3f} / {r['pixel_f1']:.3f} / {r['pixel_iou']:.3f} ({r['pixel_f1_oracle']:.3f} / {r['pixel_iou_oracle']:.3f}) |")
    if "elpv" in rows:
        e = rows["elpv"]
        print(f"| ELPV p=0 vs p=1 ({e['train_images']} train, {e['test_normal']}+{e['test_defect']} test) | image AUROC / F1 | {e['image_auroc']:.3f} / {e['image_f1_at_checkpoint_threshold']:.3f} |")
    sv = rows["spillover_validation"]
    print(f"| procedural, shifted boxes (n={sv['n']}) | spillover MAE / Pearson r | {sv['mae']:.3f} / {sv['corr']:.3f} |")
    print(f"| throughput | heat maps per second ({args.size}px) | {rows['throughput']['scores_per_s']:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=float))


if __name__ == "__main__":
    main()
