"""Encode once, ask many: the feature cache behind the compressors, `ask_many`, and eval's per-video groups."""
from __future__ import annotations

import shutil

import pytest
import torch

from videollm.errors import InvalidRequestError
from videollm.feature_cache import default_cache
from videollm.video import SamplingConfig, Video

QUESTIONS = ["What happens first?", ("Which colour?", ["red", "green", "blue", "white"]), "What happens last?"]


@pytest.fixture
def tower_calls(tiny_backbone, monkeypatch):
    """How many frames went through the vision tower (a spy around `frame_tokens`)."""
    calls: list[int] = []
    real = tiny_backbone.frame_tokens

    def spy(frames):
        calls.append(int(frames.shape[0]))
        return real(frames)

    monkeypatch.setattr(tiny_backbone, "frame_tokens", spy)
    return calls


def _key(a):
    return (a.text, a.choice, a.kept_frames, a.visual_tokens, a.generated_tokens)


def test_second_question_never_runs_the_tower(tiny_pipeline, short_video, tower_calls):
    answers = tiny_pipeline.ask_many(short_video, QUESTIONS)
    assert len(answers) == 3 and [a.question for a in answers] == ["What happens first?", "Which colour?",
                                                                    "What happens last?"]
    assert sum(tower_calls) == 8  # 8 sampled frames, encoded once for three questions
    first = len(tower_calls)
    tiny_pipeline(short_video, "And in the middle?")  # a later plain call on the same file: also served
    assert len(tower_calls) == first


def test_answers_with_the_cache_equal_answers_without(tiny_pipeline, short_video, monkeypatch):
    cached = tiny_pipeline.ask_many(short_video, QUESTIONS)
    again = tiny_pipeline.ask_many(short_video, QUESTIONS)  # every question from the cache
    monkeypatch.setattr(default_cache(), "max_bytes", 0)
    plain = [tiny_pipeline(short_video, q) if isinstance(q, str) else tiny_pipeline(short_video, *q)
             for q in QUESTIONS]
    assert [_key(a) for a in cached] == [_key(a) for a in again] == [_key(a) for a in plain]


def test_cached_tokens_are_bitwise_the_computed_ones(tiny_pipeline, short_video, monkeypatch):
    comp = tiny_pipeline.compressor
    vid = tiny_pipeline.load(short_video)
    first = comp(vid, query="q").embeds
    second = comp(vid, query="q").embeds
    monkeypatch.setattr(default_cache(), "max_bytes", 0)
    plain = comp(vid, query="q").embeds
    assert torch.equal(first, second) and torch.equal(first, plain)


def test_other_file_sampling_or_backbone_recompute(tiny_pipeline, short_video, tower_calls, tmp_path):
    from videollm.backbones.tiny import build_tiny_random
    from videollm.pipeline import VideoQAPipeline
    from videollm.synthetic import write_video

    tiny_pipeline(short_video, "q")
    assert sum(tower_calls) == 8
    tiny_pipeline(short_video, "q", sampling=SamplingConfig(num_frames=6))  # another sampling plan
    assert sum(tower_calls) == 8 + 6
    copy = tmp_path / "copy.mp4"
    shutil.copy2(short_video, copy)  # same size, mtime and bytes
    tiny_pipeline(copy, "q")  # same bytes under another name: same content, served from the cache
    assert sum(tower_calls) == 14
    write_video(copy, 60, fps=25, size=(96, 128))  # the file changed in place
    tiny_pipeline(copy, "q")
    assert sum(tower_calls) == 22
    other = build_tiny_random()  # another model instance (same architecture): its own features
    other_calls: list[int] = []
    real = other.frame_tokens
    other.frame_tokens = lambda f: (other_calls.append(len(f)), real(f))[1]
    VideoQAPipeline(other, tiny_pipeline.config)(short_video, "q")
    assert sum(other_calls) == 8


def test_in_memory_frames_are_not_cached(tiny_pipeline, tower_calls):
    frames = torch.randint(0, 255, (4, 48, 64, 3), dtype=torch.uint8)
    vid = Video.from_frames(frames)
    tiny_pipeline(vid, "q")
    tiny_pipeline(vid, "q")
    assert sum(tower_calls) == 8


def test_cache_off_by_environment(tiny_pipeline, short_video, tower_calls, monkeypatch):
    monkeypatch.setattr(default_cache(), "max_bytes", 0)
    tiny_pipeline.ask_many(short_video, ["a?", "b?"])
    assert sum(tower_calls) == 16


