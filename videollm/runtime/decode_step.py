"""One-token decoder step for Llama-family LLMs without transformers' per-layer Python.

At batch 1 on a CPU, the 0.5B LLM's decode step spends ~11 ms in framework overhead (module calls, mask and
cache bookkeeping, ~60 small ops a layer) before it reads a weight, against ~22 ms to read its int4 weights
at memory bandwidth (bench/RESULTS.md). This step computes the same layer (RMSNorm → q/k/v → RoPE → attention
over the KV cache → o → RMSNorm → SwiGLU MLP) with a few ops a layer and:

- calls q/k/v, and gate/up, as one low-bit kernel call each where those layers use the C kernel;
- grows the KV cache in place, with spare room: `DynamicCache` concatenates, copying the whole cache every
  token (at a 6k-token video prompt, ~150 MB copied a token for the 0.5B LLM in float32);
- runs RMSNorm, RoPE with the cache write, attention (up to `decode_ops.LONG_CONTEXT` cached tokens; PyTorch
  matmul → softmax → matmul beyond) and SwiGLU's product as one C call each (`decode_ops`); PyTorch's CPU
  SDPA kernel is slower than either for one query.
- where all seven projections of a layer run on the low-bit kernel (a quantized float32 model on CPU), runs
  the whole layer as one C call (`_FusedLayer`, `decode_layer` in `runtime/csrc/decode_ops.c`, which calls the
  kernel library's `lowbit_gemv_many` through a pointer): the same operations in the same order, without the
  ~12 Python-level calls a layer (−5.6 ms a token for int4 Qwen2-0.5B at AVX2, bench/RESULTS.md).

It runs only where it computes what the transformers layer computes: the layer classes in `SUPPORTED`
(SiLU MLP, full attention only), no hooks (on the layers when the step is planned, or global ones), eval
mode, gradients off, one token of batch 1, no attention mask, a `DynamicCache` already holding the prompt,
on CPU (VIDEOLLM_LEAN_DECODE=all: any device, unmeasured on GPUs; =0: never). Everything else (prefill,
training, other models) takes transformers' forward. tests/test_decode_step.py checks logits and caches
against that forward.
"""
from __future__ import annotations

import ctypes
import logging
import os
import weakref
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._compat import cache_kwargs, output_cache
from . import decode_ops

logger = logging.getLogger(__name__)

#: decoder layer classes whose forward this step reproduces (SmolLM2 is a Llama)
SUPPORTED = frozenset({"Qwen2DecoderLayer", "Qwen3DecoderLayer", "LlamaDecoderLayer",
                       # Qwen-VL text layers: the same layer; their M-RoPE with equal (t, h, w) is 1-D RoPE
                       "Qwen2VLDecoderLayer", "Qwen2_5_VLDecoderLayer", "Qwen3VLTextDecoderLayer"})
#: activation modules that are F.silu (torch's and transformers' own)
_SILU = frozenset({"SiLU", "SiLUActivation"})
#: spare KV rows allocated when the cache must grow: at least this many, or an eighth of its length
KV_GROWTH = 256


def mode() -> str:
    """"cpu" (default), "all" or "off", from VIDEOLLM_LEAN_DECODE."""
    value = os.environ.get("VIDEOLLM_LEAN_DECODE", "cpu").strip().lower()
    return "off" if value in ("0", "off", "false", "no") else "all" if value == "all" else "cpu"


def forward_last(decoder: nn.Module, inputs_embeds: torch.Tensor, cache: Any = None,
                 position_offset: int = 0) -> tuple[torch.Tensor, Any]:
    """The final-norm hidden state (B, 1, D) of the last position of `inputs_embeds` after `cache`, and the
    cache now holding them. The lean step where it applies, else the transformers forward.

    `position_offset`: rotary positions are cache index + offset (Qwen-VL's `rope_deltas` after its 3-D
    positioned prompt; every axis of M-RoPE then holds the same 1-D position)."""
    step = _lean_step(decoder, inputs_embeds, cache)
    if step is not None:
        return (step(inputs_embeds, cache, position_offset) if position_offset else step(inputs_embeds, cache)), cache
    extra: dict[str, Any] = {}
    if position_offset:
        past = int(cache.get_seq_length()) if cache is not None else 0
        n = int(inputs_embeds.shape[1])
        extra["position_ids"] = (torch.arange(n, device=inputs_embeds.device) + past + position_offset)[None]
    out = decoder(inputs_embeds=inputs_embeds, **cache_kwargs(cache), return_dict=True, **extra)
    return out.last_hidden_state[:, -1:], output_cache(out)


