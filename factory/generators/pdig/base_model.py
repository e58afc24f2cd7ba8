"""The frozen base model PDIG builds on: a diffusers Stable Diffusion layout plus an
open_clip image encoder, loaded from a local folder or a URI, never from a hub.

Layout of a base folder (the diffusers SD layout, plus `image_encoder/`):

    model_index.json
    unet/config.json           unet/diffusion_pytorch_model.safetensors
    vae/config.json            vae/diffusion_pytorch_model.safetensors
    text_encoder/config.json   text_encoder/model.safetensors
    tokenizer/                 (vocab.json + merges.txt, or tokenizer.json)
    scheduler/scheduler_config.json
    image_encoder/open_clip_config.json  image_encoder/open_clip_model.safetensors

Production: SD1.5 in diffusers layout and the open_clip folder of CLIP ViT-H/14
LAION-2B (its `open_clip_config.json` + weights) copied to `image_encoder/`.
Tests and the CPU demo: `write_tiny_base(dir)` writes a tiny random model with the
same layout, so every path below is the production path.
"""

from __future__ import annotations

import functools
import gzip
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from factory.generators.base import CheckpointError

# What must exist in a base folder: (relative path, alternatives, what it is).
REQUIRED_FILES: list[tuple[tuple[str, ...], str]] = [
    (("model_index.json",), "the diffusers pipeline index"),
    (("unet/config.json",), "the UNet config"),
    (("unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.bin",
      "unet/diffusion_pytorch_model.fp16.safetensors"), "the UNet weights"),
    (("vae/config.json",), "the VAE config"),
    (("vae/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.bin",
      "vae/diffusion_pytorch_model.fp16.safetensors"), "the VAE weights"),
    (("text_encoder/config.json",), "the CLIP text encoder config"),
    (("text_encoder/model.safetensors", "text_encoder/pytorch_model.bin",
      "text_encoder/model.fp16.safetensors"), "the CLIP text encoder weights"),
    (("tokenizer/vocab.json", "tokenizer/tokenizer.json"), "the CLIP tokenizer (vocab.json + merges.txt or tokenizer.json)"),
    (("scheduler/scheduler_config.json",), "the scheduler config"),
]
IMAGE_ENCODER_FILES: list[tuple[tuple[str, ...], str]] = [
    (("image_encoder/open_clip_config.json",), "the open_clip image encoder config (model_cfg)"),
    (("image_encoder/open_clip_model.safetensors", "image_encoder/open_clip_pytorch_model.bin",
      "image_encoder/open_clip_pytorch_model.safetensors"), "the open_clip image encoder weights (e.g. CLIP ViT-H/14 LAION-2B)"),
]


def missing_files(folder: Path, need_image_encoder: bool = True) -> list[str]:
    """Human-readable list of the files a base folder lacks (empty when complete)."""
    wanted = REQUIRED_FILES + (IMAGE_ENCODER_FILES if need_image_encoder else [])
    out = []
    for alternatives, what in wanted:
        if not any((folder / a).is_file() for a in alternatives):
            out.append(f"{' or '.join(alternatives)} ({what})")
    return out


def check_base(folder: Path, need_image_encoder: bool = True) -> None:
    if not folder.is_dir():
        raise CheckpointError(
            f"PDIG base model folder {folder} does not exist. Provide a diffusers Stable Diffusion 1.5 layout "
            "(model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/) plus image_encoder/ with the "
            "open_clip CLIP ViT-H/14 files, or write a tiny random one with `factory train pdig-tiny-base --out DIR`."
        )
    missing = missing_files(folder, need_image_encoder)
    if missing:
        raise CheckpointError(f"PDIG base model at {folder} is incomplete; provide: " + "; ".join(missing))


