"""videollm as an lmms-eval model: model-argument mapping, request handling, registration, and parity of
lmms-eval's own evaluator (`--model videollm`) with `videollm eval` on a local VideoMME-layout fixture."""
from __future__ import annotations

import glob
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from videollm.backbones.mini import assets as mini_assets
from videollm.errors import InvalidRequestError
from videollm.eval.lmms.requests import VideoRequest, by_video, generation_for, options_in, question_of, video_path
from videollm.eval.lmms.settings import settings_from_model_args, to_argv
from videollm.runtime.generation import GenerationConfig

HAVE_LMMS_EVAL = importlib.util.find_spec("lmms_eval") is not None
needs_lmms_eval = pytest.mark.skipif(not HAVE_LMMS_EVAL, reason="the lmms-eval extra is not installed "
                                     "(pip install 'videollm[lmms-eval]'; .ci/install installs it)")
HAVE_MINI = all(importlib.util.find_spec(m) for m in (mini_assets.LLM_MODULE, mini_assets.ENCODER_MODULE, "gguf",
                                                       "timm", "pyarrow"))
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_HUB_DISABLE_TELEMETRY": "1", "WANDB_MODE": "disabled"}


# --- model arguments -----------------------------------------------------------------------------------------
def test_model_args_carry_every_ask_option():
    s = settings_from_model_args({"pretrained": "tiny-random", "compressor": "pool", "budget": 64,
                                  "reasoning": "auto", "quant": "int8", "vision_quant": "int8", "fps": 1.5,
                                  "max_frames": 12, "answer_format": "choice", "max_new_tokens": 40,
                                  "compressor_option": "tokens_per_frame=2", "device": "cpu", "batch_size": 1})
    c = s.config
    assert (c.model, c.compressor, c.budget, c.reasoning, c.quant, c.vision_quant) == \
        ("tiny-random", "pool", 64, "auto", "int8", "int8")
    assert (c.sampling.fps, c.sampling.max_frames, c.answer_format, c.device) == (1.5, 12, "choice", "cpu")
    assert c.compressor_options == {"tokens_per_frame": 2} and s.max_new_tokens == 40 == c.generation.max_new_tokens
    frames = settings_from_model_args({"pretrained": "tiny-random", "frames": 6})
    assert frames.config.sampling.num_frames == 6 and frames.max_new_tokens is None  # the task's budget applies


def test_model_args_flags_and_aliases():
    assert to_argv({"pretrained": "m", "choice": True, "strict_video": False, "budget": 8, "batch_size": 4}) == \
        ["--model", "m", "--choice", "--budget", "8"]
    assert to_argv({"compressor_option": "a=1; b=x"}) == ["--compressor-option", "a=1", "--compressor-option", "b=x"]


@pytest.mark.parametrize("args, match", [
    ({"pretrained": "tiny-random", "budgett": 3}, "unknown key.*--budgett"),
    ({"pretrained": "tiny-random", "budget": "lots"}, "budget"),
    ({"pretrained": "tiny-random", "compressor": "nope"}, "unknown compressor"),
    ({"pretrained": "tiny-random", "quant": "int5"}, "int5"),
    ({"pretrained": "tiny-random", "fps": 1, "frames": 8}, "not allowed with"),
])
def test_bad_model_args_are_one_clear_error(args, match):
    with pytest.raises(InvalidRequestError, match=match):
        settings_from_model_args(args)


@needs_lmms_eval
@pytest.mark.parametrize("text, match", [
    ("budget=-5", "budget must be a whole number of visual tokens from 1 to .*, got -5$"),
    ("frames=-0", "frames"),
])
def test_negative_whole_numbers_are_reported_as_typed(text, match):
    """lmms-eval's parser turns "-5" into -5.0, which argparse's int refused as "invalid int value: '-5.0'"."""
    from lmms_eval.utils import simple_parse_args_string

    with pytest.raises(InvalidRequestError, match=match) as err:
        settings_from_model_args({"pretrained": "tiny-random", **simple_parse_args_string(text)})
    assert ".0'" not in str(err.value)


def test_integral_floats_pass_as_whole_numbers():
    argv = to_argv({"pretrained": "tiny-random", "budget": -5.0, "fps": 0.5, "max_new_tokens": 1000.0})
    assert argv == ["--model", "tiny-random", "--budget", "-5", "--fps", "0.5", "--max-new-tokens", "1000"]


# --- requests -------------------------------------------------------------------------------------------------
def test_options_come_from_the_prompt_lines():
    vmme = "Select the best answer.\nHow many?\nA. one\nB. two\nC. three\nD. four\nAnswer with the letter."
    assert options_in(vmme) == ["A. one", "B. two", "C. three", "D. four"]
    mlvu = "Question: why?\nOptions:\n(A) rain\n(B) sun\n(C) wind\nOnly give the best option.\nBest option: ("
    assert options_in(mlvu) == ["A. rain", "B. sun", "C. wind"]
    assert options_in("Describe the video.") == ["A", "B", "C", "D"]  # what `videollm eval` passes then
    assert options_in("B. starts at B\nC. then C") == ["A", "B", "C", "D"]  # not a lettered list from A


