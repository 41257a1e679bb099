"""The lean one-token decode step (`runtime.decode_step`) against transformers' own forward."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from videollm._compat import ensure_torchvision_importable
from videollm.quant import cpu_kernels
from videollm.runtime import decode_ops, decode_step
from videollm.runtime.decode_step import LeanStep, forward_last

ensure_torchvision_importable()
transformers = pytest.importorskip("transformers")


def _model(arch: str, layers: int = 3, dtype: torch.dtype = torch.float32, **extra):
    common = dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, **extra)
    cfg = {"qwen2": lambda: transformers.Qwen2Config(**common),
           "qwen3": lambda: transformers.Qwen3Config(head_dim=16, **common),
           "llama": lambda: transformers.LlamaConfig(**{**common, "num_key_value_heads": 1})}[arch]()
    torch.manual_seed(0)
    cls = {"qwen2": transformers.Qwen2ForCausalLM, "qwen3": transformers.Qwen3ForCausalLM,
           "llama": transformers.LlamaForCausalLM}[arch]
    return cls(cfg).to(dtype).eval()


def _run(model, prompt: int, steps: int, lean: bool, monkeypatch, seed: int = 1):
    """Greedy decode through `forward_last`; logits per step and the final cache."""
    monkeypatch.setenv("VIDEOLLM_LEAN_DECODE", "cpu" if lean else "0")
    gen = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        embeds = model.model.embed_tokens(torch.randint(0, 300, (1, prompt), generator=gen))
        hidden, cache = forward_last(model.model, embeds, None)
        logits = [model.lm_head(hidden).float()]
        for _ in range(steps):
            tok = logits[-1].argmax(-1).view(1, 1)
            hidden, cache = forward_last(model.model, model.model.embed_tokens(tok), cache)
            logits.append(model.lm_head(hidden).float())
    return torch.cat(logits), cache


def _assert_same_decode(model, monkeypatch, prompt=7, steps=12, rtol=1e-4):
    want, want_cache = _run(model, prompt, steps, False, monkeypatch)
    calls = []
    real = LeanStep.__call__
    monkeypatch.setattr(LeanStep, "__call__", lambda self, e, c: calls.append(1) or real(self, e, c))
    got, got_cache = _run(model, prompt, steps, True, monkeypatch)
    monkeypatch.setattr(LeanStep, "__call__", real)
    assert len(calls) == steps  # every decode step took the lean path
    scale = float(want.abs().max())
    assert torch.allclose(got, want, rtol=rtol, atol=rtol * scale), float((got - want).abs().max())
    assert torch.equal(got.argmax(-1), want.argmax(-1))
    assert got_cache.get_seq_length() == want_cache.get_seq_length() == prompt + steps
    for a, b in zip(got_cache.layers, want_cache.layers):
        assert torch.allclose(a.keys, b.keys, rtol=rtol, atol=rtol) and torch.allclose(a.values, b.values,
                                                                                      rtol=rtol, atol=rtol)


def _crop_and_copy(model, monkeypatch) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Decode 16 tokens, deep-copy the cache, crop its last 4 and decode tokens 12-19 again: the last hidden
    state, then the copy's keys and the cache's keys (layer by layer)."""
    monkeypatch.setenv("VIDEOLLM_LEAN_DECODE", "cpu")
    with torch.inference_mode():
        embeds = model.model.embed_tokens(torch.arange(20)[None])
        _, cache = forward_last(model.model, embeds[:, :10], None)
        for i in range(10, 16):
            _, cache = forward_last(model.model, embeds[:, i: i + 1], cache)
        twin = copy.deepcopy(cache)
        cache.crop(-4)
        for i in range(12, 20):
            hidden, cache = forward_last(model.model, embeds[:, i: i + 1], cache)
    return hidden, [c.keys for c in twin.layers] + [c.keys for c in cache.layers]


@pytest.mark.parametrize("arch", ["qwen2", "qwen3", "llama"])
def test_lean_step_equals_transformers(arch, monkeypatch):
    model = _model(arch)
    assert LeanStep.build(model.model) is not None
    _assert_same_decode(model, monkeypatch)


def test_lean_step_without_the_c_ops(monkeypatch):
    """No compiler (or VIDEOLLM_NO_CKERNELS): the same step on PyTorch ops only."""
    monkeypatch.setattr(decode_ops, "_library", lambda: None)
    _assert_same_decode(_model("qwen3"), monkeypatch)


