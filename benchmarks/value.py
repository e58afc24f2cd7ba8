"""Prove the value (issues 13, 25): does real + synthetic beat real only, at matched
optimizer steps, on held-out real images, when labelled real images are few?

For each real train size N (a seeded subset of the real train split in which
every class appears; `all` = the whole split) and each seed, the product's own
retrain path (`factory.retrain.launch.retrain`: one Ray Train run per arm and
seed, ultralytics inside) trains real only at the step budget B and at 2B (a row
whose real-only mean moves more than 0.02 mAP50 between them is "not converged"
and does not count), and every synthetic arm x ratio x protocol for B steps; all
are scored on the real eval split and paired per seed (same real images, same
steps). A synthetic arm is a spec file (made here with the factory's job,
`run_dataset`) or an existing published version URI.

Honest low data: a spec whose transplant source names the benchmarked real set
(`NAME@1`) is made once per (N, seed) from exactly the N labelled images that
`factory.retrain.data.real_subset` picks for that seed (published as
`NAME-n<N>-s<seed>@1` and named as the transplant source); its backgrounds are
defect-free images only (a `NAME@1` reference means the train split's images
without boxes; `{real}` in a reference is the published train set's YOLO tree,
e.g. `{real}/templates/train` for DeepPCB's defect-free templates). Every run is
then retrained with `seeds=[seed]`.

    python benchmarks/value.py --arm procedural=benchmarks/specs/value-procedural-pv.yaml
    python benchmarks/value.py --arm procedural=... --arm transplant=benchmarks/specs/value-transplant-pv.yaml
    python benchmarks/value.py --dataset magnetic_tile --arm transplant=specs/transplant-mt.yaml
    python benchmarks/value.py --dataset deeppcb --arm transplant=benchmarks/specs/value-transplant-pcb.yaml \
        --sizes 30 --ratios 0.5 1 2 --protocol mix pretrain_finetune --steps 840 --imgsz 320
    python benchmarks/value.py --full --arm ...      # GPU: all sizes incl. all, imgsz 416, converged
    python benchmarks/value.py --smoke --arm ... --work DIR --out FILE   # seconds: checks the script

Eval: pv_vision_crack's own `val` split; magnetic tile: a seeded 20% of every
folder (defect tiles and MT_Free), by file name; neu_det: its `val` split;
deeppcb: the boards of the held-out groups (whole boards, the adapter's split).
None feeds training, synthesis or calibration: N-subsets are drawn from the
train split only, and a spec's references must name train images only (checked).

Finished runs are kept under WORK/runs/ (keyed by data, arm, version and settings)
and reused, so a cut-short benchmark resumes and a larger one (more seeds, 2B)
trains only what is new.
"""

from __future__ import annotations

import argparse
import hashlib
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
    "cpu": dict(sizes=["25", "50", "100"], seeds=[0, 1, 2], steps=160, imgsz=128, batch=16, ratios=[4.0],
                gpus=0.0, workers=0, evals=5, train_args={}),
    # GPU: converged (a few thousand steps), every size, 5 seeds, four runs sharing one GPU
    "full": dict(sizes=["25", "50", "100", "200", "all"], seeds=[0, 1, 2, 3, 4], steps=4000, imgsz=416, batch=16,
                 ratios=[4.0], gpus=0.25, workers=2, evals=5, train_args={"plots": False}),
}
DATASETS = {  # --dataset -> (adapter kind, folder under --data)
    "pv_vision_crack": ("pv_vision_crack", "pv_vision_crack"),
    "magnetic_tile": ("magnetic_tile", "magnetic_tile"),
    "neu_det": ("yolo", "neu_det"),
    "deeppcb": ("deeppcb", "deeppcb"),
}
CONVERGED = 0.02  # max |real-only mean mAP50 at 2B - at B| for a row to count


