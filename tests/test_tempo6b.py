"""tempo-6b's loader and SVLM pass on a tiny random checkpoint in the released key layout (CPU, no hub)."""
from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers.models.qwen3_vl")


@pytest.fixture(scope="module")
def tempo_dir(tmp_path_factory):
    from videollm.backbones.tempo6b_tiny import save_tiny_random_tempo

    return save_tiny_random_tempo(tmp_path_factory.mktemp("tempo6b"))


@pytest.fixture(scope="module")
def tempo(tempo_dir):
    from videollm.backbones.tempo6b import load_tempo

    return load_tempo(str(tempo_dir), device="cpu", dtype="float32")


def test_checkpoint_has_the_released_key_layout(tempo_dir):
    from safetensors.torch import load_file

    keys = set(load_file(str(tempo_dir / "model.safetensors")))
    for k in ("model.vision_tower_aux_list.0.compression_tokens",
              "model.vision_tower_aux_list.0.vlm.model.visual.patch_embed.proj.weight",
              "model.vision_tower_aux_list.0.vlm.model.language_model.embed_tokens.weight",
              "model.mm_projector.0.weight", "model.mm_projector.2.weight",
              "model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight", "lm_head.weight"):
        assert k in keys, k
    assert not any(k.startswith("model.vision_tower_aux_list.0.vlm.lm_head") for k in keys)  # deleted in Tempo
    cfg = json.loads((tempo_dir / "config.json").read_text())
    assert cfg["model_type"] == "tempo_qwen" and cfg["mm_projector_type"] == "mlp2x_gelu"


def test_loaded_weights_are_the_saved_ones(tempo, tempo_dir):
    from safetensors.torch import load_file

    sd = load_file(str(tempo_dir / "model.safetensors"))
    mem = sd["model.vision_tower_aux_list.0.compression_tokens"]
    torch.testing.assert_close(tempo.svlm.compression_tokens.detach(), mem)
    torch.testing.assert_close(tempo.projector[0].weight.detach(), sd["model.mm_projector.0.weight"])
    torch.testing.assert_close(tempo.llm.lm_head.weight.detach(), sd["lm_head.weight"])
    emb = sd["model.vision_tower_aux_list.0.vlm.model.language_model.embed_tokens.weight"]
    tok = tempo.svlm_tokenizer
    yes, no = tok.convert_tokens_to_ids("Yes"), tok.convert_tokens_to_ids("No")
    torch.testing.assert_close(tempo.svlm.router, (emb[yes] - emb[no]).float())  # tied: W_lm = embeddings


def test_patchify_matches_transformers_processor():
    from videollm.backbones.tempo6b import patchify

    try:
        from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor
        proc = Qwen3VLVideoProcessor()
    except Exception as err:  # noqa: BLE001 - the processor needs torchvision, absent on some machines
        pytest.skip(f"Qwen3-VL video processor unavailable: {err}")
    x = torch.randn(3, 3, 64, 96)
    ours, grid = patchify(x, 16, 2, 2)
    ref, gt, gh, gw = proc.patchify(x[None], 16, 2, 2)
    assert grid == [gt, gh, gw]
    torch.testing.assert_close(ours, ref[0])


def _frames(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 255, (n, 60, 100, 3), dtype=torch.uint8, generator=g)


def test_batched_pass_equals_single_passes(tempo):
    segs = [_frames(8, 0), _frames(5, 1), _frames(1, 2)]
    times = [[i * 0.5 for i in range(len(s))] for s in segs]
    mem, rel = tempo.encode_segments(segs, "Is there a dog?", times)
    assert mem.shape == (3, 16, tempo.hidden_size) and rel.shape == (3,)
    for i, s in enumerate(segs):
        m1, r1 = tempo.encode_segments([s], "Is there a dog?", [times[i]])
        torch.testing.assert_close(m1[0], mem[i], atol=2e-4, rtol=1e-3)
        assert abs(float(r1[0]) - float(rel[i])) < 1e-4


def test_relevance_is_the_yes_no_head_at_the_last_prompt_position(tempo):
    """Against transformers' own Qwen3-VL forward (its rope index, deepstack and masking) on the prompt alone."""
    seg = _frames(8, 3)
    times = [i * 0.5 for i in range(8)]
    ids, patches, grid = tempo._segment_inputs(seg, times, "What moves?")
    vlm = tempo.svlm.vlm.model
    input_ids = torch.tensor([ids])
    video = input_ids == tempo._ids["video"]
    out = vlm(input_ids=input_ids, pixel_values_videos=patches, video_grid_thw=torch.tensor([grid]),
              mm_token_type_ids=video.int() * 2, attention_mask=torch.ones_like(input_ids))
    h = out.last_hidden_state[0, -1]
    expected = torch.sigmoid(h.float() @ tempo.svlm.router)
    _, rel = tempo.encode_segments([seg], "What moves?", [times])
    assert abs(float(rel[0].detach()) - float(expected.detach())) < 1e-4
    tempo.svlm.vlm.model.rope_deltas = None


def test_other_compressors_get_a_clear_error(tempo):
    from videollm.errors import InvalidRequestError

    with pytest.raises(InvalidRequestError, match="--compressor tempo"):
        tempo.frame_tokens(_frames(2, 0))


def test_tempo_compressor_uses_memory_tokens_with_head_truncation(tempo):
    from videollm.compressors.tempo import TempoCompressor
    from videollm.types import TEXT_PATCH_ID
    from videollm.video import Video

    video = Video.from_frames(_frames(20, 4), fps=2.0)
    out = TempoCompressor(tempo)(video, query="What moves?", budget=40)
    assert out.num_tokens <= 40
    assert out.stats["mode"].startswith("memory tokens")
    segs = out.stats["segments"]
    assert [s["frames"] for s in segs] == [8, 8, 4]
    mem, _ = tempo.encode_segments([video._frames[0:8]], "What moves?", [[i * 0.5 for i in range(8)]])
    first = segs[0]
    vis = out.embeds[out.patch_ids != TEXT_PATCH_ID]
    torch.testing.assert_close(vis[: first["tokens"]], mem[0, : first["tokens"]], atol=2e-4, rtol=1e-3)  # head


def test_cli_answers_with_the_tiny_tempo_checkpoint(tempo_dir, video_dir, capsys):
    from videollm.cli import main
    from videollm.synthetic import write_video

    path = write_video(video_dir / "tempo6b.mp4", 25 * 10, fps=25, size=(64, 96))
    rc = main(["ask", str(path), "What moves?", "--model", str(tempo_dir), "--compressor", "tempo", "--budget", "48",
               "--device", "cpu", "--json", "--max-new-tokens", "3"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert 0 < out["visual_tokens"] <= 48
    assert len(out["compressor_stats"]["segments"]) == 3  # 10 s at 2 fps: 20 frames → 8 + 8 + 4
