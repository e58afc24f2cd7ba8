"""PDIG: TIDSC terms on hand-made maps, LISA and SCE on tiny random models, the
pipeline end to end, missing-weight errors, and a tiny Ray Train run."""

from __future__ import annotations

import json
import os
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


# --- TIDSC: each of eq. 5-18 on a hand-made map, against values worked out by hand ----

# A 4 x 4 map (max 1, so normalization leaves it as is) and a 2 x 2 box: columns 1-2, rows 1-2.
A = torch.tensor([[0.0, 0.2, 0.0, 0.0],
                  [0.0, 1.0, 0.5, 0.0],
                  [0.0, 0.4, 0.8, 0.1],
                  [0.3, 0.0, 0.0, 0.0]])
BOX = (1, 1, 3, 3)  # c1, r1, c2, r2 (exclusive)
# inside cells: 1.0, 0.5, 0.4, 0.8; outside cells: 0.2, 0.1, 0.3 and nine zeros


def _terms(a=A, cells=BOX, **cfg):
    t = tidsc.tidsc_terms(a[None], [cells], tidsc.TIDSCConfig(**cfg))
    return {k: float(v[0]) for k, v in t.items()}


def test_inner_and_outer_eq5_eq7_top_p_by_hand():
    # P = 0.5 of 4 box cells -> k = 2. Eq. 5: 1 - (1.0 + 0.8) / 2; eq. 7: (0.3 + 0.2) / 2.
    t = _terms(P=0.5)
    assert t["inner"] == pytest.approx(0.1) and t["outer"] == pytest.approx(0.25)
    # P = 1: every cell of the box -> k = 4: 1 - 2.7 / 4; outside top 4: (0.3 + 0.2 + 0.1 + 0) / 4.
    t = _terms(P=1.0)
    assert t["inner"] == pytest.approx(0.325) and t["outer"] == pytest.approx(0.15)
    # A fraction too small for one cell still takes one: P = 0.1 of 4 -> k = 1.
    t = _terms(P=0.1)
    assert t["inner"] == pytest.approx(0.0) and t["outer"] == pytest.approx(0.3)
    # A count: P_count = 3 -> 1 - (1.0 + 0.8 + 0.5) / 3; (0.3 + 0.2 + 0.1) / 3.
    t = _terms(P_count=3)
    assert t["inner"] == pytest.approx(1 - 2.3 / 3) and t["outer"] == pytest.approx(0.2)
    # A count beyond the box is capped per region: 4 box cells, 12 outside cells.
    t = _terms(P_count=20)
    assert t["inner"] == pytest.approx(0.325) and t["outer"] == pytest.approx(0.6 / 12)


def test_p_has_one_meaning_and_bad_values_name_the_field():
    from factory.generators.pdig import PDIGGenerator

    for bad in (0.0, 1.5, 4.0):
        with pytest.raises(ValueError, match="P is a fraction"):
            tidsc.TIDSCConfig(P=bad)
    with pytest.raises(ValueError, match="P_count"):
        tidsc.TIDSCConfig(P_count=0)
    Params = PDIGGenerator.Params
    with pytest.raises(ValueError, match="P is a fraction of the box's cells"):
        Params.model_validate({"P": 4})  # was read as a count of 4 before; now refused, pointing at P_count
    with pytest.raises(ValueError, match="not both"):
        Params.model_validate({"P": 0.3, "P_count": 4})
    assert Params.model_validate({"P_count": 4}).P_count == 4
    assert Params.model_validate({"P": 1}).P == 1.0  # 1 and 1.0 both mean the whole box