# ---- applicability ----------------------------------------------------------------------------------------
_PLANS: weakref.WeakKeyDictionary[nn.Module, LeanStep] = weakref.WeakKeyDictionary()


def _lean_step(decoder: nn.Module, embeds: torch.Tensor, cache: Any) -> LeanStep | None:
    if embeds.shape[0] != 1 or embeds.shape[1] != 1 or cache is None or torch.is_grad_enabled():
        return None
    m = mode()
    if m == "off" or (m == "cpu" and embeds.device.type != "cpu") or decoder.training or _global_hooks():
        return None
    step = _PLANS.get(decoder)
    if step is None or not step.current():
        step = LeanStep.build(decoder)  # a refusal is not kept: a removed hook or a swapped layer may change it
        if step is None:
            _PLANS.pop(decoder, None)
            return None
        _PLANS[decoder] = step
    return step if step.takes(cache) else None


def _global_hooks() -> bool:
    """Hooks registered for every module (`register_module_forward_hook`): the lean step would skip them."""
    from torch.nn.modules import module as torch_module

    return bool(torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks)


def _norm(module: nn.Module) -> tuple[torch.Tensor, float] | None:
    """(weight, eps) of a transformers RMSNorm (weight · normalised x), else None."""
    if not type(module).__name__.endswith("RMSNorm") or module._forward_hooks or module._forward_pre_hooks:
        return None
    eps = getattr(module, "variance_epsilon", getattr(module, "eps", None))
    weight = getattr(module, "weight", None)
    return (weight, float(eps)) if isinstance(weight, torch.Tensor) and eps is not None else None


def _rms(x: torch.Tensor, norm: tuple[torch.Tensor, float]) -> torch.Tensor:
    return decode_ops.rms_norm(x, norm[0], norm[1])


class _Projection:
    """Linear layers reading the same input (q/k/v, gate/up or one alone), their outputs side by side:
    one C call where every layer runs on the low-bit kernel, else each layer's own forward."""

    def __init__(self, mods: Sequence[nn.Module]):
        from ..quant import cpu_kernels

        self.mods = tuple(mods)
        self.kernels = tuple(getattr(m, "_lowbit", None) for m in self.mods)
        # the C call, made without the module call around it: the layer's own kernel, or one for the group
        self.group: cpu_kernels.LowBitGemvGroup | cpu_kernels.LowBitGemv | None = None
        if all(k is not None for k in self.kernels):
            kernels = list(self.kernels)
            self.group = kernels[0] if len(kernels) == 1 else cpu_kernels.LowBitGemvGroup(kernels)
        self.plain = tuple(type(m) is nn.Linear for m in self.mods)

    def current(self) -> bool:
        return all(getattr(m, "_lowbit", None) is k for m, k in zip(self.mods, self.kernels))

    def gemvs(self) -> list[Any]:
        """The low-bit kernels of these layers in output order ([] where a layer has none)."""
        return list(self.kernels) if self.group is not None else []  # a group: every layer has its kernel

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.group is not None and x.device.type == "cpu":
            y = self.group(x.reshape(1, -1))
            return y if y.dtype == x.dtype else y.to(x.dtype)
        outs = [F.linear(x, m.weight, m.bias) if plain else m(x) for m, plain in zip(self.mods, self.plain)]
        return outs[0].reshape(1, -1) if len(outs) == 1 else torch.cat([o.reshape(1, -1) for o in outs], dim=-1)


