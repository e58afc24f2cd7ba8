"""LISA (paper eq. 3-4): a CLIP image embedding of a defect crop -> a trainable
projection to N image tokens -> decoupled cross-attention next to the frozen text
cross-attention, in every cross-attention layer of the UNet.

Reading of alpha and beta. Eq. 4 writes H = alpha * Attn(Q, K^z, V^z) + beta *
Attn(Q, K^p, V^p), where z are the image tokens and p the text tokens, so alpha
weights the image branch and beta the text branch; that is what this module does.
The implementation details then say "when using only image prompts, we set
alpha = 0 and beta = 1.0", which under eq. 4 would switch the image branch off;
we read that sentence as having the two symbols swapped (image-only = text weight
0, image weight 1). All three modes work here:
  text-only:  alpha = 0 (or no image prompt)   -> exactly the frozen SD attention
  image-only: alpha = 1, beta = 0
  mixed:      alpha > 0, beta > 0 (IP-Adapter's usual alpha ~ 0.5-1, beta = 1)

The same processor records the cross-attention probabilities TIDSC needs (text
and image branch separately, head-averaged) at the resolutions it is asked for.
Trainable parameters at SD1.5 + ViT-H/14 scale with N = 4: projection 1024 ->
4 x 768 plus LayerNorm = 3.15M, and K/V for image tokens in the 16 cross-attention
layers = 19.17M, together 22.32M, the paper's figure (see `count_parameters`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F


class ImageProjection(nn.Module):
    """Global image embedding (B, D) -> N image tokens (B, N, C)."""

    def __init__(self, image_embed_dim: int, cross_attention_dim: int, num_tokens: int = 4):
        super().__init__()
        self.num_tokens = num_tokens
        self.cross_attention_dim = cross_attention_dim
        self.proj = nn.Linear(image_embed_dim, num_tokens * cross_attention_dim)
        self.norm = nn.LayerNorm(cross_attention_dim)

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        tokens = self.proj(image_embeds).reshape(-1, self.num_tokens, self.cross_attention_dim)
        return self.norm(tokens)


class MapsComplete(Exception):
    """Raised by a LISA processor once its store holds every map it was asked for,
    so a forward pass run only for those maps (a TIDSC step) skips the layers after
    them; the pipeline catches it."""


class AttentionStore:
    """Collects head-averaged cross-attention probabilities of the rows
    `[batch_offset:]` (the conditional half under classifier-free guidance) at the
    spatial sizes in `sizes` (H*W), averaged over layers of the same size.
    `stop_after`: raise `MapsComplete` once that many layers have been recorded."""

    def __init__(self, sizes: set[int] | None = None, batch_offset: int = 0, stop_after: int | None = None):
        self.sizes = sizes
        self.batch_offset = batch_offset
        self.stop_after = stop_after
        self.layers = 0
        self.text: dict[int, list[torch.Tensor]] = {}
        self.image: dict[int, list[torch.Tensor]] = {}

    def wants(self, hw: int) -> bool:
        return self.sizes is None or hw in self.sizes

    def add(self, hw: int, text_probs: torch.Tensor | None, image_probs: torch.Tensor | None) -> None:
        if text_probs is not None:
            self.text.setdefault(hw, []).append(text_probs[self.batch_offset :])
        if image_probs is not None:
            self.image.setdefault(hw, []).append(image_probs[self.batch_offset :])
        self.layers += 1
        if self.stop_after is not None and self.layers >= self.stop_after:
            raise MapsComplete

    def mean(self, hw: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(text (B, HW, T), image (B, HW, M)) averaged over layers, or None."""
        t = torch.stack(self.text[hw]).mean(0) if self.text.get(hw) else None
        i = torch.stack(self.image[hw]).mean(0) if self.image.get(hw) else None
        return t, i

    def reset(self) -> None:
        self.text.clear()
        self.image.clear()
        self.layers = 0


