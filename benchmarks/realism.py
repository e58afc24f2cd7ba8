"""Realism of each generator arm against held-out real images of the line: C2ST
accuracy (a from-scratch CNN at 64 px telling generated from real, k-fold; 0.5 =
indistinguishable) on whole images and on box crops (square crops 1.5x a box's
longer side around every box, at 64 px: the defects, not the backgrounds; generated
crops are those of pasted defects only, never a labelled background's own), KID/FID
with the in-domain extractor (trained on the real reference images only), plus
generation images/s on one core.

    python benchmarks/realism.py --domain pv --seeds 0 1 [--grid docs/realism_grid.png]
    python benchmarks/realism.py --domain mt --seeds 0 1
    python benchmarks/realism.py --domain pcb --seeds 0 1   # DeepPCB: the transplant options one by one
    python benchmarks/realism.py --domain pv --smoke   # checks the script, numbers mean nothing

Evaluation hygiene: the reference set is never a background, a defect source or
a fitting reference.
- pv (pv_vision_crack): backgrounds and style fitting: train cells with no defect
  pixel (mask values 1-3); defects: the train split's masks; reference: the 172
  val cells; floor: 172 random train cells vs the val cells.
- mt (magnetic tile, the importer's seeded 80/20 split): backgrounds and fitting:
  MT_Free tiles; defects: train-split masks; reference: the val split's defect
  tiles; floor: train defect tiles vs those.
- pcb (DeepPCB, the importer's split by board group): defects and backgrounds
  (golden templates) from the train groups; reference: the val groups' boards;
  floor: train boards vs those (different boards: the floor is the board gap).
Real sets are imported (once) into --work, never into the repository. Real and
generated images are centre-cropped to a square and resized the same way.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SMOKE_HELP, machine, table  # noqa: E402

from factory.data.adapters import deeppcb, magnetic_tile, pv_vision_crack  # noqa: E402
from factory.data.box_stats import fitted_boxes  # noqa: E402
from factory.data.folders import list_images  # noqa: E402
from factory.data.realset import RealSet, publish_real  # noqa: E402
from factory.generators.base import load_generator  # noqa: E402
from factory.generators.checks import check_spec  # noqa: E402
from factory.planning import plan  # noqa: E402
from factory.quality.fidelity import fidelity  # noqa: E402
from factory.quality.realism import c2st, train_indomain_extractor  # noqa: E402
from factory.spec import spec_from_dict  # noqa: E402
from factory.storage.registry import Registry  # noqa: E402
from factory.viz import box_crops, draw_boxes, grid, png_bytes  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SIDE = 128  # real and generated images are stored at this size before the C2ST's 64 px


def square(path_or_array, side: int = SIDE) -> np.ndarray:
    im = Image.fromarray(path_or_array) if isinstance(path_or_array, np.ndarray) else Image.open(path_or_array)
    im = im.convert("L")
    w, h = im.size
    s = min(w, h)
    return np.asarray(im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)).resize((side, side), Image.BILINEAR))


def grey(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("L"))


def _registry(work: Path, name: str, load) -> str:
    root = (work / "registry").as_uri()
    if not Registry(root).versions(name):
        publish_real(load(), root, name, 1)
    return f"{root}/{name}@1"


def pv_setup(data: Path, work: Path, n: int, rng, limit: int | None = None) -> dict:
    """`limit` (--smoke): the first `limit` images of each split only (the source gets its own name then)."""
    root = data / "pv_vision_crack"
    source = _registry(work, "pv-vision-crack" + ("-smoke" if limit else ""), lambda: pv_vision_crack(root, limit=limit))
    clean = []
    for img in sorted((root / "train" / "img").iterdir())[:limit]:
        m = np.asarray(Image.open(root / "train" / "ann" / f"{img.stem}.png"))[..., 0]
        if not np.isin(m, [1, 2, 3]).any():
            clean.append(str(img))
    val = sorted((root / "val" / "img").iterdir())[:limit]
    train = pv_vision_crack(root, splits=("train",), limit=limit).samples
    floor = [train[i] for i in rng.choice(len(train), min(n, len(val)), replace=False)]
    boxes = {
        "crack": {"count": [1, 4], "size": {"dist": "loguniform", "min": 0.03, "max": 0.35}, "aspect": {"dist": "loguniform", "min": 0.5, "max": 6}},
        "dark_area": {"count": [1, 2], "size": {"dist": "loguniform", "min": 0.04, "max": 0.3}, "aspect": {"dist": "loguniform", "min": 0.4, "max": 4}},
        "cross_crack": {"count": [1, 4], "size": {"min": 0.02, "max": 0.05}, "aspect": {"min": 0.8, "max": 1.3}},
    }
    spec = {"name": "realism-pv", "seed": 11, "count": n, "image": {"width": 400, "height": 400},  # the cells' own size
            "negatives": 0.55, "classes_per_image": [1, 3],
            "defects": [{"class": c, "weight": w, "boxes": boxes[c]} for c, w in (("crack", 0.5), ("dark_area", 0.25), ("cross_crack", 0.25))]}
    labelled_val = pv_vision_crack(root, splits=("val",), limit=limit).samples
    return {"spec": spec, "fitted_boxes": fitted_boxes(train), "train": train, "proc_classes": None, "refs": clean, "source": source,
            "real": [s.image_path for s in labelled_val], "real_boxes": [s.boxes for s in labelled_val],
            "floor": [s.image_path for s in floor], "floor_boxes": [s.boxes for s in floor]}


def mt_setup(data: Path, work: Path, n: int, rng) -> dict:
    root = data / "magnetic_tile"
    source = _registry(work, "magnetic-tile", lambda: magnetic_tile(root))
    samples = magnetic_tile(root, negatives=False).samples  # the importer's split (seed 0, 20% val)
    real = [s for s in samples if s.split == "val" and s.boxes]
    train = [s for s in samples if s.split == "train" and s.boxes]
    floor = [train[i] for i in rng.choice(len(train), min(n, len(real)), replace=False)]
    sizes = {"blowhole": (0.03, 0.09), "break": (0.05, 0.4), "crack": (0.04, 0.2), "fray": (0.1, 0.6), "uneven": (0.3, 0.7)}
    weights = {"blowhole": 115, "break": 85, "crack": 57, "fray": 32, "uneven": 103}
    spec = {"name": "realism-mt", "seed": 12, "count": n, "image": {"width": 192, "height": 192},
            "defects": [{"class": c, "weight": weights[c], "boxes": {"count": [1, 1], "size": {"dist": "loguniform", "min": lo, "max": hi},
                                                                     "aspect": {"dist": "loguniform", "min": 0.5, "max": 2}}}
                        for c, (lo, hi) in sizes.items()]}
    refs = [str(p) for p in list_images(root / "MT_Free" / "Imgs")]
    proc = [{"class": "crack", "boxes": spec["defects"][2]["boxes"]}, {"class": "black_spot", "boxes": spec["defects"][0]["boxes"]}]
    return {"spec": spec, "fitted_boxes": fitted_boxes(train), "train": train, "proc_classes": proc, "refs": refs, "source": source,
            "real": [s.image_path for s in real], "real_boxes": [s.boxes for s in real],
            "floor": [s.image_path for s in floor], "floor_boxes": [s.boxes for s in floor]}


def pcb_setup(data: Path, work: Path, n: int, rng, limit: int | None = None) -> dict:
    """Two sources from the train groups: with golden templates (instances = template
    differences) and box-only (instances = feathered box crops, as before templates)."""
    real = deeppcb(data / "deeppcb")
    train = [s for s in real.samples if s.split == "train"][:limit]
    val = [s for s in real.samples if s.split == "val"][:limit]
    tag = "-smoke" if limit else ""
    source = _registry(work, "deeppcb" + tag, lambda: RealSet(real.name, real.class_names, train, real.source, real.settings))
    boxonly = [type(s)(s.image_path, s.split, s.width, s.height, s.boxes) for s in train]
    old = _registry(work, "deeppcb-boxonly" + tag, lambda: RealSet(real.name, real.class_names, boxonly, real.source, {}))
    box = {"count": [1, 3], "size": {"dist": "loguniform", "min": 0.045, "max": 0.1},
           "aspect": {"dist": "loguniform", "min": 0.6, "max": 1.8}}
    spec = {"name": "realism-pcb", "seed": 13, "count": n, "image": {"width": 640, "height": 640},
            "classes_per_image": [2, 4], "defects": [{"class": c, "boxes": box} for c in real.class_names]}
    fitted = fitted_boxes(train, order=real.class_names)  # each class's boxes as the train boards' own
    floor = [train[i] for i in rng.choice(len(train), min(n, len(val)), replace=False)]
    return {"spec": spec, "fitted_boxes": fitted, "proc_classes": None, "refs": [str(s.template) for s in train], "source": source,
            "old_source": old, "real": [s.image_path for s in val], "real_boxes": [s.boxes for s in val],
            "floor": [s.image_path for s in floor], "floor_boxes": [s.boxes for s in floor],
            # the floor boards' golden templates at their boxes: the background gap alone (no defect in any crop)
            "bare": [str(s.template) for s in floor]}


def arms(setup: dict) -> dict[str, dict]:
    """Arm name -> spec dict."""
    base = setup["spec"]
    transplant = lambda source, **p: dict(base, generators=[{"kind": "transplant", "params": {  # noqa: E731
        "source": source, "references": setup["refs"], **p}}])
    old = {"placement": "random", "blend": "poisson", "elastic": 0, "contrast": [1, 1]}  # before context and shapes
    if "old_source" in setup:  # pcb: the transplant's options one by one
        return {
            "transplant before (box crops, random, poisson)": transplant(setup["old_source"], **old),
            "+ template instances": transplant(setup["source"], **old),
            "+ templates, context placement": transplant(setup["source"], **dict(old, placement="context")),
            "+ templates, mixed blends": transplant(setup["source"], **dict(old, blend="mixed")),
            "+ templates, new shapes": transplant(setup["source"], **dict(old, elastic=2, contrast=[0.8, 1.25])),
            "transplant, all (the defaults)": transplant(setup["source"]),
            "transplant, all, JPEG q75 (the boards' own)": transplant(setup["source"], jpeg_quality=75),
            "transplant, all, backgrounds: both": transplant(setup["source"], backgrounds="both"),
            "transplant, all, backgrounds: labelled": transplant(setup["source"], backgrounds="labelled"),
            "transplant, all, backgrounds: labelled, JPEG q75": transplant(setup["source"], backgrounds="labelled",
                                                                          jpeg_quality=75),
            "transplant, all, backgrounds: labelled, JPEG q75, box sizes as the train boards'": dict(
                transplant(setup["source"], backgrounds="labelled", jpeg_quality=75),
                defects=[{"class": c, "boxes": dict(base["defects"][0]["boxes"], size=fit["size"])}
                         for c, fit in setup["fitted_boxes"].items()]),
        }
    proc = dict(base, defects=setup["proc_classes"] or base["defects"])
    # the train boxes as the generated frame shows them (tiles of aspect 0.2-5 centre-cropped to a square)
    framed = fitted_boxes(setup["train"], frame=(base["image"]["width"], base["image"]["height"]))
    return {
        "procedural default style": dict(proc, generators=[{"kind": "procedural"}]),
        "procedural fitted": dict(proc, domain={"style": "fit", "references": setup["refs"]}, generators=[{"kind": "procedural"}]),
        "procedural on real backgrounds": dict(proc, generators=[{"kind": "procedural", "params": {
            "background": "references", "references": setup["refs"]}}]),
        "transplant before (random, poisson)": transplant(setup["source"], **old),
        "transplant, context placement": transplant(setup["source"], **dict(old, placement="context")),
        "transplant, mixed blends": transplant(setup["source"], **dict(old, blend="mixed")),
        "transplant, new shapes": transplant(setup["source"], **dict(old, elastic=2, contrast=[0.8, 1.25])),
        "transplant poisson": transplant(setup["source"], blend="poisson"),
        "transplant, all (the defaults)": transplant(setup["source"]),
        "transplant, all, box sizes as the train images'": dict(transplant(setup["source"]), defects=[
            dict(d, boxes=dict(d["boxes"], size=setup["fitted_boxes"][d["class"]]["size"]))
            if d["class"] in setup["fitted_boxes"] else d for d in base["defects"]]),
        "transplant, all, box sizes and aspects as the framed train images'": dict(transplant(setup["source"]), defects=[
            dict(d, boxes=dict(d["boxes"], size=framed[d["class"]]["size"], aspect=framed[d["class"]]["aspect"]))
            if d["class"] in framed else d for d in base["defects"]]),
        # as the row above, no 90-degree turns (specs/transplant-magnetic-tile.yaml: tile cracks run along the tile)
        "transplant, all, framed box sizes and aspects, no turns": dict(transplant(setup["source"], rotate=False), defects=[
            dict(d, boxes=dict(d["boxes"], size=framed[d["class"]]["size"], aspect=framed[d["class"]]["aspect"]))
            if d["class"] in framed else d for d in base["defects"]]),
    }


def generate(spec_dict: dict, n: int):
    spec = check_spec(spec_from_dict(spec_dict))
    g = spec.generators[0]
    gen = load_generator(g.kind, g.checkpoint, g.params)
    items = plan(spec, n=n)
    t0 = time.perf_counter()
    samples = gen.generate(items)
    return samples, n / (time.perf_counter() - t0), spec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--domain", choices=["pv", "mt", "pcb"], required=True)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "factory-realism")
    ap.add_argument("--n", type=int, default=172, help="images per side (capped by the reference set)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="C2ST seeds (each a 5-fold run)")
    ap.add_argument("--grid", type=Path, default=None, help="write real | procedural | fitted | transplant rows here")
    ap.add_argument("--only", nargs="+", help="run only the arms whose names contain one of these")
    ap.add_argument("--smoke", action="store_true", help=SMOKE_HELP + "; 20 images per side, 1 seed, 16 references; "
                    "pv: the first 40 images of each split")
    args = ap.parse_args()
    if args.smoke:
        args.n, args.seeds = 20, [0]
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    rng = np.random.default_rng(0)
    if args.domain == "pv":
        setup = pv_setup(args.data, args.work, args.n, rng, limit=40 if args.smoke else None)
    elif args.domain == "pcb":
        setup = pcb_setup(args.data, args.work, args.n, rng, limit=40 if args.smoke else None)
    else:
        setup = mt_setup(args.data, args.work, args.n, rng)
    if args.smoke:  # style fitting and real backgrounds from a few references
        setup["refs"] = setup["refs"][:16]
    real = [square(p) for p in setup["real"]]
    real_crops = box_crops([(grey(p), b) for p, b in zip(setup["real"], setup["real_boxes"])])
    n = min(args.n, len(real))
    weights = train_indomain_extractor(real, args.work / f"indomain-{args.domain}.pt")
    real_png = [png_bytes(a) for a in real]

    def score(images: list[np.ndarray], crops: list[np.ndarray]) -> dict:
        runs = [c2st(images, real, seed=s) for s in args.seeds]
        accs = [r["c2st_accuracy"] for r in runs]
        try:
            crop_runs = [c2st(crops, real_crops, seed=s) for s in args.seeds]
        except ValueError:  # too few boxes on one side (--smoke's few images)
            crop_runs = [{"c2st_accuracy": float("nan"), "c2st_std": float("nan"), "images_per_side": len(crops)}]
        crop_accs = [r["c2st_accuracy"] for r in crop_runs]
        fid = fidelity([png_bytes(a) for a in images], real_png, size=64, indomain_weights=str(weights))
        spread = lambda v, r: float(np.std(v)) if len(v) > 1 else r[0]["c2st_std"]  # noqa: E731
        return {"c2st": float(np.mean(accs)), "spread": spread(accs, runs), "crops": float(np.mean(crop_accs)),
                "crops_spread": spread(crop_accs, crop_runs), "n_crops": crop_runs[0]["images_per_side"],
                "kid": fid["kid_mean"], "kid_std": fid["kid_std"], "fid": fid["fid"]}

    def row(name: str, s: dict, rate: str) -> list[str]:
        return [name, f"{s['c2st']:.3f} ± {s['spread']:.3f}", f"{s['crops']:.3f} ± {s['crops_spread']:.3f} ({s['n_crops']})",
                f"{s['kid']:.4f} ± {s['kid_std']:.4f}", f"{s['fid']:.2f}", rate]

    rows, generated = [], {}
    chosen = arms(setup)
    if args.smoke:  # the script's paths, not every arm: the first, the defaults, and the grid's columns
        keep = {next(iter(chosen)), "transplant, all (the defaults)"} | (set(GRID_COLUMNS) if args.grid else set())
        chosen = {k: v for k, v in chosen.items() if k in keep}
    if args.only:
        chosen = {k: v for k, v in chosen.items() if any(o in k for o in args.only)}
    for name, spec_dict in chosen.items():
        samples, rate, spec = generate(dict(spec_dict, count=n), n)
        generated[name] = (samples, spec)
        # pasted boxes only: a labelled background's own (real) boxes come last and are left out
        kept = lambda sm: sm.meta.get("provenance", {}).get("kept_boxes", 0)  # noqa: E731
        crops = box_crops([(sm.image, sm.boxes[:len(sm.boxes) - kept(sm)]) for sm in samples])
        rows.append(row(name, score([square(sm.image[:, :, 0]) for sm in samples], crops), f"{rate:.1f}"))
        print(" | ".join(rows[-1]), flush=True)
    floor_crops = box_crops([(grey(p), b) for p, b in zip(setup["floor"], setup["floor_boxes"])])
    rows.append(row("real vs real floor (train vs reference)", score([square(p) for p in setup["floor"]], floor_crops), "-"))
    if "bare" in setup:  # the floor boards' templates cropped at the floor boards' boxes: no defect in any crop
        bare_crops = box_crops([(grey(p), b) for p, b in zip(setup["bare"], setup["floor_boxes"])])
        rows.append(row("no defect: templates at the floor's boxes", score([square(p) for p in setup["bare"]], bare_crops), "-"))
    rows.append(["DG2GAN", "not run: no checkpoint at hand", "", "", "", ""])
    print(f"\n{args.domain}: {n} images per side, C2ST at 64 px (5-fold, seeds {args.seeds}; ± = std over seeds, "
          "or over folds with one seed; box crops: 1.5x the box, at most 500 per side, count in brackets), "
          "KID/FID with the in-domain extractor")
    print(f"machine: {machine()}\n")
    print(table(["arm", "C2ST whole image", "C2ST box crops", "KID", "FID", "images/s (1 core)"], rows))
    if args.grid:
        write_grid(args.grid, setup, generated)


GRID_COLUMNS = ["procedural default style", "procedural fitted", "transplant poisson"]


def write_grid(path: Path, setup: dict, generated: dict, rows: int = 4) -> None:
    """real (its own boxes) | procedural | procedural fitted | transplant poisson, the generated
    columns made from the same planned items (the same requested boxes)."""
    cols = GRID_COLUMNS
    samples = {c: generated[c][0] for c in cols}
    picks = [i for i, s in enumerate(samples["transplant poisson"]) if s.item.boxes][:rows]
    reals = [i for i, b in enumerate(setup["real_boxes"]) if b][:rows]
    tiles, captions = [], []
    for r, i in zip(reals, picks):
        tiles.append(draw_boxes(np.asarray(Image.open(setup["real"][r]).convert("L")), setup["real_boxes"][r]))
        captions.append("real (held out)")
        for c in cols:
            s = samples[c][i]
            tiles.append(draw_boxes(s.image, s.boxes))
            captions.append(c.replace(" default style", ""))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid(tiles, cols=4, captions=captions, tile_size=256).save(path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
