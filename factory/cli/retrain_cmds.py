"""`factory retrain` (detector retraining per arm and seed at matched optimizer steps, judged on
real eval data; or `--watch ROOT` to trigger it for new versions) and
`factory data import` (real data sets -> registry datasets / YOLO folders)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from factory.cli.app import app, data_app
from factory.cli.common import EXIT_INVALID, console, fail, friendly_errors, parse_frame, plural
from factory.spec.retrain import RetrainSettings

if TYPE_CHECKING:
    from factory.retrain.compare import Comparison


def _default(field: str) -> str:
    """What `--help` shows for an option left unset: the setting's own default (the
    options are None so that --config and a spec's `retrain:` section can fill them)."""
    v = RetrainSettings.model_fields[field].get_default(call_default_factory=True)
    return ",".join(map(str, v)) if isinstance(v, list) else str(v)

DEFAULT_ROOT = "file://./datasets"


def _settings(config: str | None, **overrides) -> RetrainSettings:
    from factory.retrain.config import settings_from

    base = json.loads(config) if config else {}
    if not isinstance(base, dict):
        fail("--config must be a JSON object", EXIT_INVALID)
    base.update({k: v for k, v in overrides.items() if v is not None})
    return settings_from(base)


def _class_map(items: list[str] | None) -> dict[str, str | None] | None:
    if not items:
        return None
    out: dict[str, str | None] = {}
    for item in items:
        syn, sep, real = item.partition("=")
        if not sep or not syn:
            fail(f"--class-map takes SYNTHETIC=REAL (or SYNTHETIC= to drop it), got {item!r}", EXIT_INVALID)
        out[syn] = real or None
    return out


def _list(items: list[str] | None, what: str, cast=str) -> list | None:
    """`--seeds 0,1,2` or `--seeds 0 --seeds 1` -> [0, 1, 2]."""
    if not items:
        return None
    try:
        return [cast(x) for item in items for x in item.replace(",", " ").split()]
    except ValueError:
        fail(f"{what}: expected a comma-separated list, got {items}", EXIT_INVALID)


