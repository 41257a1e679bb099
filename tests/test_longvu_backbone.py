"""The released LongVU layout (Vision-CAIR/LongVU_Qwen2_7B, LongVU_Llama3_2_3B) on tiny random checkpoints.

The reference forward below is re-derived from the released code's equations, written out on the raw
state-dict tensors (no module of ours): [R] = github.com/Vision-CAIR/LongVU@1b0be5c, file:line.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers.models.siglip")
pytest.importorskip("transformers.models.dinov2")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from videollm.backbones.longvu_tiny import save_tiny_random_longvu

    return save_tiny_random_longvu(tmp_path_factory.mktemp("longvu"))


@pytest.fixture(scope="module")
def bb(ckpt):
    from videollm.backbones.longvu import load_longvu

    return load_longvu(str(ckpt), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def sd(ckpt):
    from safetensors.torch import load_file

    return load_file(str(ckpt / "model.safetensors"))


def _frames(n, h=60, w=100, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 255, (n, h, w, 3), dtype=torch.uint8, generator=g)


# ---- layout and strict loading -------------------------------------------------------------------------
def test_checkpoint_has_the_released_key_layout(ckpt, sd):
    for k in ("model.mm_projector.0.weight", "model.mm_projector.2.bias", "model.mm_projector_aux_0.0.weight",
              "model.mm_projector_aux_1.3.weight", "model.vision_sampler_0.layers.1.proj_context.weight",
              "model.vision_sampler_0.layers.0.proj_in.weight",
              "model.vision_sampler_0.layers.0.proj_out.linear_2.weight",
              "model.vision_sampler_0.layers.0.cross_attn.k_proj_1.0.weight",
              "model.vision_sampler_0.layers.0.cross_attn.v_proj_0.1.weight",
              "model.vision_sampler_0.layers.0.cross_attn.o_proj.weight", "model.vision_sampler_0.layers.0.pos_embed_0",
              "model.vision_sampler_0.layers.0.norm.weight", "model.vision_query", "model.image_newline",
              "model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight", "lm_head.weight"):
        assert k in sd, k
    # the SVA's Linears have no bias ([R] vision_sampler.py:185-213, 297-324); the aux projectors do (:77-80)
    assert "model.vision_sampler_0.layers.0.proj_in.bias" not in sd
    assert "model.mm_projector_aux_0.0.bias" in sd
    assert sd["model.vision_sampler_0.layers.0.pos_embed_1"].shape == (4, 32)  # k = 6 // 3 = 2: [k², D]
    assert not any("vision_tower" in k for k in sd)  # towers are not in the released checkpoint
    cfg = json.loads((ckpt / "config.json").read_text())
    assert cfg["model_type"] == "cambrian_qwen" and cfg["mm_projector_type"] == "sva"
    assert cfg["query_num_list"] == [9] and cfg["lowres_token"] == 2 and cfg["connector_only"] is True


def test_loaded_weights_are_the_saved_ones(bb, sd):
    c = bb.connector
    torch.testing.assert_close(c.vision_query.detach(), sd["model.vision_query"])
    torch.testing.assert_close(c.image_newline.detach(), sd["model.image_newline"])
    torch.testing.assert_close(c.vision_sampler_0.layers[1].cross_attn.k_proj_1[1].weight.detach(),
                               sd["model.vision_sampler_0.layers.1.cross_attn.k_proj_1.1.weight"])
    torch.testing.assert_close(bb.llm.lm_head.weight.detach(), sd["lm_head.weight"])
    torch.testing.assert_close(bb.llm.model.layers[1].mlp.up_proj.weight.detach(),
                               sd["model.layers.1.mlp.up_proj.weight"])


@pytest.mark.parametrize("change", ["drop", "extra"])
def test_a_missing_or_unexpected_key_is_an_error_naming_it(ckpt, tmp_path, change, sd):
    import shutil

    from safetensors.torch import save_file

    from videollm.backbones.longvu import load_longvu
    from videollm.errors import ModelLoadError

    bad = tmp_path / "bad"
    shutil.copytree(ckpt, bad)
    state = dict(sd)
    if change == "drop":
        name = "vision_sampler_0.layers.1.cross_attn.v_proj_1.0.weight"
        del state["model." + name]
    else:
        name = "model.vision_sampler_layers.0.proj_in.weight"
        state[name] = torch.zeros(2, 2)
    save_file(state, str(bad / "model.safetensors"))
    with pytest.raises(ModelLoadError, match=name.split("model.")[-1].replace(".", r"\.")):
        load_longvu(str(bad), device="cpu", dtype="float32")


def test_a_non_longvu_config_is_refused(ckpt, tmp_path):
    import shutil

    from videollm.backbones.longvu import load_longvu
    from videollm.errors import ModelLoadError

    bad = tmp_path / "two_groups"
    shutil.copytree(ckpt, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg.update(num_query_group=2, query_num_list=[9, 4])
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="query group"):
        load_longvu(str(bad), device="cpu", dtype="float32")


def test_weights_that_do_not_fit_the_config_are_an_error(ckpt, tmp_path):
    import shutil

    from videollm.backbones.longvu import load_longvu
    from videollm.errors import ModelLoadError

    bad = tmp_path / "wide"
    shutil.copytree(ckpt, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["intermediate_size"] = 96  # the saved MLPs are 128 wide
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="do not fit config.json"):
        load_longvu(str(bad), device="cpu", dtype="float32")


def test_a_missing_tower_is_an_error_naming_it(ckpt, tmp_path):
    from videollm.backbones.longvu import load_longvu
    from videollm.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="no_such_siglip"):
        load_longvu(str(ckpt), device="cpu", dtype="float32", siglip=str(tmp_path / "no_such_siglip"))


def test_tiny_preset_is_named_quiet_and_leaves_no_temporary_checkpoint():
    """The preset's name (not its temporary path) reaches summaries and cache keys; loading a cambrian_* config
    warns about nothing; the checkpoint written for the process is removed when it exits."""
    import subprocess
    import sys

    code = ("from videollm.backbones import load_backbone\n"
            "import videollm.backbones.longvu_tiny as t\n"
            "b = load_backbone('tiny-random-longvu')\n"
            "print(b.name, t._TINY_DIR)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stderr
    name, folder = run.stdout.split()[-2:]
    assert name == "tiny-random-longvu"
    assert "model of type" not in run.stderr and "cambrian" not in run.stderr and "Writing" not in run.stderr
    assert not Path(folder).exists()


def test_model_type_dispatch_and_presets():
    from videollm.backbones import FAMILIES, list_models

    assert {"longvu-qwen2-7b", "longvu-llama3.2-3b", "tiny-random-longvu"} <= set(list_models())
    assert FAMILIES.get("cambrian_qwen").__name__ == "LongVUBackbone"


# ---- the reference forward, from the released equations ------------------------------------------------
def _lin(x, sd, key, bias=True):
    return F.linear(x, sd[key + ".weight"], sd.get(key + ".bias") if bias else None)


def _ln(x, sd, key):
    return F.layer_norm(x, x.shape[-1:], sd[key + ".weight"], sd[key + ".bias"])


def ref_unmask(side, image_size):
    """[R] cambrian_arch.py:386-408 (`unmask_attention_mask`), with image_size = frame.shape[:2] as the
    video paths pass it (app.py, eval: `image_sizes = [video[0].shape[:2]]`)."""
    original_w, original_h = image_size
    mask = torch.ones(1, side, side, dtype=torch.bool)
    cur_h, cur_w = mask.shape[1:3]
    if original_w / original_h > cur_w / cur_h:
        scale_factor = cur_w / original_w
        padding = (cur_h - int(original_h * scale_factor)) // 2
        if padding > 0:
            mask[:, :padding, :] = 0
            mask[:, -padding:, :] = 0
    else:
        scale_factor = cur_h / original_h
        padding = (cur_w - int(original_w * scale_factor)) // 2
        if padding > 0:
            mask[:, :, :padding] = 0
            mask[:, :, -padding:] = 0
    return mask


def ref_rearrange(feat, q_side, image_size):
    """[R] cambrian_arch.py:501-595: (bs, side², C) → (bs·q², r², C) windows and their (bs·q², r²) masks."""
    bs, n, c = feat.shape
    side = int(n ** 0.5)
    r = side // q_side
    feats, masks = [], []
    for b in range(bs):
        f = feat[b].view(1, q_side, r, q_side, r, -1).permute(0, 1, 3, 2, 4, 5).contiguous()
        feats.append(f.flatten(0, 2).flatten(1, 2))
        m = ref_unmask(side, image_size).view(1, q_side, r, q_side, r).permute(0, 1, 3, 2, 4).contiguous()
        m = m.flatten(0, 2).flatten(1, 2)
        m[m.sum(-1) == 0] = True
        masks.append(m)
    return torch.cat(feats), torch.cat(masks)


def ref_sva_layer(sd, p, queries, context, latents, masks, heads=16):
    """[R] vision_sampler.py:341-401 (VisionCrossAttentionLayer.forward) with MultiKVCrossAttention
    (:215-291) inlined: 16 heads (:316), SDPA with the boolean mask."""
    residual = queries
    context = _lin(context, sd, p + "proj_context", bias=False)
    x = _lin(torch.cat([queries, context], -1), sd, p + "proj_in", bias=False)
    masks = [m.view(m.shape[0], 1, 1, -1).expand(-1, -1, x.shape[1], -1) for m in masks]
    latents = [lat + sd[p + f"pos_embed_{i}"][None] if lat.shape[1] > 1 else lat for i, lat in enumerate(latents)]
    a = p + "cross_attn."
    bsz, q_len, d = x.shape
    q = _lin(_ln(x, sd, a + "q_proj.0"), sd, a + "q_proj.1", bias=False)
    k = torch.cat([_lin(_ln(v, sd, a + f"k_proj_{i}.0"), sd, a + f"k_proj_{i}.1", bias=False)
                   for i, v in enumerate(latents)], 1)
    v = torch.cat([_lin(_ln(v, sd, a + f"v_proj_{i}.0"), sd, a + f"v_proj_{i}.1", bias=False)
                   for i, v in enumerate(latents)], 1)
    hd = d // heads
    q = q.view(bsz, q_len, heads, hd).transpose(1, 2)
    k = k.view(bsz, -1, heads, hd).transpose(1, 2)
    v = v.view(bsz, -1, heads, hd).transpose(1, 2)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=torch.cat(masks, -1))
    out = _lin(out.transpose(1, 2).reshape(bsz, q_len, d), sd, a + "o_proj", bias=False)
    x = _ln(x + out, sd, p + "norm")
    x = _lin(F.gelu(_lin(x, sd, p + "proj_out.linear_1", bias=False)), sd, p + "proj_out.linear_2", bias=False)
    return x + residual


def ref_connector(sd, siglip, dino, image_size, depth=2, query_num=9, lowres=2):
    """[R] cambrian_arch.py:882-1039 and 1133-1173 (video path, `highres`, mix copy) on (T, side², C) tower
    features: aux projectors (:889-891), context = mean SigLIP token (:892-895), the query repeated per
    cell (:902-910), windows (:925-927), SVA (:929-937), the low-res copy resized before the projector
    (:971-989), `mm_projector` on both (:1032-1039), `image_newline` after every row (:1133-1162)."""
    feats = []
    for i, f in enumerate((siglip, dino)):
        p = f"model.mm_projector_aux_{i}."
        x = _lin(F.gelu(_lin(f, sd, p + "0")), sd, p + "2")
        feats.append(_ln(x, sd, p + "3"))
    bs = feats[0].shape[0]
    context = feats[0].mean(1).view(bs, 1, 1, -1)
    queries = sd["model.vision_query"][0].view(1, 1, 1, -1).expand(bs, query_num, -1, -1).flatten(0, 1)
    context = context.expand(-1, query_num, 1, -1).flatten(0, 1)
    q_side = int(query_num ** 0.5)
    windows = [ref_rearrange(f, q_side, image_size) for f in feats]
    lat, masks = [w[0] for w in windows], [w[1] for w in windows]
    for layer in range(depth):
        queries = ref_sva_layer(sd, f"model.vision_sampler_0.layers.{layer}.", queries, context, lat, masks)
    q = queries.view(bs, query_num, -1)
    down = q.permute(0, 2, 1).contiguous().view(bs, -1, q_side, q_side)
    down = F.interpolate(down.float(), size=(lowres, lowres), mode="bilinear", align_corners=False)
    down = down.permute(0, 2, 3, 1).contiguous().flatten(1, 2)

    def project(x):
        return _lin(F.gelu(_lin(x, sd, "model.mm_projector.0")), sd, "model.mm_projector.2")

    def newline(x, side):
        x = x.view(bs, side, side, -1)
        nl = sd["model.image_newline"].view(1, 1, 1, -1).expand(bs, side, 1, -1)
        return torch.cat([x, nl], dim=2).flatten(1, 2)

    return newline(project(q), q_side), newline(project(down), lowres)


def _tower_features(bb, frames):
    """Tower outputs as [R] siglip_encoder.py:71-78 (hidden_states[-1]) and dino_encoder.py:109-120
    (last_hidden_state, CLS dropped), both resized to 24×24-equivalent (here 6×6) in float32 (:43-69, :81-107)."""
    from videollm.backbones.longvu import DINO_MEAN, DINO_STD, SIGLIP_MEAN, preprocess

    def interp(x, side):
        b, n, d = x.shape
        h = int(n ** 0.5)
        x = x.view(b, h, h, d).permute(0, 3, 1, 2)
        return F.interpolate(x.float(), size=(side, side), mode="bilinear", align_corners=False
                             ).permute(0, 2, 3, 1).flatten(1, 2)

    with torch.no_grad():
        s = bb.towers["siglip"](pixel_values=preprocess(frames, 112, SIGLIP_MEAN, SIGLIP_MEAN, bb.device, bb.dtype),
                                output_hidden_states=True).hidden_states[-1]
        d = bb.towers["dino"](pixel_values=preprocess(frames, 112, DINO_MEAN, DINO_STD, bb.device, bb.dtype)
                              ).last_hidden_state[:, 1:]
    return interp(s, 6), interp(d, 6)


@pytest.mark.parametrize("hw", [(60, 100), (100, 60), (80, 80)])
def test_forward_matches_the_released_equations(bb, sd, hw):
    frames = _frames(3, *hw, seed=sum(hw))
    s, d = _tower_features(bb, frames)
    ref_full, ref_low = ref_connector(sd, s, d, image_size=hw)
    with torch.no_grad():
        ours = bb.frame_tokens_multires(frames)
        full = bb.frame_tokens(frames)
    assert ours.shape == (3, 3 * 4 + 2 * 3, 64)
    torch.testing.assert_close(ours[:, :12], ref_full, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours[:, 12:], ref_low, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(full.flatten(1, 2), ref_full, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours[:, 3:12:4], sd["model.image_newline"].expand(3, 3, 64))  # a newline per row


def test_non_square_frames_mask_padded_windows(bb, sd):
    """The mask changes the result for landscape frames (the swapped (H, W) reading masks columns)."""
    from videollm.backbones.longvu_connector import window_mask

    m = window_mask(60, 100, 6, 3)  # read as W=60, H=100: portrait → the outer columns are padding
    ref = ref_rearrange(torch.zeros(1, 36, 1), 3, (60, 100))[1]
    assert torch.equal(m, ref) and not bool(m.all())
    frames = _frames(2, 60, 100, seed=5)
    with torch.no_grad():
        masked = bb.frame_tokens(frames)
        unmasked = bb.project(bb.encode_frames(frames))
    assert not torch.allclose(masked, unmasked)


def test_preprocessing_is_the_released_pad_and_resize(bb):
    """[R] mm_datautils.py:268-297: expand2square with int(mean·255), PIL resize (bicubic), then normalise."""
    from PIL import Image

    from videollm.backbones.longvu import SIGLIP_MEAN, preprocess

    frame = _frames(1, 40, 70, seed=3)
    ours = preprocess(frame, 112, SIGLIP_MEAN, SIGLIP_MEAN, torch.device("cpu"), torch.float32)[0]
    img = Image.fromarray(frame[0].numpy())
    canvas = Image.new("RGB", (70, 70), (127, 127, 127))
    canvas.paste(img, (0, (70 - 40) // 2))
    ref = torch.from_numpy(np.asarray(canvas.resize((112, 112)), dtype=np.float32)).permute(2, 0, 1)
    ref = (ref / 255.0 - 0.5) / 0.5
    assert ours.shape == ref.shape
    assert (ours - ref).abs().mean() < 0.03  # torch's antialiased bicubic vs PIL's: rounding-level differences
    torch.testing.assert_close(ours[:, :5], ref[:, :5], atol=1e-6, rtol=0)  # the pad band: int(0.5·255) = 127


# ---- prompt and splice ---------------------------------------------------------------------------------
def test_prompt_is_the_released_qwen_conversation(bb):
    """[R] conversation.py:509-519 (conv_qwen), user turn `<image>\\n{question}` (README, eval scripts)."""
    assert bb.render_prompt("What moves?") == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                                               "<|im_start|>user\n<image>\nWhat moves?<|im_end|>\n"
                                               "<|im_start|>assistant\n")


def test_visual_tokens_are_spliced_at_the_image_placeholder(bb):
    """[R] cambrian_arch.py:1351-1375, 1512-1530: the prompt split at the one <image> (id −200, constants.py:8),
    text embedded by `embed_tokens` on both sides, the visual sequence in between, no start/end tokens."""
    from videollm.types import VisualTokens

    vis = torch.randn(7, 64)
    vt = VisualTokens(vis, torch.zeros(7, dtype=torch.long), torch.arange(7), torch.zeros(1), 1)
    out = bb.build_inputs("What moves?", vt)
    text = bb.render_prompt("What moves?")
    before, after = text.split("<image>")
    tok = bb.tokenizer
    ids_b = tok(before, add_special_tokens=False)["input_ids"]
    ids_a = tok(after, add_special_tokens=False)["input_ids"]
    emb = bb.llm.model.embed_tokens.weight.detach()
    ref = torch.cat([emb[ids_b], vis, emb[ids_a]])
    torch.testing.assert_close(out.embeds[0], ref)
    assert out.num_visual_tokens == 7 and out.num_text_tokens == len(ids_b) + len(ids_a)


# ---- the LongVU compressor on the released model --------------------------------------------------------
def test_longvu_compressor_uses_the_models_dinov2_and_low_res_copy(bb, monkeypatch):
    import videollm.encoders as enc
    from compressors.longvu import LongVUCompressor, dedup_keep
    from videollm.video import Video

    def no_timm(*a, **k):
        raise AssertionError("a separate DINOv2 must not be loaded for the released model")

    monkeypatch.setattr(enc, "DinoV2Encoder", no_timm)
    base = _frames(2, 48, 48, seed=9)
    frames = torch.cat([base[i : i + 1].expand(16, -1, -1, -1) for i in range(2)])  # 2 frozen windows of 16
    video = Video.from_frames(frames, fps=1.0)
    comp = LongVUCompressor(bb, context_length=None)
    # gates divide by 9 (3×3) / 4 (2×2), counts are 12 / 6: force dedup with a budget below 32 frames × 4
    out = comp(video, query="What moves?", budget=100)
    stats = out.stats["stages"]
    assert stats["dedup"]["ran"] and stats["dedup"]["features"] == "model_dinov2"
    keep = dedup_keep(bb.dedup_features(frames), 16, 0.83)
    assert stats["dedup"]["frames"] == int(keep.sum()) == 2  # each frozen window keeps its middle frame
    assert out.stats["grid_reduced"] == [2, 3] and out.stats["reduced_by"] == "backbone"
    assert out.num_tokens <= 100


def test_longvu_gates_divide_by_the_released_counts(bb):
    """N frames fit 'fully' when N < V // 144 (here 9), though each carries 156 (12) tokens: [R] :952-968."""
    from compressors.longvu import LongVUCompressor
    from videollm.video import Video

    frames = _frames(6, 48, 48, seed=1)
    video = Video.from_frames(frames, fps=1.0)
    comp = LongVUCompressor(bb, context_length=None, dedup=False)
    v = comp.max_visual_tokens("Q", 64, count_placeholder=True)
    assert v // 9 > 6 and 6 * 12 > 64  # full per the released gate, over the limit in real tokens
    out = comp(video, query="Q", budget=64)
    assert out.stats["stages"]["query"]["mode"] == "full"
    assert out.num_tokens == 64  # the final cut trims to the limit, as the release's truncation does


