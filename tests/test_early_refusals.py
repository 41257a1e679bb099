"""Requests that must end in one `error:` line and exit 2 before any model loads (never "internal error"):
devices this machine lacks, undecodable question text, eval limits and damaged benchmark files, budgets past
a preset's context, training or saving what a preset cannot; and `--quant-group-size 0` working as documented.
"""
from __future__ import annotations

import json

import pytest
import torch

from videollm.cli import main


@pytest.fixture()
def no_model(monkeypatch):
    """Any model load fails the test: these requests must be refused first."""
    import videollm.backbones as backbones

    def refuse(*a, **k):
        raise AssertionError("a model was loaded for a request that should have been refused")

    monkeypatch.setattr(backbones, "load_backbone", refuse)  # the model cache's loader loads through it


def run_cli(capfd, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capfd.readouterr()
    return rc, out, err


def one_error(rc: int, err: str, *words: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert rc == 2 and len(lines) == 1, (rc, err)
    assert "internal error" not in lines[0] and "Traceback" not in err
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("device,words", [
    ("bogus", ("unknown device 'bogus'",)),
    ("cuda:x", ("unknown device",)),
    pytest.param("cuda", ("CUDA is not available",), marks=pytest.mark.skipif(torch.cuda.is_available(),
                                                                              reason="this machine has CUDA")),
])
def test_devices_this_machine_lacks(short_video, capfd, no_model, device, words):
    rc, _, err = run_cli(capfd, "ask", str(short_video), "what?", "--model", "tiny-random", "--device", device)
    one_error(rc, err, *words)


@pytest.mark.parametrize("question,words", [
    ("bad \udcff bytes", ("invalid UTF-8 byte 0xff",)),  # what Python makes of b"\xff" in argv
    ("lone \ud800 surrogate", ("lone surrogate U+D800",)),
])
def test_question_that_is_not_text(short_video, capfd, no_model, question, words):
    rc, _, err = run_cli(capfd, "ask", str(short_video), question, "--model", "tiny-random")
    one_error(rc, err, "the question is not valid text", *words)


def test_option_that_is_not_text(short_video, capfd, no_model):
    rc, _, err = run_cli(capfd, "ask", str(short_video), "what?", "--options", "a dog", "b \udcfe",
                         "--model", "tiny-random")
    one_error(rc, err, "option 2 is not valid text")


def test_invalid_utf8_question_through_the_real_entry_point(short_video):
    import os
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "videollm", "ask", os.fsencode(short_video), b"what \xff\xfe?",
                           "--model", "videollm-mini"], capture_output=True, timeout=300)
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 2 and "not valid text" in err and "internal error" not in err, err


def test_budget_past_a_presets_context_is_refused_before_loading(short_video, capfd, no_model):
    rc, _, err = run_cli(capfd, "ask", str(short_video), "what?", "--model", "videollm-mini", "--budget", "9000")
    one_error(rc, err, "9000", "8192")


def test_declared_context_is_the_loaded_models(tiny_backbone):
    from videollm.backbones import declared_max_context

    assert declared_max_context("tiny-random") == tiny_backbone.max_context


def test_storm_training_of_mini_is_refused_before_loading(tmp_path, capfd, no_model):
    data = tmp_path / "train.json"
    data.write_text("[]")
    rc, _, err = run_cli(capfd, "train", "storm", "--model", "videollm-mini", "--data", str(data), "--videos",
                         str(tmp_path), "--output", str(tmp_path / "out"))
    one_error(rc, err, "videollm-mini", "cannot be trained")


def test_saving_a_quantized_mini_is_refused_before_loading(tmp_path, capfd, no_model):
    rc, _, err = run_cli(capfd, "quantize", "--model", "videollm-mini", "--output", str(tmp_path / "q"))
    one_error(rc, err, "--quant int4")