def test_question_video_and_generation_budget():
    assert question_of({"question": "How many?"}, "full prompt") == "How many?"
    assert question_of({"question": ""}, "full prompt") == "full prompt" == question_of(None, "full prompt")
    assert video_path(["/v/a.mp4"], "t") == "/v/a.mp4"
    with pytest.raises(InvalidRequestError, match="one video file per question"):
        video_path(["/a.jpg", "/b.jpg"], "imgtask")
    base = GenerationConfig(max_new_tokens=16)
    g = generation_for(base, {"max_new_tokens": 32, "until": ["\n\n"], "temperature": 0}, None, "direct", 1024)
    assert g.max_new_tokens == 32 and g.stop_strings == ()  # the default few-shot delimiter is not a stop
    assert generation_for(base, {"max_new_tokens": 32, "until": "</s>"}, None, "direct", 1024).stop_strings == \
        ("</s>",)
    assert generation_for(base, {"max_new_tokens": 16}, None, "think", 1024).max_new_tokens == 1024
    assert generation_for(base, {"max_new_tokens": 16}, 48, "think", 1024).max_new_tokens == 48


def test_requests_are_grouped_by_video_in_first_appearance_order():
    reqs = [VideoRequest(i, v, "p", "q", ["A"]) for i, v in enumerate(["a", "b", "a", "c", "b"])]
    assert [[r.index for r in g] for g in by_video(reqs)] == [[0, 2], [1, 4], [3]]


# --- registration and the launcher -----------------------------------------------------------------------------
@needs_lmms_eval
def test_lmms_eval_finds_the_model_through_its_entry_point():
    from importlib.metadata import entry_points

    assert "videollm" in [ep.name for ep in entry_points(group="lmms_eval.models")]
    code = ("from videollm._compat import ensure_torchvision_importable; ensure_torchvision_importable()\n"
            "from lmms_eval.models import get_model\n"
            "cls = get_model('videollm'); print(cls.__module__ + '.' + cls.__name__, cls.is_simple)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False,
                         env={**os.environ, **OFFLINE})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == ["videollm.eval.lmms.model.VideoLLM", "True"]


