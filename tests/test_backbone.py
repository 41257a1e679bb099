"""The backbone seam: stage shapes, prompt splicing, presets and real loading code paths."""
import pytest
import torch

from videollm.errors import ModelLoadError, ModelUnavailableError


def test_stage_shapes(tiny_backbone):
    frames = torch.randint(0, 255, (3, 50, 70, 3), dtype=torch.uint8)
    feats = tiny_backbone.encode_frames(frames)
    assert feats.shape == (3, 8, 8, 32)  # 112 px / patch 14, SigLIP width 32
    tokens = tiny_backbone.project(feats)
    assert tokens.shape == (3, 4, 4, tiny_backbone.hidden_size)
    assert tiny_backbone.frame_grid == (4, 4) and tiny_backbone.tokens_per_frame == 16


def test_project_matches_transformers_video_path(tiny_backbone):
    """Our stage-by-stage path equals LLaVA-OneVision's own get_video_features (minus the newline)."""
    from videollm.backbones.base import resize_normalize

    b = tiny_backbone
    frames = torch.randint(0, 255, (2, 112, 112, 3), dtype=torch.uint8)
    ours = b.frame_tokens(frames).flatten(0, 2)
    pixels = resize_normalize(frames, (112, 112), b.image_mean, b.image_std, b.device, b.dtype)
    with torch.no_grad():
        ref = b.model.model.get_video_features(pixels[None], vision_feature_layer=-1,
                                               vision_feature_select_strategy="full").pooler_output[0]
    assert torch.allclose(ours, ref[:-1], atol=1e-5)
    assert torch.allclose(b.visual_suffix()[0], ref[-1], atol=1e-6)


def test_build_inputs_splices_visual_tokens_at_placeholder(tiny_backbone):
    from videollm.types import VisualTokens

    b = tiny_backbone
    vis = torch.randn(5, b.hidden_size)
    vt = VisualTokens(vis, torch.zeros(5, dtype=torch.long), torch.arange(5), torch.zeros(1), 1)
    inputs = b.build_inputs("Hello?", vt)
    ids = b.tokenizer(inputs.prompt_text, add_special_tokens=False)["input_ids"]
    k = ids.index(b.tokenizer.convert_tokens_to_ids("<video>"))
    e = inputs.embeds[0]
    assert e.shape[0] == len(ids) - 1 + 5 + 1
    assert torch.equal(e[:k], b.embed_ids(ids[:k]))
    assert torch.equal(e[k:k + 5], vis)
    assert torch.equal(e[k + 5], b.visual_suffix()[0])
    assert torch.equal(e[k + 6:], b.embed_ids(ids[k + 1:]))


def test_lm_forward_with_cache_equals_full_forward(tiny_backbone):
    b = tiny_backbone
    x = b.embed_ids([[5, 9, 17, 33]])
    full, _ = b.lm_forward(x)
    part, cache = b.lm_forward(x[:, :3])
    step, _ = b.lm_forward(x[:, 3:], cache)
    assert torch.allclose(full, step, atol=1e-5)


def test_tokenizer_round_trips_any_text(tiny_backbone):
    tok = tiny_backbone.tokenizer
    for text in ["Héllo wörld 🎬", "\\boxed{B} <think>x</think>", "What happens at 00:12?"]:
        assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


def test_unknown_model_gives_actionable_error(monkeypatch):
    from videollm.backbones import load_backbone

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises((ModelLoadError, ModelUnavailableError), match="videollm-mini"):
        load_backbone("/nonexistent/model/dir")


def test_hub_preset_offline_fails_with_hint(monkeypatch):
    from videollm.backbones import load_backbone

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        ModelUnavailableError, match="huggingface-cli download llava-hf/llava-onevision-qwen2-0.5b-ov-hf"
    ):
        load_backbone("llava-onevision-0.5b", device="cpu")


def test_local_directory_roundtrip(tiny_backbone, tmp_path):
    """A saved model directory loads through the real from_pretrained path, dispatched on model_type."""
    from videollm.backbones import load_backbone

    tiny_backbone.model.save_pretrained(tmp_path)
    tiny_backbone.tokenizer.save_pretrained(tmp_path)
    b = load_backbone(str(tmp_path), device="cpu", dtype="float32")
    frames = torch.randint(0, 255, (1, 112, 112, 3), dtype=torch.uint8)
    assert torch.allclose(b.frame_tokens(frames), tiny_backbone.frame_tokens(frames), atol=1e-5)
