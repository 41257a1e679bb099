"""The demo's action goes through the pipeline; what it shows is rendered safely; the UI builds on loopback."""
import pytest

pytest.importorskip("gradio")

from videollm.demo import render  # noqa: E402
from videollm.demo.app import answer, build_demo  # noqa: E402
from videollm.types import Answer  # noqa: E402


def test_answer_returns_card_summary_timeline_gallery_details(short_video):
    view = answer(str(short_video), "What is shown?", "red\nblue", "tiny-random", "pool", 24, 6,
                  "direct", "none", "none", max_new_tokens=4, device="cpu")
    assert 1 <= view.details["visual_tokens"] <= 24 and view.details["model"] == "tiny-random"
    assert 1 <= len(view.gallery) <= 6
    frame, caption = view.gallery[0]
    assert frame.ndim == 3 and frame.shape[-1] == 3 and "tokens" in caption
    assert "meaningless" in view.answer_html  # the model's notice is shown with its answer
    assert view.summary.startswith("took ") and "visual tokens" in view.summary
    assert view.timeline_html.count('class="vl-bar ') == 6


def test_answer_reports_user_errors_inline_without_server_paths(tmp_path):
    bad = tmp_path / "holiday.txt"
    bad.write_text("no video")
    view = answer(str(bad), "q", "", "tiny-random", "uniform", None, 4, "direct", "none", "none", device="cpu")
    assert "vl-error" in view.answer_html and "not a video" in view.answer_html
    assert "holiday.txt" in view.answer_html and str(tmp_path) not in view.answer_html
    assert view.gallery == []
    view = answer(None, "q", "", "tiny-random", "uniform", None, 4, "direct", "none", "none", device="cpu")
    assert "upload" in view.answer_html


def test_model_text_cannot_swallow_the_answer():
    ans = Answer(text="<think>hidden?</think> B <video>", choice="B", thought="a <b>bold</b> </details> claim",
                 reasoning="think", thinking_fired=True)
    card = render.answer_card(ans)
    assert "<think>" not in card and "&lt;think&gt;" in card and "&lt;/details&gt;" in card
    assert card.count("<details") == card.count("</details>") == 1


def test_summary_says_what_auto_did():
    ans = Answer(text="A", choice="A", reasoning="auto", confidence=0.42, thinking_fired=True, visual_tokens=64,
                 kept_frames=[0, 1], sampled_frames=8, generated_tokens=20,
                 timings={"decode": 0.5, "vision": 1.0, "generate": 2.0, "stages_total": 3.5, "wall": 3.6})
    s = render.summary(ans)
    assert s.startswith("took 3.6 s (decoding 0.5 s, vision tower 1.0 s, answering 2.0 s)")
    assert "32.0 per kept frame" in s and "confidence 0.42" in s and "it thought" in s


def test_timeline_marks_kept_frames_and_segment_relevance():
    ans = Answer(text="x", kept_frames=[1, 3], kept_timestamps=[0.5, 1.5], sampled_frames=4,
                 tokens_per_frame={1: 8, 3: 2},
                 compressor_stats={"segments": [{"start": 0, "end": 1, "relevance": 0.9, "tokens": 8},
                                                {"start": 1, "end": 2, "relevance": 0.1, "tokens": 2}]})
    html = render.timeline(ans, [0.0, 0.5, 1.0, 1.5])
    assert html.count("vl-kept") == 2 and html.count("vl-dropped") == 2
    assert html.count('class="vl-seg"') == 2 and "relevance 0.90" in html


def test_ui_builds_with_defaults_matching_the_cli():
    demo = build_demo("tiny-random", device="cpu")
    assert demo is not None
    from videollm.cli import build_parser

    ask = build_parser().parse_args(["ask", "v.mp4", "q"])
    from videollm.demo import app

    assert app.DEFAULT_MAX_NEW_TOKENS == ask.max_new_tokens and app.DEFAULT_FRAMES == 32
