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


def test_budget_box_empty_means_fit_the_context_and_bad_values_are_messages(short_video):
    from videollm.demo.app import parse_budget
    from videollm.errors import InvalidRequestError

    assert parse_budget("") is None and parse_budget("  ") is None and parse_budget(None) is None
    assert parse_budget("512") == 512 and parse_budget(" 1,024 ") == 1024 and parse_budget(64.0) == 64
    for bad in ("0", "-3", "1.5", "lots", "nan", "inf"):
        with pytest.raises(InvalidRequestError, match="budget must be a whole number of visual tokens from 1 to"):
            parse_budget(bad)
    view = answer(str(short_video), "q", "", "tiny-random", "uniform", "abc", 4, "direct", "none", "none",
                  max_new_tokens=2, device="cpu")
    assert "vl-error" in view.answer_html and "whole number" in view.answer_html
    view = answer(str(short_video), "q", "", "tiny-random", "uniform", "", 4, "direct", "none", "none",
                  max_new_tokens=2, device="cpu")
    assert "vl-error" not in view.answer_html and view.details["visual_tokens"] > 0


def test_kept_frames_are_inline_images_with_whole_captions_and_no_server_path(short_video):
    view = answer(str(short_video), "q", "", "tiny-random", "uniform", None, 5, "direct", "none", "none",
                  max_new_tokens=2, device="cpu")
    html = view.outputs()[3]
    assert html.count("<img") == html.count("data:image/jpeg;base64,") == 5
    assert "/tmp" not in html and str(short_video.parent) not in html and "file=" not in html
    captions = [c.split("</figcaption>")[0] for c in html.split("<figcaption>")[1:]]
    assert captions == [f"{t:.1f} s · {view.answer.tokens_per_frame[i]} tokens"
                        for i, t in zip(view.answer.kept_frames, view.answer.kept_timestamps)]


def test_stages_are_reported_as_they_start(short_video):
    from videollm.demo.app import answer_with_stages

    seen: list[str] = []
    answer_with_stages(seen.append, str(short_video), "q", "", "tiny-random", "uniform", None, 4, "think", "none",
                       "none", max_new_tokens=3, device="cpu")
    assert {"decode", "vision", "prefill", "generate", "think"} <= set(seen)
    assert seen.index("decode") < seen.index("generate")
    html = render.status("pool", ["decode", "vision", "decode", "generate"], 3.25)
    assert "<b>pool</b>" in html and "decoding ✓" in html and "vision tower ✓" in html
    assert "answering…" in html and "3.2 s" in html and html.count("decoding") == 1


def test_same_frames_note_says_why_and_is_empty_otherwise():
    a = Answer(text="x", kept_frames=[0, 1, 2, 3], sampled_frames=4, visual_tokens=64)
    b = Answer(text="y", kept_frames=[0, 1, 2, 3], sampled_frames=4, visual_tokens=32)
    note = render.same_frames_note(("uniform", a), ("pool", b))
    assert "**uniform** and **pool** kept the same frames" in note and "all 4 sampled frames" in note
    assert "fit the budget" in note and "64" in note and "32" in note
    c = Answer(text="z", kept_frames=[1, 3], sampled_frames=4, visual_tokens=16)
    assert render.same_frames_note(("uniform", a), ("longvu", c)) == ""
    d = Answer(text="z", kept_frames=[1, 3], sampled_frames=4, visual_tokens=20)
    assert "same 2 of 4 sampled frames" in render.same_frames_note(("tempo", c), ("longvu", d))


def test_summary_names_skipped_longvu_and_thinking_without_confidence():
    ans = Answer(text="A", reasoning="auto", confidence=None, thinking_fired=True, kept_frames=[0],
                 sampled_frames=1, compressor_stats={"all_stages_skipped": True})
    s = render.summary(ans)
    assert "LongVU skipped every stage" in s and "no confidence, so it thought" in s


def test_refused_upload_is_named_in_full():
    from videollm.demo.app import REJECT_JS, not_a_video_message

    msg = not_a_video_message("quarterly report for the board, final v2.txt")
    assert msg.startswith("quarterly report for the board, final v2.txt is not a video file")
    assert "upload a video first" not in msg and "#vl-rejected" in REJECT_JS


def test_each_request_gets_its_own_pipeline_around_one_cached_backbone(monkeypatch):
    """Two requests with different compressors share the backbone but never a compressor; a third model
    evicts the oldest from the model cache (requests holding it keep their copy)."""
    from collections import OrderedDict

    from videollm.demo import app
    from videollm.models import is_cached

    monkeypatch.setattr(app, "_LOADED", OrderedDict())
    a = app._pipeline("tiny-random", "none", "none", "cpu", "pool")
    b = app._pipeline("tiny-random", "none", "none", "cpu", "uniform")
    assert a.backbone is b.backbone and a.compressor is not b.compressor
    assert type(a.compressor).__name__ != type(b.compressor).__name__ and a.config.compressor == "pool"
    assert app._is_loaded("tiny-random", "none", "none", "cpu")
    app._pipeline("tiny-random", "int8", "none", "cpu", "uniform")
    app._pipeline("tiny-random", "int4", "none", "cpu", "uniform")
    assert list(app._LOADED) == [("tiny-random", "int8", "none", "cpu"), ("tiny-random", "int4", "none", "cpu")]
    assert not is_cached("tiny-random", device="cpu") and not app._is_loaded("tiny-random", "none", "none", "cpu")
    assert a.backbone is not None  # the evicted model lives on in the pipelines that hold it
