"""Evaluator: fixture benchmarks in the published layouts, scripted answers, resume after SIGKILL, sharding."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from videollm.errors import VideoLLMError
from videollm.eval import report as report_mod
from videollm.eval.runner import EvalError, RunOptions, run
from videollm.eval.sharding import Shard
from videollm.eval.store import read_jsonl
from videollm.eval.tasks import DatasetError, get_task, load_samples
from videollm.synthetic import write_video
from videollm.types import Answer

TESTS_DIR = Path(__file__).parent

# --- fixture benchmarks ------------------------------------------------------------------------------------
# question -> (scripted model output, thinking fired, generated tokens); the ground truths below are chosen so
# the expected accuracies can be worked out by hand (see each test).
VIDEOMME = [  # videoID, question_id, duration, domain, task_type, question, answer, output
    ("vidA", "001-1", "short", "Knowledge", "Counting Problem", "How many cups?", "A", "A"),
    ("vidA", "001-2", "short", "Knowledge", "OCR Problems", "What does the sign say?", "B", "The answer is (C)."),
    ("vidB", "002-1", "medium", "Sports Competition", "Counting Problem", "How many goals?", "C",
     "\\boxed{A}<think>recount: the second goal was disallowed</think>\\boxed{C}"),
    ("vidB", "002-2", "medium", "Sports Competition", "Action Reasoning", "Why did he stop?", "D", "D. a red car"),
    ("vidC", "003-1", "long", "Knowledge", "Action Reasoning", "What happens last?", "B", "Answer: B"),
    ("vidM", "004-1", "long", "Knowledge", "Object Recognition", "Which animal appears?", "A", "A"),
    ("vidX", "005-1", "medium", "Sports Competition", "Temporal Perception", "When does it start?", "C", "C"),
]
MLVU = [  # video_name, question_id, task_type, question, answer, output
    ("m1.mp4", "0", "count", "How many times does the man jump?", "A", "A) 3 times"),
    ("m1.mp4", "1", "count", "How many birds fly past?", "B", "B"),
    ("m2.mp4", "2", "needle", "What colour is the needle frame?", "C", "C."),
    ("m3.mp4", "3", "ego", "What did I pick up?", "D", "b"),
    ("mX.mp4", "4", "order", "In which order do things happen?", "A", "A"),  # missing video
    ("mC.mp4", "5", "plotQA", "Why does the hero leave?", "B", "B"),  # corrupt video
]
LVBENCH = [  # key, uid, question_type, question, answer, output
    ("lv1", 11, ["entity recognition", "reasoning"], "Who enters first?", "D", "The answer is B. Cats and Dogs"),
    ("lv1", 12, ["temporal grounding"], "When does the door open?", "B", "(B)"),
    ("lv2", 13, ["reasoning"], "Why does the crowd cheer?", "C", "C"),  # corrupt video
    ("lv3", 14, ["summarization"], "What is the video about?", "A", "A"),  # missing video
]
OPTS = ["first thing", "second thing", "third thing", "fourth thing"]


def _video(path: Path, n: int = 12) -> None:
    write_video(path, n, fps=6, size=(48, 64))


def _corrupt(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)


def make_videomme(root: Path) -> Path:
    rows = [{"video_id": f"{i:03d}", "duration": d, "domain": dom, "sub_category": "Daily Life",
             "url": f"https://www.youtube.com/watch?v={vid}", "videoID": vid, "question_id": qid, "task_type": tt,
             "question": q, "options": [f"{L}. {o}" for L, o in zip("ABCD", OPTS)], "answer": a}
            for i, (vid, qid, d, dom, tt, q, a, _) in enumerate(VIDEOMME)]
    (root / "videomme").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), root / "videomme" / "test-00000-of-00001.parquet")
    for vid in ("vidA", "vidB", "vidC"):
        _video(root / "data" / f"{vid}.mp4")
    _corrupt(root / "data" / "vidX.mp4")  # vidM is missing
    return root


def make_mlvu(root: Path) -> Path:
    rows = [{"video_name": v, "duration": 120.0, "question": q + "\n" + "\n".join(f"({L}) {o}" for L, o in
                                                                                   zip("ABCD", OPTS)),
             "candidates": OPTS, "answer": a, "task_type": tt, "question_id": qid}
            for v, qid, tt, q, a, _ in MLVU]
    (root / "mlvu").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), root / "mlvu" / "test-00000-of-00001.parquet")
    for v in ("m1.mp4", "m2.mp4", "m3.mp4"):
        _video(root / v)
    _corrupt(root / "mC.mp4")  # mX.mp4 is missing
    return root


def make_lvbench(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    videos: dict[str, list] = {}
    for key, uid, qt, q, a, _ in LVBENCH:
        question = q + "\n" + "\n".join(f"({L}) {o}" for L, o in zip("ABCD", OPTS))
        videos.setdefault(key, []).append({"uid": uid, "question": question, "answer": a, "question_type": qt,
                                           "time_reference": "00:10-00:20"})
    with open(root / "video_info.meta.jsonl", "w") as f:
        for key, qa in videos.items():
            f.write(json.dumps({"key": key, "type": "sports", "qa": qa,
                                "video_info": {"duration_minutes": 60.0}}) + "\n")
    _video(root / "videos" / "lv1.mp4")
    _corrupt(root / "videos" / "lv2.mp4")  # lv3 is missing
    return root


SCRIPT = {row[5]: row[7] for row in VIDEOMME} | {row[3]: row[5] for row in MLVU} | {row[3]: row[5] for row in LVBENCH}


class ScriptedPipe:
    """Stands in for VideoQAPipeline: real video loading (so missing/corrupt files fail for real), scripted text."""

    def __init__(self, delay: float = 0.0, calls_log: Path | None = None, tokens_per_frame: int = 8):
        self.delay, self.calls_log, self.tpf = delay, calls_log, tokens_per_frame
        self.prompts: list[str] = []

    def load(self, path):
        from videollm.video import SamplingConfig, load_video

        return load_video(path, SamplingConfig(num_frames=4))

    def __call__(self, video, question, options=None, *, prompt=None):
        prompt = prompt if prompt is not None else question
        video.read()  # decode, like a compressor would
        self.prompts.append(prompt)
        question = next(q for q in SCRIPT if q in prompt)
        if self.calls_log is not None:
            with open(self.calls_log, "a") as f:
                f.write(question + "\n")
        time.sleep(self.delay)
        text = SCRIPT[question]
        think = "<think>" in text
        return Answer(text=text, visual_tokens=4 * self.tpf, sampled_frames=4,
                      tokens_per_frame={i: self.tpf for i in range(4)}, kept_frames=[0, 1, 2, 3],
                      generated_tokens=20 if think else 3, thinking_fired=think,
                      initial_choice="A" if think else None, confidence=0.5 if think else 0.99,
                      reasoning="auto" if think else "direct", timings={"wall": 0.01})


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    return {"videomme": make_videomme(root / "videomme"), "mlvu": make_mlvu(root / "mlvu"),
            "lvbench": make_lvbench(root / "lvbench")}


def _run(task_name, data_dir, out, rules="current", pipe=None, **kw):
    task = get_task(task_name)
    samples = load_samples(task, data_dir)
    res = run(task, samples, pipe or ScriptedPipe(), out, options=RunOptions(rules=rules, progress=False,
                                                                             settings={"task": task_name}), **kw)
    return task, samples, res


# --- loading ---------------------------------------------------------------------------------------------
def test_videomme_loads_public_layout_and_builds_lmms_eval_prompt(bench):
    samples = load_samples(get_task("videomme"), bench["videomme"])
    assert [s.question_id for s in samples] == [r[1] for r in VIDEOMME]
    s = samples[0]
    assert s.answer == "A" and s.fields["duration"] == "short" and s.fields["task_type"] == "Counting Problem"
    assert s.prompt == ("Select the best answer to the following multiple-choice question based on the video and the "
                        "subtitles. Respond with only the letter (A, B, C, or D) of the correct option.\n"
                        "How many cups?\nA. first thing\nB. second thing\nC. third thing\nD. fourth thing\n\n"
                        "Answer with the option's letter from the given choices directly.")
    assert Path(s.video_path) == bench["videomme"] / "data" / "vidA.mp4"


def test_mlvu_and_lvbench_prompts(bench):
    m = load_samples(get_task("mlvu"), bench["mlvu"])[0]
    assert m.prompt.endswith("(D) fourth thing\nOnly give the best option.\nBest option: (")
    assert m.prompt.startswith("How many times does the man jump?\n(A) first thing")
    lv = load_samples(get_task("lvbench"), bench["lvbench"])
    assert lv[0].prompt.endswith("(D) fourth thing\nAnswer the question with the option letter")
    assert lv[0].fields["question_type"] == ["entity recognition", "reasoning"] and lv[0].question_id == "11"
    assert lv[0].options[1] == "B. second thing"


def test_alternative_public_layouts(tmp_path):
    """LVBench as lmms-eval's parquet (video_path, options column); MLVU as the upstream JSON files."""
    lv = tmp_path / "lv"
    (lv / "video_chunks").mkdir(parents=True)
    _video(lv / "video_chunks" / "a.mp4")
    pq.write_table(pa.Table.from_pylist([{"uid": 7, "question": "Who?", "options": ["x", "y"], "answer": "B",
                                          "question_type": ["reasoning"], "video_path": "video_chunks/a.mp4"}]),
                   lv / "train-00000-of-00001.parquet")
    (s,) = load_samples(get_task("lvbench"), lv)
    assert s.prompt == "Who?\n(A) x\n(B) y\nAnswer the question with the option letter"
    assert Path(s.video_path).exists() and s.answer == "B" and s.options == ["A. x", "B. y"]

    ml = tmp_path / "ml"
    (ml / "json").mkdir(parents=True)
    (ml / "json" / "2_needle.json").write_text(json.dumps([
        {"video": "n1.mp4", "duration": 300, "question": "What appears?", "candidates": ["cat", "dog"],
         "answer": "dog", "question_type": "findNeedle"}]))
    (ml / "json" / "8_sub_scene.json").write_text(json.dumps([
        {"video": "s.mp4", "duration": 300, "question": "Describe.", "answer": "text", "question_type": "subPlot"}]))
    (s,) = load_samples(get_task("mlvu"), ml)  # the open-ended task is not part of the multiple-choice set
    assert s.answer == "B" and s.fields["task_type"] == "needle"
    assert s.prompt == "Question: What appears?\nOptions:\n(A) cat\n(B) dog\nOnly give the best option.\nBest option: ("
    assert s.video_path.endswith("video/2_needle/n1.mp4")


