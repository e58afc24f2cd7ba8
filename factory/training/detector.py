"""Detector retraining: does the synthetic data make a detector better on real images?

Two arms with identical settings and seed: `real_only` (real train images) and
`real_plus_synthetic` (the same real images + a published synthetic version,
classes mapped onto the real set's names, mixed at a ratio). Each arm is one
Ray Train `TorchTrainer` run whose single worker runs ultralytics' own trainer
(ultralytics has no Ray Train integration; on a worker with several GPUs it
launches its own DDP). Both arms are judged on the same held-out real eval set
with the final weights (`last.pt`: nothing is selected on the eval set).

Everything lands next to the version, in `<version>/retrain/<run-id>/`:
`<arm>/weights/`, `<arm>/train/` and `<arm>/eval/` (ultralytics' own plots),
`<arm>/metrics.json`, then `comparison.json` and `report.html` last. The run id is
a hash of the inputs and settings, so the same trigger never trains twice: a run
whose `comparison.json` exists is returned as it is.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from factory.ray_runtime import JobServerError, ensure_ray, job_client

ARMS = ("real_only", "real_plus_synthetic")
OFFLINE_ENV = {
    "YOLO_OFFLINE": "1",
    "YOLO_AUTOINSTALL": "0",
    "HF_HUB_OFFLINE": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "AWS_EC2_METADATA_DISABLED": "true",
}
# Ray Train's torch setup exports these; ultralytics reads them as "I am a DDP child"
# and would never launch its own DDP for a multi-GPU worker.
_DDP_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT")


_GUARDS: list[list[str]] = []


def _is_local_host(host: Any) -> bool:
    import ipaddress
    import socket

    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    host = str(host)
    if host in ("localhost", "", socket.gethostname()):
        return True
    try:
        ip = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    if ip.is_loopback or ip.is_unspecified:
        return True
    with contextlib.suppress(Exception):  # this machine's own addresses (a Ray node talks to itself on them)
        import ray

        if ray.is_initialized() and host == ray.util.get_node_ip_address():
            return True
    return False


def _audit(event: str, args: tuple) -> None:
    if not _GUARDS:
        return
    if event == "socket.connect":
        addr = args[1]
        if isinstance(addr, tuple) and addr and not _is_local_host(addr[0]):
            for g in _GUARDS:
                g.append(f"connect {addr[0]}:{addr[1] if len(addr) > 1 else ''}")
    elif event == "socket.getaddrinfo":
        if args and args[0] is not None and not _is_local_host(args[0]):
            for g in _GUARDS:
                g.append(f"resolve {args[0]!r}")


@contextlib.contextmanager
def network_attempts():
    """Record every attempt (DNS lookup or connect) to reach beyond this machine
    while the block runs. Libraries swallow their own failed downloads, so the
    record, not an exception, is what proves that nothing tried."""
    import sys

    if not getattr(sys, "_factory_net_audit", False):  # audit hooks cannot be removed: install once
        sys.addaudithook(_audit)
        sys._factory_net_audit = True
    attempts: list[str] = []
    _GUARDS.append(attempts)
    try:
        yield attempts
    finally:
        _GUARDS.remove(attempts)


class RetrainError(RuntimeError):
    """Retraining cannot run or failed; the message says why and what to provide."""


@dataclass
class RetrainConfig:
    """Settings shared by both arms (same model, schedule, seed)."""

    model: str = "yolov8n.yaml"  # a model .yaml (from scratch) or a local .pt; never downloaded
    epochs: int = 30
    imgsz: int = 320
    batch: int = 16
    seed: int = 0
    synthetic_ratio: float = 1.0  # synthetic images per real train image in the mixed arm
    class_map: dict[str, str | None] = field(default_factory=dict)  # synthetic class -> real class (None drops it)
    workers: int = 2  # dataloader workers per trainer
    gpus: float = 0  # GPUs per arm's worker: 0.5 shares one GPU between both arms; > 1 = ultralytics' own DDP
    min_gain: float | None = None  # flag the run when mAP50 gains less than this
    train_args: dict[str, Any] = field(default_factory=dict)  # any other ultralytics train() argument

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.imgsz < 32 or self.batch < 1:
            raise ValueError(f"epochs >= 1, imgsz >= 32 and batch >= 1 needed, got {self.epochs}, {self.imgsz}, {self.batch}")
        if self.gpus > 1 and self.gpus != int(self.gpus):
            raise ValueError(f"gpus above 1 must be whole, got {self.gpus}")
        if self.synthetic_ratio <= 0:
            raise ValueError(f"synthetic_ratio must be > 0, got {self.synthetic_ratio}")
        if not (self.model.endswith((".yaml", ".yml", ".pt"))):
            raise ValueError(f"model must be a .yaml (train from scratch) or a local .pt, got {self.model!r}")

    def training_key(self) -> dict[str, Any]:
        """What changes the trained weights (min_gain only changes the verdict)."""
        d = asdict(self)
        d.pop("min_gain")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RetrainConfig":
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown retrain settings {unknown}; known: {sorted(known)}")
        return cls(**d)


# --- inputs: a version, a YOLO folder, run ids ---------------------------------------


def resolve(text: str, root: str | None = None) -> str:
    """A URI for `NAME@VERSION` / `ROOT/NAME@VERSION` (through the registry) or a
    plain URI / path (as it is)."""
    from factory.storage.uri import to_uri

    last = str(text).rstrip("/").rpartition("/")[2]
    if "@" in last:
        from factory.storage.registry import DatasetRef, Registry

        ref = DatasetRef.parse(text, default_root=root)
        reg = Registry(ref.root)
        name, version = reg.resolve(ref)
        if not reg.is_published(name, version):
            raise RetrainError(f"{ref}: {name}@{version} is not published under {reg.root}")
        return reg.version_uri(name, version)
    return to_uri(text)


def yolo_uri(uri: str) -> str:
    """A published version keeps its YOLO tree in `yolo/`; a plain YOLO folder is itself."""
    from factory.storage.uri import exists, join

    if exists(join(uri, "yolo", "data.yaml")):
        return join(uri, "yolo")
    if exists(join(uri, "data.yaml")):
        return uri
    raise RetrainError(f"{uri}: neither yolo/data.yaml (a registry version) nor data.yaml (a YOLO folder) found")


def read_manifest(version_uri: str) -> dict | None:
    from factory.storage.uri import exists, join, read_bytes

    uri = join(version_uri, "manifest.json")
    return json.loads(read_bytes(uri)) if exists(uri) else None


def run_id_for(version_uri: str, real_train: str, real_eval: str, cfg: RetrainConfig, manifest: dict | None = None) -> str:
    """Deterministic: same version (and manifest), same real data, same settings -> same id."""
    from factory.storage.uri import to_uri

    # a manifest field naming the retrain job itself must not change the id
    stable = {k: v for k, v in (manifest or {}).items() if not k.startswith("retrain")}
    ident = {
        "version": to_uri(version_uri),
        "manifest": hashlib.sha256(json.dumps(stable, sort_keys=True, default=str).encode()).hexdigest() if manifest else None,
        "real_train": to_uri(real_train),
        "real_eval": to_uri(real_eval),
        "config": cfg.training_key(),
    }
    return "r" + hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:12]


def run_uri(version_uri: str, run_id: str) -> str:
    from factory.storage.uri import join

    return join(version_uri, "retrain", run_id)


# --- the worker side: build the two training sets, train, evaluate, upload -----------


def setup_ultralytics_offline(config_dir: str | Path | None = None) -> Path:
    """Everything ultralytics needs to never touch the network; call before importing it."""
    for k, v in OFFLINE_ENV.items():
        os.environ.setdefault(k, v)
    cdir = Path(config_dir or os.environ.get("YOLO_CONFIG_DIR") or Path(tempfile.gettempdir()) / "factory-yolo-config")
    os.environ["YOLO_CONFIG_DIR"] = str(cdir)
    font = cdir / "Ultralytics" / "Arial.ttf"
    if not font.exists():  # otherwise it asks github for Arial.ttf while checking a data set
        import matplotlib

        font.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf", font)
    from ultralytics import settings

    off = {k: False for k in ("sync", "raytune", "tensorboard", "mlflow", "wandb", "clearml", "comet", "dvc", "neptune")}
    settings.update({k: v for k, v in off.items() if k in settings})
    return cdir


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.symlink(src.resolve(), dst)
    except OSError:
        shutil.copy(src, dst)


def _write_split(dst_root: Path, items: list[tuple[Path, list[str]]]) -> int:
    """images/ + labels/ for a list of (image file, label lines); returns the image count."""
    for i, (img, lines) in enumerate(items):
        name = f"{i:06d}_{img.name}"  # unique even when two sources share a file name
        _link(img, dst_root / "images" / name)
        lab = dst_root / "labels" / Path(name).with_suffix(".txt")
        lab.parent.mkdir(parents=True, exist_ok=True)
        lab.write_text("".join(line + "\n" for line in lines))
    return len(items)


def _remapped(images: list[Path], names: list[str], target: dict[str, int | None]) -> tuple[list[tuple[Path, list[str]]], dict]:
    """Rewrite label class ids through a name mapping. An image with any box of a
    dropped class is left out (its defect would be an unlabeled positive)."""
    from factory.formats import label_path

    items, dropped_images, boxes = [], 0, {}
    for img in images:
        lab = label_path(img)
        lines, drop = [], False
        for line in (lab.read_text().splitlines() if lab.exists() else []):
            parts = line.split()
            if not parts:
                continue
            new = target.get(names[int(float(parts[0]))])
            if new is None:
                drop = True
                break
            lines.append(" ".join([str(new), *parts[1:5]]))
            boxes[new] = boxes.get(new, 0) + 1
        if drop:
            dropped_images += 1
        else:
            items.append((img, lines))
    return items, {"images": len(items), "dropped_images": dropped_images, "boxes_per_class_id": boxes}


def _pick_split(splits: dict[str, list[Path]], wanted: tuple[str, ...], uri: str) -> list[Path]:
    for s in wanted:
        if splits.get(s):
            return splits[s]
    raise RetrainError(f"{uri}: its data.yaml has no {' or '.join(wanted)} split with images")


def prepare_datasets(
    work: Path, real_train: Path, real_eval: Path, synthetic: Path | None, cfg: RetrainConfig, real_train_uri: str = "",
    real_eval_uri: str = "", synthetic_uri: str = "",
) -> tuple[Path, dict]:
    """Lay out one arm's data under `work` and return its data.yaml and counts.
    Class names are the eval set's: that is what the detector is judged on."""
    import numpy as np

    from factory.formats import read_data_yaml

    _, eval_names, eval_splits = read_data_yaml(real_eval)
    eval_imgs = _pick_split(eval_splits, ("val", "test"), real_eval_uri or str(real_eval))
    ident = {n: i for i, n in enumerate(eval_names)}

    _, train_names, train_splits = read_data_yaml(real_train)
    missing = [n for n in train_names if n not in ident]
    if missing:
        raise RetrainError(f"{real_train_uri}: classes {missing} are not in the eval set's classes {eval_names}")
    train_imgs = _pick_split(train_splits, ("train",), real_train_uri or str(real_train))
    real_items, real_counts = _remapped(train_imgs, train_names, {n: ident[n] for n in train_names})
    eval_items, eval_counts = _remapped(eval_imgs, eval_names, dict(ident))
    counts: dict[str, Any] = {"class_names": eval_names, "real_train": real_counts, "real_eval": eval_counts}

    n_real = _write_split(work / "real", real_items)
    _write_split(work / "eval", eval_items)
    train_dirs = ["real/images"]
    if synthetic is not None:
        _, syn_names, syn_splits = read_data_yaml(synthetic)
        target: dict[str, int | None] = {}
        for n in syn_names:
            mapped = cfg.class_map.get(n, n)
            if mapped is not None and mapped not in ident:
                if n in cfg.class_map:
                    raise RetrainError(f"class_map sends synthetic {n!r} to {mapped!r}, which is not a real class {eval_names}")
                mapped = None  # a synthetic-only class: its images are left out
            target[n] = None if mapped is None else ident[mapped]
        if not any(v is not None for v in target.values()):
            raise RetrainError(
                f"{synthetic_uri}: none of its classes {syn_names} maps onto the real classes {eval_names}; set class_map")
        syn_imgs = sorted({p for files in syn_splits.values() for p in files})
        syn_items, syn_counts = _remapped(syn_imgs, syn_names, target)
        want = max(1, round(cfg.synthetic_ratio * n_real))
        if len(syn_items) > want:  # a seeded subset: both runs of a seed see the same images
            keep = np.random.default_rng(cfg.seed).choice(len(syn_items), size=want, replace=False)
            syn_items = [syn_items[i] for i in sorted(keep)]
        syn_counts["used_images"] = _write_split(work / "synthetic", syn_items)
        syn_counts["class_mapping"] = {n: (None if v is None else eval_names[v]) for n, v in target.items()}
        counts["synthetic"] = syn_counts
        train_dirs.append("synthetic/images")
    import yaml

    data = {"path": str(work), "train": train_dirs, "val": "eval/images", "nc": len(eval_names), "names": eval_names}
    (work / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return work / "data.yaml", counts


def _metrics_of(m, names: list[str]) -> dict[str, Any]:
    """ultralytics DetMetrics -> plain numbers (mAP50, mAP50-95, P, R, per class)."""
    box = m.box
    nt = getattr(m, "nt_per_class", None)
    per_class = {}
    for i, c in enumerate(box.ap_class_index):
        c = int(c)
        per_class[names[c]] = {
            "ap50": float(box.ap50[i]), "ap50_95": float(box.ap[i]), "precision": float(box.p[i]), "recall": float(box.r[i]),
            "instances": int(nt[c]) if nt is not None else None,
        }
    for c, n in enumerate(names):  # classes absent from the eval set: no AP, said so
        per_class.setdefault(n, {"ap50": None, "ap50_95": None, "precision": None, "recall": None,
                                 "instances": int(nt[c]) if nt is not None else 0})
    return {"map50": float(box.map50), "map50_95": float(box.map), "precision": float(box.mp), "recall": float(box.mr),
            "per_class": per_class}


def _curves(results_csv: Path) -> dict[str, list[float]]:
    import csv

    if not results_csv.exists():
        return {}
    rows = list(csv.DictReader(results_csv.open()))
    return {k.strip(): [float(r[k]) for r in rows] for k in (rows[0] if rows else {})}


def train_arm(arm: str, work: Path, data_yaml: Path, cfg: RetrainConfig) -> dict[str, Any]:
    """Train and evaluate one arm with ultralytics in this process (any node)."""
    saved = {k: os.environ.pop(k) for k in _DDP_ENV if k in os.environ}  # before ultralytics is imported
    try:
        setup_ultralytics_offline()
        import torch
        import yaml
        from ultralytics import YOLO

        if cfg.model.endswith(".pt") and not Path(cfg.model).exists():
            raise RetrainError(f"{cfg.model}: weights not found; give a local .pt or a model .yaml (nothing is downloaded)")
        if cfg.gpus and torch.cuda.is_available():  # Ray has set CUDA_VISIBLE_DEVICES to this worker's GPUs
            device: Any = ",".join(str(i) for i in range(min(max(1, int(cfg.gpus)), torch.cuda.device_count())))
        else:
            device = "cpu"
        runs = work / "runs"
        args = dict(data=str(data_yaml), epochs=cfg.epochs, imgsz=cfg.imgsz, batch=cfg.batch, seed=cfg.seed,
                    deterministic=True, workers=cfg.workers, device=device, amp=False, project=str(runs), name=arm,
                    exist_ok=True, plots=True, verbose=False, pretrained=False)
        args.update(cfg.train_args)
        t0 = time.time()
        YOLO(cfg.model).train(**args)
        train_s = time.time() - t0
        train_dir = runs / arm
        names = list(yaml.safe_load(data_yaml.read_text())["names"])
        # score the final weights: best.pt was picked on the eval set and would flatter both arms
        m = YOLO(str(train_dir / "weights" / "last.pt")).val(
            data=str(data_yaml), split="val", imgsz=cfg.imgsz, batch=cfg.batch, device=device, project=str(runs),
            name=f"{arm}_eval", exist_ok=True, plots=True, verbose=False)
        out = _metrics_of(m, names)
        out["curves"] = _curves(train_dir / "results.csv")
        out["train_seconds"] = round(train_s, 2)
        out["device"] = str(device)
        return out
    finally:
        os.environ.update(saved)


def _train_loop_per_worker(config: dict[str, Any]) -> None:
    """What each Ray Train worker runs: worker k trains arm k (both arms in
    parallel, one worker group). It fetches the data (any node, any URI), trains,
    uploads weights/plots/metrics into the registry and reports to Ray Train."""
    import ray.train

    from factory.storage.uri import as_local_dir, join, upload_dir, write_bytes

    cfg = RetrainConfig.from_dict(config["cfg"])
    arm, out = ARMS[ray.train.get_context().get_world_rank()], config["out_uri"]
    work = Path(tempfile.mkdtemp(prefix=f"factory-retrain-{arm}-"))
    try:
        with contextlib.ExitStack() as stack:
            real_train = stack.enter_context(as_local_dir(config["real_train"]))
            real_eval = stack.enter_context(as_local_dir(config["real_eval"]))
            synthetic = stack.enter_context(as_local_dir(config["synthetic"])) if arm == "real_plus_synthetic" else None
            data_yaml, counts = prepare_datasets(work / "data", real_train, real_eval, synthetic, cfg, config["real_train"],
                                                 config["real_eval"], config["synthetic"])
            with network_attempts() as attempts:  # ultralytics must not download anything
                metrics = train_arm(arm, work, data_yaml, cfg)
        if attempts and config.get("no_network"):
            raise RetrainError(f"{arm}: training tried to reach the network: {sorted(set(attempts))[:5]}")
        metrics["data"] = counts
        metrics["network_attempts"] = sorted(set(attempts))
        runs = work / "runs"
        upload_dir(runs / arm / "weights", join(out, arm, "weights"))
        for sub, src in (("train", runs / arm), ("eval", runs / f"{arm}_eval")):
            for p in sorted(src.glob("*")):
                if p.is_file():  # plots, results.csv, args.yaml
                    write_bytes(join(out, arm, sub, p.name), p.read_bytes())
        write_bytes(join(out, arm, "metrics.json"), json.dumps(metrics, indent=2).encode())
        # no Ray checkpoint: the weights already live in the registry, and a checkpoint
        # would need storage shared by every node; the driver reads metrics.json
        ray.train.report({f"{arm}/{k}": metrics[k] for k in ("map50", "map50_95", "precision", "recall")})
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _fit(common: dict[str, Any], cfg: RetrainConfig, storage_path: str) -> None:
    """One TorchTrainer, one worker per arm (CPU, or `gpus` GPUs each)."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    use_gpu = cfg.gpus > 0
    trainer = TorchTrainer(
        _train_loop_per_worker,
        train_loop_config=common,
        scaling_config=ScalingConfig(num_workers=len(ARMS), use_gpu=use_gpu,
                                     resources_per_worker={"GPU": cfg.gpus} if use_gpu else {"CPU": 1}),
        run_config=RunConfig(name=f"retrain-{common['run_id']}-{int(time.time())}", storage_path=storage_path),
    )
    try:
        result = trainer.fit()
    except Exception as e:  # ray.train.WorkerGroupError carries the worker's traceback
        raise RetrainError(f"retraining {common['run_id']} failed: {e}") from e
    if result.error:
        raise RetrainError(f"retraining {common['run_id']} failed: {result.error}")


# --- the driver: both arms, the comparison, the report --------------------------------


def retrain(
    version_uri: str,
    real_train: str,
    real_eval: str,
    cfg: RetrainConfig,
    *,
    run_id: str | None = None,
    force: bool = False,
    storage_path: str | None = None,
    address: str | None = None,
) -> dict[str, Any]:
    """Train both arms through Ray Train, compare them on the real eval set, write
    `comparison.json` + `report.html` into `<version>/retrain/<run-id>/`. A run
    already finished is returned without training (unless `force`)."""
    from factory.storage.uri import exists, is_s3, join, local_path, read_bytes, to_uri, write_bytes

    version_uri = to_uri(version_uri)
    real_train, real_eval = yolo_uri(resolve(real_train)), yolo_uri(resolve(real_eval))
    manifest = read_manifest(version_uri)
    synthetic = yolo_uri(version_uri)
    run_id = run_id or run_id_for(version_uri, real_train, real_eval, cfg, manifest)
    out = run_uri(version_uri, run_id)
    done = join(out, "comparison.json")
    if exists(done) and not force:
        comparison = json.loads(read_bytes(done))
        comparison["skipped"] = True  # already trained: the same trigger never trains twice
        return comparison
    if cfg.model.endswith(".pt") and (is_s3(cfg.model) or not local_path(cfg.model).exists()):
        raise RetrainError(f"{cfg.model}: weights not found; give a local .pt or a model .yaml (nothing is downloaded)")
    ensure_ray(address)
    common = {"run_id": run_id, "out_uri": out, "real_train": real_train, "real_eval": real_eval, "synthetic": synthetic,
              "cfg": asdict(cfg), "no_network": os.environ.get("FACTORY_NO_NETWORK") == "1"}
    storage = storage_path or str(Path(tempfile.gettempdir()) / "factory-ray-train")
    t0 = time.time()
    _fit(common, cfg, storage)
    arms = {arm: json.loads(read_bytes(join(out, arm, "metrics.json"))) for arm in ARMS}
    comparison = compare(arms, cfg)
    comparison.update(run_id=run_id, version=version_uri, synthetic=synthetic, real_train=real_train, real_eval=real_eval,
                      config=asdict(cfg), manifest_version=(manifest or {}).get("version"), wall_seconds=round(time.time() - t0, 1),
                      created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    from factory.training.retrain_report import render_report

    write_bytes(join(out, "report.html"), render_report(comparison).encode())
    write_bytes(done, json.dumps(comparison, indent=2).encode())  # last: its presence means "done"
    write_index(version_uri)
    comparison["skipped"] = False
    return comparison


def write_index(version_uri: str) -> str:
    """Rewrite `<version>/retrain/index.html` from the finished runs' comparison.json."""
    from factory.storage.uri import join, list_files, read_bytes, write_bytes
    from factory.training.retrain_report import render_index

    root = join(version_uri, "retrain")
    runs = [json.loads(read_bytes(join(root, f))) for f in list_files(root) if f.count("/") == 1 and f.endswith("/comparison.json")]
    write_bytes(join(root, "index.html"), render_index(runs).encode())
    return join(root, "index.html")


def compare(arms: dict[str, dict], cfg: RetrainConfig) -> dict[str, Any]:
    """The table of both arms and the one number: mAP50 gain of real+synthetic over real-only."""
    base, mixed = arms["real_only"], arms["real_plus_synthetic"]
    gain = {k: mixed[k] - base[k] for k in ("map50", "map50_95", "precision", "recall")}
    per_class_gain = {}
    for name, b in base["per_class"].items():
        m = mixed["per_class"].get(name, {})
        per_class_gain[name] = None if b.get("ap50") is None or m.get("ap50") is None else m["ap50"] - b["ap50"]
    verdict = "helped" if gain["map50"] > 0 else "hurt" if gain["map50"] < 0 else "made no difference"
    flagged = cfg.min_gain is not None and gain["map50"] < cfg.min_gain
    return {"arms": arms, "gain": gain, "per_class_ap50_gain": per_class_gain, "verdict": verdict,
            "min_gain": cfg.min_gain, "flagged": flagged}


# --- triggers: publish hook and the watcher (Ray Job Submission) ----------------------


class RetrainTriggerError(RuntimeError):
    """The retraining job could not be submitted (the version itself is published)."""


def job_entrypoint(version_uri: str, real_train: str, real_eval: str, cfg: RetrainConfig, run_id: str) -> str:
    """The command the Ray job runs: the same code path as `factory retrain`."""
    args = ["python", "-m", "jobs.retrain", version_uri, "--real-train", real_train, "--real-eval", real_eval,
            "--config", json.dumps(asdict(cfg), sort_keys=True), "--run-id", run_id]
    return shlex.join(args)


def _job_client(address: str | None):
    try:
        return job_client(address)
    except JobServerError as e:
        raise RetrainTriggerError(
            f"{e}; start Ray with its dashboard, set RAY_ADDRESS or retrain.address, or run `factory retrain` by hand") from e


def submit_retrain(
    version_uri: str, real_train: str, real_eval: str, cfg: RetrainConfig, *, address: str | None = None, client=None,
    reason: str = "publish",
) -> tuple[str, str, bool]:
    """Submit the retraining of one version as a Ray job, once. Returns (run id, job
    id, submitted now?). The record `retrain/<run-id>/trigger.json` and the job's
    submission id (derived from the run id; the job server refuses a duplicate)
    both keep a second trigger from training again."""
    from factory.storage.uri import exists, join, read_bytes, to_uri, write_bytes

    version_uri = to_uri(version_uri)
    real_train, real_eval = yolo_uri(resolve(real_train)), yolo_uri(resolve(real_eval))
    run_id = run_id_for(version_uri, real_train, real_eval, cfg, read_manifest(version_uri))
    record = join(run_uri(version_uri, run_id), "trigger.json")
    if exists(record):
        return run_id, json.loads(read_bytes(record))["job_id"], False
    client = client or _job_client(address)
    submission_id = f"retrain-{run_id}"
    entrypoint = job_entrypoint(version_uri, real_train, real_eval, cfg, run_id)
    env = {**OFFLINE_ENV, **{k: os.environ[k] for k in ("AWS_ENDPOINT_URL", "YOLO_CONFIG_DIR") if k in os.environ}}
    submitted = True
    deadline = time.time() + 60
    while True:
        try:
            job_id = client.submit_job(entrypoint=entrypoint, submission_id=submission_id, runtime_env={"env_vars": env},
                                       metadata={"run_id": run_id, "version": version_uri, "reason": reason})
            break
        except RuntimeError as e:
            if "already exists" in str(e):
                job_id, submitted = submission_id, False  # another trigger got there first
                break
            if "No available agent" in str(e) and time.time() < deadline:
                time.sleep(1)  # a cluster that just started: its job agent is not up yet
                continue
            raise RetrainTriggerError(f"{version_uri}: submitting the retrain job failed: {e}") from e
    info = {"run_id": run_id, "job_id": job_id, "reason": reason, "entrypoint": entrypoint,
            "submitted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_bytes(record, json.dumps(info, indent=2).encode())
    return run_id, job_id, submitted


def config_from_spec(retrain_spec) -> RetrainConfig:
    """A spec's `retrain:` section -> RetrainConfig."""
    return RetrainConfig(
        model=retrain_spec.model, epochs=retrain_spec.epochs, imgsz=retrain_spec.imgsz, batch=retrain_spec.batch,
        seed=retrain_spec.seed, synthetic_ratio=retrain_spec.synthetic_ratio, class_map=dict(retrain_spec.class_map),
        gpus=retrain_spec.gpus, min_gain=retrain_spec.min_gain, train_args=dict(retrain_spec.train_args),
    )


def on_publish(spec, version_uri: str, manifest: dict | None = None, *, client=None) -> str | None:
    """The publish hook: a spec with `retrain: {on: publish}` gets one retraining
    job per published version. Returns the Ray job id (None without such a section).
    Call it after manifest.json is written (the job reads the published version)."""
    r = getattr(spec, "retrain", None)
    if r is None or r.on != "publish":
        return None
    _, job_id, _ = submit_retrain(version_uri, r.real_train, r.real_eval, config_from_spec(r), address=r.address,
                                  client=client, reason="publish")
    return job_id


def publish_hook(spec, version_uri: str) -> list[str]:
    """What the publish step calls once the manifest is written: submit the
    retraining job if the spec asks for it, and say what happened. Never raises:
    the version is published either way; a failed submission is a note naming
    the way out (`factory retrain` by hand, or the watcher)."""
    import logging

    log = logging.getLogger("factory.retrain")
    try:
        job_id = on_publish(spec, version_uri)
    except (RetrainTriggerError, RetrainError, ValueError) as e:
        note = f"retrain: job not submitted: {e}"
        log.warning(note)
        return [note]
    if job_id is None:
        return []
    note = f"retrain: submitted Ray job {job_id} (results under {join_uri(version_uri, 'retrain')}/)"
    log.info(note)
    return [note]


def join_uri(uri: str, *parts: str) -> str:
    from factory.storage.uri import join

    return join(uri, *parts)


def published_versions(root: str) -> list[str]:
    """Version URIs under a registry root that have a manifest (= published)."""
    from factory.storage.registry import Registry

    reg = Registry(root)
    return [reg.version_uri(n, v) for n in reg.names() for v in reg.versions(n)]


def watch_once(root: str, real_train: str, real_eval: str, cfg: RetrainConfig, *, address: str | None = None,
               client=None) -> list[dict[str, Any]]:
    """One pass of the watcher: submit a job for each published version that has
    none for this configuration yet. Versions whose spec has its own
    `retrain: {on: publish}` are left to their publish trigger; imported real
    data sets are not synthetic versions and are skipped."""
    events = []
    for v in published_versions(root):
        manifest = read_manifest(v) or {}
        if manifest.get("kind") == "real":  # an imported real data set, not synthetic data
            continue
        spec_retrain = (manifest.get("spec") or {}).get("retrain") or {}
        if spec_retrain.get("on") == "publish":
            continue
        run_id, job_id, now = submit_retrain(v, real_train, real_eval, cfg, address=address, client=client, reason="watch")
        events.append({"version": v, "run_id": run_id, "job_id": job_id, "submitted": now})
    return events
