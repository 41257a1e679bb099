"""direct / think / auto end to end on tiny-random (random weights: only the plumbing is checked), through
the Python API and the CLI, and `videollm calibrate` on an eval run's predictions."""
from __future__ import annotations

import json

import pytest

from videollm.cli import main
from videollm.config import PipelineConfig
from videollm.errors import InvalidRequestError
from videollm.eval.calibration import load_predictions, sweep
from videollm.pipeline import VideoQAPipeline
from videollm.video import SamplingConfig

OPTIONS = ["a dog", "a cat", "a bird"]


@pytest.fixture()
def counted(tiny_backbone, monkeypatch):
    """Counts vision-tower runs and prompt prefills (lm_forward without a cache) on the shared backbone."""
    counts = {"encode": 0, "prefill": 0, "forward": 0}
    encode, forward = tiny_backbone.encode_frames, tiny_backbone.lm_forward

    def enc(frames):
        counts["encode"] += 1
        return encode(frames)

    def fwd(x, cache=None):
        counts["forward"] += 1
        counts["prefill"] += cache is None
        return forward(x, cache)

    monkeypatch.setattr(tiny_backbone, "encode_frames", enc)
    monkeypatch.setattr(tiny_backbone, "lm_forward", fwd)
    return counts


@pytest.mark.parametrize("mode", ["direct", "think", "auto"])
def test_modes_through_the_api(tiny_backbone, short_video, counted, mode):
    cfg = PipelineConfig(model="tiny-random", sampling=SamplingConfig(num_frames=4), reasoning=mode,
                         reasoning_options={"max_think_tokens": 6, "overthink_penalty": 2.0})
    cfg.generation.max_new_tokens = 5
    pipe = VideoQAPipeline(tiny_backbone, cfg)
    ans = pipe(short_video, "What animal is shown?", OPTIONS)
    assert ans.reasoning == mode
    assert counted["encode"] == 1 and counted["prefill"] == 1  # the video encoded and the prompt prefilled once
    assert counted["forward"] <= ans.generated_tokens + 2
    if mode == "direct":
        assert not ans.thinking_fired and ans.thought is None and ans.generated_tokens <= 5
        assert "think" not in ans.timings
    else:
        # random weights never write a confident box, so auto thinks too (confidence missing → think)
        assert ans.thinking_fired and ans.thought is not None
        assert ans.generated_tokens <= 5 + 6 + 5 and ans.timings["think"] > 0
        assert ans.confidence is None or 0.0 <= ans.confidence <= 1.0
    assert ans.choice in (None, "A", "B", "C")
    d = ans.to_dict()
    assert {"reasoning", "thinking_fired", "thought", "initial_answer", "initial_choice", "confidence",
            "generated_tokens", "timings"} <= set(d)


def test_mode_and_threshold_per_call(tiny_backbone, short_video):
    pipe = VideoQAPipeline(tiny_backbone, PipelineConfig(model="tiny-random", sampling=SamplingConfig(num_frames=4),
                                                         reasoning_options={"max_think_tokens": 3}))
    pipe.config.generation.max_new_tokens = 3
    assert pipe(short_video, "What is shown?", reasoning="think").reasoning == "think"
    with pytest.raises(InvalidRequestError):
        pipe(short_video, "What is shown?", reasoning="ponder")
    bad = VideoQAPipeline(tiny_backbone, PipelineConfig(model="tiny-random", sampling=SamplingConfig(num_frames=4),
                                                        reasoning="auto", reasoning_options={"threshold": 2.0}))
    with pytest.raises(InvalidRequestError, match="threshold"):
        bad(short_video, "What is shown?")


@pytest.mark.parametrize("mode", ["direct", "think", "auto"])
def test_modes_through_the_cli(short_video, capsys, mode):
    rc = main(["ask", str(short_video), "What animal is shown?", "--options", *OPTIONS, "--model", "tiny-random",
               "--frames", "4", "--max-new-tokens", "4", "--reasoning", mode, "--confidence-threshold", "0.9",
               "--max-think-tokens", "5", "--overthink-penalty", "3", "--json"]
              + (["--confidence-method", "letter", "--prefill-box"] if mode == "auto" else []))
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["reasoning"] == mode and out["thinking_fired"] is (mode != "direct")
    assert out["generated_tokens"] <= (4 if mode == "direct" else 4 + 5 + 4)


def test_cli_rejects_bad_reasoning_options(short_video, capsys):
    rc = main(["ask", str(short_video), "What?", "--model", "tiny-random", "--frames", "2", "--reasoning", "auto",
               "--confidence-threshold", "1.5"])
    assert rc == 2 and "threshold" in capsys.readouterr().err
    rc = main(["ask", str(short_video), "What?", "--model", "tiny-random", "--frames", "2", "--reasoning", "nope"])
    assert rc == 2 and "unknown reasoning mode" in capsys.readouterr().err


# ---- calibration --------------------------------------------------------------------------------------
def rec(qid, answer, initial, final, conf, fired=True, error=None, tokens=50):
    return {"question_id": qid, "answer": answer, "initial_choice": initial, "choice": final, "confidence": conf,
            "thinking_fired": fired, "generated_tokens": tokens, "error": error}


RECORDS = [
    rec("q1", "A", "A", "A", 0.99),   # confident and right
    rec("q2", "B", "A", "B", 0.60),   # unsure, thinking fixes it
    rec("q3", "C", "C", "D", 0.95),   # right at first, thinking breaks it
    rec("q4", "D", None, "D", None),  # deferred: always thinks
    rec("q5", "A", "B", "B", 0.80),   # wrong either way
    rec("q6", "A", "A", "A", 0.5, error="decode failed"),
    rec("q7", None, "A", "A", 0.9),   # no ground truth
]


