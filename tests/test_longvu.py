"""LongVU compressor: the pure decisions on hand-built tensors, the class on generated videos, the CLI."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from videollm.compressors import create_compressor
from videollm.compressors.longvu import (
    PRESETS,
    LongVUCompressor,
    LongVUConfig,
    cap_frames,
    dedup_gate,
    dedup_keep,
    dedup_window_keep,
    plan_resolution,
    plan_resolution_code,
    query_scores,
    reduce_tokens,
    reduced_grid,
    resolve_params,
    select_full_frames,
    stc_keep_mask,
    trim_counts,
    trim_counts_code,
)
from videollm.errors import InvalidRequestError
from videollm.video import SamplingConfig, Video, load_video

TINY_DINO = dict(dino_pretrained=False, dino_image_size=56, dino_kwargs={"depth": 1, "embed_dim": 32, "num_heads": 2})


# ---------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------
def orthogonal(n: int, d: int | None = None) -> torch.Tensor:
    """n mutually orthogonal unit vectors."""
    return torch.eye(d or n)[:n]


def stretches(lengths: list[int], d: int = 64, seed: int = 0) -> torch.Tensor:
    """Frame features: each stretch repeats one random vector (frozen), stretches nearly orthogonal."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(len(lengths), d, generator=g)
    return torch.cat([protos[i].expand(n, d) for i, n in enumerate(lengths)])


class _Tok:
    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": list(range(len(text.split()) + 1))}


class ColorBackbone:
    """Stand-in backbone whose LLM-space tokens are the frame's centred mean colour on a 4×4 grid,
    so tests control which frames a question matches; it records which frames reach the vision tower."""

    frame_grid = (4, 4)
    tokens_per_frame = 16
    max_context = 100_000
    device = torch.device("cpu")
    dtype = torch.float32
    tokenizer = _Tok()

    def __init__(self):
        self.seen_frames = 0
        self.calls: list[int] = []
        self.query_vec: torch.Tensor | None = None

    def render_prompt(self, user_text, system=None):
        return f"<video> {user_text}"

    def encode_frames(self, frames):  # pre-projector features: what dedup falls back to without DINOv2
        self.encoded_frames = getattr(self, "encoded_frames", 0) + frames.shape[0]
        x = frames.permute(0, 3, 1, 2).float() / 255.0
        return torch.nn.functional.adaptive_avg_pool2d(x, (4, 4)).permute(0, 2, 3, 1)

    def frame_tokens(self, frames):
        self.seen_frames += frames.shape[0]
        self.calls.append(frames.shape[0])
        x = frames.permute(0, 3, 1, 2).float() / 255.0
        x = torch.nn.functional.adaptive_avg_pool2d(x, (4, 4)).permute(0, 2, 3, 1)
        return x - 0.25  # (n, 4, 4, 3), centred on the textures' mean

    def embed_text(self, text):
        colors = {"red": [1.0, 0, 0], "green": [0, 1.0, 0], "blue": [0, 0, 1.0]}
        word = next((w for w in colors if w in text), None)
        vec = torch.tensor(colors[word] if word else [1.0, 1.0, 1.0])
        return vec.expand(2, 3).clone()