def test_lean_step_is_used_and_off_switch(monkeypatch):
    model = _model("qwen2")
    calls = []
    real = LeanStep.__call__
    monkeypatch.setattr(LeanStep, "__call__", lambda self, e, c: calls.append(1) or real(self, e, c))
    _run(model, 5, 3, True, monkeypatch)
    assert len(calls) == 3  # the decode steps, not the prefill
    _run(model, 5, 3, False, monkeypatch)
    assert len(calls) == 3


def test_long_cache_growth_crop_and_copies(monkeypatch):
    """Past `KV_GROWTH` steps the cache is re-allocated; cropping and copying a grown cache stay correct."""
    model = _model("qwen2", layers=2)
    monkeypatch.setattr(decode_step, "KV_GROWTH", 4)
    monkeypatch.setattr(decode_ops, "LONG_CONTEXT", 310)  # both attention paths within the run
    _assert_same_decode(model, monkeypatch, prompt=300, steps=20)
    hidden, keys = _crop_and_copy(model, monkeypatch)
    monkeypatch.setenv("VIDEOLLM_LEAN_DECODE", "0")
    with torch.inference_mode():
        embeds = model.model.embed_tokens(torch.arange(20)[None])
        _, ref = forward_last(model.model, embeds[:, :16], None)
        ref_hidden, _ = forward_last(model.model, embeds, None)
    # the copy taken before the crop is untouched by the steps after it
    for a, b in zip(keys[: len(ref.layers)], ref.layers):
        assert torch.allclose(a, b.keys, atol=1e-5)
    assert torch.allclose(hidden, ref_hidden, atol=1e-4)


def test_bfloat16_model(monkeypatch):
    model = _model("qwen2", dtype=torch.bfloat16)
    want, _ = _run(model, 6, 4, False, monkeypatch)
    got, _ = _run(model, 6, 4, True, monkeypatch)
    assert torch.allclose(got, want, rtol=3e-2, atol=3e-2 * float(want.abs().max()))


@pytest.mark.skipif(not cpu_kernels.available(), reason="no C compiler for the low-bit kernel")
@pytest.mark.parametrize("scheme", ["int4", "int2", "ternary"])
def test_quantized_model_fused_projections(scheme, monkeypatch):
    """q/k/v and gate/up run as one kernel call each, equal to the layers' own calls; a plan made before
    quantizing is replaced, not reused with the old float layers. int4 takes the low-bit kernel only where it
    has an int8 path (every SIMD level); on the scalar level ATen's int4 kernel runs each layer instead."""
    from videollm.quant import config_for, quantize_

    model = _model("qwen2", layers=2)
    _run(model, 5, 2, True, monkeypatch)  # a plan for the float layers
    quantize_(model, config_for(scheme, 32, "native"))
    step = LeanStep.build(model.model)
    proj = step.layers[0].qkv
    fused = scheme != "int4" or cpu_kernels.int8_path()
    assert (proj.group is not None) == fused
    assert all(m.kernel == ("lowbit" if fused else "int4_cpu") for m in proj.mods)
    x = torch.randn(1, 64)
    assert torch.equal(proj(x), torch.cat([m(x) for m in proj.mods], dim=-1))
    # every projection on the low-bit kernel: the whole layer is one C call
    assert all((layer.fused is not None) == fused for layer in step.layers)
    _assert_same_decode(model, monkeypatch, rtol=2e-3)


def _quantized(arch: str, scheme: str = "int2", layers: int = 2):
    from videollm.quant import config_for, quantize_

    model = _model(arch, layers=layers)
    quantize_(model, config_for(scheme, 32, "native"))
    return model


def _per_op(monkeypatch) -> None:
    """Plans made from now on run every layer op by op (no fused layer)."""
    monkeypatch.setattr(decode_step._FusedLayer, "build", classmethod(lambda cls, p: None))
    decode_step._PLANS.clear()


@pytest.mark.skipif(not cpu_kernels.available(), reason="no C compiler for the low-bit kernel")
@pytest.mark.parametrize("arch", ["qwen2", "qwen3", "llama"])
def test_fused_layer_equals_the_per_op_step(arch, monkeypatch):
    """The one-call layer does the per-op step's operations in the same order: the same logits and caches
    (Qwen3's head norms: the C loop against F.rms_norm, float rounding only), and both equal transformers."""
    model = _quantized(arch)
    decode_step._PLANS.clear()
    calls = []
    real = decode_step._FusedLayer.__call__
    monkeypatch.setattr(decode_step._FusedLayer, "__call__", lambda self, *a: calls.append(1) or real(self, *a))
    fused, fused_cache = _run(model, 6, 8, True, monkeypatch)
    assert len(calls) == 8 * 2  # every step, both layers
    _per_op(monkeypatch)
    per_op, per_op_cache = _run(model, 6, 8, True, monkeypatch)
    assert len(calls) == 16
    tol = 1e-6 if arch != "qwen3" else 1e-4
    assert torch.allclose(fused, per_op, rtol=tol, atol=tol * float(per_op.abs().max()))
    for a, b in zip(fused_cache.layers, per_op_cache.layers):
        assert torch.allclose(a.keys, b.keys, rtol=tol, atol=tol) and torch.allclose(a.values, b.values,
                                                                                     rtol=tol, atol=tol)
    monkeypatch.undo()
    decode_step._PLANS.clear()
    _assert_same_decode(model, monkeypatch, rtol=2e-3)