@dataclass
class LISAContext:
    """State shared by all LISA processors of one UNet, set by the pipeline per call."""

    alpha: float = 1.0
    beta: float = 1.0
    num_text_tokens: int = 77
    image_token_mask: torch.Tensor | None = None  # (B, M) bool, False = padding
    store: AttentionStore | None = None
    kv_cache: dict | None = None  # set by the pipeline for one call: text/image K/V are the same at every step
    extra: dict = field(default_factory=dict)


class LISAAttnProcessor(nn.Module):
    """Decoupled cross-attention (eq. 4): text K/V are the frozen `attn.to_k/to_v`,
    image K/V are this module's trainable `to_k_ip/to_v_ip`; the query is shared.
    `encoder_hidden_states` = [text tokens (num_text_tokens), image tokens (M >= 0)]."""

    def __init__(self, cross_attention_dim: int, inner_dim: int, context: LISAContext):
        super().__init__()
        self.to_k_ip = nn.Linear(cross_attention_dim, inner_dim, bias=False)
        self.to_v_ip = nn.Linear(cross_attention_dim, inner_dim, bias=False)
        self.context = context

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        ctx = self.context
        if encoder_hidden_states is None or hidden_states.ndim != 3:
            raise ValueError("LISAAttnProcessor is for cross-attention on (B, HW, C) inputs")
        residual = hidden_states
        batch, hw, _ = hidden_states.shape
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        heads = attn.heads
        head_dim = query.shape[-1] // heads
        store = ctx.store if ctx.store is not None and ctx.store.wants(hw) else None
        q = query.view(batch, -1, heads, head_dim).transpose(1, 2)
        k_t, v_t, k_i, v_i, mask, has = self._keys_values(attn, encoder_hidden_states, heads, head_dim, q.dtype)
        out = None
        text_probs = image_probs = None
        if ctx.beta != 0 or store is not None:
            h_text, text_probs = _attend(attn, q, k_t, v_t, None, store is not None)
            if ctx.beta != 0:
                out = h_text if ctx.beta == 1.0 else ctx.beta * h_text
        if ctx.alpha != 0 and k_i.shape[2] > 0:
            h_img, image_probs = _attend(attn, q, k_i, v_i, mask, store is not None)
            if has is not None:
                h_img = torch.where(has, h_img, torch.zeros_like(h_img))
            out = ctx.alpha * h_img if out is None else out + ctx.alpha * h_img
        if out is None:
            out = torch.zeros_like(q)
        if store is not None:
            store.add(hw, text_probs, image_probs)  # may raise MapsComplete: nothing after this layer is needed
        out = out.transpose(1, 2).reshape(batch, -1, heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


    def _keys_values(self, attn, encoder_hidden_states, heads: int, head_dim: int, dtype):
        """Text and image K/V (B, heads, tokens, d) and the image-token mask, computed once
        per encoder states when the pipeline provides a cache (they do not change over steps)."""
        ctx = self.context
        key = None
        if ctx.kv_cache is not None:  # (never inside a compiled graph: the pipeline passes no cache there)
            key = (id(self), encoder_hidden_states.data_ptr(), tuple(encoder_hidden_states.shape))
            if key in ctx.kv_cache:
                return ctx.kv_cache[key]
        batch = encoder_hidden_states.shape[0]
        text = encoder_hidden_states[:, : ctx.num_text_tokens]
        image = encoder_hidden_states[:, ctx.num_text_tokens :]
        if attn.norm_cross:
            text = attn.norm_encoder_hidden_states(text)

        def split(x):
            return x.view(batch, -1, heads, head_dim).transpose(1, 2)

        mask = has = None
        masked = ctx.image_token_mask is not None and image.shape[1] > 0
        if masked and ctx.kv_cache is not None and bool(ctx.image_token_mask.all()):  # checked once per call, not
            masked = False  # inside a compiled graph (a data-dependent branch would break it at every layer)
        if masked:
            keep = ctx.image_token_mask.to(encoder_hidden_states.device)
            has = keep.any(-1)[:, None, None, None]  # images of the batch without any image prompt
            keep = keep | ~keep.any(-1, keepdim=True)  # no all -inf rows (NaN); their branch is zeroed
            mask = torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill(~keep, float("-inf"))[:, None, None, :]
        if ctx.kv_cache is None:  # training: gradients reach to_k_ip / to_v_ip
            return split(attn.to_k(text)), split(attn.to_v(text)), split(self.to_k_ip(image)), split(self.to_v_ip(image)), mask, has
        with torch.no_grad():  # sampling: gradients go to the latent only
            kv = (split(attn.to_k(text)), split(attn.to_v(text)), split(self.to_k_ip(image)), split(self.to_v_ip(image)), mask, has)
        ctx.kv_cache[key] = kv
        return kv


def _attend(attn, q, k, v, mask, want_probs: bool):
    """SDPA when no maps are needed (fast, fused); explicit softmax when they are.
    Returns (output (B, heads, HW, d), head-averaged probs (B, HW, T) or None)."""
    if not want_probs:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, is_causal=False), None
    scores = (q @ k.transpose(-1, -2)) * attn.scale
    if mask is not None:
        scores = scores + mask
    probs = scores.float().softmax(-1) if attn.upcast_softmax else scores.softmax(-1)
    out = probs.to(v.dtype) @ v
    return out, probs.mean(1)


