"""The opt-in static-cache (compiled) decode loop gives token for token what the eager loop gives."""
from __future__ import annotations

import os
import time

import pytest
import torch

from videollm.errors import InvalidRequestError
from videollm.runtime.generation import GenerationConfig, continue_generation, generate

#: sampling makes a random model's tokens vary (greedy repeats one token), so a wrong position would show
SAMPLED = dict(max_new_tokens=20, temperature=1.0, seed=5)


def _prompt(backbone, n: int = 40) -> torch.Tensor:
    return backbone.embed_ids(list(range(3, 3 + n)))[None]


def _compare(backbone, monkeypatch, compile: bool, **gen) -> None:
    monkeypatch.setenv("VIDEOLLM_COMPILE", "1" if compile else "0")
    e = _prompt(backbone)
    eager = generate(backbone, e, GenerationConfig(**gen), allow_static=True)
    fast = generate(backbone, e, GenerationConfig(**gen, static_decode=True), allow_static=True)
    assert fast.cache is None and eager.cache is not None  # the static path really ran
    if gen.get("temperature"):
        assert len(set(eager.token_ids)) > 3
    assert fast.token_ids == eager.token_ids and fast.finish_reason == eager.finish_reason
    assert fast.logprobs == pytest.approx(eager.logprobs, abs=1e-4)
    assert fast.forward_calls == eager.forward_calls


def test_static_cache_loop_matches_eager(tiny_backbone, monkeypatch):
    _compare(tiny_backbone, monkeypatch, compile=False, **SAMPLED)
    _compare(tiny_backbone, monkeypatch, compile=False, max_new_tokens=12)  # greedy


def test_static_decode_is_opt_in_and_direct_only(tiny_pipeline, short_video, monkeypatch):
    """Think/auto continue their cache, so they keep the eager loop; direct answers are the same either way."""
    from dataclasses import replace

    monkeypatch.setenv("VIDEOLLM_COMPILE", "0")
    g = replace(tiny_pipeline.config.generation, max_new_tokens=8)
    plain = tiny_pipeline(short_video, "What is happening?", generation=g)
    fast = tiny_pipeline(short_video, "What is happening?", generation=replace(g, static_decode=True))
    assert (fast.text, fast.generated_tokens) == (plain.text, plain.generated_tokens)
    think = tiny_pipeline(short_video, "What is happening?", reasoning="think",
                          generation=replace(g, static_decode=True))
    assert think.thinking_fired


def test_a_static_result_cannot_be_continued(tiny_backbone, monkeypatch):
    monkeypatch.setenv("VIDEOLLM_COMPILE", "0")
    out = generate(tiny_backbone, _prompt(tiny_backbone), GenerationConfig(max_new_tokens=3, static_decode=True),
                   allow_static=True)
    with pytest.raises(ValueError, match="no cache to continue"):
        continue_generation(tiny_backbone, out, GenerationConfig(max_new_tokens=2))


def test_static_decode_must_be_a_bool():
    with pytest.raises(InvalidRequestError, match="static_decode"):
        GenerationConfig(static_decode="yes").validate()


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("VIDEOLLM_TEST_COMPILE") != "1",
                    reason="torch.compile on CPU takes minutes here; set VIDEOLLM_TEST_COMPILE=1 to run")
def test_compiled_loop_matches_eager_cpu(tiny_backbone, monkeypatch):
    _compare(tiny_backbone, monkeypatch, compile=True, **SAMPLED)


@pytest.mark.gpu
def test_compiled_loop_is_3x_faster_per_token_on_cuda(monkeypatch):
    """Real-size LLaVA-OneVision-0.5B (random weights) in bf16: same tokens, >= 3x faster per token."""
    from videollm.backbones.tiny import build_random_llava_onevision_0_5b

    monkeypatch.setenv("VIDEOLLM_COMPILE", "1")
    b = build_random_llava_onevision_0_5b(device="cuda", dtype="bfloat16")
    e = _prompt(b, 512)
    gen = dict(max_new_tokens=128)

    def per_token(**extra) -> tuple[list[int], float]:
        generate(b, e, GenerationConfig(**gen, **extra), allow_static=True)  # warm-up (and compile)
        torch.cuda.synchronize()
        t = time.perf_counter()
        out = generate(b, e, GenerationConfig(**gen, **extra), allow_static=True)
        torch.cuda.synchronize()
        return out.token_ids, (time.perf_counter() - t) / len(out.token_ids)

    eager_ids, eager_s = per_token()
    fast_ids, fast_s = per_token(static_decode=True)
    assert fast_ids == eager_ids
    assert eager_s / fast_s >= 3.0, f"eager {eager_s * 1e3:.1f} ms/token, compiled {fast_s * 1e3:.1f} ms/token"


def test_static_decoder_is_made_once_and_does_not_keep_a_dropped_model_alive():
    import gc
    import weakref

    from videollm.backbones.tiny import build_tiny_random
    from videollm.runtime import static_decode

    bb = build_tiny_random(seed=0)
    dec = static_decode.for_backbone(bb, compile=False)
    assert static_decode.for_backbone(bb, compile=False) is dec  # compiling is the expensive part: once
    alive = weakref.ref(bb.text_decoder()[0])  # the model's weights, which the compiled step references
    del bb, dec
    gc.collect()
    assert alive() is None