@pytest.mark.skipif(not cpu_kernels.available(), reason="no C compiler for the low-bit kernel")
def test_fused_layer_cache_growth_and_long_context(monkeypatch):
    """Fused layers grow the cache past `KV_GROWTH` and hand over to the per-op step (PyTorch attention) from
    `LONG_CONTEXT` cached tokens on, all within one run. (int2's int8-rounded activations drift from
    transformers' SDPA over 300 tokens on the SIMD levels, per-op step alike: int4 there.)"""
    model = _quantized("qwen2", "int4" if cpu_kernels.int8_path() else "int2")
    monkeypatch.setattr(decode_step, "KV_GROWTH", 4)
    monkeypatch.setattr(decode_ops, "LONG_CONTEXT", 310)
    decode_step._PLANS.clear()
    calls = []
    real = decode_step._FusedLayer.__call__
    monkeypatch.setattr(decode_step._FusedLayer, "__call__", lambda self, *a: calls.append(1) or real(self, *a))
    _assert_same_decode(model, monkeypatch, prompt=300, steps=20, rtol=2e-3)
    assert 0 < len(calls) < 20 * 2  # fused below 310 cached tokens, per op from there


@pytest.mark.skipif(not cpu_kernels.available(), reason="no C compiler for the low-bit kernel")
def test_no_fused_layer_without_the_c_ops(monkeypatch):
    monkeypatch.setattr(decode_ops, "_library", lambda: None)
    model = _quantized("qwen2")
    step = LeanStep.build(model.model)
    assert step is not None and all(layer.fused is None for layer in step.layers) and step.scratch == 0
    _assert_same_decode(model, monkeypatch, rtol=2e-3)


@pytest.mark.parametrize("change", ["sliding", "hook", "gelu"])
def test_unsupported_models_take_the_transformers_forward(change, monkeypatch):
    if change == "sliding":
        model = _model("qwen2", use_sliding_window=True, sliding_window=4, max_window_layers=0)
    else:
        model = _model("qwen2")
    if change == "hook":
        model.model.layers[1].mlp.register_forward_hook(lambda m, i, o: o)
    if change == "gelu":
        model.model.layers[0].mlp.act_fn = torch.nn.GELU()
    assert LeanStep.build(model.model) is None
    want, _ = _run(model, 6, 3, False, monkeypatch)
    got, _ = _run(model, 6, 3, True, monkeypatch)
    assert torch.equal(got, want)


def test_replaced_weights_and_global_hooks_are_seen(monkeypatch):
    model = _model("qwen2")
    _run(model, 5, 2, True, monkeypatch)  # plans the step
    norm = model.model.layers[1].post_attention_layernorm
    norm.weight = torch.nn.Parameter(torch.rand_like(norm.weight) + 0.5)
    _assert_same_decode(model, monkeypatch)
    handle = torch.nn.modules.module.register_module_forward_hook(lambda m, i, o: None)
    try:
        with torch.no_grad():
            embeds = model.model.embed_tokens(torch.arange(4)[None])
            _, cache = forward_last(model.model, embeds[:, :3], None)
            assert decode_step._lean_step(model.model, embeds[:, 3:], cache) is None
    finally:
        handle.remove()


def test_a_dropped_model_is_freed(monkeypatch):
    """Plans are kept per decoder, weakly: they must not keep the model (its weights) alive."""
    import gc
    import weakref

    model = _model("qwen2")
    _run(model, 5, 2, True, monkeypatch)
    assert model.model in decode_step._PLANS
    gone = weakref.ref(model.model)
    del model
    gc.collect()
    assert gone() is None