def test_missing_annotations_name_what_is_missing(tmp_path):
    for name in ("videomme", "mlvu", "lvbench"):
        with pytest.raises(DatasetError, match="annotations not found") as err:
            load_samples(get_task(name), tmp_path)
        assert str(tmp_path) in str(err.value) and "Expected layout" in str(err.value)
    with pytest.raises(DatasetError, match="does not exist"):
        load_samples(get_task("videomme"), tmp_path / "nope")


def test_videomme_subtitles(tmp_path):
    root = make_videomme(tmp_path / "vm")
    (root / "subtitle").mkdir()
    # 12 frames at 6 fps = 2 s; the first line covers 0-1 s, the second 1-2 s, the third (unformatted) is skipped
    (root / "subtitle" / "vidA.srt").write_text(
        '1\n00:00:00,000 --> 00:00:01,000\n<font color="white" size=".72c">hello there</font>\n\n'
        '2\n00:00:01,000 --> 00:00:02,000\n<font color="white" size=".72c">general kenobi</font>\n\n'
        '3\n00:00:01,500 --> 00:00:02,000\nplain text\n')
    task = get_task("videomme_w_subtitle")
    samples = load_samples(task, root)
    pipe = ScriptedPipe()
    vid = pipe.load(samples[0].video_path)
    prompt = task.prompt_for(samples[0], vid)
    assert prompt.startswith("This video's subtitles are listed below: \nhello there\ngeneral kenobi\nSelect the best")
    assert prompt.endswith("D. fourth thing\nThe best answer is:")
    vid2 = pipe.load(samples[2].video_path)  # vidB has no .srt
    assert "No subtitles available\n" in task.prompt_for(samples[2], vid2)