@dataclass
class BaseModel:
    """The frozen parts. `image_encoder` is open_clip's visual tower (None when not loaded)."""

    vae: Any
    text_encoder: Any
    tokenizer: Any
    unet: Any
    scheduler: Any
    image_encoder: Any = None
    image_size: int = 224
    image_mean: tuple[float, ...] = (0.48145466, 0.4578275, 0.40821073)
    image_std: tuple[float, ...] = (0.26862954, 0.26130258, 0.27577711)
    image_embed_dim: int = 0
    source: str = ""

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this (VAE factor x UNet downsampling)."""
        return self.vae_scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)

    @property
    def native_size(self) -> int:
        return int(self.unet.config.sample_size) * self.vae_scale_factor

    def to(self, device: str | torch.device, dtype: torch.dtype | None = None) -> "BaseModel":
        for m in (self.vae, self.text_encoder, self.unet, self.image_encoder):
            if m is not None:
                m.to(device=device, dtype=dtype) if dtype is not None else m.to(device)
        return self


def load_base(uri: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32, need_image_encoder: bool = True) -> BaseModel:
    """Load the frozen base from a folder, `file://` or `s3://` URI (downloaded to a temp dir)."""
    from factory.storage import uri as storage

    uri = str(uri)
    folder = storage.on_disk(uri)
    if folder is None:  # not on this disk: a download
        try:
            with storage.as_local_dir(uri) as folder:
                return _load_local(folder, device, dtype, need_image_encoder, source=uri)
        except storage.StorageError as e:
            raise CheckpointError(f"PDIG base model {uri}: {e}") from e
    return _load_local(folder, device, dtype, need_image_encoder, source=uri)


def _load_local(folder: Path, device: str, dtype: torch.dtype, need_image_encoder: bool, source: str) -> BaseModel:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    check_base(folder, need_image_encoder)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    variant = "fp16" if (folder / "unet/diffusion_pytorch_model.fp16.safetensors").is_file() and not (
        folder / "unet/diffusion_pytorch_model.safetensors").is_file() else None
    kw = dict(local_files_only=True, torch_dtype=dtype)
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", variant=variant, **kw)
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", variant=variant, **kw)
    text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder", variant=variant, **kw)
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
    if len(tokenizer) < 1000:  # the silent offline failure mode: a 2-token vocabulary
        raise CheckpointError(f"tokenizer in {folder / 'tokenizer'} is broken ({len(tokenizer)} tokens)")
    # DDIM is what the paper samples with; any SD scheduler config converts.
    scheduler = DDIMScheduler.from_pretrained(folder, subfolder="scheduler")
    base = BaseModel(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler, source=source)
    if need_image_encoder:
        _attach_image_encoder(base, folder / "image_encoder", dtype)
    for m in (vae, text_encoder, unet, base.image_encoder):
        if m is not None:
            m.requires_grad_(False)
            m.eval()
    return base.to(device)


def _attach_image_encoder(base: BaseModel, folder: Path, dtype: torch.dtype) -> None:
    import open_clip

    cfg = json.loads((folder / "open_clip_config.json").read_text())
    try:
        model = open_clip.create_model(f"local-dir:{folder}", precision="fp32")
    except Exception as e:  # noqa: BLE001 - open_clip raises many kinds; say which folder failed
        raise CheckpointError(f"could not load the open_clip image encoder from {folder}: {e}") from e
    visual = model.visual.to(dtype)
    pre = cfg.get("preprocess_cfg", {})
    base.image_encoder = visual
    base.image_size = int(cfg["model_cfg"]["vision_cfg"]["image_size"])
    base.image_mean = tuple(pre.get("mean", base.image_mean))
    base.image_std = tuple(pre.get("std", base.image_std))
    base.image_embed_dim = int(cfg["model_cfg"]["embed_dim"])


# --- tiny and SD1.5-sized random configurations ---------------------------------

TINY = {
    "unet": dict(
        sample_size=32, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8,
    ),
    "vae": dict(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=8, sample_size=64,
    ),
    "text_encoder": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, projection_dim=32),
    "image_encoder": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    },
}

# SD1.5's UNet / VAE / CLIP ViT-L/14 text encoder, and CLIP ViT-H/14 (open_clip's built-in config).
SD15 = {
    "unet": dict(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
    ),
    "vae": dict(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        norm_num_groups=32, sample_size=512,
    ),
    "text_encoder": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                         projection_dim=768, hidden_act="quick_gelu"),
    "image_encoder": "ViT-H-14",
}

SCHEDULER = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon",
)


def clip_tokenizer():
    """A transformers CLIPTokenizer built from open_clip's packaged BPE (identical to
    OpenAI CLIP's vocabulary), so no hub access is ever needed. Building it costs
    seconds, so it is built once and each caller gets its own copy (SCE adds tokens)."""
    import copy

    return copy.deepcopy(_clip_tokenizer())


@functools.lru_cache(maxsize=1)
def _clip_tokenizer():
    import open_clip.tokenizer as oct
    from transformers import CLIPTokenizer

    merges = gzip.open(oct.default_bpe()).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    merges = [tuple(m.split()) for m in merges]
    chars = list(oct.bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(vocab)}, merges=merges, model_max_length=77)


def build_random_base(config: dict, seed: int = 0, image_encoder: bool = True) -> BaseModel:
    """A base with random weights from a config dict (TINY or SD15)."""
    import open_clip
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = clip_tokenizer()
    text_cfg = CLIPTextConfig(vocab_size=len(tokenizer), max_position_embeddings=77, bos_token_id=49406,
                              eos_token_id=49407, pad_token_id=49407, **config["text_encoder"])
    base = BaseModel(
        vae=AutoencoderKL(**config["vae"]), text_encoder=CLIPTextModel(text_cfg), tokenizer=tokenizer,
        unet=UNet2DConditionModel(**config["unet"]), scheduler=DDIMScheduler(**SCHEDULER), source="random",
    )
    if image_encoder:
        enc = config["image_encoder"]
        model_cfg = open_clip.get_model_config(enc) if isinstance(enc, str) else enc
        model = open_clip.CLIP(**model_cfg)
        base.image_encoder = model.visual
        base.image_size = int(model_cfg["vision_cfg"]["image_size"])
        base.image_embed_dim = int(model_cfg["embed_dim"])
        base._open_clip_full = (model, model_cfg)  # kept for saving
    for m in (base.vae, base.text_encoder, base.unet, base.image_encoder):
        if m is not None:
            m.requires_grad_(False)
            m.eval()
    return base


def save_base(base: BaseModel, folder: str | Path) -> Path:
    """Write a base in the layout `load_base` reads (used for the tiny random model)."""
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pipe = StableDiffusionPipeline(
        vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer, unet=base.unet,
        scheduler=base.scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    full = getattr(base, "_open_clip_full", None)
    if full is not None:
        model, model_cfg = full
        enc = folder / "image_encoder"
        enc.mkdir(exist_ok=True)
        (enc / "open_clip_config.json").write_text(json.dumps({
            "model_cfg": model_cfg,
            "preprocess_cfg": {"mean": list(base.image_mean), "std": list(base.image_std)},
        }, indent=2))
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(enc / "open_clip_model.safetensors"))
    return folder


def write_tiny_base(folder: str | Path, seed: int = 0) -> Path:
    """Write a tiny random base (64 px images, about 3M parameters) for tests and the CPU demo."""
    return save_base(build_random_base(TINY, seed=seed), folder)