@needs_lmms_eval
@pytest.mark.parametrize("model_args, message", [
    ("pretrained=tiny-random,budgett=3", "error: --model_args: unknown key(s) --budgett"),
    ("pretrained", "error: --model_args 'pretrained' is not key=value"),
    ("pretrained=tiny-random,reasoning=ponder", "error: unknown reasoning mode 'ponder'"),
])
def test_launcher_refuses_bad_model_args_before_lmms_eval_runs(capsys, model_args, message):
    from videollm.eval.lmms.__main__ import main

    assert main(["--model", "videollm", "--model_args", model_args, "--tasks", "videomme"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message)


@needs_lmms_eval
@pytest.mark.parametrize("model_args, extra, key", [
    ("pretrained=tiny-random,batch_size=0", [], "batch_size"),
    ("pretrained=tiny-random,max_batch_size=4", [], "max_batch_size"),
    ("pretrained=tiny-random,device=cpu", ["--device", "cpu"], "device"),
])
def test_launcher_refuses_keys_lmms_eval_passes_itself(capsys, model_args, extra, key):
    """lmms-eval adds its own batch_size/max_batch_size/device to the model's arguments: the same key in
    --model_args was a duplicate-keyword TypeError traceback inside lmms-eval."""
    from videollm.eval.lmms.__main__ import main

    assert main(["--model", "videollm", "--model_args", model_args, "--tasks", "videomme", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0] == f"error: --model_args: {key} is lmms-eval's own option; give it once, as --{key}"


@needs_lmms_eval
def test_launcher_names_a_filelock_lmms_eval_cannot_run_with(capsys, monkeypatch):
    """filelock 4 removed the `filelock._api` lmms-eval 0.7.3 patches: one error line, not its traceback."""
    import videollm.eval.lmms.__main__ as launcher

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "filelock._api" else real(name, *a))
    assert launcher.main(["--model", "videollm", "--model_args", "pretrained=tiny-random", "--tasks", "videomme"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: lmms-eval 0.7.3 needs filelock<4")


# --- parity with `videollm eval` --------------------------------------------------------------------------------
OPTS = ["a dog", "a cat", "a red car", "two people"]
QUESTIONS = [  # videoID, question_id, duration, task_type, question, answer
    ("vidA", "001-1", "short", "Counting Problem", "How many cups are on the table?", "A"),
    ("vidA", "001-2", "short", "Object Recognition", "What crosses the street?", "D"),
    ("vidB", "002-1", "medium", "Object Recognition", "Which animal appears first?", "B"),
]


def _fixture(root: Path) -> tuple[Path, Path]:
    """A VideoMME copy laid out for both: `HF_HOME=root` for lmms-eval (videos in root/videomme/data, as its
    videomme task looks them up) and `--data-dir root/videomme` for `videollm eval`; plus a task YAML that
    points lmms-eval's own `videomme` task at the local parquet."""
    import lmms_eval
    import pyarrow as pa
    import pyarrow.parquet as pq

    from videollm.synthetic import write_video

    data = root / "videomme"
    parquet = data / "videomme" / "test-00000-of-00001.parquet"
    parquet.parent.mkdir(parents=True)
    rows = [{"video_id": f"{i:03d}", "duration": d, "domain": "Knowledge", "sub_category": "Daily Life",
             "url": f"https://www.youtube.com/watch?v={v}", "videoID": v, "question_id": q, "task_type": t,
             "question": text, "options": [f"{L}. {o}" for L, o in zip("ABCD", OPTS)], "answer": a}
            for i, (v, q, d, t, text, a) in enumerate(QUESTIONS)]
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    for v in ("vidA", "vidB"):
        write_video(data / "data" / f"{v}.mp4", 12, fps=6, size=(48, 64))
    tasks = root / "tasks"
    tasks.mkdir()
    upstream = Path(lmms_eval.__file__).parent / "tasks" / "videomme" / "videomme.yaml"
    (tasks / "videomme_local.yaml").write_text(
        f"include: {upstream}\ntask: videomme_local\ndataset_path: parquet\n"
        f"dataset_kwargs:\n  data_files:\n    test: {parquet}\n")
    return data, tasks


@needs_lmms_eval
@pytest.mark.slow
@pytest.mark.skipif(not HAVE_MINI, reason="videollm-mini weights packages are not installed")
def test_lmms_eval_evaluator_matches_videollm_eval(tmp_path):
    """lmms-eval's evaluator, `--model videollm` on videollm-mini, offline, gives the same answers, letters and
    score as `videollm eval --task videomme` on the same files."""
    from videollm.cli import main as videollm_main
    from videollm.eval.store import read_jsonl
    from videollm.eval.tasks import get_task, load_samples

    data, tasks = _fixture(tmp_path)
    model_args = "pretrained=videollm-mini,frames=2,compressor=uniform,device=cpu"
    cmd = [sys.executable, "-m", "videollm.eval.lmms", "--model", "videollm", "--model_args", model_args,
           "--tasks", "videomme_local", "--include_path", str(tasks), "--output_path", str(tmp_path / "lmms"),
           "--log_samples", "--batch_size", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, cwd=tmp_path, check=False,
                          env={**os.environ, **OFFLINE, "HF_HOME": str(tmp_path)})
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    samples = [json.loads(line) for line in
               Path(glob.glob(str(tmp_path / "lmms" / "*" / "*_samples_videomme_local.jsonl"))[0]).read_text()
               .splitlines()]
    results = json.loads(Path(glob.glob(str(tmp_path / "lmms" / "*" / "*_results.json"))[0]).read_text())
    # the task has no filter: `filtered_resps` is the model's text as returned
    theirs = {s["videomme_perception_score"]["question_id"]: (s["filtered_resps"],
                                                              s["videomme_perception_score"]["pred_answer"])
              for s in samples}
    prompts = {s["videomme_perception_score"]["question_id"]: s["input"] for s in samples}

    out = tmp_path / "ours"
    assert videollm_main(["eval", "--task", "videomme", "--data-dir", str(data), "--output", str(out),
                          "--model", "videollm-mini", "--frames", "2", "--compressor", "uniform", "--device", "cpu",
                          "--no-progress", "--no-plots"]) == 0
    ours = {r["question_id"]: (r["prediction"], r["choice"]) for r in read_jsonl(out / "predictions.jsonl")}
    summary = json.loads((out / "summary.json").read_text())

    assert set(theirs) == {q[1] for q in QUESTIONS}
    task = get_task("videomme")
    assert prompts == {x.question_id: x.prompt for x in load_samples(task, data)}  # the same user text
    assert theirs == ours
    assert all(text.strip() for text, _ in ours.values())
    score = results["results"]["videomme_local"]["videomme_perception_score,none"]
    assert score == pytest.approx(summary["score"])

    # lmms-eval's multi-process launch: two ranks (gloo on CPU) split the questions and gather the same answers
    port = _free_port()
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--main_process_port", str(port), *cmd[1:]]
    launch[launch.index(str(tmp_path / "lmms"))] = str(tmp_path / "lmms2")
    proc = subprocess.run(launch, capture_output=True, text=True, timeout=1200, cwd=tmp_path, check=False,
                          env={**os.environ, **OFFLINE, "HF_HOME": str(tmp_path), "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "Running on rank 1" in proc.stdout + proc.stderr
    two = [json.loads(line) for line in
           Path(glob.glob(str(tmp_path / "lmms2" / "*" / "*_samples_videomme_local.jsonl"))[0]).read_text()
           .splitlines()]
    assert {s["videomme_perception_score"]["question_id"]: (s["filtered_resps"],
                                                            s["videomme_perception_score"]["pred_answer"])
            for s in two} == theirs
    assert len(two) == len(QUESTIONS)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- loglikelihood ------------------------------------------------------------------------------------------------
def test_score_ids_steps_through_the_cache_like_full_forwards(tiny_backbone):
    """The cached one-token steps give the same log-probabilities as re-running the whole sequence each time,
    and the greedy flag holds exactly for argmax continuations."""
    import torch

    from videollm.eval.lmms.scoring import score_ids

    bb = tiny_backbone
    prompt = bb.embed_text("a short prompt about a video")[None]
    with torch.inference_mode():
        def full(ids):  # no cache: prompt + ids, last-position log-probabilities
            seq = torch.cat([prompt, bb.embed_ids(ids)[None].to(prompt.dtype)], 1) if ids else prompt
            return torch.log_softmax(bb.lm_forward(seq)[0][0].float(), -1)

        greedy_ids: list[int] = []
        for _ in range(3):
            greedy_ids.append(int(full(greedy_ids).argmax()))
        expected = sum(float(full(greedy_ids[:k])[t]) for k, t in enumerate(greedy_ids))
    total, greedy = score_ids(bb, prompt, greedy_ids)
    assert greedy and total == pytest.approx(expected, abs=1e-4) and total <= 0
    other = [greedy_ids[0], int(full(greedy_ids[:1]).argsort()[-2]), greedy_ids[2]]  # second-best second token
    worse, is_greedy = score_ids(bb, prompt, other)
    assert not is_greedy and worse < total


def test_continuation_logprob_on_a_video(tiny_pipeline, short_video):
    from videollm.eval.lmms.scoring import continuation_logprob

    video = tiny_pipeline.load(short_video)
    try:
        one = continuation_logprob(tiny_pipeline, video, "What happens?\nA. x\nB. y", "A")
        two = continuation_logprob(tiny_pipeline, video, "What happens?\nA. x\nB. y", "A cat")
    finally:
        video.close()
    assert one[0] < 0 and two[0] < one[0]  # one more token can only lower the summed log-probability


@needs_lmms_eval
def test_generate_until_answers_in_order_opening_each_video_once(tmp_path, short_video, monkeypatch):
    """Requests on the same video are answered on one opened video; answers go back in request order and equal
    the pipeline's own; a video that cannot be decoded gets an empty answer (scored wrong), not a crash."""
    from lmms_eval.api.instance import Instance

    from videollm.eval.lmms.model import VideoLLM
    from videollm.feature_cache import default_cache

    lm = VideoLLM(pretrained="tiny-random", frames=2, device="cpu")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    docs = [{"question": "q0", "v": str(short_video)}, {"question": "q1", "v": str(bad)},
            {"question": "q2", "v": str(short_video)}]
    lm.task_dict = {"t": {"test": docs}}
    reqs = [Instance("generate_until", (f"Q{i}?\nA. x\nB. y", {"max_new_tokens": 3, "until": ["\n\n"]},
                                        lambda d: [d["v"]], i, "t", "test"),
                     idx=0, metadata={"task": "t", "doc_id": i, "repeats": 1}) for i in range(3)]
    opened: list[str] = []
    load = lm.pipe.load

    def counting_load(path, *args, **kwargs):  # kwargs: fps=/timestamps= for frames in memory
        if isinstance(path, (str, os.PathLike)):  # (the pipeline passes an opened Video back through load)
            opened.append(str(path))
        return load(path, *args, **kwargs)

    monkeypatch.setattr(lm.pipe, "load", counting_load)
    cache = default_cache()
    hits = cache.hits
    out = lm.generate_until(reqs)
    assert opened == [str(short_video), str(bad)]
    assert cache.hits - hits == 2  # the second question on short.mp4 reuses both frames' encoded tokens
    assert out[1].text == "" and out[1].token_counts.output_tokens == 0
    for i in (0, 2):
        own = lm.pipe(str(short_video), f"q{i}", ["A. x", "B. y"], prompt=f"Q{i}?\nA. x\nB. y",
                      generation=GenerationConfig(max_new_tokens=3))
        assert out[i].text == own.text and 0 < out[i].token_counts.output_tokens <= 3