def test_mix_mode_upgrades_frames_with_the_backbone_low_res_tokens(bb):
    from compressors.longvu import LongVUCompressor
    from videollm.video import Video

    frames = _frames(10, 48, 48, seed=2)
    video = Video.from_frames(frames, fps=1.0)
    comp = LongVUCompressor(bb, context_length=None, dedup=False)
    out = comp(video, query="What moves?", budget=80)  # 10 ≥ 80 // 9, 10 ≤ 80 // 4: mix
    q = out.stats["stages"]["query"]
    assert q["mode"] == "mix" and q["full_frames"] == (80 - 10 * 6) // (12 - 6)
    ref = bb.frame_tokens_multires(frames)
    low_frame = next(i for i in range(10) if i not in q["full_frame_ids"])
    toks = out.embeds[out.frame_ids == low_frame]
    torch.testing.assert_close(toks, ref[low_frame, 12:].to(toks.dtype))


# ---- every compressor and mode, float and int4 ----------------------------------------------------------
COMPRESSORS = ["uniform", "pool", "longvu", "storm", "tempo"]
MODES = ["direct", "think", "auto"]


@pytest.fixture(scope="module")
def bb_int4(ckpt):
    from videollm.backbones.longvu import load_longvu
    from videollm.quant import QuantLinear, quantize_backbone

    b = load_longvu(str(ckpt), device="cpu", dtype="float32")
    done = quantize_backbone(b, llm="int4", vision="int4", group_size=8)
    assert isinstance(b.llm.model.layers[0].mlp.down_proj, QuantLinear)
    assert isinstance(b.towers["siglip"].encoder.layers[0].mlp.fc1, QuantLinear)
    assert isinstance(b.towers["dino"].encoder.layer[0].mlp.fc1, QuantLinear)
    assert isinstance(b.connector.vision_sampler_0.layers[0].proj_in, QuantLinear)
    assert done.llm_layers and done.vision_layers
    return b


