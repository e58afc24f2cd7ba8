"""The trained parts of PDIG (SCE rows, LISA projection and K/V, plus a bank of
image-prompt embeddings per class) as one small checkpoint folder:

    pdig_config.json          classes, tokens, sizes, base it was trained on
    pdig_adapter.safetensors  sce.new, projection.*, layers.<name>.to_{k,v}_ip.weight, bank.<class>

It loads onto any base whose text width, image-embedding width and cross-attention
layers match (checked, with a clear error otherwise): the base is never copied.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from factory.generators.base import CheckpointError
from factory.generators.pdig.base_model import BaseModel
from factory.generators.pdig.lisa import LISAAdapter, install_lisa
from factory.generators.pdig.sce import SCEEmbedding, add_tokens

FORMAT = "pdig-adapter/1"
CONFIG = "pdig_config.json"
WEIGHTS = "pdig_adapter.safetensors"


@dataclass
class PDIGParts:
    classes: list[str]
    tokens: list[str]
    sce: SCEEmbedding
    lisa: LISAAdapter
    bank: dict[str, torch.Tensor] = field(default_factory=dict)  # class -> (K, D) CLIP embeddings of crops
    config: dict = field(default_factory=dict)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [self.sce.new, *self.lisa.parameters()]

    def state_dict(self) -> dict[str, torch.Tensor]:
        sd = {"sce.new": self.sce.new.detach()}
        sd |= {f"projection.{k}": v for k, v in self.lisa.projection.state_dict().items()}
        sd |= {f"layers.{k}": v for k, v in self.lisa.layers.state_dict().items()}
        sd |= {f"bank.{c}": e for c, e in self.bank.items()}
        return {k: v.detach().float().cpu().contiguous() for k, v in sd.items()}


def layer_shapes(unet) -> dict[str, int]:
    modules = dict(unet.named_modules())
    out = {}
    for name in unet.attn_processors:
        attn = modules[name[: -len(".processor")]]
        if attn.is_cross_attention:
            out[name.replace(".", "__")] = attn.to_k.out_features
    return out


def create_parts(base: BaseModel, classes: list[str], num_tokens: int = 4) -> PDIGParts:
    """Fresh trainable parts on a loaded base (SCE tokens added, LISA installed)."""
    if base.image_encoder is None:
        raise CheckpointError("LISA needs the image encoder: provide image_encoder/ in the base folder")
    tokens, sce = add_tokens(base.tokenizer, base.text_encoder, classes)
    lisa = install_lisa(base.unet, base.image_embed_dim, num_tokens)
    config = {
        "format": FORMAT, "classes": list(classes), "tokens": tokens, "num_tokens": num_tokens,
        "image_embed_dim": base.image_embed_dim, "text_width": int(sce.embedding_dim),
        "cross_attention_dim": int(base.unet.config.cross_attention_dim), "layers": layer_shapes(base.unet),
        "image_size": base.image_size,
    }
    return PDIGParts(classes=list(classes), tokens=tokens, sce=sce, lisa=lisa, config=config)


def save_parts(parts: PDIGParts, folder: str | Path, extra: dict | None = None) -> Path:
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = parts.config | {"bank": {c: int(e.shape[0]) for c, e in parts.bank.items()}} | (extra or {})
    save_file(parts.state_dict(), str(folder / WEIGHTS))
    (folder / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True))
    return folder


def read_config(uri: str | Path) -> dict:
    """The checkpoint's config, or a CheckpointError naming the files to provide."""
    from factory.storage import uri as storage

    uri = str(uri)
    try:
        missing = [n for n in (CONFIG, WEIGHTS) if not storage.exists(storage.join(uri, n))]
    except storage.StorageError as e:
        raise CheckpointError(f"PDIG checkpoint {uri}: {e}") from e
    if missing:
        raise CheckpointError(
            f"PDIG checkpoint {uri} is missing {', '.join(missing)}; provide a folder written by "
            "`factory train pdig` (pdig_config.json + pdig_adapter.safetensors)"
        )
    config = json.loads(storage.read_bytes(storage.join(uri, CONFIG)))
    if config.get("format") != FORMAT:
        raise CheckpointError(f"PDIG checkpoint {uri}: unknown format {config.get('format')!r}, expected {FORMAT!r}")
    return config


def load_parts(base: BaseModel, uri: str | Path) -> PDIGParts:
    """Attach a trained checkpoint to a loaded base, after checking they match."""
    from safetensors.torch import load as load_bytes

    from factory.storage import uri as storage

    uri = str(uri)
    config = read_config(uri)
    problems = []
    if base.image_encoder is not None and config["image_embed_dim"] != base.image_embed_dim:
        problems.append(f"image embedding width {config['image_embed_dim']} vs base {base.image_embed_dim}")
    width = base.text_encoder.get_input_embeddings().weight.shape[1]
    if config["text_width"] != width:
        problems.append(f"text embedding width {config['text_width']} vs base {width}")
    if config["layers"] != layer_shapes(base.unet):
        problems.append("cross-attention layers differ from the base UNet's")
    if problems:
        raise CheckpointError(f"PDIG checkpoint {uri} does not match the base {base.source}: " + "; ".join(problems))
    sd = load_bytes(storage.read_bytes(storage.join(uri, WEIGHTS)))
    tokens, sce = add_tokens(base.tokenizer, base.text_encoder, config["classes"])
    lisa = install_lisa(base.unet, config["image_embed_dim"], config["num_tokens"])
    dtype, device = base.unet.dtype, base.unet.device
    with torch.no_grad():
        sce.new.copy_(sd["sce.new"])
        lisa.projection.load_state_dict({k[len("projection."):]: v for k, v in sd.items() if k.startswith("projection.")})
        lisa.layers.load_state_dict({k[len("layers."):]: v for k, v in sd.items() if k.startswith("layers.")})
    sce.to(device)
    lisa.to(device=device, dtype=dtype)
    bank = {k[len("bank."):]: v for k, v in sd.items() if k.startswith("bank.")}
    for p in [sce.new, *lisa.parameters()]:
        p.requires_grad_(False)
    return PDIGParts(classes=config["classes"], tokens=tokens, sce=sce, lisa=lisa, bank=bank, config=config)