def real_sets(dataset: str, data: Path, work: Path, limit: int | None = None):
    """The real train and eval splits as YOLO folders (train: train split; eval: held out),
    and the train split alone as a RealSet (a spec may name it as NAME@1: eval images can
    then never reach a generator); `limit` (--smoke): that many images of each split, evenly
    spaced through it (magnetic tile lists its folders one after another: every class appears)."""
    from factory.data.adapters import load_real
    from factory.data.realset import RealSet, write_yolo

    kind, folder = DATASETS[dataset]
    real = load_real(kind, data / folder)
    out, by_split = {}, {}
    for split in ("train", "val"):
        samples = [s for s in real.samples if s.split == split]
        if limit and len(samples) > limit:
            samples = [samples[i * len(samples) // limit] for i in range(limit)]
        by_split[split] = samples
        folder = work / f"real-{split}"
        listing = hashlib.sha256("\n".join(str(s.image_path) for s in samples).encode()).hexdigest()
        if not (folder / ".written").exists() or (folder / ".written").read_text() != listing:  # (a run beside may read it)
            write_yolo(RealSet(f"{dataset}-{split}", real.class_names, samples, real.source), str(folder))
            (folder / ".written").write_text(listing)
        out[split] = {"images": len(samples), "with_boxes": sum(1 for s in samples if s.boxes),
                      "boxes": sum(len(s.boxes) for s in samples)}
    train_only = RealSet(real.name, real.class_names, by_split["train"], real.source, real.settings)
    return str(work / "real-train"), str(work / "real-val"), {"classes": real.class_names, **out}, train_only


def registry_name(real_train) -> str:
    return real_train.name.replace("_", "-").lower()


def _check_references(spec, eval_dir: str) -> None:
    """A spec's reference images must not be eval images (evaluation hygiene)."""
    from factory.formats import read_data_yaml

    _, _, splits = read_data_yaml(Path(eval_dir))
    eval_names = {p.name.split("_", 1)[-1] for files in splits.values() for p in files}
    for ref in spec.domain.references:
        if "/val/" in ref or Path(ref).name in eval_names:
            raise SystemExit(f"{ref}: a domain reference is an eval image; name train images only")


def real_subset_samples(real_train_dir: str, real_eval_dir: str, real_train, n: int | None, seed: int) -> list:
    """The RealSamples of the N labelled images the retrain path trains on for this seed:
    `factory.retrain.data.select` (hence `real_subset`) on the same YOLO folders, with the
    same settings, mapped back by file name. None / N >= the split: every train sample."""
    from factory.retrain.data import select
    from factory.spec.retrain import RetrainSettings

    if n is None or n >= len(real_train.samples):
        return list(real_train.samples)
    sel = select(Path(real_train_dir), Path(real_eval_dir), None, RetrainSettings(real_limit=n), seed)
    by_name = {s.image_path.name: s for s in real_train.samples}
    return [by_name[img.name] for img, _ in sel.real]


def uses_real_source(source: str, real_name: str) -> bool:
    """Does this spec make its defects from the benchmarked real set (a transplant source `NAME@1`)?"""
    if not source.endswith((".yaml", ".yml")):
        return False
    from factory.spec.load import load_spec

    d = load_spec(source).to_yaml_dict()
    return any(g.get("kind") == "transplant" and str((g.get("params") or {}).get("source", "")) == f"{real_name}@1"
               for g in d.get("generators", []))


def make_synthetic(name: str, source: str, work: Path, eval_dir: str, real_train, count: int | None = None,
                   subset: list | None = None, tag: str = "", fit_boxes: bool = False) -> str:
    """A spec file -> publish it once with the factory's job; a URI -> use it as it is.
    A spec that names the benchmarked real set as `NAME@1` (transplant: its source and
    references) gets its train split published into the arm's registry first, as
    `factory data import` would. With `subset` (the N labelled images of one seed), that
    subset is published as `NAME-<tag>@1` and becomes the transplant source, and the
    version is named `<spec name>-<tag>`: its defects come from those images only, its
    backgrounds from defect-free images only (references unchanged)."""
    if not source.endswith((".yaml", ".yml")):
        return source
    from factory.data.realset import RealSet, publish_real
    from factory.pipeline import RunError, RunOptions, run_dataset
    from factory.spec import spec_from_dict
    from factory.spec.load import load_spec
    from factory.storage.registry import Registry

    root = str((work / "registry" / name).resolve())
    reg = Registry(root)
    real_name = registry_name(real_train)
    if f"{real_name}@1" in Path(source).read_text() and not reg.is_published(real_name, 1):
        publish_real(real_train, root, real_name, 1)
    d = load_spec(source).to_yaml_dict()
    d["output"] = {**d["output"], "uri": f"file://{root}"}  # NAME@VERSION references resolve there
    if "parquet" not in d["output"].get("formats", ["parquet"]):  # keep each sample's provenance (work_item)
        d["output"]["formats"] = ["parquet", *d["output"]["formats"]]
    if count is not None:  # --smoke
        d["count"] = count
    tree = reg.version_uri(real_name, 1) + "/yolo" if reg.is_published(real_name, 1) else ""
    fill = lambda v: v.replace("{real}", tree) if isinstance(v, str) else v  # noqa: E731
    d["domain"] = {**d.get("domain", {}), "references": [fill(r) for r in (d.get("domain") or {}).get("references", [])]}
    for g in d.get("generators", []):
        params = g.get("params") or {}
        if isinstance(params.get("references"), (str, list)):
            params["references"] = [fill(r) for r in ([params["references"]] if isinstance(params["references"], str)
                                                      else params["references"])]
        if subset is not None and g.get("kind") == "transplant" and params.get("source") == f"{real_name}@1":
            sub_name = f"{real_name}-{tag}"
            if not reg.is_published(sub_name, 1):
                publish_real(RealSet(sub_name, real_train.class_names, list(subset), real_train.source, real_train.settings),
                             root, sub_name, 1)
            params["source"] = f"{sub_name}@1"
    if fit_boxes:  # box sizes as the labelled images this arm may use (a low-data arm: its N images only)
        from factory.data.box_stats import fitted_boxes

        fit = fitted_boxes(subset if subset is not None else real_train.samples)
        for defect in d["defects"]:
            if defect["class"] in fit:
                defect["boxes"] = {**defect["boxes"], "size": fit[defect["class"]]["size"]}
    if tag:
        d["name"] = f"{d['name']}-{tag}"
    spec = spec_from_dict(d)
    _check_references(spec, eval_dir)
    if spec.version and reg.is_published(spec.name, spec.version):  # made by an earlier run of this benchmark
        from factory.generators.checks import check_spec

        made = reg.manifest(spec.name, spec.version, files=False).spec_hash
        if made != check_spec(spec).spec_hash():  # (hashed as the job hashes it: references qualified)
            raise SystemExit(f"{reg.version_uri(spec.name, spec.version)} was made from another spec than {source} "
                             f"(the spec changed since): use a new --work, or delete {root}/{spec.name}")
        return reg.version_uri(spec.name, spec.version)
    t = time.time()
    for attempt in range(3):  # a set of few sources can run out of non-duplicates in one run's 10 rounds
        try:
            r = run_dataset(spec, RunOptions(out=root, report=False, resume=attempt > 0))
            break
        except RunError as e:
            if attempt == 2:
                raise
            print(f"synthetic arm {name}: {e}; resuming (10 more rounds)", flush=True)
    print(f"synthetic arm {name}{' ' + tag if tag else ''}: {r.uri} ({spec.count} images, {time.time() - t:.0f} s)", flush=True)
    return r.uri


def _mean(v: list[float]) -> float:
    return sum(v) / len(v) if v else float("nan")


def _ms(v: list[float]) -> str:
    m = _mean(v)
    sd = (sum((x - m) ** 2 for x in v) / (len(v) - 1)) ** 0.5 if len(v) > 1 else 0.0
    return f"{m:.3f} ± {sd:.3f}"


def _ci(g: dict) -> str:
    return f"{g['mean']:+.3f} [{g['ci95'][0]:+.3f}, {g['ci95'][1]:+.3f}]" if g.get("ci95") else f"{g['mean']:+.3f} (one seed)"


def per_class(runs: list[dict]) -> dict[str, float | None]:
    names = list(runs[0]["per_class_ap50"]) if runs else []
    out = {}
    for n in names:
        v = [r["per_class_ap50"][n] for r in runs if r["per_class_ap50"].get(n) is not None]
        out[n] = _mean(v) if v else None
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arm", action="append", required=True, help="NAME=SPEC.yaml or NAME=VERSION_URI (repeatable)")
    ap.add_argument("--dataset", default="pv_vision_crack", choices=list(DATASETS))
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--full", action="store_true", help="GPU size: every N, imgsz 416, converged, 5 seeds")
    ap.add_argument("--sizes", nargs="+", help="real train sizes N (or 'all')")
    ap.add_argument("--seeds", type=int, nargs="+")
    ap.add_argument("--steps", type=int, help="optimizer steps per run: the budget B (real only also runs 2B)")
    ap.add_argument("--imgsz", type=int)
    ap.add_argument("--batch", type=int)
    ap.add_argument("--synthetic-ratio", type=float, help="one synthetic ratio (same as --ratios R)")
    ap.add_argument("--ratios", type=float, nargs="+", help="synthetic images per real train image, one mixed run each")
    ap.add_argument("--protocol", nargs="+", choices=["mix", "pretrain_finetune"], default=["mix"],
                    help="mixed arm: mix (together) and/or pretrain_finetune (synthetic first, then real)")
    ap.add_argument("--finetune-fraction", type=float, default=0.5, help="pretrain_finetune: share of steps on real")
    ap.add_argument("--skip-2b", action="store_true", help="leave out real only at 2B (the convergence check) for "
                    "now: rows read 'convergence not checked'; a later run with the same --work reuses every finished "
                    "run and trains only 2B")
    ap.add_argument("--fit-boxes", nargs="+", metavar="ARM", help="these arms' box sizes as the labelled images "
                    "the arm may use (with a real limit: the N of the seed; factory.data.box_stats)")
    ap.add_argument("--only", choices=["real", "mixed"], help="train only the real-only or only the mixed runs (to split one "
                    "benchmark over processes sharing --work); the others come from --work's cache when finished, else "
                    "are left out of the table")
    ap.add_argument("--evals", type=int, help="validations while training per run (plus the final score)")
    ap.add_argument("--augment", nargs="+", default=[], metavar="KEY=VALUE",
                    help="ultralytics augmentation settings for every arm (e.g. flipud=0.5): is a synthetic arm's gain "
                         "more than what the same flips and turns of the real images would give?")
    ap.add_argument("--gpus", type=float)
    ap.add_argument("--cpus", type=int, help="CPUs of this process's own Ray cluster (default: all): two benchmarks "
                    "side by side with --cpus 1 each train one thread each instead of fighting over both cores")
    ap.add_argument("--work", type=Path, default=Path("/tmp/factory-value"))
    ap.add_argument("--out", type=Path, default=Path("benchmark-value.json"))
    ap.add_argument("--smoke", action="store_true", help="smallest setting: the same code path end to end at tiny sizes "
                    "(N=25 of 60 train images, 60 eval images, both evenly spaced, 1 seed, 2 steps (4 for 2B), imgsz 64, "
                    "16 synthetic images, 1 evaluation), Ray limited to 2 CPUs; numbers mean nothing")
    a = ap.parse_args()
    size = dict(SIZES["full" if a.full else "cpu"])
    if a.smoke:
        size.update(sizes=["25"], seeds=[0], steps=2, imgsz=64, batch=4, ratios=[1.0], gpus=0.0, evals=1)
    for k in ("sizes", "seeds", "steps", "imgsz", "batch", "ratios", "gpus", "evals"):
        if getattr(a, k) is not None:
            size[k] = getattr(a, k)
    if a.synthetic_ratio is not None and a.ratios is None:
        size["ratios"] = [a.synthetic_ratio]
    size.update(protocols=a.protocol, finetune_fraction=a.finetune_fraction)
    if a.augment:
        size["train_args"] = {**size["train_args"], **{k: float(v) for k, v in (x.split("=", 1) for x in a.augment)}}
    arms = dict(x.split("=", 1) for x in a.arm)

    from common import machine  # benchmarks/ is on sys.path when run as a script

    from factory.ray_runtime import ensure_ray
    from factory.retrain.compare import paired
    from factory.retrain.launch import retrain
    from factory.spec.retrain import RetrainSettings

    t0 = time.time()
    a.work.mkdir(parents=True, exist_ok=True)
    real_train, real_eval, real_counts, real_train_set = real_sets(a.dataset, a.data, a.work, 60 if a.smoke else None)
    ensure_ray(num_cpus=a.cpus or (2 if a.smoke else None))
    real_name = registry_name(real_train_set)
    count = 16 if a.smoke else None
    per_subset = {name: uses_real_source(src, real_name) for name, src in arms.items()}
    fit = set(a.fit_boxes or ())
    if fit - set(arms):
        raise SystemExit(f"--fit-boxes names no arm: {sorted(fit - set(arms))}")
    shared = {name: make_synthetic(name, src, a.work, real_eval, real_train_set, count, fit_boxes=name in fit)
              for name, src in arms.items() if not per_subset[name]}
    B = size["steps"]

    def settings(n: str, seed: int, **kw) -> RetrainSettings:
        base = dict(steps=B, imgsz=size["imgsz"], batch=size["batch"], seeds=[seed],
                    real_limit=None if n == "all" else int(n), synthetic_ratio=size["ratios"][0], gpus=size["gpus"],
                    workers=size["workers"], evals=size["evals"], train_args=size["train_args"],
                    finetune_fraction=size["finetune_fraction"])
        return RetrainSettings(**{**base, **kw})

    def run(version: str, s: RetrainSettings, arm: str) -> dict | None:
        """One retrain run's result, kept under WORK/runs/ so that a cut-short or extended
        benchmark (more seeds, ratios, or 2B) reuses finished runs with identical inputs.
        None for a run that `--only` leaves to another process and that has not finished."""
        key = {"dataset": a.dataset, "real_train": real_train, "real_eval": real_eval, "arm": arm,
               "version": None if arm == "real" else version, "settings": s.model_dump(mode="json")}
        cached = a.work / "runs" / (hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20] + ".json")
        if cached.exists():
            print(f"reusing {cached}", flush=True)
            return json.loads(cached.read_text())["result"]
        if a.only and a.only != ("real" if arm == "real" else "mixed"):
            print(f"left to another process (--only {a.only}): {arm} run {cached.name}", flush=True)
            return None
        t = time.time()
        c = retrain(version, real_train, real_eval, s)
        r = c["arms"][arm]["seeds"][str(s.seeds[0])]
        r = {**r, "wall_seconds": round(time.time() - t, 1), "run_id": c["run_id"], "version": version}
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_text(json.dumps({"key": key, "result": r}, indent=1, default=str))
        return r

    results: dict = {}
    for n in size["sizes"]:
        real_runs: dict[str, dict[int, dict]] = {"B": {}, "2B": {}}
        mixed_runs: dict[tuple, dict[int, dict]] = {}
        for seed in size["seeds"]:
            subset = real_subset_samples(real_train, real_eval, real_train_set, None if n == "all" else int(n), seed)
            versions = {name: shared[name] if name in shared else
                        make_synthetic(name, arms[name], a.work, real_eval, real_train_set, count, subset,
                                       f"n{n}-s{seed}" if n != "all" else "all", fit_boxes=name in fit)
                        for name in arms}
            first = next(iter(versions.values()))

            def real_only(label: str, steps: int) -> None:  # the same for every arm, ratio and protocol
                # (which a real-only run never reads: fixed here, so that its cached run is found by them all)
                r = run(first, settings(n, seed, steps=steps, arms=["real"], synthetic_ratio=1.0, schedule="mix"), "real")
                if r is None:
                    return
                real_runs[label][seed] = r
                print(f"N={n} seed {seed} real only at {label} ({steps} steps): mAP50 {r['map50']:.3f}, "
                      f"{r['wall_seconds']:.0f} s", flush=True)

            real_only("B", B)
            for name, version in versions.items():
                for ratio in size["ratios"]:
                    for protocol in size["protocols"]:
                        s = settings(n, seed, arms=["mixed"], synthetic_ratio=ratio, schedule=protocol)
                        r = run(version, s, "mixed")
                        if r is None:
                            continue
                        mixed_runs.setdefault((name, ratio, protocol), {})[seed] = r
                        print(f"N={n} seed {seed} + {name} ratio {ratio:g} {protocol}: mAP50 {r['map50']:.3f}, "
                              f"{r['wall_seconds']:.0f} s", flush=True)
            if not a.skip_2b:
                real_only("2B", 2 * B)  # last: the paired comparison at B is in hand even if this is cut short
        mb, m2b = _mean([r["map50"] for r in real_runs["B"].values()]), _mean([r["map50"] for r in real_runs["2B"].values()])
        converged = abs(m2b - mb) <= CONVERGED  # (False without 2B: nan)
        row = {"converged": converged, "real_B_mean": mb, "real_2B_mean": m2b, "real": real_runs, "arms": {}}
        for (name, ratio, protocol), runs in mixed_runs.items():
            runs = {sd: r for sd, r in runs.items() if sd in real_runs["B"]}  # (a real run not in hand yet: --only)
            if not runs:
                continue
            gains = [runs[sd]["map50"] - real_runs["B"][sd]["map50"] for sd in runs]  # paired: same seed, real images, steps
            row["arms"][f"{name} x{ratio:g} {protocol}"] = {
                "arm": name, "ratio": ratio, "protocol": protocol, "runs": runs,
                "gain": {**paired(gains), "values": gains, "counts": converged}}
        results[n] = row

    # --- the answer first: converged or not, the paired gain with its 95% interval, per-class AP50 side by side
    lines = ["## answer", "", "| real N | converged (real only, B vs 2B) | arm | ratio | protocol | "
             "paired mAP50 gain vs real (mean [95% CI]) | counts |", "|---|---|---|---|---|---|---|"]
    for n, row in results.items():
        conv = (f"yes ({row['real_B_mean']:.3f} -> {row['real_2B_mean']:.3f})" if row["converged"]
                else "convergence not checked (--skip-2b)" if not row["real"]["2B"]
                else f"NOT CONVERGED ({row['real_B_mean']:.3f} -> {row['real_2B_mean']:.3f})")
        for x in row["arms"].values():
            lines.append(f"| {n} | {conv} | + {x['arm']} | {x['ratio']:g} | {x['protocol']} | {_ci(x['gain'])} | "
                         f"{'yes' if row['converged'] else 'no'} |")
    for n, row in results.items():
        cols = {"real only": per_class(list(row["real"]["B"].values()))}
        cols.update({f"+ {k}": per_class(list(x["runs"].values())) for k, x in row["arms"].items()})
        names = list(next(iter(cols.values())))
        lines += ["", f"per-class AP50 at N={n} (mean over seeds)", "",
                  "| class | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
        lines += [f"| {c} | " + " | ".join("n/a" if v[c] is None else f"{v[c]:.3f}" for v in cols.values()) + " |"
                  for c in names]
    lines += ["", "## runs", "",
              "| real N | arm | ratio | protocol | steps | images seen | train images | mAP50 | mAP50-95 | "
              "mAP50 gain vs real (mean [95% CI]) | gain per seed | train s per run | val s per run | wall s per run |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for n, row in results.items():
        table_rows = [("real only | | B", row["real"]["B"], None), ("real only | | 2B", row["real"]["2B"], None)]
        table_rows += [(f"+ {x['arm']} | {x['ratio']:g} | {x['protocol']}", x["runs"], x["gain"]) for x in row["arms"].values()]
        for label, runs, g in table_rows:
            rs = list(runs.values())
            if not rs:  # 2B left out
                continue
            r0 = rs[0]
            gain = "" if g is None else _ci(g) + ("" if row["converged"] else " (not converged: does not count)"
                                                  if row["real"]["2B"] else " (convergence not checked)")
            per_seed = "" if g is None else ", ".join(f"{v:+.3f}" for v in g["values"])
            lines.append(f"| {n} | {label} | {r0['steps']} | {r0['images_seen']} | {r0['train_images']} | "
                         f"{_ms([r['map50'] for r in rs])} | {_ms([r['map50_95'] for r in rs])} | {gain} | {per_seed} | "
                         f"{_mean([r['train_seconds'] or 0 for r in rs]):.0f} | {_mean([r['val_seconds'] or 0 for r in rs]):.0f} | "
                         f"{_mean([r['wall_seconds'] for r in rs]):.0f} |")
    summary = {"mode": "full" if a.full else "cpu", "dataset": a.dataset, "machine": machine(), "settings": size,
               "arms": arms, "per_subset_arms": per_subset, "real": real_counts, "converged_tolerance": CONVERGED,
               "results": results, "total_seconds": round(time.time() - t0)}
    a.out.write_text(json.dumps(summary, indent=2, default=str))
    print("\n" + "\n".join(lines))
    print(f"\n{a.dataset}: real train {real_counts['train']}, eval {real_counts['val']}; settings {size}")
    print(f"total {summary['total_seconds']} s; results {a.out}; work {a.work}\nmachine: {summary['machine']}")


if __name__ == "__main__":
    main()