@app.command("retrain")
def retrain_cmd(
    target: Optional[str] = typer.Argument(None, help="NAME@VERSION, ROOT/NAME@VERSION, or a version / YOLO folder URI"),
    real_train: Optional[str] = typer.Option(None, "--real-train", help="real train set: YOLO folder URI or NAME@VERSION (its train split)"),
    real_eval: Optional[str] = typer.Option(None, "--real-eval", help="held-out real eval set: YOLO folder URI or NAME@VERSION (its val split)"),
    model: Optional[str] = typer.Option(None, "--model", show_default=_default("model"), help="yolov8n.yaml (from scratch) or a local .pt"),
    budget: Optional[str] = typer.Option(None, "--budget", show_default=_default("budget"), help="steps: every arm the same optimizer steps; epochs: the same epochs"),
    steps: Optional[int] = typer.Option(None, "--steps", help="optimizer steps per arm (default: the mixed arm's steps at --epochs)"),
    epochs: Optional[int] = typer.Option(None, "--epochs", show_default=_default("epochs")),
    imgsz: Optional[int] = typer.Option(None, "--imgsz", show_default=_default("imgsz")),
    batch: Optional[int] = typer.Option(None, "--batch", show_default=_default("batch")),
    seeds: Optional[list[str]] = typer.Option(None, "--seeds", show_default=_default("seeds"), help="seeds, e.g. 0,1,2: every arm per seed; mean, std and paired gain"),
    arms: Optional[str] = typer.Option(None, "--arms", show_default=_default("arms"), help="real,mixed or real,mixed,synthetic"),
    real_limit: Optional[int] = typer.Option(None, "--real-limit", show_default="all", help="a seeded subset of N real train images, every class in it"),
    synthetic_ratio: Optional[float] = typer.Option(None, "--synthetic-ratio", show_default=_default("synthetic_ratio"), help="synthetic images per real train image"),
    schedule: Optional[str] = typer.Option(None, "--schedule", show_default=_default("schedule"), help="mixed arm: mix (real + synthetic together) "
                                           "or pretrain_finetune (synthetic only, then real only from those weights)"),
    finetune_fraction: Optional[float] = typer.Option(None, "--finetune-fraction", show_default=_default("finetune_fraction"), help="pretrain_finetune: share of the "
                                                      "steps spent fine-tuning on real images"),
    evals: Optional[int] = typer.Option(None, "--evals", show_default=_default("evals"), help="validations while training, evenly spaced in steps, plus "
                                        "the final score (0: only the final score)"),
    class_map: Optional[list[str]] = typer.Option(None, "--class-map", help="SYNTHETIC=REAL, repeatable; SYNTHETIC= drops a class"),
    gpus: Optional[float] = typer.Option(None, "--gpus", show_default=_default("gpus"), help="GPU share per run (0.5 = two runs share one GPU)"),
    parallel: Optional[int] = typer.Option(None, "--parallel", help="runs side by side at most (default: as many as fit)"),
    workers: Optional[int] = typer.Option(None, "--workers", show_default=_default("workers"), help="dataloader workers"),
    min_gain: Optional[float] = typer.Option(None, "--min-gain", help="flag the run when the mean mAP50 gain is below this"),
    config: Optional[str] = typer.Option(None, "--config", help="settings as a JSON object (options given override it)"),
    root: str = typer.Option(DEFAULT_ROOT, "--root", help="registry root for NAME@VERSION"),
    run_id: Optional[str] = typer.Option(None, "--run-id", help="(set by the trigger) the run id to write under"),
    force: bool = typer.Option(False, "--force", help="train again even if this run already finished"),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster (training) or job server (--watch)"),
    watch: Optional[str] = typer.Option(None, "--watch", help="ROOT: submit a retraining job for every newly published version"),
    interval: float = typer.Option(30.0, "--interval", help="seconds between --watch passes"),
    once: bool = typer.Option(False, "--once", help="with --watch: one pass, then exit"),
) -> None:
    """Retrain the detector per arm (real only, real + synthetic, synthetic only) and seed at a matched
    optimizer-step budget; report every arm and the paired gain on the real eval set."""
    with friendly_errors():
        from factory.retrain.config import RetrainError
        from factory.retrain.trigger import RetrainTriggerError
        from factory.storage.uri import StorageError

        if not real_train or not real_eval:
            fail("--real-train and --real-eval are required", EXIT_INVALID)
        s = _checked_settings(config, model=model, budget=budget, steps=steps, epochs=epochs, imgsz=imgsz, batch=batch,
                              seeds=_list(seeds, "--seeds", int), arms=_list(arms and [arms], "--arms"),
                              real_limit=real_limit, synthetic_ratio=synthetic_ratio, class_map=_class_map(class_map),
                              gpus=gpus, parallel=parallel, workers=workers, min_gain=min_gain, schedule=schedule,
                              finetune_fraction=finetune_fraction, evals=evals)
        try:
            if watch:
                if target:
                    fail("give either a version or --watch ROOT, not both", EXIT_INVALID)
                _watch(watch, real_train, real_eval, s, address, interval, once)
                return
            if not target:
                fail("name a version (NAME@VERSION or a URI), or use --watch ROOT", EXIT_INVALID)
            c = _retrain(target, root, real_train, real_eval, s, run_id, force, address)
        except (RetrainError, RetrainTriggerError, StorageError) as e:
            fail(str(e))
        _print_comparison(c)


