"""The compressor seam: every registered compressor respects the budget and reports provenance."""
import numpy as np
import pytest
import torch

from videollm.compressors import COMPRESSORS, create_compressor, list_compressors
from videollm.compressors.base import grid_for, pool_grid, spread, trim_to_budget
from videollm.errors import InvalidRequestError
from videollm.types import VisualTokens
from videollm.video import SamplingConfig, Video, load_video


@pytest.fixture(scope="module")
def video12(short_video):
    return load_video(short_video, SamplingConfig(num_frames=12))


@pytest.mark.parametrize("name", list_compressors())
@pytest.mark.parametrize("budget", [1, 5, 12, 40, 191, 10_000])
def test_every_compressor_respects_budget(tiny_backbone, video12, name, budget):
    comp = create_compressor(name, tiny_backbone)
    out = comp(video12, query="what is shown at the start?", budget=budget)
    assert 1 <= out.num_tokens <= budget
    assert out.embeds.shape[1] == tiny_backbone.hidden_size
    assert out.frame_ids.min() >= 0 and out.frame_ids.max() < len(video12)
    assert torch.all(out.frame_ids[1:] >= out.frame_ids[:-1]), "tokens must stay in time order"
    assert sum(out.tokens_per_frame.values()) == out.num_tokens
    assert out.stats["visual_tokens"] == out.num_tokens


@pytest.mark.parametrize("name", list_compressors())
def test_invalid_budgets_are_rejected(tiny_backbone, video12, name):
    comp = create_compressor(name, tiny_backbone)
    for bad in (0, -5, 10**9):
        with pytest.raises(InvalidRequestError, match="budget"):
            comp(video12, query="q", budget=bad)


def test_uniform_keeps_all_native_tokens_without_budget(tiny_backbone, video12):
    out = create_compressor("uniform", tiny_backbone)(video12)
    per = tiny_backbone.tokens_per_frame
    assert out.num_tokens == 12 * per
    assert out.kept_frames == list(range(12))
    assert out.patch_ids[:per].tolist() == list(range(per))


def test_uniform_tokens_equal_backbone_frame_tokens(tiny_backbone, video12):
    out = create_compressor("uniform", tiny_backbone)(video12)
    frames = video12.read().frames
    ref = tiny_backbone.frame_tokens(frames).flatten(1, 2).flatten(0, 1)
    assert torch.allclose(out.embeds, ref, atol=1e-5)


def test_uniform_under_budget_drops_whole_frames_evenly(tiny_backbone, video12):
    per = tiny_backbone.tokens_per_frame  # 16 for tiny-random
    out = create_compressor("uniform", tiny_backbone)(video12, budget=4 * per)
    assert out.kept_frames == [0, 4, 7, 11]
    assert set(out.tokens_per_frame.values()) == {per}


def test_pool_hits_tokens_per_frame_target(tiny_backbone, video12):
    out = create_compressor("pool", tiny_backbone, tokens_per_frame=4)(video12)
    assert out.num_tokens == 12 * 4 and set(out.tokens_per_frame.values()) == {4}
    frames = video12.read().frames[:1]
    native = tiny_backbone.frame_tokens(frames)  # (1, 4, 4, D)
    expected = native.reshape(1, 2, 2, 2, 2, -1).mean(dim=(2, 4)).reshape(4, -1)
    assert torch.allclose(out.embeds[:4], expected, atol=1e-5)


def test_pool_budget_below_frame_count_keeps_one_token_per_kept_frame(tiny_backbone, video12):
    out = create_compressor("pool", tiny_backbone)(video12, budget=5)
    assert out.num_tokens == 5 and len(out.kept_frames) == 5


def test_unknown_compressor_and_option():
    with pytest.raises(KeyError, match="unknown compressor"):
        COMPRESSORS.get("nope")
    with pytest.raises(InvalidRequestError, match="unknown pool option"):
        create_compressor("pool", None, not_an_option=1)
    with pytest.raises(InvalidRequestError, match="tokens_per_frame must be >= 1"):
        create_compressor("pool", None, tokens_per_frame=0)
    with pytest.raises(InvalidRequestError, match="tokens_per_frame='x'"):
        create_compressor("pool", None, tokens_per_frame="x")


@pytest.mark.parametrize("target,rows,cols", [(1, 14, 14), (4, 14, 14), (16, 14, 14), (50, 14, 14), (196, 14, 14),
                                              (10, 4, 8), (7, 3, 3)])
def test_grid_for_fits_target_and_keeps_aspect(target, rows, cols):
    r, c = grid_for(target, rows, cols)
    assert r * c <= target and r <= rows and c <= cols
    assert abs(c - r * cols / rows) <= 1
    if target >= 4 and rows == cols and int(target**0.5) ** 2 == target:
        assert r == c


def test_pool_grid_identity_when_target_large():
    x = torch.randn(2, 4, 4, 8)
    assert pool_grid(x, 16) is x


def test_spread_and_trim():
    assert spread(3, 10).tolist() == [0, 4, 9] or spread(3, 10).tolist() == [0, 5, 9]
    assert spread(20, 10).tolist() == list(range(10))
    vt = VisualTokens(torch.randn(100, 4), torch.arange(100) // 10, torch.arange(100), torch.zeros(10), 10)
    t = trim_to_budget(vt, 7)
    assert t.num_tokens == 7 and t.stats["trimmed"]


def test_compressor_streams_chunks_through_vision(tiny_backbone, short_video, monkeypatch):
    """A long sampling never sends more than chunk_size frames to the vision tower at once."""
    video = load_video(short_video, SamplingConfig(num_frames=64))
    seen = []
    orig = tiny_backbone.frame_tokens

    def spy(frames):
        seen.append(frames.shape[0])
        return orig(frames)

    monkeypatch.setattr(tiny_backbone, "frame_tokens", spy)
    create_compressor("pool", tiny_backbone, chunk_size=8, tokens_per_frame=1)(video)
    assert max(seen) == 8 and sum(seen) == 64


def test_in_memory_video(tiny_backbone):
    frames = torch.from_numpy(np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3), dtype=np.uint8))
    out = create_compressor("uniform", tiny_backbone)(Video.from_frames(frames, fps=1.0))
    assert out.kept_frames == [0, 1, 2]