@pytest.mark.parametrize("quant", ["none", "int4"])
@pytest.mark.parametrize("compressor", COMPRESSORS)
def test_every_compressor_and_mode_answers(bb, bb_int4, short_video, compressor, quant):
    from videollm.config import PipelineConfig
    from videollm.pipeline import VideoQAPipeline
    from videollm.runtime.generation import GenerationConfig
    from videollm.video import SamplingConfig

    backbone = bb if quant == "none" else bb_int4
    for mode in MODES:
        cfg = PipelineConfig(model="tiny-random-longvu", compressor=compressor, budget=40, reasoning=mode,
                             sampling=SamplingConfig(num_frames=4), generation=GenerationConfig(max_new_tokens=2),
                             compressor_options={"fps": 1.0} if compressor == "longvu" else {})
        ans = VideoQAPipeline(backbone, cfg)(short_video, "What is shown?", ["A. a", "B. b"])
        assert 0 < ans.visual_tokens <= 40, (compressor, mode)
        assert ans.generated_tokens >= 1 or ans.text is not None


def test_lean_decode_step_serves_the_longvu_llm(bb):
    from videollm.runtime.decode_step import _PLANS, forward_last

    x = torch.randn(1, 5, 64)
    with torch.inference_mode():
        _, cache = forward_last(bb.llm.model, x)
        step = torch.randn(1, 1, 64)
        h, _ = forward_last(bb.llm.model, step, cache)
        full = bb.llm.model(inputs_embeds=torch.cat([x, step], 1)).last_hidden_state[:, -1:]
    torch.testing.assert_close(h, full, atol=1e-4, rtol=1e-4)
    assert bb.llm.model in _PLANS  # the one-token step ran through the lean plan, not the transformers forward