def test_quantize_report_through_the_language_model_capability(tiny_backbone):
    """`videollm quantize` on a backbone without `text_decoder()`/`causal_lm()` (videollm-mini's shape)
    measures through `lm_forward` step by step: the same logits as one full forward."""
    from videollm.quant.report import backbone_logits_fn

    class OnlyLanguageModel:  # a LanguageModel and nothing more
        def __init__(self, b):
            self._b = b
            self.tokenizer, self.device, self.dtype = b.tokenizer, b.device, b.dtype

        eos_token_ids = property(lambda self: self._b.eos_token_ids)
        max_context = property(lambda self: self._b.max_context)

        def embed_ids(self, ids):
            return self._b.embed_ids(ids)

        def embed_text(self, text):
            return self._b.embed_text(text)

        def lm_forward(self, inputs_embeds, cache=None):
            return self._b.lm_forward(inputs_embeds, cache)

        def quantizable_modules(self):
            return self._b.quantizable_modules()

        def encode_frames(self, frames):
            return self._b.encode_frames(frames)

    ids = torch.tensor([[5, 9, 17, 3, 11]])
    with torch.inference_mode():
        full = backbone_logits_fn(tiny_backbone)(ids)
        stepwise = backbone_logits_fn(OnlyLanguageModel(tiny_backbone))(ids)
    assert stepwise.shape == full.shape
    assert torch.allclose(stepwise.float(), full.float(), atol=1e-4)

    # the whole report on such a backbone (mini's shape: no `.model`, no causal LM): head stays float
    import copy

    from videollm.quant.report import quantize_backbone_with_report

    b = OnlyLanguageModel(copy.deepcopy(tiny_backbone))
    b.name = "only-lm"
    with torch.inference_mode():
        rep = quantize_backbone_with_report(b, llm="int4", prompts=("a short prompt", "another one"))
    assert rep.head_scheme == "none" and rep.llm_bytes_after < rep.llm_bytes_before
    assert rep.positions > 0 and 0.0 <= rep.top1_agreement <= 1.0 and rep.mean_kl >= 0.0
    assert not any(row["name"].startswith("lm_head") for row in rep.layers)


def test_quant_group_size_zero_is_one_scale_per_row(short_video, capfd, monkeypatch, tiny_backbone):
    import copy

    import videollm.backbones as backbones
    from videollm.models import clear_models
    from videollm.quant.linear import QuantLinear

    loaded = []

    def fresh(*a, **k):
        loaded.append(copy.deepcopy(tiny_backbone))
        return loaded[-1]

    monkeypatch.setattr(backbones, "load_backbone", fresh)
    clear_models()
    try:
        rc, out, err = run_cli(capfd, "ask", str(short_video), "what?", "--model", "tiny-random", "--frames", "2",
                               "--max-new-tokens", "2", "--quant", "int4", "--quant-group-size", "0", "--json")
    finally:
        clear_models()
    assert rc == 0, err
    layers = [m for m in loaded[0].quantizable_modules()["llm"].modules() if isinstance(m, QuantLinear)]
    assert layers and all(m.group == m.in_features for m in layers)  # one group = the whole row
    assert json.loads(out)["text"] is not None


def test_negative_group_size_is_refused(short_video, capfd, no_model):
    rc, _, err = run_cli(capfd, "ask", str(short_video), "what?", "--model", "tiny-random", "--quant", "int4",
                         "--quant-group-size", "-1")
    one_error(rc, err, "--quant-group-size")


# --- eval ------------------------------------------------------------------------------------------------
def test_eval_limit_below_one_is_refused(tmp_path, capfd, no_model):
    pytest.importorskip("pyarrow")
    from test_eval import make_videomme

    data = make_videomme(tmp_path / "vm")
    for limit in ("-1", "0"):
        rc, _, err = run_cli(capfd, "eval", "--task", "videomme", "--data-dir", str(data), "--output",
                             str(tmp_path / "run"), "--model", "tiny-random", "--limit", limit)
        one_error(rc, err, "--limit", limit)


@pytest.mark.parametrize("content,words", [
    (b'{"key": "a", "type": "x", "qa": []}\n{bad json\n', ("line 2", "not valid JSON")),
    (b'{"key": "a", "type": "x", "qa": []}\n{"key": "\xff"}\n', ("line 2", "not UTF-8", "0xff")),
    (b'{"key": "a", "qa": []}\n[1, 2]\n', ("JSON object",)),
])
def test_lvbench_damaged_jsonl_names_file_and_line(tmp_path, capfd, no_model, content, words):
    ann = tmp_path / "video_info.meta.jsonl"
    ann.write_bytes(content)
    rc, _, err = run_cli(capfd, "eval", "--task", "lvbench", "--data-dir", str(tmp_path), "--output",
                         str(tmp_path / "run"), "--model", "tiny-random")
    one_error(rc, err, str(ann), *words)


