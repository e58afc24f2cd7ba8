"""`kind: dg2gan`: defect-free -> defective translation (Deng et al., DG2GAN), box-targeted.

Spec usage:
    generators:
      - kind: dg2gan
        checkpoint: file:///models/dg2gan      # a run folder, or one run folder per class
        params:
          references: file:///data/magnetic_tile/MT_Free   # defect-free images (folder/URI or list)
          # optional: checkpoints: {Crack: s3://...}, threshold: 0.06, min_area: 4,
          #           context: <crop side / box side; default from training>, batch_size: 16

Each WorkItem picks a reference with `style["reference"]` (modulo the number of
references; its seed otherwise), resized to the item's size; every box is then
translated and measured as described in `boxes.py`. Deterministic given the item.

The folder: model (the networks), losses (eq. 1-6), checkpoint (the run layout),
boxes (crops in, measured boxes out), steps (one training update, plain torch),
train (under Ray Train) and cli (`factory train dg2gan`).
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, Sequence

import numpy as np
from pydantic import Field

from factory.core import Sample, WorkItem
from factory.generators.base import CheckpointError, GeneratorParams
from factory.generators.references import background_uris, qualify_references, reference_problems

if TYPE_CHECKING:
    from torch import nn

    from factory.generators.dg2gan.model import DG2GANConfig


class DG2GANParams(GeneratorParams):
    references: str | list[str] | None = None  # defect-free images; default: the spec's domain.references
    checkpoints: dict[str, str] = Field(default_factory=dict)  # class name -> run folder, beside `checkpoint`
    threshold: float = Field(0.06, gt=0, lt=1)  # |G(n) - n| above this is the defect
    min_area: int = Field(4, ge=1)  # px: smaller changed components are noise
    context: float | None = Field(None, ge=1)  # crop side / box side; default: from training
    batch_size: int = Field(16, ge=1)
    flip: bool = True


class _Model(NamedTuple):
    """One trained G and what generating with it needs."""

    cfg: "DG2GANConfig"
    G: "nn.Module"
    uri: str  # the run it came from
    context: float  # crop side / box side


class DG2GANGenerator:
    """Serves WorkItems from one DG2GAN G per defect class (fp16 on a GPU)."""

    kind: ClassVar[str] = "dg2gan"
    classes: ClassVar[None] = None  # whatever its checkpoints were trained on
    uses_references: ClassVar[bool] = True
    wants_gpu: ClassVar[bool] = True
    Params: ClassVar[type[DG2GANParams]] = DG2GANParams

    def __init__(self, models: dict[str, _Model], references: list[str], params: DG2GANParams, device: str):
        self.models = models  # class name ("" = any class) -> its model
        self.references = references
        self.params = params
        self.device = device
        p = params
        self.threshold, self.min_area, self.batch_size, self.flip = p.threshold, p.min_area, p.batch_size, p.flip

    @classmethod
    def prepare_params(cls, params: dict[str, Any], spec) -> dict[str, Any]:
        """Bare `NAME@VERSION` references -> `ROOT/NAME@VERSION` in the spec's registry."""
        return qualify_references(params, spec.output.uri)

    @classmethod
    def check_resources(cls, params: dict[str, Any], spec, where: str, checkpoint: str | None = None) -> list[tuple[str, str]]:
        """Before any Ray worker starts: the references hold defect-free images and a
        trained run is where the spec says."""
        return reference_problems(params, spec, where) + cls._check_runs(params, where, checkpoint)

    @staticmethod
    def _check_runs(params: dict[str, Any], where: str, checkpoint: str | None) -> list[tuple[str, str]]:
        from factory.storage import uri as U

        hint = "train one with `factory train dg2gan --defect-free DIR --defective DIR --class NAME --out URI`"
        runs = [(f"{where}.checkpoint", checkpoint)] if checkpoint else []
        runs += [(f"{where}.params.checkpoints.{c}", u) for c, u in (params.get("checkpoints") or {}).items()]
        if not runs:
            return [(f"{where}.checkpoint", f"DG2GAN needs a trained checkpoint; {hint}")]
        problems = []
        for field, uri in runs:
            try:
                found = any(n == "latest.json" or n.endswith("/latest.json") or n.endswith("generators.pt")
                            for n in U.list_files(uri))
            except U.StorageError as e:
                found, hint_here = False, str(e)
            else:
                hint_here = f"no DG2GAN run (latest.json) under {uri}; {hint}"
            if not found:
                problems.append((field, hint_here))
        return problems

    @classmethod
    def load(cls, checkpoint: str | None, params: dict[str, Any], device: str = "cpu") -> "DG2GANGenerator":
        from factory.generators.dg2gan.checkpoint import TRAIN_HINT, find_runs, load_generators

        p = cls.Params.parse(cls.kind, params)
        runs = dict(find_runs(checkpoint)) if checkpoint else {}
        runs.update(p.checkpoints)
        if not runs:
            where = f"nothing found at {checkpoint}" if checkpoint else "no checkpoint given"
            raise CheckpointError(f"DG2GAN needs a trained checkpoint ({where}); {TRAIN_HINT}")
        models = {}
        for cls_name, uri in runs.items():
            cfg, gens, config = load_generators(uri, device)
            G = gens.G
            if device.startswith("cuda"):
                G = G.half()
            context = float(p.context or config.get("train", {}).get("context", 1.5))
            models[cls_name] = _Model(cfg, G, uri, context)
        refs = p.references
        if not refs:
            raise ValueError("dg2gan needs params.references: a folder/URI (or list) of defect-free images, e.g. domain.references")
        uris = background_uris(refs)
        if not uris:
            raise ValueError(f"no reference images found in {refs}")
        return cls(models, uris, p, device)

    def _model(self, class_name: str) -> _Model:
        if class_name in self.models:
            return self.models[class_name]
        if set(self.models) == {""}:
            return self.models[""]
        raise CheckpointError(
            f"no DG2GAN checkpoint for class {class_name!r} (have: {', '.join(sorted(self.models))}); "
            f"train one with `factory train dg2gan --class {class_name} ...` or add it to params.checkpoints"
        )

    def generate(self, items: Sequence[WorkItem]) -> list[Sample]:
        from factory.generators.dg2gan.boxes import apply_boxes, plan_crop, translate_crops

        bases, plans_per_item = [], []
        jobs: dict[str, list[tuple[int, int, np.ndarray]]] = {}  # model key -> (item i, request j, crop)
        for i, item in enumerate(items):
            rng = np.random.default_rng(item.seed)
            ref_idx = int(item.style.get("reference", item.seed)) % len(self.references)
            base = _reference(self.references[ref_idx], item.width, item.height, item.channels).astype(np.float32) / 255.0
            plans = []
            for j, box in enumerate(item.boxes):
                cfg, G, uri, context = self._model(box.class_name)
                fh, fv = (bool(rng.integers(2)), bool(rng.integers(2))) if self.flip else (False, False)
                plan = plan_crop(box, item.width, item.height, context, fh, fv)
                crop = base[plan.y1 : plan.y2, plan.x1 : plan.x2]
                crop = crop[:, ::-1] if fh else crop
                crop = crop[::-1] if fv else crop
                key = box.class_name if box.class_name in self.models else ""
                jobs.setdefault(key, []).append((i, j, crop))
                plans.append(plan)
            bases.append((base, ref_idx))
            plans_per_item.append(plans)
        deltas: dict[tuple[int, int], np.ndarray] = {}
        for key, todo in jobs.items():
            cfg, G, _, _ = self.models[key]
            outs = translate_crops(G, [c for _, _, c in todo], cfg.image_size, cfg.channels, self.device, self.batch_size)
            deltas.update({(i, j): d for (i, j, _), d in zip(todo, outs)})
        samples = []
        for i, item in enumerate(items):
            (base, ref_idx), plans = bases[i], plans_per_item[i]
            img, boxes, mask, info = apply_boxes(base, plans, [deltas[(i, j)] for j in range(len(plans))], self.threshold, self.min_area)
            image = np.round(img * 255.0).astype(np.uint8)
            used = sorted({self.models[k].uri for k in (b.class_name if b.class_name in self.models else "" for b in item.boxes)})
            meta = {
                "checkpoint": ",".join(used),
                "reference": self.references[ref_idx],
                "requests": info,
                "unchanged_requests": sum(1 for r in info if r["measured"] is None),
            }
            samples.append(Sample(item=item, image=image, boxes=boxes, mask=mask, meta=meta))
        return samples


@lru_cache(maxsize=64)
def _reference(uri: str, width: int, height: int, channels: int) -> np.ndarray:
    """The reference image centre-cropped to the item's aspect and resized: HxWxC uint8."""
    import io

    from PIL import Image

    from factory.storage import uri as U

    with Image.open(io.BytesIO(U.read_bytes(uri))) as im:
        im = im.convert("L" if channels == 1 else "RGB")
        w, h = im.size
        scale = min(w / width, h / height)
        cw, ch = round(width * scale), round(height * scale)
        left, top = (w - cw) // 2, (h - ch) // 2
        im = im.crop((left, top, left + cw, top + ch)).resize((width, height), Image.BICUBIC)
        a = np.asarray(im)
    a = a[:, :, None] if a.ndim == 2 else a
    a.setflags(write=False)
    return a


FAMILY = DG2GANGenerator  # what `factory.generators.base` registers as kind "dg2gan" (this folder)

__all__ = ["DG2GANGenerator", "FAMILY"]