# --- scoring with scripted answers -----------------------------------------------------------------------
def test_videomme_scores_and_breakdowns(bench, tmp_path):
    _, samples, res = _run("videomme", bench["videomme"], tmp_path / "run")
    recs = read_jsonl(tmp_path / "run" / "predictions.jsonl")
    assert [r["question_id"] for r in recs] == [s.question_id for s in samples]
    by = {r["question_id"]: r for r in recs}
    # 001-1 A ok; 001-2 C wrong; 002-1 final \boxed{C} ok (first answer A ignored); 002-2 D ok; 003-1 "Answer: B" ok;
    # 004-1 missing video; 005-1 corrupt video
    assert [by[q]["correct"] for q in ("001-1", "001-2", "002-1", "002-2", "003-1", "004-1", "005-1")] == \
        [True, False, True, True, True, False, False]
    assert by["002-1"]["choice"] == "C" and by["002-1"]["initial_choice"] == "A"
    assert "VideoNotFoundError" in by["004-1"]["error"] and by["004-1"]["error_kind"] == "video"
    assert "CorruptVideoError" in by["005-1"]["error"]
    for field in ("question_id", "task", "video", "prediction", "choice", "answer", "correct", "initial_choice",
                  "confidence", "thinking_fired", "generated_tokens", "visual_tokens", "tokens_per_frame",
                  "reasoning", "timings", "error", "duration", "domain", "task_type"):
        assert field in by["001-1"] and field in by["004-1"]
    assert res.errors_now == 2 and res.done_now == 7

    s = report_mod.write_run_report(tmp_path / "run")
    assert s["score"] == pytest.approx(400 / 7) and s["accuracy_answered"] == pytest.approx(80.0)
    assert (s["n"], s["answered"], s["errors"]) == (7, 5, 2)
    assert s["error_videos"] == ["vidM", "vidX"]
    dur = s["breakdowns"]["duration"]
    assert dur["short"]["accuracy"] == 50.0 and dur["medium"]["accuracy"] == pytest.approx(200 / 3)
    assert dur["long"]["accuracy"] == 50.0 and dur["medium"]["n"] == 3
    assert s["breakdowns"]["domain"]["Knowledge"]["accuracy"] == 50.0
    tt = s["breakdowns"]["task_type"]
    assert tt["Counting Problem"]["accuracy"] == 100.0 and tt["OCR Problems"]["accuracy"] == 0.0
    assert tt["Action Reasoning"]["n"] == 2
    assert s["tokens_per_frame_mean"] == 8.0 and s["thinking_rate"] == pytest.approx(0.2)
    assert s["generated_tokens_mean"] == pytest.approx(6.4)
    assert s["extractor"] == "mcq-v2026" and s["rules"] == "v0.7.2" and s["metric"] == "accuracy"
    md = (tmp_path / "run" / "report.md").read_text()
    assert "57.1" in md and "2 question(s) failed" in md and "| medium | 3 | 66.7 |" in md
    assert (tmp_path / "run" / "accuracy_by_duration.png").stat().st_size > 1000

    legacy = report_mod.summarize_run(tmp_path / "run", rules="legacy")  # re-scored from the raw outputs
    assert legacy["extractor"] == "regex-v2024" and legacy["score"] == pytest.approx(300 / 7)  # "Answer: B" -> A


