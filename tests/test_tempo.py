"""The Tempo compressor on tiny-random: segments, batched Yes/No relevance, strict budget, stats, CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from videollm.compressors.tempo import (
    RELEVANCE_SYSTEM,
    RELEVANCE_USER,
    TempoCompressor,
    cut_segments,
    reduce_frame,
    reduce_segment,
    stamp_text,
)
from videollm.errors import InvalidRequestError
from videollm.types import TEXT_PATCH_ID, VisualTokens
from videollm.video import SamplingConfig, Video, load_video


# ---- pure pieces -------------------------------------------------------------------------------------
def test_cut_segments_with_tail():
    segs = cut_segments(17, 8)
    assert [(s.start, s.stop) for s in segs] == [(0, 8), (8, 16), (16, 17)]
    assert segs[-1].frames == 1
    assert len(cut_segments(16, 8)) == 2


@pytest.mark.parametrize("k", [1, 2, 3, 5, 7, 12, 16])
def test_reduce_frame_exact_count_and_mean_preserved(k):
    g = torch.randn(4, 4, 6)
    out = reduce_frame(g, k)
    assert out.shape == (k, 6)
    if k == 1:
        torch.testing.assert_close(out[0], g.reshape(16, 6).mean(0))


@pytest.mark.parametrize("k", [1, 3, 8, 9, 20, 50, 128])
def test_reduce_segment_exact_count_and_provenance(k):
    t = torch.randn(8, 3, 4, 5)
    out, frames = reduce_segment(t, k)
    assert out.shape == (min(k, 96), 5) and frames.shape == (out.shape[0],)
    assert frames.min() >= 0 and frames.max() < 8
    assert torch.all(frames[1:] >= frames[:-1])  # time order kept
    if k < 8:  # consecutive groups of frames, each averaged
        assert out.shape[0] == k


def test_reduce_segment_is_pooling_not_first_patches():
    t = torch.zeros(2, 2, 2, 1)
    t[:, 1, 1] = 8.0  # information in the last patch of each frame only
    out, _ = reduce_segment(t, 2)
    assert torch.all(out > 0)  # keeping the first patches would have lost it


def test_stamp_text_format():
    assert stamp_text(12.0) == "<12.0 seconds>"
    assert stamp_text(3.14159) == "<3.1 seconds>"


def test_bad_options_are_user_errors(tiny_backbone):
    with pytest.raises(InvalidRequestError):
        TempoCompressor(tiny_backbone, relevance="magic")
    with pytest.raises(InvalidRequestError):
        TempoCompressor(tiny_backbone, min_tokens_per_frame=4, max_tokens_per_frame=2)
    with pytest.raises(InvalidRequestError, match="unknown tempo option"):
        TempoCompressor(tiny_backbone, no_such_option=1)


# ---- on tiny-random ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def long_video(video_dir):
    from videollm.synthetic import write_video

    return write_video(video_dir / "tempo_long.mp4", 25 * 20, fps=25, size=(64, 80))  # 20 s → 40 frames @ 2 fps


def test_batch_last_logits_matches_one_by_one(tiny_backbone):
    from videollm.backbones.base import Backbone

    prompts = [torch.randn(n, tiny_backbone.hidden_size) for n in (3, 11, 7)]
    batched = tiny_backbone.batch_last_logits(prompts)
    looped = Backbone.batch_last_logits(tiny_backbone, prompts)
    torch.testing.assert_close(batched, looped, atol=1e-4, rtol=1e-4)


def test_yes_no_relevance_is_the_two_way_softmax(tiny_backbone):
    comp = TempoCompressor(tiny_backbone)
    g = torch.Generator().manual_seed(0)
    segs = [VisualTokens(torch.randn(n, tiny_backbone.hidden_size, generator=g), torch.zeros(n, dtype=torch.long),
                         torch.full((n,), -1), torch.zeros(1), 1) for n in (4, 9)]
    rel = comp.yes_no_relevance(tiny_backbone, segs, "Is there a dog?")
    yes, no = comp.yes_no_ids(tiny_backbone)
    tok = tiny_backbone.tokenizer
    assert yes == tok("Yes", add_special_tokens=False)["input_ids"][0]
    for seg, r in zip(segs, rel):
        user = RELEVANCE_USER.format(query="Is there a dog?")
        inputs = tiny_backbone.build_inputs(user, seg, system=RELEVANCE_SYSTEM)
        logits, _ = tiny_backbone.lm_forward(inputs.embeds)
        p = torch.softmax(logits[0, [yes, no]], -1)[0]
        assert abs(float(p) - float(r)) < 1e-4


@pytest.mark.parametrize("budget", [3, 20, 64, 200, 5000])
def test_budget_is_strict_with_timestamps(tiny_backbone, long_video, budget):
    video = load_video(long_video, SamplingConfig(num_frames=4))
    out = TempoCompressor(tiny_backbone, chunk_size=16)(video, query="What moves?", budget=budget)
    assert out.num_tokens <= budget
    assert out.num_sampled_frames == 40  # resampled at 2 fps
    stats = out.stats
    assert stats["num_segments"] == 5
    segs = stats["segments"]
    assert sum(s["tokens"] + s["stamp_tokens"] for s in segs) == out.num_tokens
    text = out.patch_ids == TEXT_PATCH_ID
    assert int(text.sum()) == stats["timestamp_tokens"]
    if budget >= 200:
        assert stats["dropped_segments"] == 0 and all(s["tokens"] >= 4 for s in segs)
        assert [s["start"] for s in segs] == [0.0, 4.0, 8.0, 12.0, 16.0]
        assert segs[0]["centre"] == pytest.approx(2.0)
    if budget == 3:  # not even one stamp + token fits: segments are kept without their time text
        assert stats["timestamp_tokens"] == 0 and out.num_tokens == 3


def test_stamp_tokens_are_the_llm_embeddings_of_the_time_text(tiny_backbone, long_video):
    video = load_video(long_video, SamplingConfig(num_frames=4))
    out = TempoCompressor(tiny_backbone)(video, query="?", budget=500)
    first = out.stats["segments"][0]
    stamp = tiny_backbone.embed_text(stamp_text(first["centre"]))
    torch.testing.assert_close(out.embeds[: stamp.shape[0]].float(), stamp.float())
    assert torch.all(out.patch_ids[: stamp.shape[0]] == TEXT_PATCH_ID)


def test_relevance_none_gives_flat_allocation(tiny_backbone, long_video):
    video = load_video(long_video, SamplingConfig(num_frames=4))
    out = TempoCompressor(tiny_backbone, relevance="none")(video, query="?", budget=300)
    tokens = [s["tokens"] for s in out.stats["segments"]]
    assert len(set(tokens)) == 1


def test_one_frame_tail_and_in_memory_video(tiny_backbone):
    frames = torch.randint(0, 255, (9, 48, 48, 3), dtype=torch.uint8)
    out = TempoCompressor(tiny_backbone)(Video.from_frames(frames, fps=2.0), query="?", budget=100)
    segs = out.stats["segments"]
    assert [s["frames"] for s in segs] == [8, 1]
    assert out.num_tokens <= 100 and segs[1]["tokens"] >= 1


def test_pipeline_passes_options_in_the_query(tiny_backbone, short_video):
    from videollm.config import PipelineConfig
    from videollm.pipeline import VideoQAPipeline

    seen = []

    class Spy(TempoCompressor):
        def compress(self, video, query, budget):
            seen.append(query)
            return super().compress(video, query, budget)

    pipe = VideoQAPipeline(tiny_backbone, PipelineConfig(model="tiny-random", budget=64), compressor=Spy(tiny_backbone))
    ans = pipe(short_video, "What color?", options=["red", "blue"])
    assert "red" in seen[0] and "blue" in seen[0]
    assert ans.visual_tokens <= 64
    assert ans.compressor_stats["segments"] and "relevance" in ans.compressor_stats["segments"][0]
    json.dumps(ans.to_dict())


def test_cli_ask_with_tempo(long_video, capsys):
    from videollm.cli import main

    rc = main(["ask", str(long_video), "What moves?", "--model", "tiny-random", "--compressor", "tempo",
               "--budget", "50", "--json", "--max-new-tokens", "2"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert 0 < out["visual_tokens"] <= 50
    stats = out["compressor_stats"]
    assert stats["compressor"] == "tempo" and len(stats["segments"]) == 5
    assert {"start", "end", "relevance", "tokens"} <= set(stats["segments"][0])
    assert np.isfinite([s["relevance"] for s in stats["segments"]]).all()


def test_svlm_by_name_is_a_second_model_with_the_same_scores(tiny_backbone, long_video):
    """svlm=tiny-random loads a second copy (same seed, same weights): separate pass, identical relevance."""
    video = load_video(long_video, SamplingConfig(num_frames=4))
    own = TempoCompressor(tiny_backbone)(video, query="What moves?", budget=300)
    comp = TempoCompressor(tiny_backbone, svlm="tiny-random")
    assert comp._svlm() is not tiny_backbone and comp._svlm() is comp._svlm()  # loaded once, cached
    other = comp(video, query="What moves?", budget=300)
    a = [s["relevance"] for s in own.stats["segments"]]
    b = [s["relevance"] for s in other.stats["segments"]]
    assert np.allclose(a, b, atol=1e-4)
    assert other.stats["svlm"] == "tiny-random"


def test_svlm_by_name_comes_from_the_model_cache_quantized_like_the_backbone(long_video):
    """`--quant int4 --compressor tempo --compressor-option svlm=NAME`: the SVLM is the cache's instance,
    quantized by the cache's loader with the backbone's schemes, and shared with a pipeline asking for it."""
    from videollm.config import PipelineConfig
    from videollm.models import clear_models, load_report
    from videollm.pipeline import VideoQAPipeline

    clear_models("tiny-random")
    cfg = PipelineConfig(model="tiny-random", device="cpu", quant="int4", vision_quant="int8", compressor="tempo",
                         compressor_options={"svlm": "tiny-random"})
    pipe = VideoQAPipeline.from_config(cfg)
    video = load_video(long_video, SamplingConfig(num_frames=4))
    ans = pipe(video, "What moves?", budget=300)
    svlm = pipe.compressor._svlm()
    report = load_report(svlm)
    assert report is not None and report.quantization is not None
    assert (report.quant, report.group_size) == ("int4+int8", 128)
    assert svlm is pipe.backbone  # the same name and settings: the cache's one instance
    # a float backbone asking for the same SVLM gets a float one, another cache entry
    float_pipe = VideoQAPipeline.from_config(PipelineConfig(model="tiny-random", device="cpu", compressor="tempo",
                                                            compressor_options={"svlm": "tiny-random"}))
    assert load_report(float_pipe.compressor._svlm()).quantization is None
    assert float_pipe.compressor._svlm() is not svlm and ans.compressor_stats["svlm"] == "tiny-random"
    clear_models("tiny-random")
