"""End to end through the Python API on tiny-random: video file → Answer."""
import pytest

from videollm.answer.prompting import parse_choice
from videollm.errors import CorruptVideoError, InvalidRequestError, NotAVideoError, VideoNotFoundError
from videollm.runtime.generation import GenerationConfig
from videollm.video import SamplingConfig

STAGES = {"decode", "vision", "prefill", "generate", "stages_total", "wall"}


def test_ask_free_form(tiny_pipeline, short_video):
    ans = tiny_pipeline(short_video, "What happens in this video?")
    assert isinstance(ans.text, str) and ans.choice is None
    assert ans.visual_tokens == 8 * tiny_pipeline.backbone.tokens_per_frame
    assert ans.kept_frames == list(range(8)) and ans.sampled_frames == 8
    assert ans.kept_timestamps[0] == 0.0 and ans.kept_timestamps[-1] == pytest.approx(3.96)
    assert STAGES <= set(ans.timings) and all(v >= 0 for v in ans.timings.values())
    assert 1 <= ans.generated_tokens <= 64
    assert "meaningless" in ans.warnings[0]


def test_ask_multiple_choice_choice_is_parsed_from_text(tiny_pipeline, short_video):
    ans = tiny_pipeline(short_video, "Which color?", options=["red", "green", "blue"])
    assert ans.options == ["A. red", "B. green", "C. blue"]
    assert ans.choice == parse_choice(ans.text, ans.options)


def test_budget_and_compressor_choice(tiny_backbone, short_video):
    from videollm.config import PipelineConfig
    from videollm.pipeline import VideoQAPipeline

    pipe = VideoQAPipeline(tiny_backbone, PipelineConfig(model="tiny-random", compressor="pool", budget=20,
                                                         sampling=SamplingConfig(num_frames=10)))
    ans = pipe(short_video, "q?", generation=GenerationConfig(max_new_tokens=3))
    assert ans.visual_tokens <= 20 and ans.generated_tokens <= 3
    assert ans.compressor_stats["compressor"] == "pool"
    ans2 = pipe(short_video, "q?", budget=7, generation=GenerationConfig(max_new_tokens=1))
    assert ans2.visual_tokens <= 7


def test_deterministic_greedy(tiny_pipeline, short_video):
    a = tiny_pipeline(short_video, "Describe.", generation=GenerationConfig(max_new_tokens=8))
    b = tiny_pipeline(short_video, "Describe.", generation=GenerationConfig(max_new_tokens=8))
    assert a.text == b.text


def test_from_pretrained_preset(short_video):
    from videollm.pipeline import VideoQAPipeline

    pipe = VideoQAPipeline.from_pretrained("tiny-random", compressor="pool", budget=16, device="cpu")
    ans = pipe(short_video, "Anything?", generation=GenerationConfig(max_new_tokens=2))
    assert ans.visual_tokens <= 16 and ans.model == "tiny-random"


def test_bad_inputs_fail_clearly_and_early(tiny_pipeline, short_video, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(tiny_pipeline, "load", lambda *a, **k: calls.append(1))
    with pytest.raises(InvalidRequestError, match="empty"):
        tiny_pipeline(short_video, "   ")
    assert not calls, "an empty question must be rejected before decoding the video"


def test_bad_videos(tiny_pipeline, tmp_path):
    with pytest.raises(VideoNotFoundError):
        tiny_pipeline(tmp_path / "missing.mp4", "q")
    txt = tmp_path / "x.txt"
    txt.write_text("not a video")
    with pytest.raises(NotAVideoError):
        tiny_pipeline(txt, "q")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(3000))
    with pytest.raises(CorruptVideoError):
        tiny_pipeline(bad, "q")


def test_over_context_video_is_fitted_to_the_context(tiny_backbone, video_dir):
    from videollm.config import PipelineConfig
    from videollm.pipeline import VideoQAPipeline
    from videollm.synthetic import write_video

    long_video = write_video(video_dir / "300.mp4", 300, fps=30, size=(32, 32))
    pipe = VideoQAPipeline(tiny_backbone, PipelineConfig(model="tiny-random", sampling=SamplingConfig(num_frames=300)))
    ans = pipe(long_video, "q", generation=GenerationConfig(max_new_tokens=1))  # 300 frames × 16 > 4096 positions
    assert ans.visual_tokens < 4096 and any("no budget given" in w for w in ans.warnings)
    ans = pipe(long_video, "q", budget=1000, generation=GenerationConfig(max_new_tokens=1))
    assert ans.visual_tokens <= 1000


def test_budget_beyond_context_is_rejected_before_decoding(tiny_pipeline, short_video, monkeypatch):
    monkeypatch.setattr(tiny_pipeline, "load", lambda *a, **k: pytest.fail("decoded despite impossible budget"))
    with pytest.raises(InvalidRequestError, match="context"):
        tiny_pipeline(short_video, "q", budget=10_000)
