"""Prove the value (issue 13): does real + synthetic beat real only, at matched
optimizer steps, on held-out real images, when labelled real images are few?

For each real train size N (a seeded subset of the real train split in which
every class appears; `all` = the whole split), each seed, and each synthetic arm,
the product's own retrain path (`factory.retrain.launch.retrain`: one Ray Train
run per arm and seed, ultralytics inside) trains `real` and `mixed` for the same
number of optimizer steps and scores both on the real eval split. A synthetic arm
is a spec file (made here once with the factory's job, `run_dataset`, seeded
independently of N) or an existing published version URI:

    python benchmarks/value.py --arm procedural=benchmarks/specs/value-procedural-pv.yaml
    python benchmarks/value.py --arm procedural=... --arm transplant=benchmarks/specs/value-transplant-pv.yaml
    python benchmarks/value.py --dataset magnetic_tile --arm transplant=specs/transplant-mt.yaml
    python benchmarks/value.py --full --arm ...      # GPU: all sizes incl. all, imgsz 416, converged
    python benchmarks/value.py --smoke --arm ... --work DIR --out FILE   # seconds: checks the script

Eval: pv_vision_crack's own `val` split; magnetic tile: a seeded 20% of every
folder (defect tiles and MT_Free), by file name. Neither feeds training,
synthesis or calibration: N-subsets are drawn from the train split only, and a
spec's references must name train images only (checked).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("FACTORY_NO_NETWORK", "1")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SIZES = {
    # CPU: what 2 shared cores allow in ~30-40 min for 3 sizes x 2 arms x 3 seeds
    "cpu": dict(sizes=["25", "50", "100"], seeds=[0, 1, 2], steps=160, imgsz=128, batch=16, synthetic_ratio=4.0,
                gpus=0.0, workers=0, train_args={"val": False}),
    # GPU: converged (a few thousand steps), every size, 5 seeds, four runs sharing one GPU
    "full": dict(sizes=["25", "50", "100", "200", "all"], seeds=[0, 1, 2, 3, 4], steps=4000, imgsz=416, batch=16,
                 synthetic_ratio=4.0, gpus=0.25, workers=2, train_args={"val": False, "plots": False}),
}


def real_sets(dataset: str, data: Path, work: Path, limit: int | None = None):
    """The real train and eval splits as YOLO folders (train: train split; eval: held out),
    and the train split alone as a RealSet (a spec may name it as NAME@1: eval images can
    then never reach a generator); `limit` (--smoke): that many images of each split, evenly
    spaced through it (magnetic tile lists its folders one after another: every class appears)."""
    from factory.data.adapters import RealSet, load_real, write_yolo

    real = load_real(dataset, data / dataset)
    out, by_split = {}, {}
    for split in ("train", "val"):
        samples = [s for s in real.samples if s.split == split]
        if limit and len(samples) > limit:
            samples = [samples[i * len(samples) // limit] for i in range(limit)]
        by_split[split] = samples
        write_yolo(RealSet(f"{dataset}-{split}", real.class_names, samples, real.source), str(work / f"real-{split}"))
        out[split] = {"images": len(samples), "with_boxes": sum(1 for s in samples if s.boxes),
                      "boxes": sum(len(s.boxes) for s in samples)}
    train_only = RealSet(real.name, real.class_names, by_split["train"], real.source, real.settings)
    return str(work / "real-train"), str(work / "real-val"), {"classes": real.class_names, **out}, train_only


def _check_references(spec, eval_dir: str) -> None:
    """A spec's reference images must not be eval images (evaluation hygiene)."""
    from factory.formats import read_data_yaml

    _, _, splits = read_data_yaml(Path(eval_dir))
    eval_names = {p.name.split("_", 1)[-1] for files in splits.values() for p in files}
    for ref in spec.domain.references:
        if "/val/" in ref or Path(ref).name in eval_names:
            raise SystemExit(f"{ref}: a domain reference is an eval image; name train images only")


