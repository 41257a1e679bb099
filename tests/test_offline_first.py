"""Offline first: the default model falls back to videollm-mini, hub ids fail fast, budgets fit the context."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest

from videollm import hub
from videollm.budget import ContextPlan, fit_budget
from videollm.errors import InvalidRequestError, ModelUnavailableError


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.hub_reachable.cache_clear()
    yield
    hub.hub_reachable.cache_clear()


def test_default_model_falls_back_to_offline_model(offline: None) -> None:
    model, notice = hub.resolve_default_model("llava-onevision-0.5b", "nobody/not-a-cached-model")
    assert model == hub.OFFLINE_MODEL
    assert notice and "HF_HUB_OFFLINE" in notice and "videollm-mini" in notice


def test_default_model_kept_when_needing_no_hub(offline: None) -> None:
    assert hub.resolve_default_model("tiny-random", None) == ("tiny-random", None)


def test_hub_id_fails_fast_with_the_download_command(offline: None) -> None:
    start = time.perf_counter()
    with pytest.raises(ModelUnavailableError) as err:
        hub.require_available("nobody/not-a-cached-model")
    assert time.perf_counter() - start < 1.0
    msg = str(err.value)
    assert "huggingface-cli download nobody/not-a-cached-model" in msg and "--model videollm-mini" in msg
    assert "tiny-random" not in msg


def test_local_directory_counts_as_available(offline: None, tmp_path) -> None:
    assert hub.require_available(str(tmp_path)).loadable


def test_probe_is_bounded_when_the_host_never_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "_endpoint", lambda: "https://127.0.0.1:9")  # discard port: refused at once
    hub.hub_reachable.cache_clear()
    start = time.perf_counter()
    assert hub.hub_reachable(timeout=0.5) is False
    assert time.perf_counter() - start < 1.0
    hub.hub_reachable.cache_clear()


def test_cli_hub_model_offline_is_one_line_and_fast(tmp_path) -> None:
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "videollm", "ask", "--sample", "bikes", "what?",
                           "--model", "llava-onevision-0.5b"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "huggingface-cli download" in lines[0]
    assert "Traceback" not in proc.stderr


def test_budget_fits_the_context() -> None:
    plan = ContextPlan(max_context=1000, prompt_tokens=100, frame_text_tokens=50, generation_tokens=64)
    assert plan.visual_budget == 786
    assert fit_budget(plan, None) == 786
    assert fit_budget(plan, 500) == 500
    with pytest.raises(InvalidRequestError, match="does not fit"):
        fit_budget(plan, 787)
    with pytest.raises(InvalidRequestError, match="no room"):
        fit_budget(ContextPlan(100, 90, 0, 64), None)


def test_pipeline_fits_an_unbudgeted_video_to_the_context(tiny_backbone, short_video, monkeypatch) -> None:
    from videollm.backbones.llava_onevision import LlavaOneVisionBackbone
    from videollm.config import PipelineConfig
    from videollm.pipeline import VideoQAPipeline
    from videollm.video import SamplingConfig

    monkeypatch.setattr(LlavaOneVisionBackbone, "max_context", property(lambda self: 600))
    pipe = VideoQAPipeline(tiny_backbone, PipelineConfig(model="tiny-random", sampling=SamplingConfig(num_frames=64)))
    ans = pipe(short_video, "what happens?")
    assert 0 < ans.visual_tokens < 600 - 64
    assert any("no budget given" in w for w in ans.warnings)
    with pytest.raises(InvalidRequestError, match="does not fit"):
        pipe(short_video, "what happens?", budget=590)


@pytest.mark.parametrize("argv", [["--help"], ["ask", "v.mp4", "q", "--budget", "x"], ["eval", "--nope"],
                                  ["ask", "/nonexistent/v.mp4", "q"]])
def test_help_and_argument_errors_never_import_torch(argv) -> None:
    """`videollm --help`, argparse-level errors and a missing file build only what they need: no registry, no
    torch, so they answer in a fraction of a second."""
    probe = ("import sys, runpy; sys.argv = ['videollm', *sys.argv[1:]]\n"
             "try:\n    runpy.run_module('videollm', run_name='__main__')\n"
             "except SystemExit as e:\n    code = e.code\n"
             "print('TORCH=' + str('torch' in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, timeout=120,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert "TORCH=False" in proc.stdout, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