def test_alignment_eq9_to_eq14_by_hand():
    # eq. 9-10: column max of mask [0, 1, 1, 0], of the map [0.3, 1.0, 0.8, 0.1] -> |diff| [0.3, 0, 0.2, 0.1]
    # eq. 12-13: row max of mask [0, 1, 1, 0], of the map [0.2, 1.0, 0.8, 0.3] -> |diff| [0.2, 0, 0.2, 0.3]
    # L = 4: one cell each side of each edge, weight 1: mean of all four terms.
    t = _terms(L=4)
    assert t["align_x"] == pytest.approx((0.3 + 0 + 0.2 + 0.1) / 4)
    assert t["align_y"] == pytest.approx((0.2 + 0 + 0.2 + 0.3) / 4)
    # L = 2: the same cells at weight 1/2 each: (0.5 * 0.6) / 2 = 0.15.
    assert _terms(L=2)["align_x"] == pytest.approx(0.15)
    # L = 6: windows [-0.5, 2.5] and [1.5, 4.5]; weights [1, 1.5, 1.5, 1] (0.5 off each map border dropped).
    assert _terms(L=6)["align_x"] == pytest.approx((0.3 * 1 + 0 * 1.5 + 0.2 * 1.5 + 0.1 * 1) / 5)
    # L = 3 (odd): windows [0.25, 1.75] and [2.25, 3.75]: weights [0.75, 0.75, 0.75, 0.75].
    assert _terms(L=3)["align_x"] == pytest.approx(0.75 * 0.6 / 3)


def test_edge_sampling_is_symmetric_for_every_L_and_counts_repeats():
    e1, e2 = torch.tensor([6]), torch.tensor([7])  # a one-cell box (cell 6) on a 16-cell axis
    for L in range(1, 10):
        w = tidsc.edge_weights(e1, e2, L, 16)[0]
        assert float(w.sum()) == pytest.approx(L)  # L terms' worth, none dropped by de-duplication
        assert torch.allclose(w, w.flip(0).roll(-3))  # mirror image about the box's centre (6.5)
        inside = float(w[6])
        assert inside == pytest.approx(min(L / 4, 1) * 2)  # the box's cell is sampled from both edges
    # L = 4 on a wide box: the last cell inside and the first outside each edge, as before.
    w = tidsc.edge_weights(torch.tensor([4]), torch.tensor([10]), 4, 16)[0]
    assert w.nonzero().flatten().tolist() == [3, 4, 9, 10] and set(w[w > 0].tolist()) == {1.0}


def test_smoothness_eq15_eq16_by_hand():
    # eq. 15 at the box cells, forward differences / (S*K = 16):
    #   x: |0.5-1.0| + |0-0.5| + |0.8-0.4| + |0.1-0.8| = 2.1;  y: |0.4-1.0| + |0.8-0.5| + |0-0.4| + |0-0.8| = 2.1
    # eq. 16, central second differences at the box cells:
    #   x: |0.5-2+0| + |0-1+1| + |0.8-0.8+0| + |0.1-1.6+0.4| = 2.6;  y: |0.4-2+0.2| + |0.8-1+0| + |0-0.8+1| + |0-1.6+0.5| = 2.9
    t = _terms()
    assert t["smooth1"] == pytest.approx(4.2 / 16)
    assert t["smooth2"] == pytest.approx(5.5 / 16)


def test_total_eq6_eq8_eq17_eq18_sum_over_maps_with_lambdas():
    cfg = tidsc.TIDSCConfig(P=0.5, L=4, lambda1=2.0, lambda2=0.5)
    one = 0.1 + 0.25 + 0.15 + 0.175 + 2.0 * 4.2 / 16 + 0.5 * 5.5 / 16
    # Normalization: a raw map at 1/100 of the scale gives the same loss.
    total, terms = tidsc.tidsc_loss([A * 0.01], [BOX], cfg)
    assert float(total) == pytest.approx(one)
    # A second map whose box is the whole map: inner 1 - 1, outer 0 (empty region), projections equal the
    # mask only where the map reaches 1; here a constant map of 1s gives 0 for every term.
    total, terms = tidsc.tidsc_loss([A, torch.ones(4, 4)], [BOX, (0, 0, 4, 4)], cfg)
    assert float(total) == pytest.approx(one)
    assert terms["inner"] == pytest.approx(0.1) and terms["outer"] == pytest.approx(0.25)
    # The same map twice: every sum doubles (eq. 6, 8, 17 sum over maps).
    total, terms = tidsc.tidsc_loss([A, A], [BOX, BOX], cfg)
    assert float(total) == pytest.approx(2 * one) and terms["smooth1"] == pytest.approx(2 * 4.2 / 16)


