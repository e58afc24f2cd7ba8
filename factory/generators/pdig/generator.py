"""`kind: pdig`: the Generator the dataset job and the serve app drive.

checkpoint: a folder/URI written by `factory train pdig` (SCE + LISA + image-prompt
bank). The base model comes from `params.base` or, when absent, the base recorded
in the checkpoint. With no checkpoint but a `params.base`, it runs plain SD with
TIDSC on the class names (the paper's "TIDSC only" ablation).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Sequence

import numpy as np
from pydantic import Field, field_validator, model_validator

from factory.core import Sample, WorkItem
from factory.generators.base import CheckpointError, GeneratorParams

if TYPE_CHECKING:
    from factory.generators.pdig.pipeline import PDIGPipeline


class PDIGParams(GeneratorParams):
    """`generators[].params` of a pdig generator: the one place for its defaults."""

    steps: int = Field(60, ge=1)  # paper: DDIM 60 steps, TIDSC on the first 30, cfg 7.5
    guidance: float = Field(7.5, ge=0)
    tidsc_steps: int = Field(30, ge=0)
    alpha: float = 1.0  # image / text branch weights (eq. 4)
    beta: float = 1.0
    P: float = 0.2  # TIDSC top-k (eq. 5, 7): a fraction in (0, 1] of the box's cells; see tidsc.py
    P_count: int | None = Field(None, ge=1)  # or a count of cells instead of P (set one of the two)
    L: int = Field(4, ge=1)  # edge terms of eq. 11/14, any L >= 1 (tidsc.py says how odd L is sampled)
    lambda1: float = Field(1.0, ge=0)
    lambda2: float = Field(1.0, ge=0)
    step_size: float = Field(20.0, ge=0)  # latent update size, linear over the TIDSC steps
    step_size_end: float = Field(10.0, ge=0)
    attention_res: int | None = Field(None, ge=1)
    base: str | None = None  # diffusers SD1.5 folder/URI; default: the one the checkpoint records
    batch_size: int | None = Field(None, ge=1)  # images per pipeline call; default 8 on a GPU, 4 on the CPU
    image_prompts: bool = True
    return_attention: bool = False  # per-box attention maps over all steps in meta (costs explicit attention)
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"  # auto: float16 on a GPU, float32 on the CPU
    compile: bool = False  # torch.compile the UNet's guidance-free passes (pays off on a GPU over many images)

    @field_validator("P")
    @classmethod
    def _p_is_a_fraction(cls, v: float) -> float:
        if not 0 < v <= 1:
            raise ValueError(f"P is a fraction of the box's cells in (0, 1], got {v}; for a number of cells set P_count")
        return v

    @model_validator(mode="after")
    def _tidsc_within_steps(self) -> "PDIGParams":
        if self.tidsc_steps > self.steps:
            raise ValueError(f"tidsc_steps must be in [0, steps], got {self.tidsc_steps} of {self.steps}")
        if self.P_count is not None and "P" in self.model_fields_set:
            raise ValueError("set P (a fraction of the box's cells) or P_count (a number of cells), not both")
        return self


@dataclass
class _Loaded:
    pipe: "PDIGPipeline"
    classes: list[str] | None
    bank: dict  # class name -> tensor of image-prompt embeddings


class PDIGGenerator:
    """Stable Diffusion + SCE + LISA + TIDSC; returns the requested boxes as annotations."""

    kind: ClassVar[str] = "pdig"
    classes: ClassVar[None] = None  # whatever its checkpoint learned
    uses_references: ClassVar[bool] = False
    wants_gpu: ClassVar[bool] = True
    Params: ClassVar[type[PDIGParams]] = PDIGParams

    def __init__(self, loaded: _Loaded, params: PDIGParams, checkpoint: str | None, device: str):
        self.loaded = loaded
        self.params = params
        self.checkpoint = checkpoint
        self.device = device

    @classmethod
    def check_resources(cls, params: dict[str, Any], spec, where: str, checkpoint: str | None = None) -> list[tuple[str, str]]:
        """Before any Ray worker starts: the trained parts and the base model are there."""
        from factory.storage import uri as U

        problems = []
        if checkpoint:
            missing = [n for n in ("pdig_config.json", "pdig_adapter.safetensors") if not U.exists(U.join(checkpoint, n))]
            if missing:
                problems.append((f"{where}.checkpoint", f"{checkpoint} is missing {', '.join(missing)}; "
                                 "give a folder written by `factory train pdig`"))
        base = params.get("base")
        if base and not U.exists(U.join(base, "unet", "config.json")):
            problems.append((f"{where}.params.base", f"no diffusers model (unet/config.json) at {base}"))
        if not base and not checkpoint:
            problems.append((f"{where}.params.base", "the pdig generator needs a base model: a diffusers SD1.5 "
                             "folder/URI here, or a checkpoint from `factory train pdig` that records one"))
        return problems

    @classmethod
    def load(cls, checkpoint: str | None, params: dict[str, Any], device: str = "cpu") -> "PDIGGenerator":
        import torch

        from factory.generators.pdig.adapter import load_parts, read_config
        from factory.generators.pdig.base_model import load_base
        from factory.generators.pdig.pipeline import PDIGPipeline

        p = cls.Params.parse(cls.kind, params)
        config = read_config(checkpoint) if checkpoint else None
        base_uri = p.base or (config or {}).get("base")
        if not base_uri:
            raise CheckpointError(
                "the pdig generator needs a base model: set generators[].params.base to a diffusers SD1.5 folder/URI "
                "(with image_encoder/), or a checkpoint from `factory train pdig` that records one"
            )
        gpu = device.startswith("cuda")
        dtype = {"auto": torch.float16 if gpu else torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
                 "float32": torch.float32}[p.dtype]
        if p.batch_size is None:
            p = p.model_copy(update={"batch_size": 8 if gpu else 4})
        base = load_base(base_uri, device=device, dtype=dtype, need_image_encoder=checkpoint is not None)
        if checkpoint:
            parts = load_parts(base, checkpoint)
            pipe = PDIGPipeline(base.vae, base.text_encoder, base.tokenizer, base.unet, base.scheduler, base.image_encoder, parts.lisa)
            loaded = _Loaded(pipe, parts.classes, parts.bank)
        else:
            pipe = PDIGPipeline(base.vae, base.text_encoder, base.tokenizer, base.unet, base.scheduler)
            loaded = _Loaded(pipe, None, {})
        pipe.set_progress_bar_config(disable=True)
        if p.compile:
            pipe.compile_unet()
        return cls(loaded, p, checkpoint, device)

    def _boxes(self, item: WorkItem, scale: tuple[float, float]):
        from factory.generators.pdig.pipeline import BoxPrompt
        from factory.generators.pdig.sce import class_token

        out = []
        for j, b in enumerate(item.boxes):
            if self.loaded.classes is not None and b.class_name not in self.loaded.classes:
                raise ValueError(f"class {b.class_name!r} was not trained into {self.checkpoint}; it knows {self.loaded.classes}")
            token = class_token(b.class_name) if self.loaded.classes is not None else b.class_name.replace("_", " ").replace("-", " ")
            embed = None
            bank = self.loaded.bank.get(b.class_name)
            if self.params.image_prompts and bank is not None and len(bank) and float(self.params.alpha) != 0:
                pick = np.random.default_rng([item.seed, j, zlib.crc32(b.class_name.encode())]).integers(len(bank))
                embed = bank[int(pick)]
            sx, sy = scale
            box = (int(b.x1 * sx), int(b.y1 * sy), max(int(b.x1 * sx) + 1, round(b.x2 * sx)), max(int(b.y1 * sy) + 1, round(b.y2 * sy)))
            out.append(BoxPrompt(box=box, token=token, image_embed=embed))
        return out

    def generate(self, items: Sequence[WorkItem]) -> list[Sample]:
        import torch

        from factory.generators.pdig.sce import build_prompt
        from factory.generators.pdig.tidsc import TIDSCConfig

        pipe, p = self.loaded.pipe, self.params
        step = p.batch_size or 4  # `load` sets it: 8 on a GPU, 4 on the CPU
        mult = pipe.vae_scale_factor * 2 ** (len(pipe.unet.config.block_out_channels) - 1)
        out: list[Sample] = []
        # one pipeline call per batch of equal-sized items (latents must stack)
        groups: dict[tuple[int, int], list[WorkItem]] = {}
        for it in items:
            groups.setdefault((it.width, it.height), []).append(it)
        for (w, h), group in groups.items():
            gw, gh = -(-w // mult) * mult, -(-h // mult) * mult
            for start in range(0, len(group), step):
                batch = group[start : start + step]
                boxes = [self._boxes(it, (gw / w, gh / h)) for it in batch]
                words = self.loaded.classes is None
                prompts = [build_prompt([b.class_name for b in it.boxes], words=words) for it in batch]
                gens = [torch.Generator(device=pipe.device).manual_seed(int(it.seed)) for it in batch]
                res = pipe(
                    prompts, boxes, height=gh, width=gw, num_inference_steps=p.steps, guidance_scale=float(p.guidance),
                    tidsc_steps=p.tidsc_steps, tidsc=TIDSCConfig(P=float(p.P), P_count=p.P_count, L=p.L,
                                                                  lambda1=float(p.lambda1), lambda2=float(p.lambda2)),
                    step_size=float(p.step_size), step_size_end=float(p.step_size_end), alpha=float(p.alpha),
                    beta=float(p.beta), attention_res=p.attention_res, generator=gens, return_attention=p.return_attention,
                )
                for k, it in enumerate(batch):
                    image = _to_item_image(res.images[k], it)
                    meta = {
                        "checkpoint": self.checkpoint or "", "prompt": prompts[k],
                        "attention_inside": res.inside[k] if res.inside else [], "attention_inside_over": res.inside_over,
                    }
                    if p.return_attention and res.attention:
                        meta["attention"] = res.attention[k]
                    out.append(Sample(item=it, image=image, boxes=list(it.boxes), mask=None, meta=meta))
        order = {it.item_id: i for i, it in enumerate(items)}
        return sorted(out, key=lambda s: order[s.item.item_id])


def _to_item_image(img: np.ndarray, item: WorkItem) -> np.ndarray:
    """float HxWx3 in [0, 1] at the generation size -> uint8 at the item's size and channels."""
    from PIL import Image

    u8 = (img * 255).round().astype(np.uint8)
    pil = Image.fromarray(u8)
    if pil.size != (item.width, item.height):
        pil = pil.resize((item.width, item.height), Image.BICUBIC)
    if item.channels == 1:
        return np.asarray(pil.convert("L"))[..., None]
    return np.asarray(pil.convert("RGB"))