def test_videomme_parquet_that_is_not_parquet(tmp_path, capfd, no_model):
    pytest.importorskip("pyarrow")
    ann = tmp_path / "videomme" / "test-00000-of-00001.parquet"
    ann.parent.mkdir()
    ann.write_text("not a parquet file\n")
    rc, _, err = run_cli(capfd, "eval", "--task", "videomme", "--data-dir", str(tmp_path), "--output",
                         str(tmp_path / "run"), "--model", "tiny-random")
    one_error(rc, err, str(ann), "not a readable parquet file")


def test_json_annotations_not_utf8_name_the_line(tmp_path):
    from videollm.eval.tasks.base import DatasetError, read_table

    f = tmp_path / "a.json"
    f.write_bytes(b'[\n{"q": 1},\n{"q": "\xfe"}\n]')
    with pytest.raises(DatasetError, match=r"not UTF-8 \(byte 0xfe at line 3\)"):
        read_table(f)


@pytest.mark.parametrize("scheme", ["int4", "int3", "int2", "ternary"])
@pytest.mark.parametrize("k", [576, 1001])
def test_per_row_groups_run_the_kernels_like_the_reference(scheme, k):
    """Group size 0 (one scale per row) through the fast path equals the dequantize-then-matmul reference."""
    from torch import nn

    from videollm.quant.linear import QuantLinear

    torch.manual_seed(0)
    lin = nn.Linear(k, 48, bias=False)
    fast = QuantLinear.from_linear(lin, scheme, 0)
    ref = QuantLinear.from_linear(lin, scheme, 0, kernel="dequant")
    assert fast.group == k
    x = torch.randn(1, k)
    kern = getattr(fast, "_lowbit", None)  # the SIMD kernel rounds activations to int8, as its reference does
    with torch.inference_mode():
        a, b = fast(x), ref(kern.reference_input(x) if kern is not None else x)
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))


def test_unknown_user_in_a_path(capfd, no_model):
    rc, _, err = run_cli(capfd, "ask", "~nosuchuser_videollm/clip.mp4", "what?", "--model", "tiny-random")
    one_error(rc, err, "no such user")


@pytest.mark.parametrize("video, words", [
    ("", ("no video given",)),
    ("   ", ("no video given",)),
    ("ftp://example.com/clip.mp4", ("ftp://example.com/clip.mp4", "a URL", "download")),  # http(s) is fetched
    ("x" * 5000 + ".mp4", ("cannot be read", "File name too long", "…")),
])
def test_paths_that_name_no_readable_file(capfd, no_model, video, words):
    """'' was the current directory ('.: is a directory'); a URL lost a slash ('http:/...: no such file'); a
    name past the file system's limit was an `internal error` (OSError from Path.exists)."""
    rc, _, err = run_cli(capfd, "ask", video, "what?", "--model", "tiny-random")
    line = one_error(rc, err, *words)
    assert len(line) < 400


def test_a_file_used_as_a_folder_is_no_such_file(tmp_path, capfd, no_model):
    (tmp_path / "clip.mp4").write_bytes(b"x")
    rc, _, err = run_cli(capfd, "ask", str(tmp_path / "clip.mp4" / "more.mp4"), "what?", "--model", "tiny-random")
    one_error(rc, err, "no such file")


@pytest.mark.parametrize("video, words", [
    ("", "no video given"), ("ftp://host/clip.mp4", "a URL"), ("y" * 5000, "cannot be read"),
])
def test_api_paths_that_name_no_readable_file(video, words):
    from videollm.errors import VideoNotFoundError
    from videollm.video import SamplingConfig
    from videollm.video.sources import open_source

    with pytest.raises(VideoNotFoundError, match=words):
        open_source(video, SamplingConfig())