def test_mlvu_m_avg_and_micro(bench, tmp_path):
    _run("mlvu", bench["mlvu"], tmp_path / "run")
    s = report_mod.summarize_run(tmp_path / "run")
    # count 2/2, needle 1/1, ego 0/1 ("b"), order 0/1 (missing video), plotQA 0/1 (corrupt video);
    # the 2 task types with no questions count 0, as in lmms-eval
    assert s["metric"] == "m-avg" and s["score"] == pytest.approx(200 / 7)
    assert s["micro"] == pytest.approx(50.0) and s["errors"] == 2
    assert s["breakdowns"]["task_type"]["count"]["accuracy"] == 100.0
    old = report_mod.summarize_run(tmp_path / "run", rules="legacy")  # ")" rule: "C." is not "C"
    assert old["extractor"] == "paren-v2024" and old["score"] == pytest.approx(100 / 7)
    assert old["micro"] == pytest.approx(100 / 3)
    older = report_mod.summarize_run(tmp_path / "run", rules="v0.3.1")
    assert older["metric"] == "micro" and older["score"] == pytest.approx(50.0)


def test_lvbench_multilabel_categories(bench, tmp_path):
    _run("lvbench", bench["lvbench"], tmp_path / "run")
    s = report_mod.summarize_run(tmp_path / "run")
    assert s["score"] == pytest.approx(50.0) and s["errors"] == 2
    assert s["error_messages"] == {"CorruptVideoError": 1, "VideoNotFoundError": 1}
    cat = s["breakdowns"]["question_type"]
    assert cat["reasoning"] == {"n": 2, "correct": 1, "accuracy": 50.0}
    assert cat["entity recognition"]["accuracy"] == 100.0 and cat["temporal grounding"]["accuracy"] == 100.0
    assert report_mod.summarize_run(tmp_path / "run", rules="legacy")["score"] == pytest.approx(25.0)  # -> "B"