def test_tidsc_gradient_pulls_attention_into_the_box():
    a = A.clone().requires_grad_(True)
    total, _ = tidsc.tidsc_loss([a], [BOX], tidsc.TIDSCConfig(P=0.5))
    (g,) = torch.autograd.grad(total, a)
    assert g[2, 2] < 0  # raising a top cell inside (0.8, not the map's max) lowers eq. 5 and the edge errors
    assert g[3, 0] > 0 and g[0, 1] > 0  # raising the top cells outside raises eq. 7


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
    from factory.generators.pdig.lisa import cross_attention_layers_at

    # TIDSC passes stop after the 16x16 layers at 512 px: 2 in down block 1, 3 in up block 1 (of 16 in all)
    assert cross_attention_layers_at(unet, (64, 64), (16, 16)) == 5
    assert cross_attention_layers_at(unet, (64, 64), (32, 32)) == 5 and cross_attention_layers_at(unet, (64, 64), (64, 64)) == 5
    assert cross_attention_layers_at(unet, (64, 64), (8, 8)) == 1  # the mid block


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


@pytest.fixture(scope="module")
def two_res_pipe():
    """Cross-attention at 32x32 and 16x16 latent cells (64 px images): TIDSC reads 16x16."""
    from factory.generators.pdig.lisa import install_lisa
    from factory.generators.pdig.pipeline import PDIGPipeline
    from factory.generators.pdig.sce import add_tokens

    config = {**TINY, "unet": {**TINY["unet"], "down_block_types": ("CrossAttnDownBlock2D",) * 2,
                               "up_block_types": ("CrossAttnUpBlock2D",) * 2}}
    b = build_random_base(config, seed=0, image_encoder=False)
    add_tokens(b.tokenizer, b.text_encoder, ["crack"])
    pipe = PDIGPipeline(b.vae, b.text_encoder, b.tokenizer, b.unet, b.scheduler, None, install_lisa(b.unet, 32, 4))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_attention_is_materialized_only_in_tidsc_passes_at_the_map_size(monkeypatch, two_res_pipe):
    from factory.generators.pdig import lisa
    from factory.generators.pdig.pipeline import BoxPrompt
    from factory.generators.pdig.sce import build_prompt

    pipe = two_res_pipe
    calls: list[tuple[int, bool, bool]] = []  # (HW, explicit softmax, grad enabled)
    attend = lisa._attend
    monkeypatch.setattr(lisa, "_attend", lambda attn, q, k, v, mask, want: (
        calls.append((q.shape[2], want, torch.is_grad_enabled())) or attend(attn, q, k, v, mask, want)))
    passes = []
    hook = pipe.unet.conv_out.register_forward_hook(lambda *a: passes.append(torch.is_grad_enabled()))
    boxes = [[BoxPrompt((8, 8, 40, 40), "<pdig-crack>", torch.randn(32))]]
    kw = dict(num_inference_steps=4, tidsc_steps=2, generator=torch.Generator().manual_seed(0))
    pipe([build_prompt(["crack"])], boxes, **kw)
    explicit = {(hw, grad) for hw, want, grad in calls if want}
    assert explicit == {(256, True)}  # only at 16x16, only in the TIDSC passes (with grad)
    assert {hw for hw, want, _ in calls if not want} == {256, 1024}  # SDPA everywhere else
    hook.remove()
    assert passes == [False] * 4  # TIDSC passes stop after their last 16x16 layer: conv_out runs in CFG passes only
    calls.clear()
    pipe([build_prompt(["crack"])], boxes, return_attention=True, **kw)
    assert {(hw, grad) for hw, want, grad in calls if want} == {(256, True), (256, False)}  # opt-in: CFG passes record
    calls.clear()
    pipe([build_prompt(["crack"])], boxes, **{**kw, "tidsc_steps": 0})
    assert not any(want for _, want, _ in calls)