class _Layer:
    """One decoder layer's parts, as found when the plan was made (compared on every step)."""

    def __init__(self, layer: nn.Module):
        attn, mlp = layer.self_attn, layer.mlp
        head_norms = [attn.q_norm, attn.k_norm] if hasattr(attn, "q_norm") else []  # Qwen3
        norms = [layer.input_layernorm, layer.post_attention_layernorm, *head_norms]
        # the dicts that replacing a submodule or a norm's weight changes, with what they held
        self.snapshot = _snapshot([m._modules for m in (layer, attn, mlp)] + [n._parameters for n in norms])
        found = [_norm(n) for n in norms]
        if None in found:
            raise NotImplementedError("an unknown norm")
        self.norm1, self.norm2 = found[0], found[1]
        self.q_norm, self.k_norm = (found[2], found[3]) if head_norms else (None, None)
        self.qkv = _Projection((attn.q_proj, attn.k_proj, attn.v_proj))
        self.o = _Projection((attn.o_proj,))
        self.gate_up = _Projection((mlp.gate_proj, mlp.up_proj))
        self.down = _Projection((mlp.down_proj,))
        self.heads = attn.q_proj.out_features // attn.head_dim
        self.kv_heads = attn.k_proj.out_features // attn.head_dim
        self.head_dim, self.scaling = int(attn.head_dim), float(attn.scaling)
        self.inter = mlp.gate_proj.out_features
        self.fused = _FusedLayer.build(self)

    def current(self) -> bool:
        return (_unchanged(self.snapshot) and self.qkv.current() and self.o.current() and self.gate_up.current()
                and self.down.current() and (self.fused is None or self.fused.current()))


class _FusedLayer:
    """The whole layer as one C call (`decode_ops.c`'s `decode_layer`): where all seven projections run on the
    low-bit kernel and the norms are float32, the ~12 PyTorch and ctypes calls a layer (~0.1-0.2 ms at batch 1,
    ~4 ms a token over 24 layers) become one. Same operations in the same order as `LeanStep._layer`."""

    def __init__(self, p: _Layer, lib: ctypes.CDLL, gemv: int):
        from ..quant import cpu_kernels

        parts = (p.qkv.gemvs(), p.o.gemvs(), p.gate_up.gemvs(), p.down.gemvs())
        self.gemvs = [g for part in parts for g in part]
        self.seen = [g.current_layer() for g in self.gemvs]
        ptr = ctypes.POINTER(cpu_kernels.Layer)
        self.arrays = [(ptr * len(part))(*(g.current_layer() for g in part)) for part in parts]
        address = lambda t: None if t is None else t.data_ptr()  # noqa: E731
        q_norm, k_norm = p.q_norm or (None, 0.0), p.k_norm or (None, 0.0)
        self.norms = (p.norm1[0], p.norm2[0], q_norm[0], k_norm[0])  # kept alive with the struct
        self.struct = decode_ops.DecodeLayer(
            gemv, *(ctypes.addressof(a) for a in self.arrays), *(address(t) for t in self.norms),
            p.norm1[1], p.norm2[1], q_norm[1], k_norm[1], p.scaling, len(parts[0]), len(parts[2]),
            p.norm1[0].shape[0], p.heads, p.kv_heads, p.head_dim, p.inter)
        self.ptr = ctypes.pointer(self.struct)
        self.scratch = int(lib.decode_layer_scratch(self.ptr))
        self._fn = lib.decode_layer

    @classmethod
    def build(cls, p: _Layer) -> _FusedLayer | None:
        from ..quant import cpu_kernels

        if any(proj.group is None for proj in (p.qkv, p.o, p.gate_up, p.down)):
            return None
        norms = [n[0] for n in (p.norm1, p.norm2, p.q_norm, p.k_norm) if n is not None]
        if not all(n.dtype == torch.float32 and n.device.type == "cpu" and n.is_contiguous() for n in norms):
            return None
        lib = decode_ops.layer_library()
        gemv = cpu_kernels.gemv_many_address(p.qkv.gemvs()[0].level)
        if lib is None or gemv is None or p.head_dim > 1024:
            return None
        return cls(p, lib, gemv)

    def current(self) -> bool:
        return all(g.current_layer() is s for g, s in zip(self.gemvs, self.seen))

    def __call__(self, cl: Any, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, scratch: torch.Tensor,
                 threads: int) -> bool:
        """One token through the layer: `h` (float32, contiguous) updated in place, its key and value appended
        to the cache layer `cl`. False (nothing done) where the cache is not float32 rows of head_dim."""
        if cl.keys.dtype != torch.float32 or cl.values.dtype != torch.float32:
            return False
        room, t = _room(cl, torch.float32)  # made here: contiguous rows of head_dim floats
        rc = self._fn(self.ptr, h.data_ptr(), cos.data_ptr(), sin.data_ptr(), room[0].data_ptr(),
                      room[1].data_ptr(), room[0].stride(1), room[1].stride(1), t, scratch.data_ptr(), threads)
        if rc:
            raise MemoryError(f"the fused decode layer failed (code {rc}): no memory for its scratch or scores")
        cl.keys, cl.values = room[0][:, :, : t + 1], room[1][:, :, : t + 1]
        return True


