"""DG2GAN benchmark: KID/FID of generated vs held-out real defect crops, with and without DJS.

    python benchmarks/dg2gan.py                 # CPU-small (a few minutes on 2 cores)
    python benchmarks/dg2gan.py --preset full   # the paper's networks and schedule share (GPU)
    python benchmarks/dg2gan.py --smoke         # seconds of training: checks the script, numbers mean nothing

For each data set (magnetic tile MT_Free -> one defect class; CrackForest clean
crops -> crack crops), 20% of each side's images are held out (seeded split).
DG2GAN is trained with Ray Train (`factory.generators.dg2gan.train.train`) on the rest,
once with DJS and once without (the paper's DG2GAN-no-DJS). G then translates
held-out defect-free crops, and KID (and FID) between those and held-out real
defect crops is computed by torch-fidelity with `cuda=False` unless a GPU is used.

Inception weights cannot be downloaded here, so the features come from an
in-domain extractor trained by this script on the *training* split only: a small
CNN classifying {defect-free, each defect class} crops (magnetic tile: MT_Free +
all five defect folders; CrackForest: clean vs crack; at most 300 crops a class),
whose 64-d global-pooled
features are registered with torch-fidelity as `dg2gan-indomain-<set>`. Numbers
are therefore not on the paper's scale (Inception FID); two reference rows bound
them: real train defect crops (how close real data gets) and the untranslated
defect-free inputs (what "no generator" scores).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import SMOKE_HELP, machine  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = Path(os.environ.get("FACTORY_SHARED_DATA", REPO.parent / "shared" / "data"))

# The paper's FID (Inception) for its data sets: Table 4 CrackForest, Tables 5-6 MVTec leather / wood.
PAPER = {
    "Table 4 CrackForest": {"CycleGAN": 87, "DG2GAN-no-DJS": 128, "DG2GAN": 61},
    "Table 5 MVTec leather": {"CycleGAN": 96, "DG2GAN-no-DJS": 102, "DG2GAN": 70},
    "Table 6 MVTec wood": {"CycleGAN": 87, "DG2GAN-no-DJS": 92, "DG2GAN": 65},
}

PRESETS = {
    "cpu-small": dict(image_size=64, ngf=16, n_blocks=3, ndf=16, n_layers=3, epoch_scale=0.02, max_steps_per_epoch=40),
    "full": dict(image_size=128, ngf=64, n_blocks=6, ndf=64, n_layers=3, epoch_scale=0.1, max_steps_per_epoch=None),
}
# --smoke (not a preset a user picks: its numbers mean nothing): one epoch of each schedule phase, 2 steps each, 16 images
SMOKE = dict(image_size=64, ngf=8, n_blocks=1, ndf=8, n_layers=3, epoch_scale=0.01, max_steps_per_epoch=2, max_images=16)

MT_CLASSES = ["Blowhole", "Break", "Crack", "Fray", "Uneven"]


def datasets(mt_class: str):
    """name -> (defect-free folder, defective folder, extra defect folders for the feature extractor)."""
    mt = DATA / "magnetic_tile"
    return {
        f"magnetic_tile/{mt_class}": (mt / "MT_Free", mt / f"MT_{mt_class}", [mt / f"MT_{c}" for c in MT_CLASSES if c != mt_class]),
        "crackforest": (DATA / "crackforest", DATA / "crackforest", []),
    }


# --- in-domain feature extractor ----------------------------------------------------


def _cnn(n_classes: int):
    import torch.nn as nn

    def block(i, o):
        return [nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(True), nn.MaxPool2d(2)]

    features = nn.Sequential(*block(1, 8), *block(8, 16), *block(16, 32), *block(32, 64), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return nn.Sequential(features, nn.Linear(64, n_classes))


def train_extractor(class_crops: list[np.ndarray], epochs: int, seed: int = 0) -> tuple[dict, float]:
    """Train the small CNN to tell the classes apart; returns (state dict, train accuracy)."""
    import torch

    from factory.training.images import to_tensor

    torch.manual_seed(seed)
    x = torch.cat([to_tensor(c).mean(1, keepdim=True) for c in class_crops])
    y = torch.cat([torch.full((len(c),), i) for i, c in enumerate(class_crops)])
    w = 1.0 / torch.bincount(y).float()  # classes are very unbalanced (952 free tiles vs 32 Fray)
    net = _cnn(len(class_crops))
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        net.train()
        for idx in np.array_split(rng.permutation(len(x)), max(1, len(x) // 32)):
            xb = x[idx]
            if rng.random() < 0.5:
                xb = xb.flip(3)
            loss = torch.nn.functional.cross_entropy(net(xb), y[idx], weight=w / w.sum() * len(w))
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        acc = float((net(x).argmax(1) == y).float().mean())
    return net.state_dict(), acc


def register_extractor(name: str, weights: str, n_classes: int, size: int) -> None:
    import torch
    import torch.nn.functional as Fn
    from torch_fidelity import register_feature_extractor
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase

    class InDomain(FeatureExtractorBase):
        def __init__(self, name, features_list, **kwargs):
            super().__init__(name, features_list)
            net = _cnn(n_classes)
            net.load_state_dict(torch.load(weights, weights_only=True))
            self.features = net[0].eval()

        @staticmethod
        def get_provided_features_list():
            return ("gap64",)

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return "gap64"

        @staticmethod
        def can_be_compiled():
            return False

        @staticmethod
        def get_dummy_input_for_compile():
            return torch.zeros(1, 3, size, size, dtype=torch.uint8)

        def forward(self, x):
            x = x.float().mean(1, keepdim=True) / 127.5 - 1.0
            if x.shape[-1] != size:
                x = Fn.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
            return (self.features(x).double(),)

    register_feature_extractor(name, InDomain)


class _Images(torch.utils.data.Dataset):
    """uint8 N x S x S x 1 crops as the 3 x S x S uint8 tensors torch-fidelity reads."""

    def __init__(self, crops: np.ndarray):
        self.t = torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).repeat(1, 3, 1, 1)

    def __len__(self):
        return len(self.t)

    def __getitem__(self, i):
        return self.t[i]


def distances(a: np.ndarray, b: np.ndarray, extractor: str, cuda: bool) -> dict[str, float]:
    import torch_fidelity

    k = min(len(a), len(b), 100)
    m = torch_fidelity.calculate_metrics(
        input1=_Images(a), input2=_Images(b), kid=True, fid=True, feature_extractor=extractor,
        kid_subset_size=k, kid_subsets=100, cuda=cuda, verbose=False, cache=False, batch_size=64, save_cpu_ram=not cuda,
    )
    return {"kid": m["kernel_inception_distance_mean"], "kid_std": m["kernel_inception_distance_std"], "fid": m["frechet_inception_distance"]}


# --- the benchmark ------------------------------------------------------------------------


def translate(ck: str, crops: np.ndarray, device: str) -> np.ndarray:
    import torch

    from factory.generators.dg2gan.checkpoint import load_generators
    from factory.training.images import to_tensor

    _, gens, _ = load_generators(ck, device)
    out = []
    with torch.no_grad():
        for i in range(0, len(crops), 64):
            y = gens.G(to_tensor(crops[i : i + 64]).to(device)).cpu()
            out.append(((y + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu-small")
    ap.add_argument("--mt-class", default="Crack", choices=MT_CLASSES)
    ap.add_argument("--sets", default="magnetic_tile,crackforest", help="comma list of magnetic_tile, crackforest")
    ap.add_argument("--workers", type=int, default=1, help="Ray Train workers")
    ap.add_argument("--out", default=None, help="where checkpoints go (default: a temp folder)")
    ap.add_argument("--extractor-epochs", type=int, default=6)
    ap.add_argument("--max-eval", type=int, default=200, help="at most this many generated crops per run")
    ap.add_argument("--grid", default=None, help="sample grid PNG (default: docs/dg2gan_samples.png; none with --smoke)")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help=SMOKE_HELP + "; crackforest only unless --sets, tiny networks, "
                    "2 steps per epoch, 1 extractor epoch, 16 crops")
    args = ap.parse_args(argv)
    if args.smoke:
        given = argv if argv is not None else sys.argv[1:]
        args.sets = args.sets if any(x.startswith("--sets") for x in given) else "crackforest"
        args.extractor_epochs, args.max_eval = 1, 16
    if args.grid is None:
        args.grid = "" if args.smoke else str(REPO / "docs" / "dg2gan_samples.png")

    import ray
    import torch
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from factory.data.folders import scan
    from factory.generators.dg2gan.train import TrainConfig, train
    from factory.storage.uri import to_uri
    from factory.training.images import load_crops, split_records

    console = Console(width=160)
    preset = SMOKE if args.smoke else PRESETS[args.preset]
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    size = preset["image_size"]
    out_root = Path(args.out or tempfile.mkdtemp(prefix="dg2gan-bench-"))
    wanted = set(args.sets.split(","))
    sets = {k: v for k, v in datasets(args.mt_class).items() if k.split("/")[0] in wanted}
    ray.init(num_cpus=2 if args.smoke else None, include_dashboard=False, log_to_driver=False, configure_logging=False)
    results, grid_rows = [], []
    t_start = time.time()
    with Progress(console=console) as progress:
        task = progress.add_task("dg2gan benchmark", total=len(sets) * 3)
        for name, (free_dir, defect_dir, extra_dirs) in sets.items():
            progress.update(task, description=f"{name}: data + feature extractor")
            split = lambda d: split_records(scan(d), 0.2, args.seed)  # noqa: E731  (the same split training uses)
            free_train, free_held = split(free_dir)
            def_train, def_held = split(defect_dir)
            real_held = load_crops(def_held, "defective", size, seed=args.seed)
            real_train = load_crops(def_train, "defective", size, seed=args.seed)
            inputs = load_crops(free_held, "defect-free", size, crops_per_image=4, seed=args.seed + 1)
            inputs = inputs[np.random.default_rng(args.seed).permutation(len(inputs))[: args.max_eval]]
            classes = [load_crops(free_train, "defect-free", size, crops_per_image=1, seed=args.seed), real_train]
            classes += [load_crops(split(d)[0], "defective", size, seed=args.seed) for d in extra_dirs]
            t0 = time.time()
            classes = [c[np.random.default_rng(args.seed).permutation(len(c))[:300]] for c in classes]
            state, acc = train_extractor(classes, args.extractor_epochs, args.seed)
            wpath = out_root / f"extractor-{name.replace('/', '-')}.pt"
            wpath.parent.mkdir(parents=True, exist_ok=True)
            torch.save(state, wpath)
            ext = f"dg2gan-indomain-{name.replace('/', '-')}"
            register_extractor(ext, str(wpath), len(classes), size)
            console.print(
                f"{name}: held-out {len(real_held)} real defect crops from {len(def_held)} images; {len(inputs)} defect-free inputs; "
                f"extractor {ext} ({len(classes)} classes, train acc {acc:.2f}, {time.time() - t0:.0f} s)"
            )
            base = {"set": name, "n_real": len(real_held), "n_gen": len(inputs), "extractor": ext}
            results.append({**base, "method": "real train defect crops (floor)", **distances(real_train, real_held, ext, cuda)})
            results.append({**base, "method": "untranslated defect-free crops", **distances(inputs, real_held, ext, cuda)})
            for use_djs in (True, False):
                method = "DG2GAN" if use_djs else "DG2GAN-no-DJS"
                progress.update(task, description=f"{name}: training {method}")
                tc = TrainConfig(
                    defect_free=str(free_dir), defective=str(defect_dir), class_name=name.split("/")[-1],
                    out=to_uri(out_root / name.replace("/", "-") / method), holdout=0.2, seed=args.seed,
                    use_djs=use_djs, num_workers=args.workers, use_gpu=cuda, **preset,
                )
                t0 = time.time()
                r = train(tc, storage_path=str(out_root / "ray"))
                train_s = time.time() - t0
                fake = translate(r["checkpoint"], inputs, device)
                results.append({**base, "method": method, **distances(fake, real_held, ext, cuda), "train_s": train_s,
                                "epochs": r["epoch"] + 1, "cycle": r["metrics"].get("cycle")})
                if use_djs:
                    grid_rows += [inputs[:8], fake[:8], real_held[:8]]
                progress.advance(task)
            progress.advance(task)

    table = Table(title=f"DG2GAN ({'--smoke' if args.smoke else args.preset}) on {machine()}; features: in-domain CNN (not Inception); {time.time() - t_start:.0f} s total")
    for col in ("set", "method", "KID (± std)", "FID", "n real / gen", "train s", "cycle"):
        table.add_column(col)
    for r in results:
        table.add_row(
            r["set"], r["method"], f"{r['kid']:.3f} ± {r['kid_std']:.3f}", f"{r['fid']:.2f}",
            f"{r['n_real']} / {r['n_gen']}", f"{r['train_s']:.0f}" if "train_s" in r else "", f"{r['cycle']:.3f}" if r.get("cycle") else "",
        )
    console.print(table)
    paper = Table(title="The paper's FID (Inception features, 200 epochs, 256 px: a different scale)")
    paper.add_column("table")
    for m in ("CycleGAN", "DG2GAN-no-DJS", "DG2GAN"):
        paper.add_column(m)
    for t, row in PAPER.items():
        paper.add_row(t, *(str(row[m]) for m in ("CycleGAN", "DG2GAN-no-DJS", "DG2GAN")))
    console.print(paper)
    if grid_rows and args.grid:
        from PIL import Image

        rows = []
        for r in grid_rows:
            row = np.zeros((size, 8 * size), np.uint8)
            for i, tile in enumerate(r[:8]):
                row[:, i * size : (i + 1) * size] = tile[:, :, 0]
            rows.append(row)
        Image.fromarray(np.concatenate(rows, axis=0)).save(args.grid, optimize=True)
        console.print(f"grid: {args.grid} (per set: defect-free inputs / G(inputs) / held-out real defect crops)")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "preset": args.preset, "results": results}, indent=2))


if __name__ == "__main__":
    main()