def make_synthetic(name: str, source: str, work: Path, eval_dir: str, real_train, count: int | None = None) -> str:
    """A spec file -> publish it once with the factory's job; a URI -> use it as it is.
    A spec that names the benchmarked real set as `NAME@1` (transplant: its source and
    references) gets its train split published into the arm's registry first, as
    `factory data import` would."""
    if not source.endswith((".yaml", ".yml")):
        return source
    from factory.pipeline import RunOptions, run_dataset
    from factory.spec import spec_from_dict
    from factory.spec.load import load_spec
    from factory.storage.registry import Registry

    root = str((work / "registry" / name).resolve())
    d = load_spec(source).to_yaml_dict()
    d["output"] = {**d["output"], "uri": f"file://{root}"}  # NAME@VERSION references resolve there
    if count is not None:  # --smoke
        d["count"] = count
    spec = spec_from_dict(d)
    _check_references(spec, eval_dir)
    reg = Registry(root)
    if spec.version and reg.is_published(spec.name, spec.version):  # made by an earlier run of this benchmark
        return reg.version_uri(spec.name, spec.version)
    real_name = real_train.name.replace("_", "-").lower()
    if f"{real_name}@1" in Path(source).read_text() and not reg.is_published(real_name, 1):
        from factory.data.adapters import publish_real

        publish_real(real_train, root, real_name, 1)
    t = time.time()
    r = run_dataset(spec, RunOptions(out=root, report=False))
    print(f"synthetic arm {name}: {r.uri} ({spec.count} images, {time.time() - t:.0f} s)", flush=True)
    return r.uri


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arm", action="append", required=True, help="NAME=SPEC.yaml or NAME=VERSION_URI (repeatable)")
    ap.add_argument("--dataset", default="pv_vision_crack", choices=["pv_vision_crack", "magnetic_tile"])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--full", action="store_true", help="GPU size: every N, imgsz 416, converged, 5 seeds")
    ap.add_argument("--sizes", nargs="+", help="real train sizes N (or 'all')")
    ap.add_argument("--seeds", type=int, nargs="+")
    ap.add_argument("--steps", type=int, help="optimizer steps per arm")
    ap.add_argument("--imgsz", type=int)
    ap.add_argument("--batch", type=int)
    ap.add_argument("--synthetic-ratio", type=float)
    ap.add_argument("--gpus", type=float)
    ap.add_argument("--work", type=Path, default=Path("/tmp/factory-value"))
    ap.add_argument("--out", type=Path, default=Path("benchmark-value.json"))
    ap.add_argument("--smoke", action="store_true", help="smallest setting: the same code path end to end at tiny sizes "
                    "(N=25 of 60 train images, 60 eval images, both evenly spaced, 1 seed, 2 steps, imgsz 64, "
                    "16 synthetic images), Ray limited to 2 CPUs; numbers mean nothing")
    a = ap.parse_args()
    size = dict(SIZES["full" if a.full else "cpu"])
    if a.smoke:
        size.update(sizes=["25"], seeds=[0], steps=2, imgsz=64, batch=4, synthetic_ratio=1.0, gpus=0.0)
    for k in ("sizes", "seeds", "steps", "imgsz", "batch", "synthetic_ratio", "gpus"):
        if getattr(a, k) is not None:
            size[k] = getattr(a, k)
    arms = dict(x.split("=", 1) for x in a.arm)

    from common import machine  # benchmarks/ is on sys.path when run as a script

    from factory.ray_runtime import ensure_ray
    from factory.retrain.compare import paired
    from factory.retrain.launch import retrain
    from factory.spec.retrain import RetrainSettings

    t0 = time.time()
    a.work.mkdir(parents=True, exist_ok=True)
    real_train, real_eval, real_counts, real_train_set = real_sets(a.dataset, a.data, a.work, 60 if a.smoke else None)
    ensure_ray(num_cpus=2 if a.smoke else None)
    versions = {name: make_synthetic(name, src, a.work, real_eval, real_train_set, 16 if a.smoke else None) for name, src in arms.items()}
    rows, results = [], {}
    for n in size["sizes"]:
        real_runs: dict[str, dict] | None = None
        for k, (name, version) in enumerate(versions.items()):
            s = RetrainSettings(steps=size["steps"], imgsz=size["imgsz"], batch=size["batch"], seeds=size["seeds"],
                                real_limit=None if n == "all" else int(n), synthetic_ratio=size["synthetic_ratio"],
                                gpus=size["gpus"], workers=size["workers"], train_args=size["train_args"],
                                arms=["real", "mixed"] if k == 0 else ["mixed"])  # real only is the same for every arm
            t = time.time()
            c = retrain(version, real_train, real_eval, s)
            real_runs = real_runs or c["arms"]["real"]["seeds"]
            mixed = c["arms"]["mixed"]["seeds"]
            gains = [mixed[sd]["map50"] - real_runs[sd]["map50"] for sd in mixed]  # paired: same seed, same real images
            gain = {**paired(gains), "values": gains}
            results[f"{n}/{name}"] = {"comparison_run": c["run_id"], "version": version, "seconds": round(time.time() - t),
                                      "real": real_runs, "mixed": mixed, "gain": gain}
            if k == 0:
                rows.append((n, "real only", real_runs, None))
            rows.append((n, f"+ {name}", mixed, gain))
            print(f"N={n} {name}: done in {time.time() - t:.0f} s", flush=True)

    def ms(runs: dict, key: str) -> str:
        v = [r[key] for r in runs.values()]
        m = sum(v) / len(v)
        sd = (sum((x - m) ** 2 for x in v) / (len(v) - 1)) ** 0.5 if len(v) > 1 else 0.0
        return f"{m:.3f} ± {sd:.3f}"

    lines = ["| real N | arm | steps | images seen | train images | mAP50 | mAP50-95 | mAP50 gain vs real (mean [95% CI]) | gain per seed |",
             "|---|---|---|---|---|---|---|---|---|"]
    for n, arm, runs, g in rows:
        r0 = next(iter(runs.values()))
        gain = "" if g is None else (f"{g['mean']:+.3f} [{g['ci95'][0]:+.3f}, {g['ci95'][1]:+.3f}]" if g["ci95"] else f"{g['mean']:+.3f}")
        per_seed = "" if g is None else ", ".join(f"{v:+.3f}" for v in g["values"])
        lines.append(f"| {n} | {arm} | {r0['steps']} | {r0['images_seen']} | {r0['train_images']} | {ms(runs, 'map50')} | "
                     f"{ms(runs, 'map50_95')} | {gain} | {per_seed} |")
    summary = {"mode": "full" if a.full else "cpu", "dataset": a.dataset, "machine": machine(), "settings": size,
               "arms": arms, "real": real_counts, "results": results, "total_seconds": round(time.time() - t0)}
    a.out.write_text(json.dumps(summary, indent=2, default=str))
    print("\n" + "\n".join(lines))
    print(f"\n{a.dataset}: real train {real_counts['train']}, eval {real_counts['val']}; settings {size}")
    print(f"total {summary['total_seconds']} s; results {a.out}; work {a.work}\nmachine: {summary['machine']}")


if __name__ == "__main__":
    main()