def test_ask_many_rejects_bad_questions_before_loading(tiny_pipeline, tmp_path):
    with pytest.raises(InvalidRequestError, match="string or a"):
        tiny_pipeline.ask_many(tmp_path / "missing.mp4", ["ok?", 3])
    with pytest.raises(InvalidRequestError, match="empty"):
        tiny_pipeline.ask_many(tmp_path / "missing.mp4", ["ok?", "  "])


def test_eval_encodes_each_video_once(tiny_pipeline, tower_calls, tmp_path):
    """Eval groups a video's questions (sharding keeps them on one rank): questions 2..n use the cache."""
    import importlib.util
    import sys
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("eval_bench", Path(__file__).parents[1] / "bench" / "eval_bench.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["eval_bench"] = mod
    spec.loader.exec_module(mod)
    from videollm.eval.runner import RunOptions, run
    from videollm.eval.tasks import get_task, load_samples

    root = mod.make_fixture(tmp_path / "bench", 2)  # 2 videos x 3 questions
    task = get_task("videomme")
    samples = load_samples(task, root)
    res = run(task, samples, tiny_pipeline, tmp_path / "run", options=RunOptions(progress=False))
    assert sum(tower_calls) == 2 * 8  # one encode per video, not per question
    assert res is not None


def test_prefetch_yields_the_same_chunks_and_stops_cleanly(short_video, monkeypatch):
    from videollm.compressors.base import prefetched, timed_chunks
    from videollm.video import load_video

    vid = load_video(short_video, SamplingConfig(num_frames=10))
    monkeypatch.setenv("VIDEOLLM_PREFETCH", "0")
    plain = [b.frames for b in timed_chunks(vid, 3)]
    monkeypatch.setenv("VIDEOLLM_PREFETCH", "1")
    ahead = [b.frames for b in timed_chunks(vid, 3)]
    assert len(plain) == len(ahead) == 4 and all(torch.equal(a, b) for a, b in zip(plain, ahead))
    it = timed_chunks(vid, 3)
    next(it)
    it.close()  # abandoned after one chunk: the worker is joined before the video closes
    vid.close()

    def boom():
        yield 1
        raise ValueError("decoder broke")

    with pytest.raises(ValueError, match="decoder broke"):
        list(prefetched(boom()))


@pytest.mark.parametrize("layer", [-1, -2, [-2, -1]])
def test_trimmed_tower_equals_the_full_forward(tiny_backbone, monkeypatch, layer):
    """Only the layers the projector reads run (no post-layernorm, no pooling head), bit for bit the same."""
    frames = torch.randint(0, 255, (3, 40, 56, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(tiny_backbone, "_layer", layer)
    fast = tiny_backbone.encode_frames(frames)
    head_calls: list[int] = []
    monkeypatch.setenv("VIDEOLLM_TOWER_TRIM", "0")
    full = tiny_backbone.encode_frames(frames)
    assert fast.shape == full.shape and torch.equal(fast, full)
    monkeypatch.delenv("VIDEOLLM_TOWER_TRIM")
    vm = tiny_backbone.model.model.vision_tower
    vm = getattr(vm, "vision_model", vm)
    hook = vm.post_layernorm.register_forward_hook(lambda *a: head_calls.append(1))
    try:
        tiny_backbone.encode_frames(frames)
        assert head_calls == []
        monkeypatch.setenv("VIDEOLLM_TOWER_TRIM", "0")
        tiny_backbone.encode_frames(frames)
        assert head_calls == [1]  # the spy does see the full forward
    finally:
        hook.remove()


def test_longvu_second_question_reuses_tower_and_dino(tiny_backbone, short_video, tower_calls, monkeypatch):
    """Query-aware LongVU: DINOv2 and the tower run once per video; only the query step is redone."""
    from videollm.compressors import create_compressor
    from videollm.video import load_video

    comp = create_compressor("longvu", tiny_backbone, dino_pretrained=False, dino_image_size=56, dedup_when="always",
                             dino_kwargs={"depth": 1, "embed_dim": 32, "num_heads": 2})
    vid = load_video(short_video, SamplingConfig(num_frames=12))
    first = comp(vid, query="red ball", budget=64)
    dino_calls: list[int] = []
    enc = comp.dino()
    real = type(enc).__call__
    monkeypatch.setattr(type(enc), "__call__", lambda self, f: (dino_calls.append(len(f)), real(self, f))[1])
    tower_before = sum(tower_calls)
    again = comp(vid, query="red ball", budget=64)
    other = comp(vid, query="a blue car", budget=64)
    assert dino_calls == [] and sum(tower_calls) == tower_before
    assert torch.equal(first.embeds, again.embeds) and other.num_tokens <= 64
    vid.close()