class LISAAdapter(nn.Module):
    """The trainable LISA parts of one UNet: the projection and the per-layer K/V."""

    def __init__(self, projection: ImageProjection, processors: dict[str, LISAAttnProcessor], context: LISAContext):
        super().__init__()
        self.projection = projection
        self.layers = nn.ModuleDict({k.replace(".", "__"): v for k, v in processors.items()})
        self.context = context

    @property
    def num_tokens(self) -> int:
        return self.projection.num_tokens


def install_lisa(unet, image_embed_dim: int, num_tokens: int = 4, context: LISAContext | None = None) -> LISAAdapter:
    """Put a LISA processor on every cross-attention layer (self-attention keeps SDPA)."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    context = context or LISAContext()
    modules = dict(unet.named_modules())
    cross_dim = unet.config.cross_attention_dim
    procs: dict[str, object] = {}
    lisa: dict[str, LISAAttnProcessor] = {}
    for name in unet.attn_processors:
        attn = modules[name[: -len(".processor")]]
        if attn.is_cross_attention:
            p = LISAAttnProcessor(cross_dim, attn.to_k.out_features, context)
            p.to(device=attn.to_k.weight.device, dtype=attn.to_k.weight.dtype)
            procs[name] = lisa[name] = p
        else:
            procs[name] = AttnProcessor2_0()
    unet.set_attn_processor(procs)
    projection = ImageProjection(image_embed_dim, cross_dim, num_tokens)
    projection.to(device=unet.device, dtype=unet.dtype)
    return LISAAdapter(projection, lisa, context)


def cross_attention_layers_at(unet, latent_hw: tuple[int, int], map_hw: tuple[int, int]) -> int:
    """How many LISA cross-attention layers a UNet2DConditionModel runs at `map_hw`
    for a latent of `latent_hw` (down block i and up block n-1-i work at latent / 2^i)."""
    n = len(unet.down_blocks)
    level = {f"down_blocks.{i}.": i for i in range(n)} | {f"up_blocks.{j}.": n - 1 - j for j in range(n)} | {"mid_block.": n - 1}
    count = 0
    for name, proc in unet.attn_processors.items():
        if isinstance(proc, LISAAttnProcessor):
            i = next(v for k, v in level.items() if name.startswith(k))
            count += (latent_hw[0] >> i, latent_hw[1] >> i) == tuple(map_hw)
    if count == 0:
        raise ValueError(f"no cross-attention layer at {map_hw} for a {latent_hw} latent")
    return count


def count_parameters(adapter: LISAAdapter) -> dict[str, int]:
    proj = sum(p.numel() for p in adapter.projection.parameters())
    layers = sum(p.numel() for p in adapter.layers.parameters())
    return {"projection": proj, "attention": layers, "total": proj + layers}
