"""PDIG: TIDSC terms on hand-made maps, LISA and SCE on tiny random models, the
pipeline end to end, missing-weight errors, and a tiny Ray Train run."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("open_clip")

from factory.generators.base import CheckpointError  # noqa: E402
from factory.generators.pdig import tidsc  # noqa: E402
from factory.generators.pdig.base_model import TINY, build_random_base, load_base, write_tiny_base  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_tiny_base(tmp_path_factory.mktemp("pdig") / "base")


def _pipe(classes=("crack", "dark"), lisa=True):
    from factory.generators.pdig.lisa import install_lisa
    from factory.generators.pdig.pipeline import PDIGPipeline
    from factory.generators.pdig.sce import add_tokens

    b = build_random_base(TINY, seed=0)
    add_tokens(b.tokenizer, b.text_encoder, list(classes))
    ad = install_lisa(b.unet, b.image_embed_dim, 4) if lisa else None
    pipe = PDIGPipeline(b.vae, b.text_encoder, b.tokenizer, b.unet, b.scheduler, b.image_encoder, ad)
    pipe.set_progress_bar_config(disable=True)
    return b, pipe


# --- TIDSC terms on hand-made maps ----------------------------------------------------

CELLS = (4, 3, 10, 9)  # c1, r1, c2, r2 on a 16 x 16 map


def _blob(cx, cy, size=16, sigma=2.0):
    y, x = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    return torch.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma**2))


def test_inner_and_outer_losses_prefer_attention_inside_the_box():
    mask = tidsc.box_mask(CELLS, (16, 16))
    inside, outside = tidsc.normalize(_blob(7, 6)), tidsc.normalize(_blob(13, 13))
    assert tidsc.inner_loss(inside, mask, 0.2) < tidsc.inner_loss(outside, mask, 0.2)
    assert tidsc.outer_loss(inside, mask, 0.2) < tidsc.outer_loss(outside, mask, 0.2)
    total_in, _ = tidsc.tidsc_loss([(_blob(7, 6), CELLS)], tidsc.TIDSCConfig())
    total_out, _ = tidsc.tidsc_loss([(_blob(13, 13), CELLS)], tidsc.TIDSCConfig())
    assert total_in < total_out


def test_alignment_is_zero_when_projections_equal_the_mask():
    mask = tidsc.box_mask(CELLS, (16, 16))
    lx, ly = tidsc.alignment_losses(mask.clone(), mask, CELLS, L=4)
    assert float(lx) == 0.0 and float(ly) == 0.0
    shifted = torch.roll(mask, shifts=2, dims=1)
    lx, ly = tidsc.alignment_losses(shifted, mask, CELLS, L=4)
    assert float(lx) > 0.0 and float(ly) == 0.0
    assert tidsc.edge_indices(4, 10, 4, 16) == [3, 4, 9, 10]  # last/first cells on both sides of each edge


def test_smoothness_is_zero_for_a_constant_map_and_positive_for_a_rough_one():
    mask = tidsc.box_mask(CELLS, (16, 16))
    s1, s2 = tidsc.smoothness_losses(torch.full((16, 16), 0.3), mask)
    assert float(s1) == 0.0 and float(s2) == 0.0
    rough = torch.rand(16, 16, generator=torch.Generator().manual_seed(0))
    s1, s2 = tidsc.smoothness_losses(rough, mask)
    assert float(s1) > 0 and float(s2) > 0


def test_box_to_cells_scales_pixels_to_the_map():
    assert tidsc.box_to_cells((128, 64, 256, 192), (512, 512), (16, 16)) == (4, 2, 8, 6)
    assert tidsc.box_to_cells((0, 0, 3, 3), (512, 512), (16, 16)) == (0, 0, 1, 1)  # never empty


# --- LISA -------------------------------------------------------------------------------

def _attention():
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(0)
    return Attention(query_dim=32, cross_attention_dim=24, heads=2, dim_head=16).eval()


def test_lisa_alpha_zero_reproduces_text_only_attention_exactly():
    from diffusers.models.attention_processor import AttnProcessor2_0

    from factory.generators.pdig.lisa import LISAAttnProcessor, LISAContext

    attn = _attention()
    x, text, image = torch.randn(2, 64, 32), torch.randn(2, 77, 24), torch.randn(2, 4, 24)
    reference = AttnProcessor2_0()(attn, x, encoder_hidden_states=text)
    ctx = LISAContext(alpha=0.0, beta=1.0)
    proc = LISAAttnProcessor(24, 32, ctx)
    assert torch.equal(proc(attn, x, encoder_hidden_states=torch.cat([text, image], 1)), reference)
    ctx.alpha = 1.0  # mixed: the image tokens now change the output
    assert not torch.allclose(proc(attn, x, encoder_hidden_states=torch.cat([text, image], 1)), reference)
    ctx.alpha, ctx.beta = 1.0, 0.0  # image only: no dependence on the text tokens
    a = proc(attn, x, encoder_hidden_states=torch.cat([text, image], 1))
    b = proc(attn, x, encoder_hidden_states=torch.cat([torch.randn_like(text), image], 1))
    assert torch.allclose(a, b)


def test_lisa_gradients_reach_only_adapter_parameters():
    from factory.generators.pdig.lisa import install_lisa

    b = build_random_base(TINY, seed=1, image_encoder=False)
    adapter = install_lisa(b.unet, image_embed_dim=32, num_tokens=4)
    for p in adapter.parameters():
        p.requires_grad_(True)
    adapter.context.num_text_tokens = 77
    tokens = adapter.projection(torch.randn(1, 32))
    cond = torch.cat([torch.randn(1, 77, 32), tokens], 1)
    b.unet(torch.randn(1, 4, 32, 32), 10, encoder_hidden_states=cond).sample.pow(2).mean().backward()
    ours = {id(p) for p in adapter.parameters()}
    got = [(n, p) for n, p in b.unet.named_parameters() if p.grad is not None]
    assert got and all(id(p) in ours for _, p in got)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in adapter.parameters())
    assert not any(p.grad is not None for p in b.vae.parameters())


def test_lisa_parameter_count_at_sd15_scale_matches_the_paper():
    from diffusers import UNet2DConditionModel

    from factory.generators.pdig.base_model import SD15
    from factory.generators.pdig.lisa import count_parameters, install_lisa

    with torch.device("meta"):  # SD1.5-sized UNet with no memory and no download
        unet = UNet2DConditionModel(**SD15["unet"])
        counts = count_parameters(install_lisa(unet, image_embed_dim=1024, num_tokens=4))  # ViT-H/14 embeds 1024
    assert round(counts["projection"] / 1e6, 2) == 3.15
    assert round(counts["attention"] / 1e6, 2) == 19.17
    assert round(counts["total"] / 1e6, 2) == 22.32


# --- SCE --------------------------------------------------------------------------------

def test_sce_training_step_changes_only_the_new_embedding_rows():
    from factory.generators.pdig.sce import add_tokens, build_prompt

    b = build_random_base(TINY, seed=2, image_encoder=False)
    tokens, emb = add_tokens(b.tokenizer, b.text_encoder, ["crack", "dark"])
    before = emb.weight.detach().clone()
    others = {n: p.detach().clone() for n, p in b.text_encoder.named_parameters() if p is not emb.new}
    opt = torch.optim.AdamW([emb.new], lr=1e-2, weight_decay=0.01)
    ids = b.tokenizer([build_prompt(["crack"])], padding="max_length", max_length=77, return_tensors="pt").input_ids
    assert set(tokens[:2]) <= set(b.tokenizer.convert_ids_to_tokens(ids[0].tolist()))
    b.text_encoder(ids)[0].pow(2).mean().backward()
    opt.step()
    after = emb.weight.detach()
    n = emb.num_base
    assert torch.equal(after[:n], before[:n])
    assert not torch.equal(after[n : n + 2], before[n : n + 2])  # S* and S^crack were in the prompt
    for name, p in b.text_encoder.named_parameters():
        if p is not emb.new:
            assert torch.equal(p, others[name]), name


# --- the pipeline end to end ------------------------------------------------------------

def test_tidsc_moves_defect_attention_into_the_box_for_most_random_boxes():
    from factory.generators.pdig.pipeline import BoxPrompt
    from factory.generators.pdig.sce import build_prompt

    _, pipe = _pipe()
    rng = np.random.default_rng(0)
    wins, trials = 0, 4
    for trial in range(trials):
        x1, y1 = rng.integers(0, 36, size=2)
        w, h = rng.integers(14, 26, size=2)
        boxes = [[BoxPrompt((int(x1), int(y1), int(min(64, x1 + w)), int(min(64, y1 + h))), "<pdig-crack>")]]
        inside = []
        for steps in (0, 3):
            out = pipe([build_prompt(["crack"])], boxes, num_inference_steps=6, tidsc_steps=steps, step_size=1000.0,
                       step_size_end=1000.0, generator=torch.Generator().manual_seed(trial), return_attention=True)
            inside.append(out.inside[0][0]["text"])
        wins += inside[1] > inside[0]
        assert out.boxes == boxes and out.images.shape == (1, 64, 64, 3)
        assert out.losses and out.losses[-1]["total"] < out.losses[0]["total"]
    assert wins >= trials - 1, wins


def test_pipeline_handles_several_boxes_classes_and_image_prompts():
    from factory.generators.pdig.pipeline import BoxPrompt
    from factory.generators.pdig.sce import build_prompt

    _, pipe = _pipe()
    boxes = [
        [BoxPrompt((4, 4, 24, 24), "<pdig-crack>", torch.randn(32)), BoxPrompt((36, 30, 60, 60), "<pdig-dark>", torch.randn(32))],
        [BoxPrompt((10, 40, 30, 60), "<pdig-dark>", torch.randn(32))],
    ]
    prompts = [build_prompt(["crack", "dark"]), build_prompt(["dark"])]
    out = pipe(prompts, boxes, num_inference_steps=3, tidsc_steps=2, alpha=0.5, beta=1.0, return_attention=True)
    assert out.images.shape == (2, 64, 64, 3)
    assert [len(a) for a in out.attention] == [2, 1]
    assert out.attention[0][0]["text"].shape == (16, 16)
    assert out.attention[0][0]["image"].shape == (4, 16, 16)  # N = 4 image tokens per box


# --- loading and errors -----------------------------------------------------------------

def test_missing_base_files_raise_a_checkpoint_error_naming_them(tiny_dir, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_base(tmp_path / "nowhere")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir, broken)
    (broken / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    shutil.rmtree(broken / "image_encoder")
    with pytest.raises(CheckpointError) as e:
        load_base(broken)
    assert "unet/diffusion_pytorch_model.safetensors" in str(e.value)
    assert "image_encoder/open_clip_config.json" in str(e.value)


def test_generator_without_base_or_checkpoint_files_says_what_to_provide(tmp_path):
    from factory.generators.pdig import PDIGGenerator

    with pytest.raises(CheckpointError, match="params.base"):
        PDIGGenerator.load(None, {}, "cpu")
    with pytest.raises(CheckpointError, match="pdig_config.json"):
        PDIGGenerator.load(str(tmp_path), {}, "cpu")
    with pytest.raises(ValueError, match="unknown pdig params"):
        PDIGGenerator.load(None, {"stepz": 3}, "cpu")


def test_mask_components_become_class_boxes():
    from factory.generators.pdig.data import mask_boxes

    m = np.zeros((40, 40), np.uint8)
    m[2:8, 3:10] = 3
    m[20:30, 20:25] = 3
    m[:, 35:37] = 4  # busbar: structure, not a defect
    m[12:18, 12:18] = 1
    boxes = mask_boxes(m, {1: "dark", 3: "crack"}, min_area=4)
    assert sorted(boxes) == [("crack", 3, 2, 10, 8), ("crack", 20, 20, 25, 30), ("dark", 12, 12, 18, 18)]


# --- training under Ray Train, then generating from the checkpoint ---------------------

def test_ray_train_run_writes_a_small_checkpoint_the_generator_loads(ray_local, shared_data, tiny_dir, tmp_path):
    from factory.generators.base import load_generator
    from factory.core import Box, WorkItem
    from factory.training.pdig import PDIGTrainConfig, train_pdig

    out = tmp_path / "ckpt"
    metrics = train_pdig(PDIGTrainConfig(
        data=str(shared_data / "pv_vision_crack" / "train"), base=str(tiny_dir), out=f"file://{out}",
        limit=4, max_steps=2, batch_size=2, bank_size=2, num_workers=1, storage_path=str(tmp_path / "ray"),
    ))
    assert metrics["steps"] == 2 and np.isfinite(metrics["loss"])
    config = json.loads((out / "pdig_config.json").read_text())
    assert config["base"] == str(tiny_dir) and config["classes"]
    assert (out / "pdig_adapter.safetensors").stat().st_size < 1_000_000  # trained parts only, no base weights

    gen = load_generator("pdig", str(out), {"steps": 3, "tidsc_steps": 2})
    cls = config["classes"][0]
    item = WorkItem(item_id="a", index=0, generator="pdig", checkpoint=str(out), width=64, height=48, channels=1, seed=3,
                    boxes=(Box(0, cls, 8, 8, 30, 30),))
    (sample,) = gen.generate([item])
    assert sample.image.shape == (48, 64, 1) and sample.image.dtype == np.uint8
    assert sample.boxes == list(item.boxes)
    assert "text" in sample.meta["attention_inside"][0] and "image" in sample.meta["attention_inside"][0]
    with pytest.raises(ValueError, match="not trained"):
        gen.generate([WorkItem(item_id="b", index=1, generator="pdig", checkpoint=str(out), width=64, height=64, channels=1,
                               seed=1, boxes=(Box(0, "scratch", 1, 1, 20, 20),))])


def test_two_ray_train_workers_take_equal_halves_and_train_to_the_end(ray_local, shared_data, tiny_dir, tmp_path):
    """DDP over 2 CPU workers: Ray Data gives each rank 2 of the 4 examples, so each
    runs 2 steps per epoch (no rank waits on another that ran out), for 2 epochs."""
    from factory.training.pdig import PDIGTrainConfig, train_pdig

    out = tmp_path / "ckpt2"
    metrics = train_pdig(PDIGTrainConfig(
        data=str(shared_data / "pv_vision_crack" / "train"), base=str(tiny_dir), out=f"file://{out}",
        limit=4, epochs=2, batch_size=1, bank_size=1, num_workers=2, storage_path=str(tmp_path / "ray"),
    ))
    assert metrics["steps"] == 4 and metrics["epochs"] == 2 and np.isfinite(metrics["loss"])
    assert (out / "pdig_config.json").exists() and not (out / "train_state.pt").exists()
