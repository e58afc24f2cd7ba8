"""Benchmark of the quality gate's anomaly model: `uiidd` (the paper's heat map) vs
`uiidd-disc` (UIIDD + discriminative head on simulated anomalies), same patches, same budget,
and `patchcore` (pretrained EfficientNet-Lite features + a coreset memory bank: no training loop).

    python benchmarks/anomaly.py                              # CPU-small: every data set, both methods
    python benchmarks/anomaly.py --datasets mt --seeds 0 1    # one data set, spread over seeds
    python benchmarks/anomaly.py --full                       # a GPU budget (native scale, 64 px patches, 30 epochs)
    python benchmarks/anomaly.py --datasets mt --bank-split 0.5 --banks none real   # + real defects in the simulation
    python benchmarks/anomaly.py --smoke --datasets mt        # seconds of training: checks the script, numbers mean nothing
    python benchmarks/anomaly.py --datasets mt --methods patchcore --max-test 0      # PatchCore, every real defect
    python benchmarks/anomaly.py --datasets mt --methods patchcore --pc-blocks 2 4 --pc-size 320 --pc-coreset 20000

Data (from ../shared/data and the `elpv-dataset` package), each trained on defect-free
images only and tested on images the training and calibration never saw:
- mt: magnetic tile, MT_Free split 80/20 (seeded); the 80% is split again by the trainer
  (80% train, 20% calibration); test = the held-out 20% vs the five MT_<defect> folders.
- elpv: ELPV cells, p=0 split 80/20 the same way; test = held-out p=0 vs p=1 (no masks).
- deeppcb: defect-free templates (`*_temp.jpg`) of all groups but the last two train; test = the
  last two groups' templates vs their tested boards (`*_test.jpg`); boxes only (no pixel AUROC).
  `--dev` leaves those two groups out and tests the two before them (the memory: the rest).
- pv: pv_vision cells (train + val folders) without any defect value (1 dark area, 2 cross
  crack, 3 crack) in their mask, split 80/20; test = held-out vs cells with defect pixels.
With `--bank-split F` (mt), a seeded share F of every defect folder is set aside before any
sampling: `--banks real` feeds those defects, cut along their masks, into uiidd-disc's
simulated anomalies (the issue's "transplanted real defects"), and neither bank row nor
`none` row is ever scored on them.
Thresholds come from the checkpoint's calibration (simulated anomalies on the calibration
split); no test label is used before the metrics. Pixel AUROC is at the model's scale.
Test sets can be subsampled (`--max-test`, seeded) to fit the CPU budget: the table says n.
`patchcore` reads the same splits at native resolution (it resizes to `--pc-size` itself, or
tiles at `--pc-scale`); its pixel AUROC is at the images' own size; "train s" is the fit
(features + coreset), "images/s" the scoring speed.
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
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from common import SMOKE_HELP, machine, smoke_ray, table  # noqa: E402

MT_CLASSES = ["Blowhole", "Break", "Crack", "Fray", "Uneven"]
PV_DEFECT_VALUES = (1, 2, 3)


def _take(items: list, n: int | None, seed: int) -> list:
    if n is None or len(items) <= n:
        return items
    idx = np.random.default_rng(seed).permutation(len(items))[:n]
    return [items[i] for i in sorted(idx)]


def split_normal(items: list, seed: int = 0) -> tuple[list, list]:
    """(train 80%, held-out test 20%), seeded."""
    idx = np.random.default_rng(seed).permutation(len(items))
    n_test = int(round(0.2 * len(items)))
    return [items[i] for i in idx[n_test:]], [items[i] for i in idx[:n_test]]


def load_mt(root: Path, patch, max_test: int | None, max_train: int | None = None, bank_split: float = 0.0):
    """(train, test normal, test defect, test masks, bank pairs): `bank_split` moves that share of
    every defect folder (seeded) out of the test set; those (image, mask) pairs may feed the
    simulated-anomaly bank (`--banks real`) and are never scored."""
    from factory.training.anomaly import load_images

    free = load_images(str(root / "MT_Free"), patch)
    train, test = split_normal(free)
    defects, bank = [], []
    for c in MT_CLASSES:
        pairs = load_images(str(root / f"MT_{c}"), patch, with_masks=True)
        idx = np.random.default_rng(5).permutation(len(pairs))
        n_bank = int(round(bank_split * len(pairs)))
        bank += [pairs[i] for i in sorted(idx[:n_bank])]
        rest = [pairs[i] for i in sorted(idx[n_bank:])]
        defects += _take(rest, None if max_test is None else max(1, max_test // len(MT_CLASSES)), 1)
    return (_take(train, max_train, 4), _take(test, max_test, 2), [d for d, _ in defects], [m for _, m in defects], bank)


def load_elpv(patch, max_test: int | None, max_train: int | None):
    from elpv_dataset.utils import load_dataset

    from factory.quality.anomaly.patches import rescale

    images, probs, _ = load_dataset()
    normal = [rescale(im, patch) for im in images[probs == 0]]
    train, test = split_normal(normal)
    defect = [rescale(im, patch) for im in _take(list(images[probs == 1]), max_test, 3)]
    return _take(train, max_train, 4), _take(test, max_test, 2), defect, [None] * len(defect), []


def load_pv(root: Path, patch, max_test: int | None, max_train: int | None):
    from factory.data.folders import read_image, read_mask, scan
    from factory.quality.anomaly.patches import rescale, rescale_mask

    normal, defect, masks = [], [], []
    for sub in ("train", "val"):
        for r in scan(root / sub / "img"):
            x = rescale(read_image(r.image), patch)
            m = read_mask(r.mask, PV_DEFECT_VALUES) if r.mask else None
            if m is None or not m.any():
                normal.append(x)
            else:
                defect.append(x)
                masks.append(rescale_mask(m, x.shape))
    train, test = split_normal(normal)
    keep = _take(list(range(len(defect))), max_test, 3)
    return _take(train, max_train, 4), _take(test, max_test, 2), [defect[i] for i in keep], [masks[i] for i in keep], []


def load_deeppcb(root: Path, patch, max_test: int | None, max_train: int | None, test_groups: int = 2,
                 dev: bool = False):
    """DeepPCB: the defect-free templates (`*_temp.jpg`) of all groups but the last `test_groups` (sorted)
    are the training images; test = those groups' templates (normal) vs their tested boards (`*_test.jpg`,
    each with at least one defect; boxes only, so no pixel AUROC). `dev`: the test groups are left out
    altogether and the `test_groups` before them are tested instead (settings are chosen there)."""
    from factory.data.folders import read_image
    from factory.quality.anomaly.patches import rescale

    groups = sorted(p for p in root.glob("group*") if p.is_dir())
    if dev:
        groups = groups[:-test_groups]
    train_g, test_g = groups[:-test_groups], groups[-test_groups:]
    def temp(gs):
        return sorted(f for g in gs for f in g.glob("*/*_temp.jpg"))
    train = [rescale(read_image(f), patch) for f in _take(temp(train_g), max_train, 4)]
    normal = [rescale(read_image(f), patch) for f in _take(temp(test_g), max_test, 2)]
    tested = sorted(f for g in test_g for f in g.glob("*/*_test.jpg"))
    defect = [rescale(read_image(f), patch) for f in _take(tested, max_test, 3)]
    return train, normal, defect, [None] * len(defect), []


def dev_split(data):
    """(train, test normal, test defect, masks, bank) -> a development split that shares no
    image with the test split: the set-aside (`--bank-split`) defects against the first
    fifth of the (shuffled) training tiles, the memory from the rest."""
    train, _, _, _, bank = data
    if not bank:
        raise SystemExit("--dev needs defects set aside: give --bank-split > 0 (magnetic tile only)")
    n = len(train) // 5
    return train[n:], train[:n], [d for d, _ in bank], [m for _, m in bank], []


def run_one(name: str, data, method: str, seed: int, args, bank_source: str = "none") -> dict:
    from factory.quality.anomaly.evaluate import evaluate_heat
    from factory.training.anomaly import AnomalyTrainConfig, train_anomaly

    train, test_n, test_d, masks, bank = data
    if method == "patchcore":
        return run_patchcore(name, data, seed, args)
    if bank_source == "real" and not bank:
        raise SystemExit("--banks real needs real defects set aside: give --bank-split > 0 (magnetic tile only)")
    cfg = AnomalyTrainConfig(method=method, patch_size=args.patch, scale=args.scale, patches_per_image=args.patches_per_image,
                             epochs=args.epochs, width=args.width, fused=2 * args.width, bottleneck=args.width,
                             head_width=args.width, threads=args.threads, seed=seed, batch_size=args.batch)
    res = train_anomaly(f"{name} normal (80%)", None, cfg, images=train, use_gpu=args.gpu,
                        defect_pairs=bank if bank_source == "real" else None)
    det = res["detector"]
    t = time.time()
    h_n, h_d = det.heat_scaled(test_n, rescaled=True), det.heat_scaled(test_d, rescaled=True)
    score_s = time.time() - t
    ev = evaluate_heat(det, h_n, h_d, masks)
    row = {"data": name, "method": method + ("+bank" if bank_source == "real" else ""), "seed": seed, "train_images": res["train_images"], "calib_images": res["val_images"],
           "test_normal": len(test_n), "test_defect": len(test_d), "train_s": round(res["train_seconds"], 1),
           "image_auroc": ev["image_auroc"], "pixel_auroc": ev.get("pixel_auroc", float("nan")), "image_f1": ev["image"]["f1"],
           "calib_image_auroc": res["image_auroc"], "images_per_s": round((len(test_n) + len(test_d)) / score_s, 2)}
    print(json.dumps(row), flush=True)
    return row


def run_patchcore(name: str, data, seed: int, args) -> dict:
    """PatchCore: memory from the training split, calibration on its held-out share (simulated anomalies)."""
    from factory.quality.anomaly.evaluate import evaluate_heat
    from factory.training.anomaly import AnomalyTrainConfig, train_anomaly

    train, test_n, test_d, masks, _ = data
    cfg = AnomalyTrainConfig(method="patchcore", seed=seed, net=args.pc_net, blocks=tuple(args.pc_blocks), image_size=args.pc_size,
                             pc_scale=args.pc_scale, coreset_size=args.pc_coreset, max_patches=args.pc_pool,
                             pc_sigma=args.pc_sigma, batch_size=args.batch, keep_aspect=args.pc_keep_aspect,
                             score_cells=args.pc_score_cells, pixel_blocks=tuple(args.pc_pixel_blocks))
    res = train_anomaly(f"{name} normal (80%)", None, cfg, images=train)
    det = res["detector"]
    t = time.time()
    h_n, h_d = det.heat_maps(test_n, original_size=True), det.heat_maps(test_d, original_size=True)
    score_s = time.time() - t
    ev = evaluate_heat(det, h_n, h_d, masks)
    fit = res["metrics"]
    row = {"data": name, "method": f"patchcore-{args.pc_net}-b{''.join(map(str, args.pc_blocks))}-{args.pc_size}"
                                    + (f"-tiles{args.pc_scale}" if args.pc_scale else "") + ("-aspect" if args.pc_keep_aspect else "")
                                    + (f"-x{''.join(map(str, args.pc_pixel_blocks))}" if args.pc_pixel_blocks else "")
                                    + f"-m{fit['memory']}" + (f"-top{args.pc_score_cells}" if args.pc_score_cells else "-max"),
           "seed": seed, "train_images": res["train_images"], "calib_images": res["val_images"],
           "test_normal": len(test_n), "test_defect": len(test_d), "train_s": round(res["train_seconds"], 1),
           "image_auroc": ev["image_auroc"], "pixel_auroc": ev.get("pixel_auroc", float("nan")), "image_f1": ev["image"]["f1"],
           "calib_image_auroc": res["image_auroc"], "images_per_s": round((len(test_n) + len(test_d)) / score_s, 2),
           "memory": fit["memory"], "pool": fit["pool"], "feature_s": fit["feature_seconds"], "coreset_s": fit["coreset_seconds"]}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    ap.add_argument("--datasets", nargs="+", default=["mt", "elpv", "pv"], choices=["mt", "elpv", "pv", "deeppcb"])
    ap.add_argument("--methods", nargs="+", default=["uiidd", "uiidd-disc"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--scale", type=float, default=0.5, help="resize factor before patching (1.0 = native pixels)")
    ap.add_argument("--patch", type=int, default=32)
    ap.add_argument("--patches-per-image", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--gpu", action="store_true", help="train on a GPU (Ray Train use_gpu); --full turns it on when CUDA is there")
    ap.add_argument("--max-test", type=int, default=100, help="at most this many test images per side (seeded); 0 = all")
    ap.add_argument("--max-train", type=int, default=600, help="at most this many defect-free training images (ELPV, pv)")
    ap.add_argument("--full", action="store_true", help="GPU budget: native scale, 64 px patches, 16 per image, 30 epochs, width 16, all test images")
    ap.add_argument("--bank-split", type=float, default=0.0,
                    help="mt: this share of every defect folder leaves the test set (seeded) and may feed the bank")
    ap.add_argument("--dev", action="store_true",
                    help="mt: score the --bank-split defects against a fifth of the training tiles (left out of the "
                         "memory) instead of the test split; deeppcb: test on the two board groups before the test "
                         "groups, which leave the data altogether. Choose settings here, report them on the test split")
    ap.add_argument("--banks", nargs="+", default=["none"], choices=["none", "real"],
                    help="uiidd-disc's simulated anomalies: Perlin/patch fills only (none), or also the set-aside real "
                         "defects cut along their masks (real); both run on the same test split")
    ap.add_argument("--pc-net", default="lite0", help="patchcore: EfficientNet-Lite variant")
    ap.add_argument("--pc-blocks", nargs="+", type=int, default=[5, 6], help="patchcore: stages whose features are concatenated")
    ap.add_argument("--pc-size", type=int, default=224, help="patchcore: network input side")
    ap.add_argument("--pc-scale", type=float, default=None, help="patchcore: native-scale tiles at this factor (default: whole image resized)")
    ap.add_argument("--pc-coreset", type=int, default=10000, help="patchcore: memory bank size")
    ap.add_argument("--pc-keep-aspect", action="store_true", help="patchcore: short side to --pc-size, aspect kept")
    ap.add_argument("--pc-pool", type=int, default=100_000, help="patchcore: random pool of training patches for the coreset")
    ap.add_argument("--pc-sigma", type=float, default=4.0, help="patchcore: heat-map smoothing (model pixels)")
    ap.add_argument("--pc-score-cells", type=int, default=8, help="patchcore: image score = mean heat over this many patch cells' area (0: max)")
    ap.add_argument("--pc-pixel-blocks", nargs="+", type=int, default=[], help="patchcore: a second memory on these stages, "
                    "its heat map multiplied in (geometric mean)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--smoke", action="store_true", help=SMOKE_HELP + "; 1 epoch, scale 0.25, 4 test images a side, at most 32 train images")
    args = ap.parse_args()
    import torch

    if args.smoke:
        args.scale, args.patches_per_image, args.epochs, args.width, args.max_test, args.max_train = 0.25, 1, 1, 4, 4, 32
        args.pc_size, args.pc_coreset, args.pc_pool = 64, 200, 2000
        smoke_ray()
    if args.full:
        args.scale, args.patch, args.patches_per_image, args.epochs, args.width, args.max_test = 1.0, 64, 16, 30, 16, 0
        args.gpu = args.gpu or torch.cuda.is_available()
    max_test = args.max_test or None
    torch.set_num_threads(args.threads)
    from factory.quality.anomaly.patches import PatchConfig

    patch = PatchConfig(size=args.patch, scale=args.scale)
    root = Path(args.data)
    # --max-train caps magnetic tile's training images only in --smoke (its numbers use every MT_Free training tile)
    loaders = {"mt": lambda: load_mt(root / "magnetic_tile", patch, max_test, args.max_train if args.smoke else None,
                                     args.bank_split),
               "elpv": lambda: load_elpv(patch, max_test, args.max_train),
               "pv": lambda: load_pv(root / "pv_vision_crack", patch, max_test, args.max_train),
               "deeppcb": lambda: load_deeppcb(root / "deeppcb", patch, max_test, args.max_train, dev=args.dev)}
    # patchcore reads the same splits at native resolution (scale 1.0; it resizes or tiles itself)
    native = PatchConfig(size=32, scale=1.0)
    native_loaders = {"mt": lambda: load_mt(root / "magnetic_tile", native, max_test, args.max_train if args.smoke else None,
                                            args.bank_split),
                      "elpv": lambda: load_elpv(native, max_test, args.max_train),
                      "pv": lambda: load_pv(root / "pv_vision_crack", native, max_test, args.max_train),
                      "deeppcb": lambda: load_deeppcb(root / "deeppcb", native, max_test, args.max_train, dev=args.dev)}
    rows = []
    for name in args.datasets:
        split = dev_split if args.dev and name != "deeppcb" else (lambda data: data)  # deeppcb's dev split is its loader's
        trained = [m for m in args.methods if m != "patchcore"]
        data = split(loaders[name]()) if trained else None
        if "patchcore" in args.methods:
            for seed in args.seeds:
                rows.append(run_one(name, split(native_loaders[name]()), "patchcore", seed, args))
        for method in trained:
            for bank_source in args.banks if method == "uiidd-disc" else ["none"]:
                for seed in args.seeds:
                    rows.append(run_one(name, data, method, seed, args, bank_source))

    print(f"\nQuality-gate anomaly benchmark on {machine()}")
    print(f"scale {args.scale}, {args.patch} px patches x {args.patches_per_image} per image, {args.epochs} epochs, width {args.width}, "
          f"batch {args.batch}, {args.threads} thread(s), Ray Train 1 worker{' on the GPU' if args.gpu else ''}, thresholds: F1 rule on simulated anomalies (calibration split)\n")
    if "patchcore" in args.methods:
        print(f"patchcore: {args.pc_net} stages {args.pc_blocks}, {args.pc_size} px "
              f"{'tiles at scale ' + str(args.pc_scale) if args.pc_scale else ('short side, aspect kept' if args.pc_keep_aspect else 'square')}, "
              f"coreset {args.pc_coreset} of at most {args.pc_pool} pooled patches, sigma {args.pc_sigma}, image score over {args.pc_score_cells} cells; no training loop "
              f"(train s = features + coreset); images at native resolution\n")
    groups: dict[tuple, list] = {}
    for r in rows:
        groups.setdefault((r["data"], r["method"]), []).append(r)

    def ms(vals):
        v = np.array(vals, float)
        return f"{np.nanmean(v):.3f}" + (f" ± {np.nanstd(v):.3f}" if len(v) > 1 else "")

    print(table(["data", "method", "seeds", "train / calib / test images", "image AUROC", "pixel AUROC", "image F1 @ ckpt thr",
                 "train s", "images/s"],
                [[d, m, len(g), f"{g[0]['train_images']} / {g[0]['calib_images']} / {g[0]['test_normal']}+{g[0]['test_defect']}",
                  ms([r["image_auroc"] for r in g]), ms([r["pixel_auroc"] for r in g]), ms([r["image_f1"] for r in g]),
                  ms([r["train_s"] for r in g]), ms([r["images_per_s"] for r in g])] for (d, m), g in groups.items()]))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=float))


if __name__ == "__main__":
    main()
