"""PDIGPipeline: Stable Diffusion + SCE tokens + LISA image tokens + TIDSC box
guidance, in one readable file (diffusers style): `__call__` reads top to bottom,
each step of the loop is a method of its own.

Per denoising step t (DDIM, `num_inference_steps`):
  1. for the first `tidsc_steps` steps: run the UNet on the conditional input with
     grad, read the defect tokens' cross-attention maps, compute the TIDSC loss
     (eq. 18) and move the latent against its gradient (BoxDiff's update);
  2. the usual classifier-free-guided noise prediction and DDIM step.

What this costs: only step 1 materializes attention probabilities, and only in the
cross-attention layers at the map size TIDSC reads (16x16 at SD1.5 scale); its
forward stops after the last of those layers (`MapsComplete`). Every other layer
and step runs `scaled_dot_product_attention`. `return_attention=True` (maps for
reports) also records the CFG passes' maps at that size: opt-in, free when off.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from diffusers import DiffusionPipeline

from factory.generators.pdig.lisa import AttentionStore, LISAAdapter, LISAContext, MapsComplete, cross_attention_layers_at
from factory.generators.pdig.sce import token_indices, word_indices
from factory.generators.pdig.tidsc import TIDSCConfig, box_to_cells, inside_fraction, tidsc_loss


@dataclass
class BoxPrompt:
    """One box to fill: pixel box of the output image (x2/y2 exclusive), the prompt
    token (or word) naming its defect, and optionally a CLIP image embedding of an
    example defect crop (the LISA image prompt for this box)."""

    box: tuple[int, int, int, int]
    token: str
    image_embed: torch.Tensor | None = None


@dataclass
class PDIGOutput:
    images: np.ndarray  # (B, H, W, 3) float in [0, 1]
    boxes: list[list[BoxPrompt]]
    attention: list[list[dict[str, np.ndarray]]] | None = None  # per image, per box: {"text", "image"} maps
    inside: list[list[dict[str, float]]] = field(default_factory=list)  # share of attention inside each box
    inside_over: str = ""  # which steps' maps `inside` averages: "TIDSC steps" (free) or "all steps" (return_attention)
    losses: list[dict[str, float]] = field(default_factory=list)  # TIDSC terms per guided step


@dataclass
class _Run:
    """What every denoising step of one `__call__` uses."""

    cond: torch.Tensor  # conditional encoder states (text + image tokens)
    embeds: torch.Tensor  # [uncond, cond] with classifier-free guidance, else cond
    keep: torch.Tensor | None  # image-token mask of cond
    keep_cfg: torch.Tensor | None  # ... of embeds
    guidance_scale: float
    do_cfg: bool
    plan: list  # `map_plan`: which attention columns belong to which box
    map_hw: tuple[int, int]
    tidsc: TIDSCConfig
    tidsc_steps: int  # steps with a TIDSC update (0: none, e.g. no boxes)
    step_sizes: np.ndarray  # TIDSC latent update size per step
    map_layers: int  # cross-attention layers at map_hw (a TIDSC pass stops after the last)
    record: AttentionStore | None  # `return_attention`: the guided passes' maps
    cache: dict = field(default_factory=dict)  # per-layer K/V of the fixed encoder states

    @property
    def cells(self) -> list[tuple]:
        return [c for *_, c in self.plan]


class PDIGPipeline(DiffusionPipeline):
    model_cpu_offload_seq = "text_encoder->unet->vae"

    def __init__(self, vae, text_encoder, tokenizer, unet, scheduler, image_encoder=None, adapter: LISAAdapter | None = None):
        super().__init__()
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                              image_encoder=image_encoder, adapter=adapter)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        if adapter is None:  # text-only SD still needs the map-recording processors
            from factory.generators.pdig.lisa import install_lisa

            adapter = install_lisa(unet, image_embed_dim=1, num_tokens=1)
            self.register_modules(adapter=None)
        self.context: LISAContext = adapter.context
        self._projection = adapter.projection if self.adapter is not None else None
        self._compiled_unet = None

    def compile_unet(self, **compile_kwargs) -> None:
        """torch.compile the UNet for the classifier-free-guided passes. TIDSC passes
        (and passes recording maps) stay eager: they take the explicit-attention branch
        and stop early, which a compiled graph would only re-trace."""
        self._compiled_unet = torch.compile(self.unet, **compile_kwargs)

    # --- helpers -----------------------------------------------------------------
    def encode_prompt(self, prompts: list[str], device: torch.device) -> torch.Tensor:
        ids = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        return self.text_encoder(ids.to(device))[0]

    def image_tokens(self, boxes: list[list[BoxPrompt]], dtype, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """Per image: the LISA tokens of its boxes' image prompts, concatenated and padded.
        Returns (cond tokens (B, M, C), uncond tokens (zero embeddings), keep mask (B, M))."""
        if self._projection is None or not any(b.image_embed is not None for bs in boxes for b in bs):
            return None
        n = self._projection.num_tokens
        most = max(len(bs) for bs in boxes)
        embed_dim = self._projection.proj.in_features
        embeds = torch.zeros(len(boxes), most, embed_dim, device=device, dtype=dtype)
        keep = torch.zeros(len(boxes), most * n, dtype=torch.bool, device=device)
        for i, bs in enumerate(boxes):
            for j, b in enumerate(bs):
                if b.image_embed is not None:
                    embeds[i, j] = b.image_embed.to(device, dtype).reshape(-1)
                    keep[i, j * n : (j + 1) * n] = True
        cond = self._projection(embeds.flatten(0, 1)).reshape(len(boxes), most * n, -1)
        uncond = self._projection(torch.zeros_like(embeds).flatten(0, 1)).reshape(len(boxes), most * n, -1)
        return cond, uncond, keep

    def map_sizes(self, latent_hw: tuple[int, int], attention_res: int | None) -> tuple[int, int]:
        """The cross-attention map size TIDSC works on: `attention_res` (side at the
        latent's aspect) or, by default, the available one closest to latent/4 (16x16
        for SD1.5 at 512 px, as in BoxDiff)."""
        lh, lw = latent_hw
        blocks = self.unet.config.down_block_types
        sizes = [(lh >> i, lw >> i) for i, b in enumerate(blocks) if "CrossAttn" in b]
        if not sizes:
            raise ValueError("this UNet has no cross-attention layers")
        if attention_res is not None:
            match = [s for s in sizes if s[0] == attention_res or s[1] == attention_res]
            if not match:
                raise ValueError(f"attention_res={attention_res} not available; choose from {[s[0] for s in sizes]}")
            return match[0]
        return min(sizes, key=lambda s: (abs(s[0] - lh / 4), -s[0]))

    def map_plan(self, boxes, prompts, map_hw, image_hw) -> list[tuple[int, int, str, list[int] | int, tuple]]:
        """Which attention columns belong to which box, worked out once per call:
        [(image i, box j, "text" | "image", token positions or image-token index, box cells)]."""
        plan = []
        n = self._projection.num_tokens if self._projection is not None else 0
        for i, (bs, prompt) in enumerate(zip(boxes, prompts)):
            for j, b in enumerate(bs):
                cells = box_to_cells(b.box, image_hw, map_hw)
                if self.context.beta != 0:
                    idx = token_indices(self.tokenizer, prompt, b.token) if b.token.startswith("<") else []
                    idx = idx or word_indices(self.tokenizer, prompt, b.token)
                    if not idx:
                        raise ValueError(f"token {b.token!r} not found in prompt {prompt!r}")
                    plan.append((i, j, "text", idx, cells))
                if self.context.alpha != 0 and b.image_embed is not None:
                    plan += [(i, j, "image", k, cells) for k in range(j * n, (j + 1) * n)]
        return plan

    @staticmethod
    def defect_maps(text, image, plan, map_hw) -> list[torch.Tensor]:
        """The (S, K) map of every plan entry from head-averaged probs (B, HW, tokens)."""
        out = []
        for i, _, kind, idx, _ in plan:
            if kind == "text":
                out.append(text[i][:, idx].mean(-1).reshape(map_hw))
            else:
                out.append(image[i][:, idx].reshape(map_hw))
        return out

    # --- the pipeline --------------------------------------------------------------
    def __call__(
        self,
        prompt: list[str],
        boxes: list[list[BoxPrompt]],
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 60,
        guidance_scale: float = 7.5,
        tidsc_steps: int = 30,
        tidsc: TIDSCConfig = TIDSCConfig(),
        step_size: float = 20.0,
        step_size_end: float = 10.0,
        alpha: float = 1.0,
        beta: float = 1.0,
        attention_res: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        return_attention: bool = False,
    ) -> PDIGOutput:
        if len(prompt) != len(boxes):
            raise ValueError(f"{len(prompt)} prompts but {len(boxes)} box lists")
        if not 0 <= tidsc_steps <= num_inference_steps:
            raise ValueError(f"tidsc_steps must be in [0, {num_inference_steps}], got {tidsc_steps}")
        height = height or self.unet.config.sample_size * self.vae_scale_factor
        width = width or self.unet.config.sample_size * self.vae_scale_factor
        dtype = self.unet.dtype
        device = self.device  # looked up once: diffusers scans every module for it
        self.context.alpha, self.context.beta = float(alpha), float(beta)

        # 1. conditions: text tokens (+ LISA image tokens per box), and the unconditional ones
        cond, uncond, keep = self._conditions(prompt, boxes, alpha, dtype, device)
        do_cfg = guidance_scale > 1.0

        # 2. latents and schedule
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        shape = (len(prompt), self.unet.config.in_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)
        latents = self._initial_latents(shape, generator, latents, dtype, device)
        map_hw = self.map_sizes(shape[2:], attention_res)
        plan = self.map_plan(boxes, prompt, map_hw, (height, width))
        run = _Run(
            cond=cond, embeds=torch.cat([uncond, cond]) if do_cfg else cond, keep=keep,
            keep_cfg=torch.cat([keep, keep]) if (keep is not None and do_cfg) else keep, guidance_scale=guidance_scale,
            do_cfg=do_cfg, plan=plan, map_hw=map_hw, tidsc=tidsc, tidsc_steps=tidsc_steps if plan else 0,
            step_sizes=np.linspace(step_size, step_size_end, max(tidsc_steps, 1)),
            map_layers=cross_attention_layers_at(self.unet, shape[2:], map_hw),  # a TIDSC pass stops after the last
            record=AttentionStore({map_hw[0] * map_hw[1]}, batch_offset=len(prompt) if do_cfg else 0) if return_attention else None,
        )

        # 3. denoising loop
        latents, seen, losses = self._denoise(latents, run)

        # 4. decode
        images = self._decode(latents)
        attention, inside = None, []
        if seen is not None:
            attention, inside = self._summarize(seen, plan, boxes)
            attention = attention if return_attention else None
        return PDIGOutput(images=images, boxes=boxes, attention=attention, inside=inside, losses=losses,
                          inside_over="all steps" if return_attention else "TIDSC steps")

    def _conditions(self, prompt: list[str], boxes: list[list[BoxPrompt]], alpha: float, dtype, device):
        """(cond, uncond, keep): the text tokens, with the LISA image tokens of the boxes
        appended when there are any (`keep` masks the padding among them, else None)."""
        with torch.no_grad():
            text_cond = self.encode_prompt(prompt, device).to(dtype)
            text_uncond = self.encode_prompt([""] * len(prompt), device).to(dtype)
            self.context.num_text_tokens = text_cond.shape[1]
            img = self.image_tokens(boxes, dtype, device) if alpha != 0 else None
        if img is None:
            return text_cond, text_uncond, None
        return torch.cat([text_cond, img[0]], 1), torch.cat([text_uncond, img[1]], 1), img[2]

    def _initial_latents(self, shape, generator, latents: torch.Tensor | None, dtype, device) -> torch.Tensor:
        if latents is None:
            from diffusers.utils.torch_utils import randn_tensor

            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        return latents.to(device, dtype) * self.scheduler.init_noise_sigma

    def _decode(self, latents: torch.Tensor) -> np.ndarray:
        """(B, H, W, 3) float images in [0, 1]."""
        with torch.no_grad():
            image = self.vae.decode(latents / self.vae.config.scaling_factor).sample
        return (image.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()

    def _denoise(self, latents: torch.Tensor, run: "_Run"):
        """The DDIM loop: a TIDSC update of the latent in the first `tidsc_steps` steps, then
        the guided step. The encoder states are fixed for the call, so each layer's K/V are
        computed once. Returns (latents, defect maps summed over the steps that read them
        (None if none did), the TIDSC terms per guided step)."""
        ctx, hw = self.context, run.map_hw[0] * run.map_hw[1]
        seen: list[torch.Tensor] | None = None
        losses: list[dict[str, float]] = []
        try:
            for i, t in enumerate(self.scheduler.timesteps):
                if i < run.tidsc_steps:
                    latents, maps, terms = self._tidsc_update(latents, t, run, float(run.step_sizes[i]))
                    losses.append({"step": i} | terms)
                    if run.record is None:
                        seen = _add(seen, maps)
                latents = self._guided_step(latents, t, run)
                if run.record is not None:
                    text_p, image_p = run.record.mean(hw)
                    seen = _add(seen, self.defect_maps(text_p, image_p, run.plan, run.map_hw))
                    run.record.reset()
        finally:  # never leave a call's maps, masks or K/V on the shared context (training uses it too)
            ctx.store = ctx.kv_cache = ctx.image_token_mask = None
        return latents, seen, losses

    def _tidsc_update(self, latents: torch.Tensor, t, run: "_Run", step_size: float):
        """Step 1 of a guided step: the conditional UNet pass (stopped once the maps TIDSC
        reads are recorded), the TIDSC loss (eq. 18) and the latent moved against its gradient.
        Returns (latents, the defect maps, {"total": loss, **terms})."""
        ctx, hw = self.context, run.map_hw[0] * run.map_hw[1]
        ctx.store = AttentionStore({hw}, stop_after=run.map_layers)
        ctx.image_token_mask, ctx.kv_cache = run.keep, run.cache
        with torch.enable_grad():
            x = latents.detach().requires_grad_(True)
            try:
                self.unet(self.scheduler.scale_model_input(x, t), t, encoder_hidden_states=run.cond)
            except MapsComplete:
                pass
            text_p, image_p = ctx.store.mean(hw)
            maps = self.defect_maps(text_p, image_p, run.plan, run.map_hw)
            total, terms = tidsc_loss([m.float() for m in maps], run.cells, run.tidsc)
            grad = torch.autograd.grad(total, x)[0]
        ctx.store = None
        return (x - step_size * grad).detach(), [m.detach() for m in maps], {"total": float(total.detach())} | terms

    def _guided_step(self, latents: torch.Tensor, t, run: "_Run") -> torch.Tensor:
        """Step 2: the classifier-free-guided noise prediction and the DDIM step (maps
        recorded only with `return_attention`)."""
        ctx = self.context
        ctx.store = run.record
        ctx.image_token_mask = run.keep_cfg
        with torch.no_grad():
            latent_in = torch.cat([latents] * 2) if run.do_cfg else latents
            latent_in = self.scheduler.scale_model_input(latent_in, t)
            unet = self._compiled_unet if self._compiled_unet is not None and run.record is None else self.unet
            ctx.kv_cache = run.cache if unet is self.unet else None  # a compiled graph keeps its own
            noise = unet(latent_in, t, encoder_hidden_states=run.embeds).sample
            if run.do_cfg:
                noise_uncond, noise_cond = noise.chunk(2)
                noise = noise_uncond + run.guidance_scale * (noise_cond - noise_uncond)
            return self.scheduler.step(noise, t, latents).prev_sample

    @staticmethod
    def _summarize(seen, plan, boxes):
        """Per image, per box: the text-token map (S, K) and the image-token maps (N, S, K),
        each normalized to sum 1, and the mean share of each kind inside the box."""
        maps: list[list[dict[str, list]]] = [[{} for _ in bs] for bs in boxes]
        cells_of: dict[tuple[int, int], tuple] = {}
        for a, (i, j, kind, _, cells) in zip(seen, plan):
            maps[i][j].setdefault(kind, []).append(a.float())
            cells_of[i, j] = cells
        attention, inside = [], []
        for i, per_image in enumerate(maps):
            # image tokens share one softmax, so their mean map is flat: keep them apart
            inside.append([{k: float(np.mean([inside_fraction(a, cells_of[i, j]) for a in v])) for k, v in d.items()}
                           for j, d in enumerate(per_image)])
            attention.append([{k: torch.stack([a / a.sum().clamp_min(1e-12) for a in v]).squeeze(0).cpu().numpy()
                               for k, v in d.items()} for d in per_image])
        return attention, inside


def _add(acc: list[torch.Tensor] | None, maps: list[torch.Tensor]) -> list[torch.Tensor]:
    return maps if acc is None else [a + m for a, m in zip(acc, maps)]