def test_resume_refuses_other_settings(bench, tmp_path):
    task = get_task("lvbench")
    samples = load_samples(task, bench["lvbench"])
    run(task, samples, ScriptedPipe(), tmp_path, options=RunOptions(progress=False, settings={"budget": 64}))
    with pytest.raises(EvalError, match="budget"):
        run(task, samples, ScriptedPipe(), tmp_path, options=RunOptions(progress=False, settings={"budget": 128}))
    assert issubclass(EvalError, VideoLLMError)


def test_retry_errors_replaces_error_records(tmp_path):
    root = make_lvbench(tmp_path / "lv")
    task = get_task("lvbench")
    samples = load_samples(task, root)
    run(task, samples, ScriptedPipe(), tmp_path / "run", options=RunOptions(progress=False))
    _video(root / "videos" / "lv2.mp4")  # the user fixes the video
    pipe = ScriptedPipe()
    res = run(task, samples, pipe, tmp_path / "run", options=RunOptions(progress=False))
    assert res.done_now == 0 and pipe.prompts == []  # plain resume: nothing to do
    res = run(task, samples, pipe, tmp_path / "run", options=RunOptions(progress=False, retry_errors=True))
    assert res.done_now == 2 and res.errors_now == 1  # lv2 now answered; lv3 is still missing
    recs = read_jsonl(tmp_path / "run" / "predictions.jsonl")
    assert len(recs) == 4 and [r["question_id"] for r in recs if r["error"]] == ["14"]


# --- interruption and sharding (real subprocesses) ---------------------------------------------------------
CHILD = """
import os, sys
from pathlib import Path
from test_eval import ScriptedPipe
from videollm.eval.runner import RunOptions, run
from videollm.eval.sharding import detect_shard
from videollm.eval.tasks import get_task, load_samples
task = get_task(sys.argv[1])
samples = load_samples(task, sys.argv[2])
pipe = ScriptedPipe(delay=float(sys.argv[4]), calls_log=Path(sys.argv[5]))
shard = detect_shard()
print(shard, flush=True)
run(task, samples, pipe, sys.argv[3], shard=shard, options=RunOptions(progress=False))
"""