def _snapshot(dicts: list[dict]) -> list[tuple[dict, tuple]]:
    return [(d, tuple(d.values())) for d in dicts]


def _unchanged(snapshot: list[tuple[dict, tuple]]) -> bool:
    """Whether each dict still holds the very objects it held (identity: a tensor's == is elementwise)."""
    return all(len(d) == len(held) and all(a is b for a, b in zip(d.values(), held)) for d, held in snapshot)


class LeanStep:
    """The one-token forward of one decoder (see the module docstring); `build` returns None where it does
    not apply."""

    def __init__(self, decoder: nn.Module, layers: list[_Layer], final_norm: tuple[torch.Tensor, float]):
        # no reference to `decoder` itself: plans are values of a weak-keyed dict keyed by it
        self.layers, self.final_norm, self.rotary = layers, final_norm, decoder.rotary_emb
        #: floats of scratch the fused layers need (0: no layer runs fused)
        self.scratch = max((p.fused.scratch for p in layers if p.fused is not None), default=0)
        self.snapshot = _snapshot([decoder._modules, decoder.layers._modules, decoder.norm._parameters])

    @classmethod
    def build(cls, decoder: nn.Module) -> LeanStep | None:
        try:
            cfg = decoder.config
            if getattr(cfg, "hidden_act", "silu") != "silu" or getattr(cfg, "use_sliding_window", False):
                raise NotImplementedError(f"activation {cfg.hidden_act} or a sliding window")
            if any(t != "full_attention" for t in (getattr(cfg, "layer_types", None) or [])):
                raise NotImplementedError("sliding-window layers")
            layers = list(decoder.layers)[: cfg.num_hidden_layers]
            for i, layer in enumerate(layers):
                if type(layer).__name__ not in SUPPORTED:
                    raise NotImplementedError(f"layer class {type(layer).__name__}")
                if any(m._forward_hooks or m._forward_pre_hooks or hasattr(m, "_hf_hook") for m in layer.modules()):
                    raise NotImplementedError("hooks on a layer")
                if type(layer.mlp.act_fn).__name__ not in _SILU or getattr(layer.self_attn, "layer_idx", i) != i:
                    raise NotImplementedError("activation or layer index")
            final = _norm(decoder.norm)
            if final is None or not hasattr(decoder, "rotary_emb"):
                raise NotImplementedError("final norm or rotary embedding")
            return cls(decoder, [_Layer(layer) for layer in layers], final)
        except (AttributeError, NotImplementedError, ValueError) as err:
            logger.debug("lean decode step not used for %s: %s", type(decoder).__name__, err)
            return None

    def current(self) -> bool:
        """Whether the decoder still holds the modules (and kernels) this plan was made from: `quantize_` or
        a weight reload after the first answer replaces them."""
        return _unchanged(self.snapshot) and all(layer.current() for layer in self.layers)

    def takes(self, cache: Any) -> bool:
        from transformers.cache_utils import DynamicCache, DynamicLayer

        if type(cache) is not DynamicCache or getattr(cache, "offloading", False):
            return False
        kv = cache.layers
        return (len(kv) == len(self.layers)
                and all(type(c) is DynamicLayer and c.is_initialized and c.keys is not None and c.keys.numel()
                        for c in kv))

    def __call__(self, embeds: torch.Tensor, cache: Any, position_offset: int = 0) -> torch.Tensor:
        kv = cache.layers
        past = kv[0].keys.shape[-2]
        h = embeds
        positions = torch.tensor([[past + position_offset]], device=h.device)
        cos, sin = self.rotary(h, positions)  # any rope type transformers implements
        cos, sin = cos.reshape(-1), sin.reshape(-1)
        half = cos.shape[0] // 2
        # rotate_half(x)·sin == roll(x, half)·(sin with its first half negated)
        sin = torch.cat((-sin[:half], sin[half:]))
        fused = (self.scratch > 0 and h.dtype == torch.float32 and h.device.type == "cpu"
                 and cos.dtype == torch.float32 and past + 1 < decode_ops.LONG_CONTEXT)
        if fused:  # our own copy: the fused layers update it in place
            h = h.reshape(1, 1, -1).clone(memory_format=torch.contiguous_format)
            cos, scratch, threads = cos.contiguous(), torch.empty(self.scratch), torch.get_num_threads()
        for p, cl in zip(self.layers, kv):
            if not (fused and p.fused is not None and p.fused(cl, h, cos, sin, scratch, threads)):
                h = self._layer(p, cl, h, cos, sin)
        return _rms(h, self.final_norm)

    @staticmethod
    def _layer(p: _Layer, cl: Any, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        d, nh, nkv = p.head_dim, p.heads, p.kv_heads
        y = p.qkv(_rms(h, p.norm1)).view(-1)
        qk = y[: (nh + nkv) * d].view(nh + nkv, d)
        if p.q_norm is not None:
            qk = torch.cat((_rms(qk[:nh], p.q_norm), _rms(qk[nh:], p.k_norm)))
        keys, values = _store(cl, qk, y[(nh + nkv) * d:].view(nkv, d), cos, sin)  # qk: rotated in place
        att = decode_ops.attend(qk[:nh], keys, values, p.scaling)
        h = h + p.o(att).view_as(h)
        gu = p.gate_up(_rms(h, p.norm2))
        return h + p.down(decode_ops.swiglu(gu, p.inter)).view_as(h)


def _store(cl: Any, qk: torch.Tensor, v: torch.Tensor, cos: torch.Tensor,
           sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE on `qk` in place, then append the token's keys and values (KV, d) to a `DynamicLayer`: in spare
    rows when its tensors are views of a buffer made here, else into a new buffer with room to grow. The
    layer then holds views of the first T+1 rows, which every other cache operation (crop, copy, cat) takes
    as ordinary tensors."""
    room, t = _room(cl, v.dtype)
    decode_ops.rope_store(qk, v, cos, sin, room[0], room[1], t)
    cl.keys, cl.values = room[0][:, :, : t + 1], room[1][:, :, : t + 1]
    return cl.keys, cl.values


def _room(cl: Any, dtype: torch.dtype) -> tuple[tuple[torch.Tensor, torch.Tensor], int]:
    """The buffers holding the cache layer `cl`'s T rows with room for row T, and T: the ones made here
    before, or new ones (the cache copied in) where they are full or `cl` no longer holds views of them."""
    keys, values = cl.keys, cl.values
    t = keys.shape[-2]
    room = getattr(cl, "_videollm_kv", None)
    if (room is None or room[0].shape[-2] <= t or keys.data_ptr() != room[0].data_ptr()
            or values.data_ptr() != room[1].data_ptr() or keys.stride() != room[0].stride()
            or keys.dtype != dtype):
        cap = t + max(KV_GROWTH, t // 8)
        room = (keys.new_empty(keys.shape[:-2] + (cap, keys.shape[-1])),
                values.new_empty(values.shape[:-2] + (cap, values.shape[-1])))
        room[0][:, :, :t].copy_(keys)
        room[1][:, :, :t].copy_(values)
        cl._videollm_kv = room
    return room, t


__all__ = ["KV_GROWTH", "LeanStep", "SUPPORTED", "forward_last", "mode"]
