"""The CPU int8 option (`--cpu-int8`, `--fast-cpu`): checks before loading, the swap itself, its error, and the
helpers of `bench/bench_vs_transformers.py` on tiny-random."""
import importlib.util
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from videollm.cli import main
from videollm.config import PipelineConfig
from videollm.cpu_speed import CPU_INT8_CHOICES, FAST_CPU_INT8, apply_cpu_int8, check_cpu_int8, describe_cpu
from videollm.errors import InvalidRequestError

TINY = ["--model", "tiny-random", "--frames", "4", "--max-new-tokens", "2"]


def _int8_linears(module: torch.nn.Module) -> int:
    from torch.ao.nn.quantized.dynamic import Linear as DynLinear

    return sum(isinstance(m, DynLinear) for m in module.modules())


def _float_linears(module: torch.nn.Module) -> int:
    return sum(type(m) is torch.nn.Linear for m in module.modules())


@pytest.mark.parametrize("kwargs, match", [
    ({"choice": "fast"}, "unknown cpu int8 choice"),
    ({"choice": "vision", "device": "cuda"}, "cannot run on device"),
    ({"choice": "vision", "device": "cuda:1"}, "cannot run on device"),
    ({"choice": "all", "dtype": "bfloat16"}, "--dtype bfloat16"),
    ({"choice": "vision", "vision_quant": "int8"}, "choose one"),
    ({"choice": "llm", "quant": "int4"}, "choose one"),
])
def test_check_refuses(kwargs, match):
    with pytest.raises(InvalidRequestError, match=match):
        check_cpu_int8(**kwargs)


def test_check_accepts():
    check_cpu_int8("none", device="cuda", dtype="bf16", quant="int4", vision_quant="int4")  # off: anything goes
    check_cpu_int8("vision", device="cpu", dtype="float32", quant="int4")  # LLM weight quant + int8 tower
    check_cpu_int8("llm", device="auto", vision_quant="int8")
    assert FAST_CPU_INT8 in CPU_INT8_CHOICES


def test_config_validates_and_fingerprints():
    with pytest.raises(InvalidRequestError, match="unknown cpu int8"):
        PipelineConfig(model="tiny-random", cpu_int8="yes").validate()
    # without CUDA the device check refuses first; with it, --cpu-int8 refuses a GPU device
    with pytest.raises(InvalidRequestError, match="cannot run on device|CUDA is not available"):
        PipelineConfig(model="tiny-random", cpu_int8="vision", device="cuda").validate()
    cfg = PipelineConfig(model="tiny-random", cpu_int8="vision").validate()
    assert cfg.fingerprint()["cpu_int8"] == "vision"  # int8 changes predictions: a resume must match it


def test_cli_flags(monkeypatch, short_video, capsys):
    from videollm import cli

    seen = {}
    real = cli.pipeline_config

    def spy(args):
        seen["cfg"] = real(args)
        raise SystemExit(0)  # stop before any model loads

    monkeypatch.setattr(cli, "pipeline_config", spy)
    with pytest.raises(SystemExit):
        main(["ask", str(short_video), "What?", *TINY, "--fast-cpu"])
    assert seen["cfg"].cpu_int8 == FAST_CPU_INT8
    with pytest.raises(SystemExit):
        main(["ask", str(short_video), "What?", *TINY, "--cpu-int8", "all"])
    assert seen["cfg"].cpu_int8 == "all"
    with pytest.raises(SystemExit):
        main(["ask", str(short_video), "What?", *TINY])
    assert seen["cfg"].cpu_int8 == "none"


@pytest.mark.parametrize("extra, match", [
    (["--cpu-int8", "vision", "--device", "cuda"], "cannot run on device|CUDA is not available"),
    (["--fast-cpu", "--cpu-int8", "all"], "conflicts"),
    (["--cpu-int8", "gpu"], "unknown cpu int8 choice"),
    (["--fast-cpu", "--vision-quant", "int4"], "choose one"),
])
def test_cli_errors_are_one_line(short_video, capsys, extra, match):
    rc = main(["ask", str(short_video), "What?", *TINY, *extra])
    err = capsys.readouterr().err
    assert rc == 2
    assert "Traceback" not in err
    assert [ln for ln in err.splitlines() if ln.startswith("error:") and re.search(match, ln)]