def test_sweep_replays_thresholds_exactly():
    report = sweep(RECORDS, [0.0, 0.7, 0.9, 0.96, 1.0])
    rows = {r.threshold: r for r in report.rows}
    assert report.records == 7 and report.errors == 1 and report.unscored == 1 and report.no_confidence == 1
    # τ=0: only the deferral thinks → q1 A✓ q2 A✗ q3 C✓ q4 D✓ q5 B✗
    assert (rows[0.0].correct, rows[0.0].thinking_rate) == (3, pytest.approx(1 / 5))
    # τ=0.7: q2 thinks too → 4 right
    assert (rows[0.7].correct, rows[0.7].thinking_rate) == (4, pytest.approx(2 / 5))
    # τ=0.96: q3 thinks and is broken, q5 thinks → 3 right
    assert (rows[0.96].correct, rows[0.96].thinking_rate) == (3, pytest.approx(4 / 5))
    assert rows[1.0].thinking_rate == 1.0 and rows[1.0].correct == 3
    assert report.direct_accuracy == pytest.approx(2 / 5) and report.think_accuracy == pytest.approx(3 / 5)
    assert report.best.threshold == 0.7 and report.best.accuracy == pytest.approx(0.8)
    assert all(r.inexact == 0 for r in report.rows)


def test_sweep_marks_auto_runs_inexact():
    records = [rec("q1", "A", "A", "A", 0.9, fired=False), rec("q2", "B", "A", "B", 0.5)]
    rows = {r.threshold: r for r in sweep(records, [0.8, 0.95]).rows}
    assert rows[0.8].inexact == 0 and rows[0.95].inexact == 1 and rows[0.95].correct == 2


def test_calibrate_cli_tolerates_a_torn_last_line(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    lines = [json.dumps(r) for r in RECORDS]
    (run / "predictions.jsonl").write_text("\n".join(lines) + '\n{"question_id": "q8", "answ', encoding="utf-8")
    assert len(load_predictions(run)) == 7
    assert main(["calibrate", str(run), "--thresholds", "0.7", "0.9"]) == 0
    text = capsys.readouterr().out
    assert "0.700" in text and "80.0%" in text and "best" in text
    assert main(["calibrate", str(run / "predictions.jsonl"), "--thresholds", "0.5", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["rows"][0]["threshold"] == 0.5 and data["best"]["accuracy"] == pytest.approx(0.6)  # q2 kept A


def test_calibrate_cli_errors(tmp_path, capsys):
    assert main(["calibrate", str(tmp_path / "missing")]) == 2
    assert "no predictions file" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('not json\n{"question_id": "q"}\n', encoding="utf-8")
    assert main(["calibrate", str(bad)]) == 2
    assert "not JSON" in capsys.readouterr().err
    empty = tmp_path / "e.jsonl"
    empty.write_text(json.dumps(rec("q", None, "A", "A", 0.9)) + "\n", encoding="utf-8")
    assert main(["calibrate", str(empty)]) == 2
    assert main(["calibrate", str(empty), "--thresholds", "1.5"]) == 2


def test_longvu_with_auto_on_a_short_clip_says_stages_skipped_and_why_it_thought(tiny_backbone, short_video,
                                                                                 capsys):
    """Issue 25 item 11: every LongVU stage skipped and thinking with no confidence are both said."""
    cfg = PipelineConfig(model="tiny-random", sampling=SamplingConfig(num_frames=4), reasoning="auto",
                         compressor="longvu", reasoning_options={"max_think_tokens": 4})
    cfg.generation.max_new_tokens = 4
    ans = VideoQAPipeline(tiny_backbone, cfg)(short_video, "What animal is shown?", OPTIONS)
    stages = ans.compressor_stats["stages"]
    assert not any(stages[k]["ran"] for k in ("dedup", "query", "stc")) and ans.compressor_stats["all_stages_skipped"]
    skipped = [w for w in ans.warnings if "every stage skipped" in w]
    assert len(skipped) == 1 and f"{ans.visual_tokens} tokens already fit" in skipped[0]
    assert ans.thinking_fired and ans.confidence is None  # random weights never write a confident box
    why = [w for w in ans.warnings if w.startswith("auto reasoning:")]
    assert len(why) == 1 and "no confidence" in why[0] and "thinks whenever the confidence is unknown" in why[0]
    # a budget that makes LongVU cut: no "skipped" warning
    cut = VideoQAPipeline(tiny_backbone, cfg)(short_video, "What animal is shown?", OPTIONS, budget=8)
    assert not cut.compressor_stats.get("all_stages_skipped")
    assert not any("every stage skipped" in w for w in cut.warnings)


def test_auto_notes_only_for_thinking_without_confidence():
    from videollm.answer.reasoning import ReasoningOutcome, auto_notes, no_confidence_reason

    base = dict(text="A", choice="A", generated_tokens=3, finish_reason="eos", mode="auto")
    assert auto_notes(ReasoningOutcome(**base, confidence=0.2, thinking_fired=True)) == []  # a real decision
    assert auto_notes(ReasoningOutcome(**base, confidence=None, thinking_fired=False)) == []
    assert auto_notes(ReasoningOutcome(**{**base, "mode": "think"}, thinking_fired=True)) == []
    reason = no_confidence_reason(boxed=False, deferred=False, initial_text="maybe a cat")
    (note,) = auto_notes(ReasoningOutcome(**base, thinking_fired=True, extra={"no_confidence": reason}))
    assert "no \\boxed{} answer" in note
    assert "deferred" in no_confidence_reason(True, True, "x")
    assert "no first answer" in no_confidence_reason(False, False, "  ")
