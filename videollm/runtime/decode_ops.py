"""The small ops of the lean decode step (RMSNorm, RoPE + KV write, one query's attention, SwiGLU's product):
one C call each in float32 on CPU (`runtime/csrc/decode_ops.c`, built like the low-bit kernel), PyTorch ops
otherwise.

At batch 1 their cost is dispatch: PyTorch's RMSNorm is ~20-40 µs a call and its CPU SDPA ~26 µs for one
query over 64 cached tokens (14 heads of 64), against a few µs and 18 µs here.
Results equal the PyTorch ops up to float summation order (tests/test_decode_step.py).
"""
from __future__ import annotations

import ctypes
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F

SOURCE = Path(__file__).with_name("csrc") / "decode_ops.c"


def _library() -> ctypes.CDLL | None:
    """The ops built for the instruction-set level in use (`cpu_kernels.requested_level`)."""
    from ..quant.cpu_kernels import requested_level

    return _library_at(requested_level())


@lru_cache(maxsize=8)
def _library_at(level: str) -> ctypes.CDLL | None:
    from ..quant.cpu_kernels import compiled_library

    lib = compiled_library(SOURCE, "decode ops", level)
    if lib is None:
        return None
    p, i, f, lng = ctypes.c_void_p, ctypes.c_int, ctypes.c_float, ctypes.c_long
    lib.decode_rms_norm.argtypes = [p, p, f, i, p]
    lib.decode_rms_norm.restype = None
    lib.decode_attend.argtypes = [p, p, p, lng, lng, i, i, i, i, f, p]
    lib.decode_attend.restype = i
    lib.decode_rope_store.argtypes = [p, p, p, p, i, i, i, p, p, lng, lng, lng]
    lib.decode_rope_store.restype = i
    lib.decode_swiglu.argtypes = [p, i, p]
    lib.decode_swiglu.restype = None
    lib.decode_layer.argtypes = [ctypes.POINTER(DecodeLayer), p, p, p, p, p, lng, lng, lng, p, i]
    lib.decode_layer.restype = i
    lib.decode_layer_scratch.argtypes = [ctypes.POINTER(DecodeLayer)]
    lib.decode_layer_scratch.restype = lng
    return lib


class DecodeLayer(ctypes.Structure):
    """`decode_layer_t` in the C source: one layer's kernels (arrays of the low-bit kernel's layer structs),
    norms and sizes, for `decode_layer`, which runs the whole layer in one call."""

    _fields_ = [("gemv", ctypes.c_void_p), ("qkv", ctypes.c_void_p), ("o", ctypes.c_void_p),
                ("gate_up", ctypes.c_void_p), ("down", ctypes.c_void_p), ("norm1", ctypes.c_void_p),
                ("norm2", ctypes.c_void_p), ("q_norm", ctypes.c_void_p), ("k_norm", ctypes.c_void_p),
                ("eps1", ctypes.c_float), ("eps2", ctypes.c_float), ("eps_q", ctypes.c_float),
                ("eps_k", ctypes.c_float), ("scaling", ctypes.c_float), ("n_qkv", ctypes.c_int),
                ("n_gate_up", ctypes.c_int), ("D", ctypes.c_int), ("H", ctypes.c_int), ("KV", ctypes.c_int),
                ("hd", ctypes.c_int), ("inter", ctypes.c_int)]


def layer_library() -> ctypes.CDLL | None:
    """The ops library whose `decode_layer` runs a whole layer (None without a C compiler)."""
    return _library()