def textured(n: int, size: int = 32, seed: int = 0, tint: tuple[int, int, int] | None = None) -> np.ndarray:
    """n different random-texture frames (so STC and dedup find nothing to drop), optionally tinted."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 120, (n, size // 8, size // 8, 3)).repeat(8, 1).repeat(8, 2).astype(np.int64)
    if tint is not None:
        x = x + np.array(tint)
    return np.clip(x, 0, 255).astype(np.uint8)


def make_compressor(backbone=None, **opts) -> LongVUCompressor:
    return LongVUCompressor(backbone or ColorBackbone(), **opts)


# ---------------------------------------------------------------------------------------------------
# 1. temporal reduction: pure functions
# ---------------------------------------------------------------------------------------------------
def test_window_rule_frozen_window_keeps_only_the_middle_frame():
    for w in (1, 2, 7, 16):
        keep = dedup_window_keep(torch.ones(w, w), 0.83)
        assert keep.tolist() == [i == w // 2 for i in range(w)]


def test_window_rule_distinct_frames_all_stay_and_threshold_is_strict():
    q = orthogonal(16)
    assert dedup_window_keep(q @ q.T, 0.83).all()
    sim = torch.full((4, 4), 0.5)
    assert dedup_window_keep(sim, 0.5).tolist() == [False, False, True, False]  # score == threshold goes
    assert dedup_window_keep(sim, 0.51).all()
    with pytest.raises(ValueError):
        dedup_window_keep(torch.ones(2, 3), 0.8)


def release_select(features: torch.Tensor, window: int, threshold: float) -> torch.Tensor:
    """LongVU's released `select_frame` window loop (cambrian_arch.py), indices only, as an oracle."""
    kept = []
    for start in range(0, len(features), window):
        seg = features[start:start + window].flatten(1)
        q = seg / torch.norm(seg, dim=1, keepdim=True)
        sims = torch.mean(q @ q.T, dim=1)
        sims[len(seg) // 2] = 0
        kept.extend((torch.where(sims < threshold)[0] + start).tolist())
    return torch.tensor(kept, dtype=torch.long)


@pytest.mark.parametrize("threshold", [0.83, 0.3, 1e-6, 0.0, -0.2])
def test_dedup_matches_the_release_at_every_threshold_including_zero_and_below(threshold):
    g = torch.Generator().manual_seed(7)
    base = torch.randn(5, 6, 4, generator=g)
    feats = torch.cat([base[i].expand(7, 6, 4) + 0.01 * torch.randn(7, 6, 4, generator=g) for i in range(5)])
    keep = dedup_keep(feats, 16, threshold)
    assert torch.nonzero(keep).flatten().tolist() == release_select(feats, 16, threshold).tolist()
    one = dedup_window_keep(torch.ones(5, 5), threshold)  # a frozen window: the middle frame stays only at > 0
    assert one.tolist() == [threshold > 0 and i == 2 for i in range(5)]
    if threshold == 0.0:  # the release drops the middle frame at 0 ...
        assert not keep[16 // 2] and not keep[16 + 8]
    if threshold == -0.2:  # ... and keeps nothing of frames this alike below 0
        assert not keep.any()


@pytest.mark.parametrize("bad", [0.0, -0.2, -1.0, 1.5, float("nan")])
def test_dino_threshold_outside_0_1_is_refused_with_the_reason(bad):
    with pytest.raises(InvalidRequestError, match=r"dino_threshold must be in \(0, 1\].*middle frame"):
        resolve_params(LongVUConfig(dino_threshold=bad))
    assert resolve_params(LongVUConfig(dino_threshold=1e-3)).dino_threshold == 1e-3


def test_dedup_frozen_stretches_and_cuts_keep_one_per_stretch():
    feats = stretches([16, 16, 16, 16])
    keep = dedup_keep(feats, window=16, threshold=0.83)
    assert torch.nonzero(keep).flatten().tolist() == [8, 24, 40, 56]
    # paper window (8): one survivor per window, still only from frozen content
    keep8 = dedup_keep(feats, window=8, threshold=0.83)
    assert keep8.sum() == 8 and all(keep8[i] for i in (4, 12, 20, 28))


def test_dedup_window_straddling_a_cut_keeps_its_frames_like_the_code():
    """The code's mean-over-window score: half A, half B (orthogonal) scores 0.5 < 0.83, so all stay."""
    keep = dedup_keep(stretches([24, 8], d=64, seed=3), window=16, threshold=0.83)
    assert keep[:16].sum() == 1 and keep[8]  # frozen window 0..15: its middle frame only
    assert keep[16:].all()  # window 16..31 holds 8 A + 8 B frames


def test_dedup_near_frozen_frames_go_and_genuinely_different_frames_stay():
    g = torch.Generator().manual_seed(1)
    base = torch.randn(1, 256, generator=g)
    near = base + 0.01 * torch.randn(16, 256, generator=g)  # sensor noise on a still scene
    assert dedup_keep(near, 16, 0.83).sum() == 1
    different = torch.randn(16, 256, generator=g)
    assert dedup_keep(different, 16, 0.83).all()


def test_dedup_one_frame_and_ten_thousand_frames():
    assert dedup_keep(torch.randn(1, 8), 16, 0.83).tolist() == [True]
    frozen = torch.ones(10_000, 4)
    keep = dedup_keep(frozen, 16, 0.83)
    assert keep.sum() == 625 and keep[8] and keep[-8]  # one per window (10_000 / 16)
    g = torch.Generator().manual_seed(0)
    assert dedup_keep(torch.randn(10_000, 64, generator=g), 16, 0.83).all()
    keep = dedup_keep(torch.ones(10_001, 4), 16, 0.83)  # a 1-frame last window stays
    assert keep.sum() == 626 and keep[-1]


def test_dedup_gate_and_cap():
    assert not dedup_gate(10, 8000, 64, "overflow")  # 10 < 8000 // 64 = 125
    assert dedup_gate(125, 8000, 64, "overflow")
    assert dedup_gate(1, 8000, 64, "always")
    assert dedup_gate(1, 3, 64, "overflow")  # budget below one frame: always reduce
    with pytest.raises(ValueError):
        dedup_gate(1, 1, 1, "sometimes")
    pos = np.arange(1000) * 2
    capped = cap_frames(pos, 400)
    assert len(capped) == 400 and capped[0] == 0 and capped[1] == pos[2] and capped[-1] == pos[int(399 * 1000 / 400)]
    assert cap_frames(pos, 0) is pos and len(cap_frames(pos[:5], 400)) == 5


# ---------------------------------------------------------------------------------------------------
# 2. selective feature reduction: pure functions
# ---------------------------------------------------------------------------------------------------
def test_reduced_grid_follows_longvu_ratio():
    assert reduced_grid(12, 12) == (8, 8)
    assert reduced_grid(14, 14) == (9, 9)  # LLaVA-OneVision's 196 → 81
    assert reduced_grid(4, 4) == (3, 3)  # tiny-random's 16 → 9
    assert reduced_grid(1, 1) == (1, 1)
    assert reduced_grid(6, 12) == (4, 8)


def test_plan_resolution_modes_and_longvu_count():
    assert plan_resolution(10, 8000, 144, 64) == plan_resolution(10, 1440, 144, 64)
    assert plan_resolution(10, 1440, 144, 64).mode == "full"
    p = plan_resolution(100, 8000, 144, 64)  # (8000 - 6400) // 80 = 20 frames at full res
    assert (p.mode, p.num_full) == ("mix", 20)
    assert 20 * 144 + 80 * 64 <= 8000 < 21 * 144 + 79 * 64
    assert plan_resolution(126, 8000, 144, 64) == plan_resolution(126, 8000, 144, 64)
    assert plan_resolution(126, 8000, 144, 64).mode == "overflow"  # 126 * 64 > 8000
    assert plan_resolution(100, 6400, 144, 64).num_full == 0
    assert plan_resolution(3, 20, 16, 16).mode == "overflow"  # nothing smaller to fall back on
    assert plan_resolution(1, 1, 16, 9).mode == "overflow"


def test_query_scores_match_the_double_mean_and_pick_the_aligned_frame():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(6, 9, 32, generator=g)
    text = torch.randn(5, 32, generator=g)
    ref = torch.stack([(tokens[i] @ text.T).mean(-1).mean() for i in range(6)])
    assert torch.allclose(query_scores(tokens, text), ref, atol=1e-5)
    tokens = 0.1 * torch.randn(20, 9, 32, generator=g)
    tokens[13] += text.mean(0)  # frame 13 is what the question is about
    assert select_full_frames(query_scores(tokens, text), 1, 20).tolist() == [13]
    with pytest.raises(ValueError):
        query_scores(tokens, text[:, :8])


def test_select_full_frames_edges():
    s = torch.tensor([0.1, 0.9, 0.3, 0.8, 0.2])
    assert select_full_frames(s, 2, 5).tolist() == [1, 3]  # top-2, back in time order
    assert select_full_frames(s, 0, 5).tolist() == []
    assert select_full_frames(s, 9, 5).tolist() == [0, 1, 2, 3, 4]
    assert select_full_frames(None, 2, 5).tolist() == [0, 4]  # no question: spread evenly
    assert select_full_frames(torch.randn(1), 1, 1).tolist() == [0]


def test_reduce_tokens_modes():
    x = torch.arange(16.0).view(1, 4, 4, 1)
    assert reduce_tokens(x, (2, 2), "avgpool").flatten().tolist() == [2.5, 4.5, 10.5, 12.5]
    assert reduce_tokens(x, (3, 3), "bilinear").shape == (1, 3, 3, 1)
    assert reduce_tokens(x, (4, 4), "bilinear") is x
    with pytest.raises(ValueError):
        reduce_tokens(x, (2, 2), "nearest")


# ---------------------------------------------------------------------------------------------------
# 3. spatial token compression: pure functions
# ---------------------------------------------------------------------------------------------------
def test_stc_drops_repeated_region_keeps_changed_region():
    g = torch.Generator().manual_seed(0)
    first = torch.randn(16, 8, generator=g)
    frames = first.expand(8, 16, 8).clone()
    frames[1:, 8:] = -first[8:] + 0.3 * torch.randn(7, 8, 8, generator=g)  # bottom half changes in frames 2..8
    keep = stc_keep_mask(frames, window=8, threshold=0.7)
    assert keep[0].all()
    assert not keep[1:, :8].any() and keep[1:, 8:].all()


def test_stc_windows_anchor_on_their_own_first_frame():
    x = torch.ones(20, 4, 3)
    keep = stc_keep_mask(x, window=8, threshold=0.7)
    assert torch.nonzero(keep.all(1)).flatten().tolist() == [0, 8, 16]
    assert keep.sum() == 3 * 4
    assert stc_keep_mask(x, window=1, threshold=0.7).all()  # single-frame windows stay whole
    assert stc_keep_mask(x[:1], window=8, threshold=0.7).all()


def test_stc_blocked_equals_unblocked_on_ten_thousand_frames():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10_000, 4, 3, generator=g)
    x[1::2] = x[0::2]  # every odd frame repeats the previous one
    a = stc_keep_mask(x, window=8, threshold=0.7, block=3)
    b = stc_keep_mask(x, window=8, threshold=0.7, block=10_000)
    assert torch.equal(a, b)
    anchors = (torch.arange(10_000) // 8) * 8
    ref = torch.nn.functional.cosine_similarity(x, x[anchors], dim=-1) < 0.7
    ref[0::8] = True
    assert torch.equal(a, ref)


def test_trim_counts_exact_even_and_never_negative():
    assert trim_counts([5, 5], 20).tolist() == [5, 5]
    assert trim_counts([10, 10, 10], 1).sum() == 1  # the code's ceil rule would leave nothing here
    out = trim_counts([100, 3, 50], 60)
    assert out.sum() == 60 and (out >= 0).all() and out[1] == 0
    assert out[0] - out[2] == 50  # the same number cut from both big windows
    rng = np.random.default_rng(0)
    for _ in range(200):
        c = rng.integers(0, 40, rng.integers(1, 12))
        b = int(rng.integers(0, c.sum() + 5))
        out = trim_counts(c, b)
        assert out.sum() == min(b, c.sum()) and (out >= 0).all() and (out <= c).all()
        cut = c - out
        if c.sum() > b:  # every window loses r or r-1 tokens unless it had fewer
            r = cut.max()
            assert all(ci == r or ci == r - 1 or oi == 0 for ci, oi in zip(cut, out))


# ---------------------------------------------------------------------------------------------------
# config and presets
# ---------------------------------------------------------------------------------------------------
def test_presets_and_overrides():
    code = resolve_params(LongVUConfig())
    assert (code.dedup_window, code.dino_threshold, code.stc_window, code.stc_threshold, code.dedup_when) == \
        (16, 0.83, 8, 0.7, "overflow")
    paper = resolve_params(LongVUConfig(preset="paper"))
    assert (paper.dedup_window, paper.dedup_when, paper.stc_threshold) == (8, "always", 0.8)
    assert resolve_params(LongVUConfig(preset="paper", dedup_window=4)).dedup_window == 4
    assert set(PRESETS) == {"code", "paper"}
    for bad in (dict(preset="nope"), dict(stc_threshold=3.0), dict(dedup_window=0), dict(dedup_when="x"),
                dict(reduce_mode="x"), dict(fps=0.0), dict(reduced_grid=[0, 2])):
        with pytest.raises(InvalidRequestError):
            make_compressor(**bad)
    with pytest.raises(InvalidRequestError, match="unknown longvu option"):
        make_compressor(no_such_option=1)


# ---------------------------------------------------------------------------------------------------
# the compressor on videos
# ---------------------------------------------------------------------------------------------------
def colour_video() -> tuple[Video, list[int]]:
    frames = textured(12, seed=1)
    blue = [6, 7]
    frames[blue] = textured(2, seed=2, tint=(0, 0, 135))
    frames[[2]] = textured(1, seed=3, tint=(135, 0, 0))
    return Video.from_frames(frames, fps=1.0), blue


def test_question_about_one_part_keeps_it_at_full_tokens():
    video, blue = colour_video()
    bb = ColorBackbone()
    budget = 12 * 9 + 2 * (16 - 9)  # room for exactly two full frames
    vt = make_compressor(bb, dedup=False)(video, query="when is the blue car shown", budget=budget)
    tpf = vt.tokens_per_frame
    assert vt.num_tokens <= budget
    assert [f for f, c in tpf.items() if c == 16] == blue
    assert all(c == 9 for f, c in tpf.items() if f not in blue)
    assert vt.stats["stages"]["query"]["scored_by_query"]
    vt = make_compressor(bb, dedup=False)(video, query="what is red", budget=12 * 9 + (16 - 9))
    assert [f for f, c in vt.tokens_per_frame.items() if c == 16] == [2]
    assert (vt.patch_ids[vt.frame_ids == 2] == torch.arange(16)).all()  # full frames keep grid positions
    assert (vt.patch_ids[vt.frame_ids == 3] == -1).all()  # reduced tokens summarise regions


def test_budgets_tiny_to_large_never_exceeded():
    video = Video.from_frames(textured(40, seed=5), fps=1.0)
    native = 40 * 16
    comp = make_compressor(**TINY_DINO)  # one instance serves many calls
    for budget in (1, 2, 5, 15, 16, 17, 50, 100, 360, 500, native, 10 * native, 1_000_000):
        vt = comp(video, query="blue", budget=budget)
        assert 1 <= vt.num_tokens <= budget, budget
        assert vt.stats["tokens_after"]["budget"] == vt.num_tokens
        after = list(vt.stats["tokens_after"].values())
        assert after == sorted(after, reverse=True)  # each stage only removes
    assert comp(video, query="x", budget=10 * native).num_tokens == native  # fits: nothing lost


def test_vision_tower_runs_only_on_kept_frames_and_dino_streams_in_batches():
    frames = np.concatenate([np.repeat(textured(1, seed=s), 16, axis=0) for s in range(3)])  # 3 frozen stretches
    video = Video.from_frames(frames, fps=1.0)
    bb = ColorBackbone()
    comp = make_compressor(bb, dedup_when="always", dino_batch=5, chunk_size=2, **TINY_DINO)
    batches: list[int] = []
    real = comp.dino()

    def spy(x):
        batches.append(x.shape[0])
        return real(x)

    comp._dino = spy
    vt = comp(video, query="anything")
    assert vt.kept_frames == [8, 24, 40]
    assert bb.seen_frames == 3 and max(bb.calls) <= 2
    assert sum(batches) == 48 and max(batches) <= 5
    d = vt.stats["stages"]["dedup"]
    assert d["ran"] and d["frames_removed"] == 45 and d["tokens_removed"] == 45 * 16


def test_generated_video_frozen_stretches_with_tiny_random_backbone(tiny_backbone, tmp_path):
    from videollm.synthetic import scenes_video

    path = scenes_video(tmp_path / "scenes.mp4", [16, 16, 16], fps=4, size=(64, 96))
    video = load_video(path, SamplingConfig(num_frames=48))
    comp = create_compressor("longvu", tiny_backbone, dedup_when="always", **TINY_DINO)
    vt = comp(video, query="What changes?")
    try:
        assert vt.kept_frames == [8, 24, 40]
        assert vt.num_tokens == 3 * tiny_backbone.tokens_per_frame
        assert vt.embeds.shape[1] == tiny_backbone.hidden_size
        assert vt.stats["grid_full"] == [4, 4] and vt.stats["grid_reduced"] == [3, 3]
    finally:
        video.close()


def test_spatial_reduction_on_a_generated_window():
    """Frames 2..8 repeat frame 1 in the top half and change in the bottom half."""
    base = textured(1, seed=7)[0]
    frames = np.repeat(base[None], 8, axis=0)
    frames[1:, 16:] = 128 - base[16:]  # centred colours flip sign: cosine about -1 with frame 1
    video = Video.from_frames(frames, fps=1.0)
    vt = make_compressor(dedup=False, query=False)(video, query=None, budget=8 * 16 - 1)  # overflow → STC
    assert vt.stats["stages"]["stc"]["ran"]
    assert vt.tokens_per_frame[0] == 16
    for f in range(1, 8):
        kept = vt.patch_ids[vt.frame_ids == f]
        assert kept.tolist() == list(range(8, 16))  # top half (rows 0-1) dropped, changed rows stay


def test_each_stage_disabled_in_turn():
    frames = np.concatenate([np.repeat(textured(1, seed=s), 16, axis=0) for s in range(4)])
    video = Video.from_frames(frames, fps=1.0)
    budget = 60
    results = {}
    for off in ("none", "dedup", "query", "stc"):
        bb = ColorBackbone()
        opts = dict(dedup_when="always", **TINY_DINO)
        if off != "none":
            opts[off] = False
        vt = make_compressor(bb, **opts)(video, query="blue", budget=budget)
        assert vt.num_tokens <= budget
        results[off] = (vt, bb.seen_frames)
    st = {k: v[0].stats["stages"] for k, v in results.items()}
    assert st["none"]["dedup"]["ran"] and results["none"][1] == 4
    assert not st["dedup"]["dedup"]["ran"] and results["dedup"][1] == 64  # every frame through the tower
    assert st["dedup"]["stc"]["ran"] and st["dedup"]["stc"]["tokens_removed"] > 0  # frozen frames' tokens go
    assert st["none"]["query"]["mode"] == "mix" and not st["query"]["query"]["ran"]
    assert st["query"]["stc"]["ran"]  # 4 full frames overflow 60 → STC
    assert not st["stc"]["stc"]["ran"] and st["stc"]["stc"]["tokens_removed"] == 0
    off_all = make_compressor(dedup=False, query=False, stc=False, overflow_cut="even")(video, query="blue",
                                                                                        budget=budget)
    assert off_all.num_tokens == budget and off_all.stats["stages"]["budget"]["tokens_removed"] == 64 * 16 - budget
    # the released cut takes ceil(964 / 8) = 121 of each 8-frame window's 128 tokens: 8 × 7 = 56, under the budget
    code_cut = make_compressor(dedup=False, query=False, stc=False)(video, query="blue", budget=budget)
    assert code_cut.num_tokens == 8 * (128 - math.ceil((64 * 16 - budget) / 8)) == 56


def test_dedup_is_gated_by_the_context_like_the_code():
    frames = np.repeat(textured(1, seed=0), 20, axis=0)
    video = Video.from_frames(frames, fps=1.0)
    bb = ColorBackbone()
    vt = make_compressor(bb, **TINY_DINO)(video, query="x")  # 20 frames fit 8192: no dedup, no STC
    assert not vt.stats["stages"]["dedup"]["ran"] and vt.num_tokens == 20 * 16
    vt = make_compressor(bb, **TINY_DINO)(video, query="x", budget=20 * 9)  # 20 >= 180 // 9
    assert vt.stats["stages"]["dedup"]["ran"] and vt.kept_frames == [8, 18]  # windows 0-15 and 16-19


def test_densify_resamples_files_at_one_fps(short_video):
    video = load_video(short_video, SamplingConfig(num_frames=2))  # 4 s at 25 fps
    try:
        vt = make_compressor(dedup=False)(video, query="x")
        assert vt.num_sampled_frames == 4
        assert torch.allclose(vt.timestamps, torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=torch.float64))
        vt = make_compressor(dedup=False, fps=0.5)(video, query="x")
        assert vt.num_sampled_frames == 2  # not denser than the pipeline's: kept as sampled
        vt = make_compressor(dedup=False, resample=False)(video, query="x")
        assert vt.num_sampled_frames == 2
    finally:
        video.close()


def test_offline_pretrained_dino_is_a_user_error(monkeypatch):
    from videollm import encoders
    from videollm._compat import require
    from videollm.encoders import DinoV2Encoder, EncoderLoadError

    timm = require("timm")

    def offline(*a, **k):
        raise OSError("cannot reach the hub")

    monkeypatch.setattr(encoders, "_UNLOADABLE", {})
    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(EncoderLoadError, match="pretrained=False"):
        DinoV2Encoder()
    with pytest.raises(EncoderLoadError):
        make_compressor(dedup_when="always", dedup_fallback=False)(
            Video.from_frames(np.repeat(textured(1), 20, axis=0), fps=1.0), query="x", budget=50)


def test_without_dino_weights_dedup_runs_on_backbone_features(monkeypatch):
    """No DINOv2 weights, no network: frozen frames still collapse, on the backbone's own vision features,
    and the stat says so; the hub is asked once per process (no retry loop), not once per call."""
    import time

    from huggingface_hub import constants

    from videollm import encoders

    monkeypatch.setattr(encoders, "_UNLOADABLE", {})
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    probes = []
    monkeypatch.setattr(encoders, "hub_reachable", lambda *a, **k: probes.append(1) or False)
    frozen = np.concatenate([np.repeat(textured(1, seed=1), 16, axis=0), np.repeat(textured(1, seed=2), 16, axis=0)])
    video = Video.from_frames(frozen, fps=1.0)
    start = time.perf_counter()
    for _ in range(2):
        bb = ColorBackbone()
        vt = make_compressor(bb, dedup_when="always", dino_model="vit_small_patch14_dinov2")(video, query="x",
                                                                                             budget=400)
        d = vt.stats["stages"]["dedup"]
        assert d["ran"] and d["features"] == "backbone_vision" and "cannot be reached" in d["dino_unavailable"]
        assert d["frames"] == 2 and vt.kept_frames == [8, 24]  # one survivor per frozen stretch
        assert bb.encoded_frames == 32 and bb.seen_frames == 2  # the projector only ran on the survivors
    assert len(probes) == 1 and time.perf_counter() - start < 10


def test_dino_encoder_pads_and_drops_prefix_tokens():
    from videollm.encoders import DinoV2Encoder

    enc = DinoV2Encoder(pretrained=False, image_size=56, depth=1, embed_dim=32, num_heads=2)
    out = enc(torch.from_numpy(textured(3, size=48)))
    assert out.shape == (3, 4, 4, 32) and enc.grid == (4, 4)
    again = DinoV2Encoder(pretrained=False, image_size=56, depth=1, embed_dim=32, num_heads=2)
    assert torch.equal(out, again(torch.from_numpy(textured(3, size=48))))  # seeded random weights


def test_cli_ask_with_longvu(short_video, capsys):
    from videollm.cli import main

    rc = main(["ask", str(short_video), "What happens?", "--model", "tiny-random", "--compressor", "longvu",
               "--budget", "40", "--max-new-tokens", "4", "--json", "--fps", "5",
               "--compressor-option", "dedup_when=always", "--compressor-option", "dino_pretrained=false",
               "--compressor-option", "dino_image_size=56",
               "--compressor-option", 'dino_kwargs={"depth": 1, "embed_dim": 32, "num_heads": 2}'])
    out = capsys.readouterr().out
    assert rc == 0
    ans = json.loads(out.strip().splitlines()[-1])
    assert 1 <= ans["visual_tokens"] <= 40
    stats = ans["compressor_stats"]
    assert stats["compressor"] == "longvu" and stats["stages"]["dedup"]["ran"]
    assert stats["sampled_frames"] == 20 and ans["sampled_frames"] == 20
    assert set(ans["kept_frames"]) <= set(range(20))
    assert not math.isnan(ans["timings"]["wall"])


# ---------------------------------------------------------------------------------------------------
# parity with the released code (preset=code): issue 14, item 11
# ---------------------------------------------------------------------------------------------------
def released_cap(n: int, max_num_frames: int = 400) -> list[int]:
    """cambrian_arch.select_frame's OOM guard, as written there."""
    interval = n / float(max_num_frames)
    return [int(interval * i) for i in range(max_num_frames)]


def released_trim(counts: list[int], max_visual_len: int) -> int:
    """The released 'ablation drop' tail on per-window token tensors: ceil(excess / windows) off every
    window's end with `x[:-force_remove]`, then `[:max_visual_len]` over the concatenation."""
    frames = [torch.arange(c) for c in counts]
    reduced = sum(x.shape[0] for x in frames)
    if reduced > max_visual_len:
        force_remove = math.ceil((reduced - max_visual_len) / len(frames))
        frames = [x[:-force_remove] for x in frames]
    return torch.cat(frames)[:max_visual_len].shape[0], [x.shape[0] for x in frames]


def test_frame_cap_index_is_the_released_float_expression():
    pos = np.arange(402)
    assert cap_frames(pos, 400)[200] == 200  # int((402 / 400.0) * 200) = int(200.99999...) = 200
    assert int(200 * 402 / 400) == 201  # the algebraically equal order picks the next frame
    for n in list(range(401, 1300)) + [4000, 10_001]:
        assert cap_frames(np.arange(n) * 3, 400).tolist() == [3 * i for i in released_cap(n)], n


def test_trim_counts_code_is_the_released_cut():
    assert trim_counts_code([5, 5], 20).tolist() == [5, 5]
    assert trim_counts_code([10, 10, 10], 1).tolist() == [0, 0, 0]  # ceil(29 / 3) = 10 empties every window
    # ceil(93 / 3) = 31 from each: [69, 0, 19] = 88 > 60, so the final slice cuts the end of the video
    assert trim_counts_code([100, 3, 50], 60).tolist() == [60, 0, 0]
    rng = np.random.default_rng(1)
    for _ in range(300):
        c = rng.integers(0, 60, rng.integers(1, 10)).tolist()
        b = int(rng.integers(0, sum(c) + 5))
        out = trim_counts_code(c, b)
        total, per_window = released_trim(c, b)
        assert out.sum() == total <= b and (out >= 0).all() and (out <= np.array(c)).all()
        kept = np.minimum(per_window, np.maximum(0, b - np.concatenate([[0], np.cumsum(per_window)[:-1]])))
        assert out.tolist() == kept.tolist()


def test_gates_count_the_image_placeholder_as_text():
    bb = ColorBackbone()  # prompt "<video> x": 3 ids, the placeholder among them
    comp = make_compressor(bb, context_length=108)
    assert comp.max_visual_tokens("x", None) == 108 - 2 - 16 == 90
    assert comp.max_visual_tokens("x", None, count_placeholder=True) == 89
    assert comp.max_visual_tokens("x", 50, count_placeholder=True) == 50  # a binding budget is the limit
    # 10 frames × 9 reduced tokens = 90 = V: the released mix gate says 10 > 89 // 9 → overflow (STC's turn)
    video = Video.from_frames(textured(10, seed=4), fps=1.0)
    code = make_compressor(bb, context_length=108, dedup=False)(video, query="x")
    exact = make_compressor(bb, context_length=108, dedup=False, gates="exact")(video, query="x")
    assert code.stats["stages"]["query"]["mode"] == "overflow" and code.stats["stages"]["stc"]["ran"]
    assert exact.stats["stages"]["query"]["mode"] == "mix" and exact.num_tokens == 90
    assert plan_resolution_code(10, 89, 90, 16, 9).mode == "overflow"
    assert plan_resolution(10, 90, 16, 9).mode == "mix"
    # the dedup gate: 9 frames, 89 // 9 = 9 → dedup runs under the released gate, not under the exact one
    frozen = Video.from_frames(np.repeat(textured(1, seed=0), 9, axis=0), fps=1.0)
    code = make_compressor(bb, context_length=108, **TINY_DINO)(frozen, query="x")
    exact = make_compressor(bb, context_length=108, gates="exact", **TINY_DINO)(frozen, query="x")
    assert code.stats["stages"]["dedup"]["ran"] and code.kept_frames == [4]
    assert not exact.stats["stages"]["dedup"]["ran"] and len(exact.kept_frames) == 9


def test_one_frame_under_a_reduced_frame_keeps_the_reduced_copy():
    frames = textured(1, seed=7)
    video = Video.from_frames(frames, fps=1.0)
    bb = ColorBackbone()
    for budget in (1, 5, 8):
        vt = make_compressor(bb, **TINY_DINO)(video, query="x", budget=budget)
        assert vt.stats["stages"]["dedup"]["ran"] and vt.kept_frames == [0]  # the gate's max(1, ...) runs it
        assert vt.num_tokens == budget and (vt.patch_ids == -1).all()  # the reduced 3×3 copy, trimmed
        assert vt.stats["stages"]["query"]["mode"] == "mix" and vt.stats["stages"]["query"]["full_frames"] == 0
        red = reduce_tokens(bb.frame_tokens(torch.from_numpy(frames)), (3, 3), "bilinear").flatten(1, 2)[0]
        assert torch.allclose(vt.embeds, red[:budget].to(vt.embeds))
        exact = make_compressor(bb, gates="exact", **TINY_DINO)(video, query="x", budget=budget)
        assert exact.stats["stages"]["query"]["mode"] == "overflow" and (exact.patch_ids >= 0).all()
    assert plan_resolution_code(1, 4, 5, 16, 9) == plan_resolution_code(1, 0, 1, 16, 9)
    assert plan_resolution_code(1, 4, 5, 16, 9).mode == "mix"
    assert plan_resolution_code(2, 4, 5, 16, 9).mode == "overflow"  # two frames do overflow
    assert plan_resolution_code(1, 15, 16, 16, 9).num_full == 1  # V = one full frame: upgraded


def test_plan_resolution_code_matches_the_released_branches():
    """Brute force over small sizes against a transcription of the released branch structure."""
    for t_full, t_red in ((16, 9), (144, 64)):
        for n in range(1, 30):
            for v in range(1, 40 * t_full, 7):
                g = v - 1 if v > 1 else 1
                mix = True
                if n < max(1, g // t_full):
                    mix = False
                    want = ("full", n)
                elif n > max(1, g // t_red):
                    want = ("overflow", n)
                else:
                    highres = math.floor((v - n * t_red) / (t_full - t_red)) if v > n * t_red else 0
                    want = ("mix", min(max(highres, 0), n))
                p = plan_resolution_code(n, g, v, t_full, t_red)
                assert (p.mode, p.num_full) == want, (n, v, t_full, t_red, mix)


def test_presets_pick_the_released_gates_and_cut():
    code, paper = resolve_params(LongVUConfig()), resolve_params(LongVUConfig(preset="paper"))
    assert (code.gates, code.overflow_cut) == ("code", "code")
    assert (paper.gates, paper.overflow_cut) == ("exact", "even")
    assert resolve_params(LongVUConfig(overflow_cut="even")).overflow_cut == "even"
    for bad in (dict(gates="x"), dict(overflow_cut="ceil")):
        with pytest.raises(InvalidRequestError):
            make_compressor(**bad)