def _child(args, env_extra=None):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]),
           **(env_extra or {})}
    if not env_extra:
        for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR"):
            env.pop(key, None)
    return subprocess.Popen([sys.executable, "-c", CHILD, *map(str, args)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)


def test_sigkill_then_resume_answers_each_question_once(bench, tmp_path):
    out, calls = tmp_path / "run", tmp_path / "calls.log"
    preds = out / "predictions.jsonl"
    proc = _child(["videomme", bench["videomme"], out, 0.4, calls])
    deadline = time.time() + 60
    while time.time() < deadline and (not preds.exists() or len(read_jsonl(preds)) < 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    before = [r["question_id"] for r in read_jsonl(preds)]
    assert 2 <= len(before) < len(VIDEOMME)
    with open(preds, "ab") as f:  # what a kill in the middle of a write leaves behind
        f.write(b'{"question_id": "003-1", "task": "videomme", "pred')
    answered_before = calls.read_text().splitlines()

    pipe = ScriptedPipe(calls_log=calls)
    _, samples, res = _run("videomme", bench["videomme"], out, pipe=pipe)
    recs = read_jsonl(preds)
    ids = [r["question_id"] for r in recs]
    assert ids == [s.question_id for s in samples]  # every question exactly once, in task order
    assert res.skipped == len(before)
    resumed = [q for q in SCRIPT if any(q in p for p in pipe.prompts)]
    done_questions = {row[5] for row in VIDEOMME if row[1] in before}
    assert not done_questions & set(resumed)  # nothing recorded before the kill was asked again
    assert len(answered_before) + len(pipe.prompts) <= len(VIDEOMME) - 2 + 1  # 5 decodable; at most 1 redone
    assert report_mod.summarize_run(out)["score"] == pytest.approx(400 / 7)


def test_two_process_sharded_run_equals_single_process(bench, tmp_path):
    """Two real processes with a torchrun/accelerate-style rendezvous: accelerate's process group, a barrier,
    rank 0 merges."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    shard_dir = tmp_path / "sharded"
    env = {"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
    procs = [_child(["videomme", bench["videomme"], shard_dir, 0.0, tmp_path / f"calls{r}.log"],
                    {**env, "RANK": str(r), "LOCAL_RANK": str(r)}) for r in (0, 1)]
    for r, p in enumerate(procs):
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0, out.decode()[-2000:]
        assert f"Shard(rank={r}, world=2, distributed=True)" in out.decode()
    _run("videomme", bench["videomme"], tmp_path / "single")
    merged = (shard_dir / "predictions.jsonl").read_bytes()
    assert merged == (tmp_path / "single" / "predictions.jsonl").read_bytes()
    shards = sorted((shard_dir / "shards").glob("*.jsonl"))
    assert [p.name for p in shards] == ["rank000-of-002.jsonl", "rank001-of-002.jsonl"]
    per = [{r["video"] for r in read_jsonl(p)} for p in shards]
    assert per[0] and per[1] and not per[0] & per[1]  # whole videos per rank, no overlap
    assert sum(len(read_jsonl(p)) for p in shards) == len(VIDEOMME)


def test_ranks_without_rendezvous_merge_when_the_last_one_finishes(bench, tmp_path):
    """RANK/WORLD_SIZE only (no process group): each rank merges at its end; the last leaves the full file."""
    task = get_task("videomme")
    samples = load_samples(task, bench["videomme"])
    opts = RunOptions(progress=False)
    r1 = run(task, samples, ScriptedPipe(), tmp_path / "sharded", shard=Shard(1, 2), options=opts)
    assert 0 < len(r1.records) < len(samples)  # an early merge holds only what is done so far
    r0 = run(task, samples, ScriptedPipe(), tmp_path / "sharded", shard=Shard(0, 2), options=opts)
    _run("videomme", bench["videomme"], tmp_path / "single")
    assert len(r0.records) == len(samples)
    assert (tmp_path / "sharded" / "predictions.jsonl").read_bytes() == \
        (tmp_path / "single" / "predictions.jsonl").read_bytes()
    # resuming the sharded run in one process finds everything done
    pipe = ScriptedPipe()
    assert run(task, samples, pipe, tmp_path / "sharded", options=opts).skipped == len(samples) and not pipe.prompts


# --- end to end through the CLI on tiny-random -------------------------------------------------------------
def test_cli_end_to_end_tiny_random(bench, tmp_path, capsys):
    from videollm.cli import main

    out, out2 = tmp_path / "run", tmp_path / "run2"

    def argv(output=out, budget=16, limit=2):
        return ["eval", "--task", "videomme", "--data-dir", str(bench["videomme"]), "--output", str(output),
                "--model", "tiny-random", "--frames", "2", "--budget", str(budget), "--no-progress",
                "--limit", str(limit)]

    assert main(argv()) == 0
    printed = capsys.readouterr().out
    assert "videomme: accuracy" in printed and "over 2 questions" in printed
    recs = read_jsonl(out / "predictions.jsonl")
    assert [r["question_id"] for r in recs] == [r[1] for r in VIDEOMME[:2]]
    assert all(r["error"] is None for r in recs) and all(0 < r["visual_tokens"] <= 16 for r in recs)
    assert all(0 < r["tokens_per_frame"] <= 16 for r in recs) and all(r["generated_tokens"] <= 16 for r in recs)
    settings = json.loads((out / "run.json").read_text())["settings"]
    assert settings["max_new_tokens"] == 16 and settings["model"] == "tiny-random"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 2 and summary["complete"] and summary["extractor"] == "mcq-v2026"
    first = {r["question_id"]: r["prediction"] for r in recs}

    assert main(argv(limit=4)) == 0  # resume with a larger limit: only the 2 new questions run
    recs = read_jsonl(out / "predictions.jsonl")
    assert len(recs) == 4 and {r["question_id"]: r["prediction"] for r in recs[:2]} == first
    assert "over 4 questions" in capsys.readouterr().out

    assert main(argv(budget=64, limit=4)) == 2  # other settings, same folder: refused before loading a model
    assert "other settings" in capsys.readouterr().err

    # a second run (scripted, cheaper than another model load), then the comparison report with both plots
    task = get_task("videomme")
    run(task, load_samples(task, bench["videomme"]), ScriptedPipe(tokens_per_frame=4), out2,
        options=RunOptions(progress=False, settings={"task": "videomme", "model": "tiny-random",
                                                     "compressor": "uniform", "budget": 8, "n_questions": 7}))
    rep = tmp_path / "rep"
    assert main(["eval", "report", str(out), str(out2), "--out", str(rep)]) == 0
    text = capsys.readouterr().out
    assert text.count("| videomme | tiny-random | uniform |") == 2
    assert (rep / "accuracy_vs_tokens_per_frame.png").exists() and (rep / "accuracy_by_duration.png").exists()
    assert len(json.loads((rep / "comparison.json").read_text())) == 2


def test_cli_reports_missing_annotations_in_one_line(tmp_path, capsys):
    from videollm.cli import main

    rc = main(["eval", "--task", "lvbench", "--data-dir", str(tmp_path), "--output", str(tmp_path / "o"),
               "--model", "tiny-random"])
    err = capsys.readouterr().err
    assert rc == 2 and "LVBench annotations not found" in err and len(err.strip().splitlines()) == 1


def test_cli_choice_always_scores_a_letter(bench, tmp_path, capsys):
    """`--choice` (issue 14, item 8): every prediction is an option letter; it is part of the run's settings."""
    from videollm.cli import main

    out = tmp_path / "choice"
    argv = ["eval", "--task", "videomme", "--data-dir", str(bench["videomme"]), "--output", str(out),
            "--model", "tiny-random", "--frames", "2", "--budget", "16", "--no-progress", "--limit", "3", "--choice"]
    assert main(argv) == 0
    recs = read_jsonl(out / "predictions.jsonl")
    assert len(recs) == 3
    assert all(r["choice"] in {"A", "B", "C", "D"} and r["prediction"] == r["choice"] for r in recs)
    assert all(r["generated_tokens"] == 1 and r["error"] is None for r in recs)
    assert json.loads((out / "run.json").read_text())["settings"]["answer_format"] == "choice"
    capsys.readouterr()
    assert main(argv[:-1]) == 2  # the same folder with free generation: refused before loading a model
    assert "answer_format" in capsys.readouterr().err