def test_early_stop_and_kv_cache_change_nothing(monkeypatch, two_res_pipe):
    """TIDSC passes stopping after their last map-size layer, and K/V computed once per
    call, are pure savings: the same losses and images as full passes without a cache."""
    from factory.generators.pdig import lisa
    from factory.generators.pdig.pipeline import BoxPrompt
    from factory.generators.pdig.sce import build_prompt

    pipe = two_res_pipe
    boxes = [[BoxPrompt((8, 8, 40, 40), "<pdig-crack>", torch.randn(32))], [BoxPrompt((20, 4, 60, 30), "<pdig-crack>", None)]]
    run = lambda: pipe([build_prompt(["crack"])] * 2, boxes, num_inference_steps=4, tidsc_steps=3, step_size=500.0,  # noqa: E731
                       generator=[torch.Generator().manual_seed(s) for s in (0, 1)])
    attn2 = next(m for n, m in pipe.unet.named_modules() if n.endswith("attn2"))
    k_calls = []
    hook = attn2.to_k.register_forward_hook(lambda *a: k_calls.append(1))
    fast = run()
    hook.remove()
    assert len(k_calls) == 2  # once for the TIDSC passes' states, once for the CFG passes' (4 steps)
    init = lisa.AttentionStore.__init__
    monkeypatch.setattr(lisa.AttentionStore, "__init__",  # full forward passes: never stop
                        lambda self, sizes=None, batch_offset=0, stop_after=None: init(self, sizes, batch_offset, None))
    keys_values = lisa.LISAAttnProcessor._keys_values

    def uncached(self, *args):
        cache, self.context.kv_cache = self.context.kv_cache, None
        try:
            return keys_values(self, *args)
        finally:
            self.context.kv_cache = cache
    monkeypatch.setattr(lisa.LISAAttnProcessor, "_keys_values", uncached)
    slow = run()
    assert [l["total"] for l in fast.losses] == pytest.approx([l["total"] for l in slow.losses])
    assert np.isfinite(fast.images).all()  # an image without image prompts next to one with them: no NaN
    assert np.allclose(fast.images, slow.images, atol=1e-6)
    assert fast.inside and fast.inside_over == "TIDSC steps"  # the TIDSC maps give the diagnostic for free


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
    with pytest.raises(ValueError, match="stepz"):  # the unknown key is named
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

def test_ray_train_run_writes_a_small_checkpoint_the_generator_loads(ray_local, shared_data, tiny_dir, tmp_path,
                                                                     monkeypatch):
    """Also: relative data and base paths (as the README writes them) are read by the
    workers from the caller's directory, and the base is recorded absolute."""
    from factory.core import Box, WorkItem
    from factory.generators.base import load_generator
    from factory.generators.pdig.train import PDIGTrainConfig, train_pdig

    out = tmp_path / "ckpt"
    monkeypatch.chdir(shared_data)
    metrics = train_pdig(PDIGTrainConfig(
        data="pv_vision_crack/train", base=os.path.relpath(tiny_dir, shared_data), out=f"file://{out}",
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
    from factory.generators.pdig.train import PDIGTrainConfig, train_pdig

    out = tmp_path / "ckpt2"
    metrics = train_pdig(PDIGTrainConfig(
        data=str(shared_data / "pv_vision_crack" / "train"), base=str(tiny_dir), out=f"file://{out}",
        limit=4, epochs=2, batch_size=1, bank_size=1, num_workers=2, cpus_per_worker=0.5, storage_path=str(tmp_path / "ray"),
    ))
    assert metrics["steps"] == 4 and metrics["epochs"] == 2 and np.isfinite(metrics["loss"])
    assert (out / "pdig_config.json").exists() and not (out / "train_state.pt").exists()


def test_compiled_unet_gives_the_same_images():
    """`compile: true` wraps the guidance passes in torch.compile; traced here with the
    eager backend (inductor needs minutes on 2 CPU cores), so the LISA processors must
    trace without changing a pixel."""
    from factory.generators.pdig.pipeline import BoxPrompt
    from factory.generators.pdig.sce import build_prompt

    _, pipe = _pipe()
    boxes = [[BoxPrompt((8, 8, 40, 40), "<pdig-crack>", torch.randn(32))]]
    run = lambda: pipe([build_prompt(["crack"])], boxes, num_inference_steps=3, tidsc_steps=1,  # noqa: E731
                       generator=torch.Generator().manual_seed(0)).images
    eager = run()
    pipe.compile_unet(backend="eager")
    assert np.allclose(run(), eager, atol=1e-5)