def test_llama_checkpoint_loads_and_answers(tmp_path, short_video):
    from videollm.backbones.longvu import load_longvu
    from videollm.backbones.longvu_tiny import save_tiny_random_longvu
    from videollm.config import PipelineConfig
    from videollm.pipeline import VideoQAPipeline
    from videollm.runtime.generation import GenerationConfig
    from videollm.video import SamplingConfig

    root = save_tiny_random_longvu(tmp_path / "llama", family="cambrian_llama")
    b = load_longvu(str(root), device="cpu", dtype="float32")
    assert type(b.llm).__name__ == "LlamaForCausalLM"
    prompt = b.render_prompt("What moves?")
    # [R] conversation.py:130-146: the tokenizer's template; callers drop the duplicate BOS (app.py:110-111), so
    # the model sees the template's one BOS
    assert prompt.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
                             "You are a helpful assistant.<|eot_id|>")
    ids = b.prompt_ids("What moves?")
    assert ids.before.count(b.tokenizer.bos_token_id) == 1 and ids.before[0] == b.tokenizer.bos_token_id
    assert "<image>\nWhat moves?<|eot_id|>" in prompt and prompt.endswith("assistant<|end_header_id|>\n\n")
    assert b.tokenizer.convert_tokens_to_ids("<|eot_id|>") in b.eos_token_ids
    cfg = PipelineConfig(model=str(root), compressor="longvu", budget=40, sampling=SamplingConfig(num_frames=4),
                         generation=GenerationConfig(max_new_tokens=2))
    ans = VideoQAPipeline(b, cfg)(short_video, "What is shown?")
    assert 0 < ans.visual_tokens <= 40


def test_cli_answers_with_the_preset(short_video, capsys):
    from videollm.cli import main

    rc = main(["ask", str(short_video), "What moves?", "--model", "tiny-random-longvu", "--compressor", "longvu",
               "--budget", "48", "--device", "cpu", "--json", "--max-new-tokens", "2", "--quant", "int4",
               "--vision-quant", "int4", "--quant-group-size", "8"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert 0 < out["visual_tokens"] <= 48
    assert out["compressor_stats"]["grid_full"] == [3, 4] and out["compressor_stats"]["reduced_by"] == "backbone"