def test_int8_tower_close_to_fp32():
    from videollm.backbones import load_backbone

    ref = load_backbone("tiny-random", device="cpu", dtype="float32")
    bb = load_backbone("tiny-random", device="cpu", dtype="float32")
    n_vision = _float_linears(bb.model.model.vision_tower)
    done = apply_cpu_int8(bb, "vision")
    names = done.layers
    assert len(names) == n_vision and all(n.startswith("vision.") for n in names)
    assert _float_linears(bb.model.model.vision_tower) == 0
    assert _int8_linears(bb.model.model.vision_tower) == n_vision
    assert _int8_linears(bb.model.model.language_model) == 0  # the LLM is untouched
    assert done.applied == "vision" and not hasattr(bb, "cpu_int8")  # the result is returned, not written
    frames = torch.randint(0, 256, (3, 96, 128, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    a = ref.project(ref.encode_frames(frames)).flatten(0, 2)
    b = bb.project(bb.encode_frames(frames)).flatten(0, 2)
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    assert cos.min() > 0.995 and cos.mean() > 0.999
    assert not torch.equal(a, b)  # int8 really ran


def test_int8_all_and_non_cpu(caplog):
    from videollm.backbones import load_backbone

    bb = load_backbone("tiny-random", device="cpu", dtype="float32")
    apply_cpu_int8(bb, "all")
    assert _float_linears(bb.model.model.language_model) == 0
    assert type(bb.model.lm_head) is torch.nn.Linear  # the head stays float

    class OnGpu:
        device = torch.device("meta")

    assert apply_cpu_int8(OnGpu(), "vision").layers == []  # `auto` resolved to an accelerator: ignored, said so
    assert "ignored" in caplog.text
    assert describe_cpu()["capability"]


def test_pipeline_from_config_int8(short_video):
    from videollm.models import cached_models, clear_models
    from videollm.pipeline import VideoQAPipeline

    float_pipe = VideoQAPipeline.from_config(PipelineConfig(model="tiny-random", device="cpu"))
    fast = VideoQAPipeline.from_config(PipelineConfig(model="tiny-random", device="cpu", cpu_int8="vision"))
    try:
        assert fast.backbone is not float_pipe.backbone  # separate model-cache entries
        assert float_pipe.load_report.cpu_int8_applied == "none"
        assert fast.load_report.cpu_int8_applied == "vision" and fast.load_report.cpu_int8_layers
        ans = fast(short_video, "What is shown?")
        assert ans.visual_tokens > 0 and ans.generated_tokens > 0
    finally:
        clear_models("tiny-random")
    assert "tiny-random" not in cached_models()


# ---- bench/bench_vs_transformers.py helpers --------------------------------------------------------------
@pytest.fixture(scope="module")
def vs():
    bench = Path(__file__).parents[1] / "bench"
    sys.path.insert(0, str(bench))
    # the bench turns the prefix and feature caches off for the process it runs in: keep that out of the suite
    saved = {k: os.environ.get(k) for k in ("VIDEOLLM_PREFIX_CACHE", "VIDEOLLM_FEATURE_CACHE_MB")}
    try:
        spec = importlib.util.spec_from_file_location("bench_vs_transformers", bench / "bench_vs_transformers.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules["bench_vs_transformers"] = mod  # dataclasses look their module up there
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(bench))
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return mod


def test_bench_helpers_small(vs):
    assert vs.agreement([1, 2, 3], [1, 2, 4]) == (2, 3)
    assert vs.agreement([5], [6, 7]) == (0, 1)
    a = torch.randn(2, 3, 3, 8)
    c = vs.token_cosine(a, a)
    assert c["min"] == pytest.approx(1.0, abs=1e-5)
    assert vs.token_cosine(a, -a)["mean"] == pytest.approx(-1.0, abs=1e-5)


def test_bench_paths_agree_on_tiny(vs, tiny_backbone):
    """transformers' processor + generate and videollm give the same prompt and the same greedy ids; the int8
    variant quantizes a copy and leaves the float model alone."""
    from videollm.pipeline import VideoQAPipeline

    frames = np.random.default_rng(0).integers(0, 256, (4, 72, 96, 3), dtype=np.uint8)
    bb = tiny_backbone
    proc = vs.build_processor(bb)
    q = "What happens?"
    assert vs.hf_prompt_ids(proc, frames, q) == vs.videollm_prompt_ids(bb, 4 * bb.tokens_per_frame, q)
    hf = vs.hf_answer(bb.model, proc, frames, q, 5, sorted(bb.eos_token_ids))
    pipe = VideoQAPipeline(bb, PipelineConfig(model="tiny-random", device="cpu"))
    ours = vs.videollm_answer(pipe, frames, q, 5)
    assert hf == ours and len(ours) >= 1
    fast = vs.int8_variant(bb, "vision")
    assert fast.model.model.language_model is bb.model.model.language_model  # shared
    assert _float_linears(bb.model.model.vision_tower) > 0 and _float_linears(fast.model.model.vision_tower) == 0
    ids = vs.greedy_ids(bb, vs.visual_tokens(bb, frames), q, 3)
    assert ids == ours[:3]  # the bench's direct greedy loop matches the pipeline


def test_convolutional_part_is_skipped():
    """A part whose weights are mostly convolutions (videollm-mini's EfficientNet) gains nothing from int8 Linear
    kernels, only error: it is left float with a warning, and the backbone is not marked int8."""

    class ConvBackbone:
        name = "conv-fake"
        device = torch.device("cpu")

        def __init__(self) -> None:
            self.vision = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 7), torch.nn.Flatten(), torch.nn.Linear(4, 2))
            self.llm = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.LayerNorm(32))

        def quantizable_modules(self) -> dict[str, torch.nn.Module]:
            return {"vision": self.vision, "llm": self.llm}

    bb = ConvBackbone()
    skipped = apply_cpu_int8(bb, "vision")
    assert skipped.layers == [] and skipped.applied == "none"
    assert "left the vision part of conv-fake in float" in skipped.warnings[0]
    assert type(bb.vision[2]) is torch.nn.Linear
    done = apply_cpu_int8(bb, "all")
    assert done.layers == ["llm.0"] and len(done.warnings) == 1
    assert type(bb.llm[0]) is not torch.nn.Linear and done.applied == "all"
