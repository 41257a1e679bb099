"""The Qwen-VL presets through code that knows nothing about them (issue 23, item 6): `videollm eval` on a
VideoMME-layout fixture, the demo's answer handler, and the process-wide model cache."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from videollm.models import clear_models, get_model, load_count

FAMILIES = ["qwen2_5_vl", "qwen3_vl"]
PRESET = {"qwen2_5_vl": "tiny-random-qwen2.5-vl", "qwen3_vl": "tiny-random-qwen3-vl"}
OPTIONS = ["first thing", "second thing", "third thing", "fourth thing"]


def _videomme(root: Path) -> Path:
    """Two questions on two short clips, in VideoMME's published parquet layout."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    from videollm.synthetic import write_video

    rows = [{"video_id": f"00{i}", "duration": "short", "domain": "Knowledge", "sub_category": "Daily Life",
             "url": f"https://www.youtube.com/watch?v={vid}", "videoID": vid, "question_id": f"00{i}-1",
             "task_type": "Counting Problem", "question": q, "options": [f"{L}. {o}" for L, o in zip("ABCD", OPTIONS)],
             "answer": a}
            for i, (vid, q, a) in enumerate([("vidA", "How many cups?", "A"), ("vidB", "What happens last?", "C")])]
    (root / "videomme").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), root / "videomme" / "test-00000-of-00001.parquet")
    for vid in ("vidA", "vidB"):
        write_video(root / "data" / f"{vid}.mp4", 12, fps=6, size=(48, 64))
    return root


@pytest.mark.parametrize("family", FAMILIES)
def test_eval_cli_answers_scores_and_resumes(family, tmp_path, capsys):
    from videollm.cli import main
    from videollm.eval.store import read_jsonl

    data, preset = _videomme(tmp_path / "data"), PRESET[family]
    clear_models(preset)

    def argv(out: Path, *extra: str) -> list[str]:
        return ["eval", "--task", "videomme", "--data-dir", str(data), "--output", str(out), "--model", preset,
                "--frames", "4", "--max-new-tokens", "4", "--device", "cpu", "--no-progress", "--no-plots", *extra]

    out = tmp_path / "free"
    assert main(argv(out)) == 0
    assert "videomme: accuracy" in capsys.readouterr().out
    recs = read_jsonl(out / "predictions.jsonl")
    assert [r["question_id"] for r in recs] == ["000-1", "001-1"]
    assert all(r["error"] is None and r["visual_tokens"] > 0 and 1 <= r["generated_tokens"] <= 4 for r in recs)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 2 and summary["complete"]
    assert json.loads((out / "run.json").read_text())["settings"]["model"] == preset

    assert main(argv(out)) == 0  # resume: nothing left to answer, the same predictions
    assert read_jsonl(out / "predictions.jsonl") == recs

    choice = tmp_path / "choice"  # scoring the option letters, the other answer path
    assert main(argv(choice, "--choice", "--compressor", "pool", "--budget", "16")) == 0
    recs = read_jsonl(choice / "predictions.jsonl")
    assert len(recs) == 2 and all(r["choice"] in set("ABCD") and r["error"] is None for r in recs)
    assert all(0 < r["visual_tokens"] <= 16 for r in recs)
    # three runs with the same model settings loaded it once
    assert load_count(preset, device="cpu", dtype="auto") == 1


@pytest.fixture
def demo_app(monkeypatch):
    pytest.importorskip("gradio")
    from collections import OrderedDict

    from videollm.demo import app

    monkeypatch.setattr(app, "_LOADED", OrderedDict())  # this test's models only
    return app


@pytest.mark.parametrize("family", FAMILIES)
def test_demo_answer_handler_and_model_cache(family, demo_app, short_video):
    from videollm.config import PipelineConfig
    from videollm.pipeline import VideoQAPipeline

    preset = PRESET[family]
    clear_models(preset)
    view = demo_app.answer(str(short_video), "What is shown?", "red\nblue", preset, "pool", 24, 6, "direct", "none",
                           "none", max_new_tokens=3, device="cpu")
    assert "vl-error" not in view.answer_html, view.answer_html
    assert view.details["model"] == preset and 1 <= view.details["visual_tokens"] <= 24
    assert 1 <= len(view.gallery) <= 6 and view.gallery[0][0].shape[-1] == 3
    assert view.summary.startswith("took ") and view.timeline_html.count('class="vl-bar ') == 6

    # every frame kept, reasoning auto: the other compressor and mode through the same handler
    view = demo_app.answer(str(short_video), "What is shown?", "", preset, "uniform", "", 4, "auto", "none", "none",
                           max_new_tokens=3, device="cpu")
    assert "vl-error" not in view.answer_html and view.details["visual_tokens"] > 0
    # a pair of frames shares one temporal patch, tagged with its first frame (docs/backbones.md)
    assert sorted(view.answer.kept_frames) == [0, 2] and len(view.gallery) == 2
    assert sum(view.answer.tokens_per_frame.values()) == view.details["visual_tokens"]

    # the model cache: the demo, a pipeline built elsewhere and a compressor asking by name share one instance
    assert list(demo_app._LOADED) == [(preset, "none", "none", "cpu")]
    backbone = demo_app._pipeline(preset, "none", "none", "cpu", "uniform").backbone
    assert VideoQAPipeline.from_config(PipelineConfig(model=preset, device="cpu")).backbone is backbone
    assert get_model(preset, device="cpu") is backbone
    assert load_count(preset, device="cpu", dtype="auto") == 1
