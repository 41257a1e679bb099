"""`QuantLinear`: an `nn.Linear` replacement holding packed integer weights and per-row/group scales.

Its slow path (unpack → dequantize → `F.linear`) works for every scheme on every device and is the
oracle the fast paths are tested against. int3, int2, ternary and int1 use `cpu_kernels` on CPU (packed
bytes decoded in registers), else a PyTorch lookup path. Where that kernel has its int8 path (every SIMD
level: AVX-512 VNNI, AVX-VNNI, AVX2, NEON; `cpu_kernels`), int4 and int8 use it too: at batch 1 it streams
their weights about twice as fast as PyTorch's weight-only
kernels, and int8 weights meet their activations as two int8 planes (~15 bits, closer to exact than
bfloat16). Elsewhere int8 and int4 use PyTorch's own kernels (`aten::_weight_int8pack_mm`,
`aten::_weight_int4pack_mm_for_cpu`, the ones optimum-quanto dispatches to) in bfloat16, casting
activations in and out, so a float32 model keeps its float32 interfaces.

State dicts always hold the portable layout (`qweight` packed as in `packing`, `scale` (N, G) bfloat16,
for asymmetric int4 `zero` (N, G) bfloat16, optional `bias`); kernel layouts are derived on load, since
they depend on the CPU's vector width. Asymmetric int4 is value = (code - 8)·scale + zero, which is
exactly what the CPU int4 kernel computes from its `scales_and_zeros`.
"""
from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import cpu_kernels, packing
from .paretoq import SCHEMES, dequantize_codes, effective_group, padded_k, quantize_codes, quantize_int4_asym

logger = logging.getLogger(__name__)

#: activations with more rows than this take the dequantize + dense GEMM path (prefill, vision encoder),
#: where the weight unpack is amortised and float GEMMs beat the weight-only kernels
DENSE_ROWS = 32
_INT4_GROUPS = (32, 64, 128, 256)
_N_ALIGN = 64


@lru_cache(maxsize=16)
def _value_table(width: int | str, offset: float, dtype: torch.dtype) -> torch.Tensor:
    """(256, per_byte) signed level indices (code - offset) per byte, shared by all layers of a scheme."""
    return (packing.byte_table(width).float() - offset).to(dtype)  # exact: small integers and halves


class QuantLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, scheme: str, group_size: int | None = None,
                 bias: bool = False, kernel: str = "auto", compute_dtype: torch.dtype = torch.bfloat16,
                 device: torch.device | str | None = None, zero_point: bool = False):
        super().__init__()
        if scheme not in SCHEMES:
            raise ValueError(f"unknown scheme {scheme!r}")
        if zero_point and scheme != "int4":
            raise ValueError(f"zero points are implemented for int4 only, not {scheme}")
        self.in_features, self.out_features, self.scheme = in_features, out_features, scheme
        self.spec = SCHEMES[scheme]
        self.group = effective_group(in_features, None if scheme == "int8" else group_size)
        self.k_padded = padded_k(in_features, self.group)
        self.compute_dtype = compute_dtype
        self.requested_kernel = kernel
        self.kernel = "dequant"
        n_groups = self.k_padded // self.group
        cols = packing.packed_cols(self.k_padded, self.spec.width)
        dt = torch.int8 if scheme == "int8" else torch.uint8
        self.packed_shape = (out_features, cols)
        self.register_buffer("qweight", torch.zeros(out_features, cols, dtype=dt, device=device))
        self.register_buffer("scale", torch.ones(out_features, n_groups, dtype=torch.bfloat16, device=device))
        self.register_buffer("zero", torch.zeros(out_features, n_groups, dtype=torch.bfloat16, device=device)
                             if zero_point else None)
        self.register_buffer("bias", torch.zeros(out_features, device=device) if bias else None)
        #: a kernel whose self-check these exact weights already passed with this kernel build (the quantized-
        #: weights cache replays the choice made when they were saved); taken once, at the next `set_packed`
        self.checked_kernel: str | None = None
        self._kweight: torch.Tensor | None = None  # kernel layout (int4, int3, ternary), replaces qweight in memory
        self._kscale: torch.Tensor | None = None
        self._lowbit: cpu_kernels.LowBitGemv | None = None

    # ---- construction ------------------------------------------------------------------------------------
    @classmethod
    def from_linear(cls, linear: nn.Linear, scheme: str, group_size: int | None = None, kernel: str = "auto",
                    alpha: torch.Tensor | None = None, compute_dtype: torch.dtype = torch.bfloat16,
                    zero_point: bool = False, clip_search: bool = False) -> QuantLinear:
        """Quantize a float linear layer.

        Symmetric: ParetoQ's alpha initialisation unless `alpha` is given. `zero_point` (int4 only):
        asymmetric min/max scale + zero per group, optionally with the clipping search.
        """
        w = linear.weight.detach()
        if zero_point and alpha is not None:
            raise ValueError("a learned alpha is symmetric; it cannot be combined with zero_point")
        q = cls(linear.in_features, linear.out_features, scheme, group_size, bias=linear.bias is not None,
                kernel=kernel, compute_dtype=compute_dtype, device=w.device, zero_point=zero_point)
        zero = None
        if zero_point:
            codes, scale, zero = quantize_int4_asym(w, q.group, clip_search=clip_search)
        else:
            codes, scale = quantize_codes(w, scheme, q.group, alpha=alpha)
        bias = linear.bias.detach().float() if linear.bias is not None else None
        q.set_packed(packing.pack(codes, q.spec.width), scale.to(torch.bfloat16), bias, zero=zero)
        return q

    def set_packed(self, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None,
                   zero: torch.Tensor | None = None) -> None:
        """Install portable packed weights, then pick the fastest kernel these shapes and this device allow."""
        if tuple(qweight.shape) != self.packed_shape:
            raise ValueError(f"packed weight shape {tuple(qweight.shape)} != {self.packed_shape}")
        if (zero is None) != (self.zero is None):
            raise ValueError("zero points given to a symmetric layer or missing for an asymmetric one")
        # fresh copies: tensors read from a safetensors file can sit at unaligned offsets of its mapping,
        # which the ATen int8 kernel does not survive (segfault); torch's allocator aligns to 64 bytes
        self.qweight = qweight.clone(memory_format=torch.contiguous_format)
        self.scale = scale.to(torch.bfloat16).clone(memory_format=torch.contiguous_format)
        if zero is not None:
            self.zero = zero.to(torch.bfloat16).clone(memory_format=torch.contiguous_format)
        if bias is not None:
            self.bias = bias.to(self.qweight.device, torch.float32)
        self._kweight = self._kscale = self._lowbit = None
        self.kernel = "dequant"
        self._select_kernel()

    def _select_kernel(self) -> None:
        """`kernel="auto"`: the fastest path here; "int4_cpu" / "lowbit" ask for that kernel first."""
        want = self.requested_kernel
        if want == "dequant" or self.qweight.device.type != "cpu":
            return
        checked, self.checked_kernel = self.checked_kernel, None
        if checked is not None and self._replay(checked):
            return
        if self.scheme == "int8":
            if want != "int8_cpu" and cpu_kernels.int8_path():  # ~2x faster a layer at batch 1 (bench/RESULTS.md)
                self._try("lowbit", self._prepare_lowbit)
            if self.kernel == "dequant":
                self._try("int8_cpu", self._prepare_int8)
        elif self.scheme == "int4" and self.group in _INT4_GROUPS and want != "lowbit" and (
                want == "int4_cpu" or not cpu_kernels.int8_path()):
            # on its int8 path our kernel streams int4 ~2x (VNNI) to ~45x (AVX2) faster than ATen's at batch 1
            self._try("int4_cpu", self._prepare_int4)
        if self.kernel == "dequant" and self.scheme != "int8":
            self._try("lowbit", self._prepare_lowbit)
        if self.kernel == "dequant" and self.scheme == "int4" and self.group in _INT4_GROUPS:
            self._try("int4_cpu", self._prepare_int4)
        if self.kernel == "dequant" and self.scheme not in ("int8", "int3"):
            self._try("lut", self._prepare_lut)

    def _replay(self, name: str) -> bool:
        """Prepare kernel `name` without the self-check, which these weights passed with this kernel build when
        they were quantized (`quant.weights_cache`: the build is part of its key); False when it cannot."""
        fits = {"lowbit": True, "int4_cpu": self.scheme == "int4" and self.group in _INT4_GROUPS,
                "int8_cpu": self.scheme == "int8", "lut": self.scheme not in ("int8", "int3"), "dequant": True}
        if not fits.get(name, False):  # a name this layer's own selection could not have chosen
            return False
        if name == "dequant":
            return True
        prepare = {"lowbit": self._prepare_lowbit, "int4_cpu": self._prepare_int4, "int8_cpu": self._prepare_int8,
                   "lut": self._prepare_lut}[name]
        try:
            prepare()
        except (NotImplementedError, RuntimeError) as err:
            logger.debug("%s kernel not replayed for %dx%d: %s", name, self.out_features, self.in_features, err)
            self._fall_back()
            return False
        self.kernel = name
        return True

    def _prepare_lowbit(self) -> None:
        """The C kernel reads our packed rows when groups start on byte boundaries; ternary is re-packed as
        2-bit codes for it (1.6 bits a weight on disk, 2 in memory: base-3 bytes do not decode with shifts)."""
        if self.scheme == "int8":
            return self._prepare_lowbit_int8()
        width, groups = self.spec.width, self.scale.shape[1]
        per = 8 if width == 3 else 4 if width == "ternary" else packing.PER_BYTE[width]
        if groups > 1 and self.group % per:
            raise NotImplementedError(f"group {self.group} does not start on a byte for {self.scheme}")
        weight, bits = self.qweight, width
        if width == "ternary":
            weight, bits = packing.pack_int2(packing.unpack_ternary(self.qweight, self.k_padded)), 2
        self._lowbit = cpu_kernels.LowBitGemv(bits, weight, self.scale, self.zero, self.in_features, self.group,
                                              self.spec.offset, bias=self.bias)
        if width in ("ternary", 3):  # the kernel's layout (int3: converted by LowBitGemv) is the only copy
            self._kweight = weight if width == "ternary" else self._lowbit.weight
            self.qweight = self.qweight.new_empty(0)

    #: activation group sizes the int8 weights' kernel path may round in (the smallest giving <= 63 groups)
    _INT8_ACT_GROUPS = (128, 256, 512)

    def _prepare_lowbit_int8(self) -> None:
        """int8 weights on the kernel's int8 path: codes + 128 as unsigned bytes (offset 128), in place of the
        signed copy; the row's one scale is repeated per activation group (128 columns, wider for wide layers),
        the unit in which the kernel rounds activations to two int8 planes (`cpu_kernels.int8x2_reference`)."""
        if not cpu_kernels.int8_path():
            raise NotImplementedError("int8 weights take the low-bit kernel only on its int8 (SIMD) path")
        k = self.in_features
        group = next((g for g in self._INT8_ACT_GROUPS if -(-k // g) <= 63), None)
        if group is None:
            raise NotImplementedError(f"{k} input features need more than 63 activation groups")
        groups = -(-k // group)
        codes = self.qweight[:, :k].to(torch.int16) + 128
        weight = F.pad(codes, (0, groups * group - k), value=128).to(torch.uint8).contiguous()
        kernel = cpu_kernels.LowBitGemv(8, weight, self.scale.expand(-1, groups), None, k, group, 128.0,
                                        bias=self.bias)
        if not kernel.int8_activations:
            raise NotImplementedError("no lane map for these groups")
        self._lowbit, self._kweight = kernel, weight
        self.qweight = self.qweight.new_empty(0)

    def _prepare_lut(self) -> None:
        """Small-batch path without a kernel: bytes → values by one gather in bfloat16, then a GEMV."""
        self._kscale = _value_table(self.spec.width, self.spec.offset, self.compute_dtype)

    def _lut_weight(self) -> torch.Tensor:
        n, g = self.out_features, self.scale.shape[1]
        v = F.embedding(self.qweight.int(), self._kscale).reshape(n, -1)[:, : self.k_padded]
        w = v.view(n, g, -1) * self.scale.to(self.compute_dtype).unsqueeze(-1)
        if self.zero is not None:
            w = w + self.zero.to(self.compute_dtype).unsqueeze(-1)
        return w.view(n, -1)[:, : self.in_features]

    #: rows the kernel self-check compares (all of a small layer; a sample of a large one such as the LM head,
    #: whose float32 reference alone would take 0.5 GB)
    PROBE_ROWS = 512

    def _try(self, name: str, prepare: Any) -> None:
        try:
            probe = torch.randn(1, self.in_features, generator=torch.Generator().manual_seed(0))
            rows = torch.linspace(0, self.out_features - 1, min(self.out_features, self.PROBE_ROWS)).long()
            rows = torch.unique(rows)
            want = F.linear(probe, self.dequantize(torch.float32, rows=rows),
                            None if self.bias is None else self.bias[rows])
            prepare()
            self.kernel = name
            got = self._kernel_forward(probe)[:, rows]
            tol = 2e-2 * float(want.abs().max()) + 1e-6  # bfloat16 / int8-rounded activations in the kernels
            if not torch.allclose(got, want, rtol=2e-2, atol=tol):  # never trust a fast path blindly
                raise RuntimeError(f"kernel disagrees with the reference by {float((got - want).abs().max()):.3g}")
        except NotImplementedError as err:  # shapes/CPU the kernel does not take
            logger.debug("%s kernel unavailable for %dx%d: %s", name, self.out_features, self.in_features, err)
            self._fall_back()
        except RuntimeError as err:  # includes a kernel that disagrees, or no memory to prepare it
            logger.info("%s kernel refused for %dx%d (%s): using the slower path", name, self.out_features,
                        self.in_features, err)
            self._fall_back()

    def _fall_back(self) -> None:
        if self._kweight is not None and not self.qweight.numel():
            self.qweight = self._unpacked_portable()
        self.kernel = "dequant"
        self._kweight = self._kscale = self._lowbit = None

    def _prepare_int8(self) -> None:
        """`_weight_int8pack_mm` (torch 2.13, AVX-512) reads out of bounds when K is not a multiple of 16: garbage
        or a segfault for batches > 1 (K = 200 here). Hold the weight with zero columns up to a multiple of 16
        (the only copy: `codes`/`portable_qweight` slice them off) and pad the activations to match."""
        self._kscale = self.scale.reshape(-1).to(self.compute_dtype)
        pad = -self.in_features % 16
        if pad:
            self.qweight = F.pad(self.qweight, (0, pad))

    def _prepare_int4(self) -> None:
        n = self.out_features
        n_pad = -(-n // _N_ALIGN) * _N_ALIGN
        codes = packing.unpack_int4(self.qweight, self.k_padded)
        scale = self.scale.float()
        zero = self.zero.float() if self.zero is not None else torch.zeros_like(scale)
        if n_pad != n:  # the kernel's row blocks: pad with zero-valued rows, sliced off after the matmul
            codes = F.pad(codes, (0, 0, 0, n_pad - n), value=8)
            scale, zero = F.pad(scale, (0, 0, 0, n_pad - n)), F.pad(zero, (0, 0, 0, n_pad - n))
        self._kweight = packing.to_cpu_int4_kernel(codes)
        # (G, N, 2): the kernel computes (code - 8)·scale + zero, our convention exactly
        sz = torch.stack((scale.t(), zero.t()), dim=-1)
        self._kscale = sz.to(torch.bfloat16).contiguous()
        self._n_pad = n_pad
        if packing.from_cpu_int4_kernel(self._kweight, n_pad, self.k_padded)[:n].equal(codes[:n]):
            self.qweight = self.qweight.new_empty(0)  # the kernel layout is now the only copy
        else:  # cannot invert this CPU's layout: keep the portable copy for saving
            raise NotImplementedError("unknown CPU int4 layout")

    def _unpacked_portable(self) -> torch.Tensor:
        return packing.pack(self.codes(), self.spec.width)

    # ---- weights -----------------------------------------------------------------------------------------
    def portable_qweight(self) -> torch.Tensor:
        if self._kweight is not None:
            return self._unpacked_portable()
        if self.qweight.shape[1] != self.packed_shape[1]:  # int8 held with padded columns
            return self.qweight[:, : self.packed_shape[1]].contiguous()
        return self.qweight

    def codes(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Unsigned integer codes (N, Kp), or only those of `rows` (1-D indices) without decoding the rest."""
        if self._kweight is not None and self.scheme == "int8":  # the kernel's unsigned bytes, code + 128
            w = self._kweight if rows is None else self._kweight[rows]
            return w[:, : self.k_padded].to(torch.int16).sub_(128)  # int16: one pass less than int8 here
        if self._kweight is not None and self.spec.width == "ternary":  # the kernel's 2-bit layout
            return packing.unpack_int2(self._kweight if rows is None else self._kweight[rows], self.k_padded)
        if self._kweight is not None and self.spec.width == 3:  # the kernel's int3 layout
            return packing.from_int3_kernel(self._kweight if rows is None else self._kweight[rows], self.k_padded)
        if self._kweight is not None:
            if rows is None:
                return packing.from_cpu_int4_kernel(self._kweight, self._n_pad, self.k_padded)[: self.out_features]
            return packing.rows_from_cpu_int4_kernel(self._kweight, self._n_pad, self.k_padded, rows)
        q = self.qweight if rows is None else self.qweight[rows]
        return packing.unpack(q, self.spec.width, self.k_padded)

    def dequantize(self, dtype: torch.dtype = torch.float32, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The float weight (N, K) these codes stand for (the reference path); only `rows` if given."""
        if self._lowbit is not None and rows is None and dtype == torch.float32:  # prefill: one C pass
            w = self._lowbit.dequantize()
            if w is not None:
                return w
        scale = self.scale if rows is None else self.scale[rows]
        zero = self.zero if rows is None or self.zero is None else self.zero[rows]
        if self._kweight is not None and self.scheme == "int8":  # prefill's path: two passes, as from int8 codes
            w = (self._kweight if rows is None else self._kweight[rows])[:, : self.in_features]
            return w.to(dtype).sub_(128).mul_(scale.to(dtype))  # (code + 128) - 128 is exact in any float
        return dequantize_codes(self.codes(rows), scale, self.scheme, dtype, zero=zero)[:, : self.in_features]

    # ---- forward -----------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._lowbit is not None and x.device.type == "cpu" and x.numel() <= DENSE_ROWS * x.shape[-1]:
            return self._lowbit(x)  # the decode hot path: bias, shape and dtype handled in one call
        rows = x.numel() // max(1, x.shape[-1])
        if self.kernel != "dequant" and rows <= DENSE_ROWS and x.device.type == "cpu":
            return self._kernel_forward(x)
        return self.forward_reference(x)

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        w = self.dequantize(torch.float32).to(x.dtype)
        b = self.bias.to(x.dtype) if self.bias is not None else None
        return F.linear(x, w, b)

    def _kernel_forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        if self.kernel == "lowbit":  # float activations as they are (no bfloat16 rounding), bias included
            return self._lowbit(x)
        x2 = x.reshape(-1, shape[-1]).to(self.compute_dtype)
        if self.kernel == "int8_cpu":
            if self.qweight.shape[1] != self.in_features:
                x2 = F.pad(x2, (0, self.qweight.shape[1] - self.in_features))
            y = torch.ops.aten._weight_int8pack_mm(x2.contiguous(), self.qweight, self._kscale)
        elif self.kernel == "lut":
            y = F.linear(x2, self._lut_weight())
        else:
            if self.k_padded != self.in_features:
                x2 = F.pad(x2, (0, self.k_padded - self.in_features))
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2.contiguous(), self._kweight, self.group, self._kscale)
            if self._n_pad != self.out_features:
                y = y[:, : self.out_features]
        y = y.to(x.dtype)
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        return y.reshape(*shape[:-1], self.out_features)

    # ---- bookkeeping -------------------------------------------------------------------------------------
    def weight_bytes(self) -> int:
        """Bytes held for this layer's weights, scales and bias as it sits in memory."""
        tensors = [self.qweight, self.scale, self.zero, self.bias, self._kweight,
                   self._kscale if self.kernel == "int4_cpu" else None]
        if self._lowbit is not None and self._lowbit.scale.data_ptr() != self.scale.data_ptr():
            tensors.append(self._lowbit.scale)  # int8's per-row scales repeated per activation group
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        destination[prefix + "qweight"] = self.portable_qweight().detach()
        destination[prefix + "scale"] = self.scale.detach()
        if self.zero is not None:
            destination[prefix + "zero"] = self.zero.detach()
        if self.bias is not None:
            destination[prefix + "bias"] = self.bias.detach()

    def _load_from_state_dict(self, state_dict: dict, prefix: str, local_metadata: dict, strict: bool,
                              missing_keys: list, unexpected_keys: list, error_msgs: list) -> None:
        names = (["qweight", "scale"] + (["zero"] if self.zero is not None else [])
                 + (["bias"] if self.bias is not None else []))
        missing = [prefix + n for n in names if prefix + n not in state_dict]
        if missing:
            missing_keys.extend(missing)
            return
        dev = self.scale.device
        bias = state_dict[prefix + "bias"].to(dev) if self.bias is not None else None
        zero = state_dict[prefix + "zero"].to(dev) if self.zero is not None else None
        try:
            self.set_packed(state_dict[prefix + "qweight"].to(dev), state_dict[prefix + "scale"].to(dev), bias,
                            zero=zero)
        except ValueError as err:
            error_msgs.append(f"{prefix}: {err}")

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, scheme={self.scheme}, "
                f"group={self.group}, zero_point={self.zero is not None}, kernel={self.kernel}, "
                f"bias={self.bias is not None}")