def _f32(*tensors: torch.Tensor) -> bool:
    """Whether the C ops can take these tensors as they are."""
    return all(t.dtype == torch.float32 and t.device.type == "cpu" and t.is_contiguous() for t in tensors)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' RMSNorm (normalise in float32, back to x's dtype, times the weight) over the last dim."""
    lib = _library()
    if lib is not None and x.numel() == x.shape[-1] and _f32(x, weight):
        y = torch.empty_like(x)
        lib.decode_rms_norm(x.data_ptr(), weight.data_ptr(), eps, x.shape[-1], y.data_ptr())
        return y
    if x.dtype == torch.float32:
        return F.rms_norm(x, (x.shape[-1],), weight, eps)
    return weight * F.rms_norm(x.float(), (x.shape[-1],), None, eps).to(x.dtype)


#: cached tokens from which one query attends by PyTorch's matmul → softmax → matmul instead of the C loop.
#: Timed inside the decode step (the cache streams from memory; `bench/bench_decode_step.py`): the C loop is
#: ahead up to ~2k tokens, level around 3k, the matmuls a little ahead at 4k. CPU SDPA is slower than
#: both at every length measured.
LONG_CONTEXT = 3072


def attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float) -> torch.Tensor:
    """Softmax attention of one query per head: q (H, d) against keys/values (1, KV, T, d) → (1, H·d).
    Query head h reads kv head h // (H / KV), as transformers' `repeat_kv`."""
    nh, d = q.shape
    nkv, t = keys.shape[1], keys.shape[2]
    if t >= LONG_CONTEXT:
        scores = torch.matmul(q.view(nkv, nh // nkv, d), keys[0].transpose(1, 2)) * scale
        probs = torch.softmax(scores, -1, dtype=torch.float32).to(values.dtype)
        return torch.matmul(probs, values[0]).reshape(1, nh * d)
    lib = _library()
    if (lib is not None and _f32(q) and keys.dtype == values.dtype == torch.float32
            and keys.stride()[2:] == (d, 1) and values.stride()[2:] == (d, 1)):
        out = torch.empty(1, nh * d)
        if lib.decode_attend(q.data_ptr(), keys.data_ptr(), values.data_ptr(), keys.stride(1), values.stride(1), t,
                             nh, nkv, d, scale, out.data_ptr()):
            raise MemoryError(f"decode attention could not allocate its scores ({nh} heads x {t} tokens)")
        return out
    return F.scaled_dot_product_attention(q.view(1, nh, 1, d), keys, values, scale=scale,
                                          enable_gqa=nh != nkv).reshape(1, nh * d)


def rope_store(qk: torch.Tensor, values: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor,
               key_room: torch.Tensor, value_room: torch.Tensor, t: int) -> None:
    """RoPE on one token's heads, in place, then its keys and values into row `t` of the cache buffers.

    qk (H + KV, d): query heads, then key heads; values (KV, d); cos, sin_signed (d,): this position's
    cos and sin with the first half negated (x·cos + roll(x, d/2)·sin_signed == transformers'
    x·cos + rotate_half(x)·sin); key_room/value_room (1, KV, capacity, d)."""
    nkv, d = values.shape
    lib = _library()
    if lib is not None and d <= 1024 and _f32(qk, values, cos, sin_signed, key_room, value_room):
        if lib.decode_rope_store(qk.data_ptr(), values.data_ptr(), cos.data_ptr(), sin_signed.data_ptr(),
                                 qk.shape[0] - nkv, nkv, d, key_room.data_ptr(), value_room.data_ptr(),
                                 key_room.stride(1), value_room.stride(1), t):
            raise ValueError(f"head size {d} is over the C RoPE's 1024")
        return
    qk.copy_(torch.addcmul(qk * cos, qk.roll(d // 2, -1), sin_signed))
    key_room[0, :, t].copy_(qk[-nkv:])
    value_room[0, :, t].copy_(values)


def swiglu(gate_up: torch.Tensor, inter: int) -> torch.Tensor:
    """silu(gate) · up for one row holding the gate then the up projection: (1, 2I) → (1, I)."""
    lib = _library()
    if lib is not None and gate_up.numel() == 2 * inter and _f32(gate_up):
        out = torch.empty(1, inter)
        lib.decode_swiglu(gate_up.data_ptr(), inter, out.data_ptr())
        return out
    return F.silu(gate_up[:, :inter]) * gate_up[:, inter:]


__all__ = ["DecodeLayer", "LONG_CONTEXT", "attend", "layer_library", "rms_norm", "rope_store", "swiglu"]