def test_grad_and_training_take_the_transformers_forward():
    model = _model("qwen2")
    embeds = model.model.embed_tokens(torch.arange(4)[None])
    with torch.no_grad():
        _, cache = forward_last(model.model, embeds[:, :3], None)
    assert decode_step._lean_step(model.model, embeds[:, 3:], cache) is None  # gradients on
    with torch.no_grad():
        assert decode_step._lean_step(model.model, embeds[:, 3:], cache) is not None
        model.train()
        assert decode_step._lean_step(model.model, embeds[:, 3:], cache) is None


# ---- the C ops --------------------------------------------------------------------------------------------------

def test_rms_norm_op():
    torch.manual_seed(0)
    x, w = torch.randn(1, 1, 896) * 3, torch.randn(896)
    assert torch.allclose(decode_ops.rms_norm(x, w, 1e-6), F.rms_norm(x, (896,), w, 1e-6), rtol=1e-5, atol=1e-5)
    xb, wb = x.bfloat16(), w.bfloat16()
    want = wb * F.rms_norm(xb.float(), (896,), None, 1e-6).bfloat16()
    assert torch.equal(decode_ops.rms_norm(xb, wb, 1e-6), want)


def test_rope_store_and_swiglu_ops_equal_their_torch_fallbacks(monkeypatch):
    torch.manual_seed(0)
    nh, nkv, d, t = 6, 2, 16, 5
    qk, v = torch.randn(nh + nkv, d), torch.randn(nkv, d)
    cos, sin = torch.randn(d), torch.randn(d)
    gu = torch.randn(1, 2 * 40)
    results = []
    for lib in (decode_ops._library, lambda: None):  # the C op, then the PyTorch fallback
        monkeypatch.setattr(decode_ops, "_library", lib)
        q2, kr, vr = qk.clone(), torch.zeros(1, nkv, t + 3, d), torch.zeros(1, nkv, t + 3, d)
        decode_ops.rope_store(q2, v, cos, sin, kr, vr, t)
        results.append((q2, kr, vr, decode_ops.swiglu(gu, 40)))
    for a, b in zip(*results):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    q2, kr, vr, _ = results[0]
    rotate_half = torch.cat((-qk[:, d // 2:], qk[:, : d // 2]), -1)
    sin_plain = torch.cat((-sin[: d // 2], sin[d // 2:]))  # rope_store takes sin with its first half negated
    assert torch.allclose(q2, qk * cos + rotate_half * sin_plain, atol=1e-5)
    assert torch.equal(kr[0, :, t], q2[nh:]) and torch.equal(vr[0, :, t], v) and not kr[0, :, :t].any()
    assert torch.allclose(results[0][3], F.silu(gu[:, :40]) * gu[:, 40:], atol=1e-6)


@pytest.mark.parametrize("t", [1, 5, 300])
@pytest.mark.parametrize("heads", [(14, 2), (4, 4), (6, 1)])
@pytest.mark.parametrize("long_context", [decode_ops.LONG_CONTEXT, 0])  # the C loop, then PyTorch's matmuls
def test_attend_op(t, heads, long_context, monkeypatch):
    monkeypatch.setattr(decode_ops, "LONG_CONTEXT", long_context)
    nh, nkv = heads
    torch.manual_seed(t)
    q = torch.randn(nh, 64)
    room_k, room_v = torch.randn(1, nkv, t + 9, 64), torch.randn(1, nkv, t + 9, 64)
    keys, values = room_k[:, :, :t], room_v[:, :, :t]  # strided views, as the grown cache holds them
    want = F.scaled_dot_product_attention(q.view(1, nh, 1, 64), keys, values, scale=0.125,
                                          enable_gqa=nh != nkv).reshape(1, -1)
    assert torch.allclose(decode_ops.attend(q, keys, values, 0.125), want, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not cpu_kernels.available(), reason="no C compiler for the low-bit kernel")
def test_fused_layer_after_crop_and_copy(monkeypatch):
    """A cropped cache (rows past the crop overwritten in place) and a deep copy taken before it: the fused
    layers leave both as the per-op step does."""
    model = _quantized("qwen2")
    monkeypatch.setattr(decode_step, "KV_GROWTH", 4)
    decode_step._PLANS.clear()
    fused_hidden, fused_keys = _crop_and_copy(model, monkeypatch)
    assert all(layer.fused is not None for layer in decode_step._PLANS[model.model].layers)
    _per_op(monkeypatch)
    hidden, keys = _crop_and_copy(model, monkeypatch)
    assert torch.allclose(fused_hidden, hidden, rtol=1e-6, atol=1e-6)
    assert all(torch.allclose(a, b, rtol=1e-6, atol=1e-6) for a, b in zip(fused_keys, keys))