def _checked_settings(config: str | None, **overrides) -> RetrainSettings:
    """`_settings`, a bad value exiting with every field's problem on one line."""
    from pydantic import ValidationError

    try:
        return _settings(config, **overrides)
    except ValidationError as e:
        fail("; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()), EXIT_INVALID)


def _retrain(target: str, root: str, real_train: str, real_eval: str, s: RetrainSettings, run_id: str | None,
             force: bool, address: str | None) -> Comparison:
    """Resolve the version and the real sets (NAME@VERSION through the registry), say what trains, train."""
    from factory.retrain.config import resolve
    from factory.retrain.launch import retrain

    version_uri = resolve(target, root)
    rt, re_ = resolve(real_train, root), resolve(real_eval, root)
    console.print(f"retraining on [bold]{version_uri}[/] (real train {rt}, real eval {re_})", highlight=False)
    return retrain(version_uri, rt, re_, s, run_id=run_id, force=force, address=address)


def _print_comparison(c: Comparison) -> None:
    from rich.table import Table

    from factory.retrain.config import run_uri
    from factory.storage.uri import join

    if c.get("skipped"):
        console.print(f"run {c['run_id']} already finished: not training again (use --force to retrain)")
    # the answer first: converged or not, the paired gain with its interval, per-class AP50 side by side
    conv = c.get("convergence") or {}
    console.print(f"converged: {'unknown' if conv.get('converged') is None else 'yes' if conv['converged'] else 'NO'}"
                  f" ({conv.get('note', 'not recorded')})", highlight=False)
    main = c["gains"].get("mixed_vs_real", {}).get("map50")
    if main:
        ci = f"95% interval [{main['ci95'][0]:+.4f}, {main['ci95'][1]:+.4f}]" if main["ci95"] else "one seed: no interval"
        console.print(f"paired mAP50 gain: {main['mean']:+.4f} ({ci}); protocol {c.get('protocol', 'mix')}", highlight=False)
    pc = Table(title="per-class AP50 (mean over seeds)")
    pc.add_column("class")
    for a in c["arms"].values():
        pc.add_column(a["label"], justify="right")
    for n in next(iter(c["arms"].values()))["summary"]["per_class_ap50"]:
        pc.add_row(n, *[f"{v['mean']:.4f}" if (v := a["summary"]["per_class_ap50"][n]) else "n/a" for a in c["arms"].values()])
    console.print(pc)
    t = Table(title=f"retrain {c['run_id']}: real eval set, mean over seeds {c['seeds']}")
    for col in ("arm", "steps", "epochs", "images seen", "train s", "val s", "mAP50", "mAP50-95", "precision", "recall"):
        t.add_column(col, justify="left" if col == "arm" else "right")
    for a in c["arms"].values():
        sm = a["summary"]
        cells = [f"{sm[k]['mean']:.4f}" + (f" ± {sm[k]['std']:.4f}" if sm[k]["std"] is not None else "")
                 for k in ("map50", "map50_95", "precision", "recall")]
        secs = [f"{sm[k]['mean']:.0f}" if sm.get(k) else "" for k in ("train_seconds", "val_seconds")]
        t.add_row(a["label"], f"{sm['steps']['mean']:.0f}", f"{sm['epochs']['mean']:.1f}", f"{sm['images_seen']['mean']:.0f}",
                  *secs, *cells)
    console.print(t)
    console.print(c["budget_note"], highlight=False)
    for name, g in c["gains"].items():
        m = g["map50"]
        ci = f"95% interval [{m['ci95'][0]:+.4f}, {m['ci95'][1]:+.4f}]" if m["ci95"] else "one seed: no interval"
        per_seed = ", ".join(f"seed {k} {v:+.4f}" for k, v in m["per_seed"].items())
        console.print(f"{name.replace('_vs_', ' vs ')}: mAP50 gain {m['mean']:+.4f} ({ci}; {per_seed})", highlight=False)
    console.print(f"verdict: the synthetic data {c['verdict']}" + (" [red](flagged: below min_gain)[/]" if c.get("flagged") else ""))
    out = run_uri(c["version"], c["run_id"])
    console.print(f"report: {join(out, 'report.html')}\ncomparison: {join(out, 'comparison.json')}", highlight=False)


def _watch(root: str, real_train: str, real_eval: str, s, address: str | None, interval: float, once: bool) -> None:
    from factory.retrain.trigger import watch_once

    console.print(f"watching {root} for published versions (every {interval:g} s)", highlight=False)
    while True:
        for ev in watch_once(root, real_train, real_eval, s, address=address):
            if ev["submitted"]:
                console.print(f"{ev['version']}: submitted retraining job {ev['job_id']} (run {ev['run_id']})", highlight=False)
        if once:
            return
        time.sleep(interval)


@data_app.command("import")
def import_cmd(
    kind: str = typer.Argument(..., help="pv_vision_crack | magnetic_tile | crackforest | deeppcb | yolo (a YOLO-layout set such as neu_det; "
                      "with templates/ beside images/, each image's defect-free twin)"),
    source: Path = typer.Argument(..., help="the data set's folder"),
    name: Optional[str] = typer.Option(None, "--name", help="registry dataset name (default: from the kind)"),
    root: str = typer.Option(DEFAULT_ROOT, "--root", help="registry root to publish into"),
    version: Optional[int] = typer.Option(None, "--version", help="version to publish (default: the next free one)"),
    out: Optional[str] = typer.Option(None, "--out", help="write a plain YOLO folder here instead of a registry dataset"),
    min_area: Optional[int] = typer.Option(None, "--min-area", help="smallest connected component (pixels) that becomes a box"),
    merge_gap: Optional[int] = typer.Option(None, "--merge-gap", help="bridge gaps up to this many pixels before labeling"),
    val_fraction: Optional[float] = typer.Option(None, "--val-fraction", help="magnetic_tile: share of images in the val split"),
    seed: Optional[int] = typer.Option(None, "--seed", help="magnetic_tile: split seed"),
    frame: Optional[str] = typer.Option(None, "--frame", help="WIDTHxHEIGHT of the spec's images: the printed box "
                                        "distributions as images framed to it show the boxes (centre-cropped to its "
                                        "aspect; matters where the set's images have other aspects)"),
) -> None:
    """Convert a real data set (masks -> boxes by connected components) into one YOLO format."""
    with friendly_errors():
        from rich.table import Table

        from factory.data.adapters import load_real
        from factory.data.box_stats import defects_yaml, fitted_boxes
        from factory.data.realset import publish_real, write_yolo

        size = parse_frame(frame)
        opts = {k: v for k, v in dict(min_area=min_area, merge_gap=merge_gap, val_fraction=val_fraction, seed=seed).items()
                if v is not None}
        if kind in ("yolo", "deeppcb") and {"val_fraction", "seed", "merge_gap"} & set(opts):
            fail(f"{kind} keeps its own split and boxes; {sorted(opts)} do not apply", EXIT_INVALID)
        try:
            real = load_real(kind, source, **opts)
        except TypeError as e:
            fail(f"{kind}: {e}", EXIT_INVALID)
        if out:
            write_yolo(real, out)
            where = out
        else:
            where = publish_real(real, root, name or real.name.replace("_", "-").lower(), version)
        t = Table(title=f"{kind}: {plural(len(real.samples), 'image')}")
        t.add_column("class")
        t.add_column("boxes", justify="right")
        for c, n in real.class_counts().items():
            t.add_row(c, str(n))
        console.print(t)
        console.print(f"splits: {real.splits()}\nwritten: {where}", highlight=False)
        fitted = fitted_boxes([s for s in real.samples if s.split == "train"] or real.samples, order=real.class_names,
                              frame=size)
        if fitted:  # planned boxes larger than the line's are a cue at the defects (BENCHMARKS.md, Realism)
            at = f" in {size[0]}x{size[1]} images" if size else ""
            console.print(f"box distributions of its train split{at}, for a spec (paste as `defects:`):", highlight=False)
            console.print(defects_yaml(fitted), highlight=False, markup=False, soft_wrap=True)
