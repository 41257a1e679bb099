"""ParetoQ's weight quantizers (Liu et al., 2025; facebookresearch/ParetoQ `models/utils_quant.py`).

* ≤2-bit (`int2`, `ternary`): the stretched elastic quantizer (SEQ). Levels are spread evenly inside
  [-alpha, alpha] with no level at the clip boundary: 2-bit → {±0.25, ±0.75}·alpha (no zero), ternary →
  {-2/3, 0, 2/3}·alpha. Alpha starts at max|w|.
* 3–4-bit and 8-bit (`int3`, `int4`, `int8`): learned step size (LSQ), q = clamp(round(w/alpha), -2^(b-1),
  2^(b-1)-1), alpha starting at max|w| / (2^(b-1)-1).
* 1-bit (`int1`, binary): ParetoQ's sign quantizer, value = sign(w)·alpha with alpha starting at mean|w|
  (the least-squares scale for fixed signs). Packed codes cannot hold sign(0) = 0: an exact zero weight
  becomes +alpha once packed (the fake-quant keeps ParetoQ's 0). An all-zero row (or group) starts with
  alpha = 1e-5 where ParetoQ stores mean|w| = 0: ParetoQ's forward clamps alpha to the same 1e-5 before
  using it, so every value computed is the same; only the stored initial parameter differs, by 1e-5.

The learned-scale gradient is accumulated in float32 whatever the weights' dtype: ParetoQ builds its
clip masks with `.float()`, so in bfloat16 training the products and the sum are float32 and only the
final gradient is rounded to the parameter's dtype; doing the sum in bfloat16 gave about twice the error.

Both pass gradients straight through to the weights inside the clip range (STE) and give alpha LSQ's
gradient scaled by 1/sqrt(numel·Qp). Alpha is per output channel (ParetoQ) or, with `group_size`, per
group of input columns (as torchao's stretched/int4 configs do): `alpha` then has shape (N, K/g, 1).

The integer *codes* stored by `QuantLinear` are unsigned: value = (code - offset) · step · alpha.

Post-training int4 is asymmetric by default (`quantize_int4_asym`): per group a scale and a zero point in
the float domain, value = (code - 8) · scale + zero, initialised from the group's min/max. This is the
convention of PyTorch's tinygemm int4 kernels (`aten::_weight_int4pack_mm[_for_cpu]`, torchao's
`Int4WeightOnlyConfig`), so the fast kernels take it unchanged. QAT keeps LSQ's symmetric grid.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SchemeSpec:
    name: str
    bits: int  # ParetoQ's w_bits (0 = ternary)
    width: int | str  # storage width for `packing`
    levels: int  # number of codes
    offset: float  # value = (code - offset) * step * alpha
    step: float
    quantizer: str  # "lsq" | "seq"

    @property
    def qp(self) -> int:
        """ParetoQ's Qp used in the gradient scale: 2^(b-1)-1, at least 1."""
        return max(1, 2 ** (self.bits - 1) - 1) if self.bits > 1 else 1


SCHEMES: dict[str, SchemeSpec] = {
    "int8": SchemeSpec("int8", 8, 8, 256, 0.0, 1.0, "lsq"),  # codes are signed int8 themselves (offset 0)
    "int4": SchemeSpec("int4", 4, 4, 16, 8.0, 1.0, "lsq"),
    "int3": SchemeSpec("int3", 3, 3, 8, 4.0, 1.0, "lsq"),
    "int2": SchemeSpec("int2", 2, 2, 4, 1.5, 0.5, "seq"),
    "ternary": SchemeSpec("ternary", 0, "ternary", 3, 1.0, 2.0 / 3.0, "seq"),
    "int1": SchemeSpec("int1", 1, 1, 2, 0.5, 2.0, "sign"),  # codes 0/1 → -alpha/+alpha
}

SEQ_CLIP = 0.99
_ALPHA_MIN = 1e-5


def _seq_levels(bits: int) -> tuple[float, float]:
    """(n_levels, shift) of SEQ for 2-bit and ternary."""
    return (1.5, 0.0) if bits == 0 else (float(2 ** (bits - 1)), 0.5)


def _grad_scale(w: torch.Tensor, qp: int) -> float:
    return 1.0 / math.sqrt(w.numel() * qp)


class LsqQuant(torch.autograd.Function):
    """LSQ fake-quant (ParetoQ's `LsqBinaryTernaryExtension` for b ≥ 2)."""

    @staticmethod
    def forward(ctx, w: torch.Tensor, alpha: torch.Tensor, bits: int) -> torch.Tensor:  # type: ignore[override]
        qn, qp = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        alpha = torch.where(alpha > _ALPHA_MIN, alpha, torch.full_like(alpha, _ALPHA_MIN))
        ctx.save_for_backward(w, alpha)
        ctx.other = (qn, qp, _grad_scale(w, qp))
        return torch.clamp(torch.round(w / alpha), qn, qp) * alpha

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        w, alpha = ctx.saved_tensors
        qn, qp, gs = ctx.other
        x = w / alpha
        small, big = (x < qn).float(), (x > qp).float()  # float32 masks: the sum below runs in float32
        mid = 1.0 - small - big
        grad_alpha = ((small * qn + big * qp + mid * (torch.round(x) - x)) * g * gs).sum(-1, keepdim=True)
        return (mid * g).to(g.dtype), grad_alpha.reshape(alpha.shape).to(alpha.dtype), None


class StretchedElasticQuant(torch.autograd.Function):
    """SEQ fake-quant (ParetoQ's `StretchedElasticQuant`), bits 2 or 0 (ternary)."""

    @staticmethod
    def forward(ctx, w: torch.Tensor, alpha: torch.Tensor, bits: int) -> torch.Tensor:  # type: ignore[override]
        n_levels, shift = _seq_levels(bits)
        alpha = torch.where(alpha > _ALPHA_MIN, alpha, torch.full_like(alpha, _ALPHA_MIN))
        ctx.save_for_backward(w, alpha)
        ctx.other = (n_levels, shift, _grad_scale(w, max(1, 2 ** (bits - 1) - 1) if bits > 1 else 1))
        q = (torch.round(torch.clamp(w / alpha, -SEQ_CLIP, SEQ_CLIP) * n_levels - shift) + shift) / n_levels
        return q * alpha

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        w, alpha = ctx.saved_tensors
        n_levels, shift, gs = ctx.other
        x = w / alpha
        q = (torch.round(torch.clamp(x, -SEQ_CLIP, SEQ_CLIP) * n_levels - shift) + shift) / n_levels
        small, big = (x < -SEQ_CLIP).float(), (x > SEQ_CLIP).float()  # float32, as ParetoQ
        mid = 1.0 - small - big
        qp_ = (n_levels - shift) / n_levels
        grad_alpha = ((small * -qp_ + big * qp_ + mid * (q - x)) * g * gs).sum(-1, keepdim=True)
        return (mid * g).to(g.dtype), grad_alpha.reshape(alpha.shape).to(alpha.dtype), None


class SignQuant(torch.autograd.Function):
    """Binary fake-quant (ParetoQ's `LsqBinaryTernaryExtension` with 1 bit): sign(w)·alpha.

    Weights pass straight through inside |w| ≤ alpha; alpha's gradient is sum(sign(w)·g)/sqrt(numel).
    """

    @staticmethod
    def forward(ctx, w: torch.Tensor, alpha: torch.Tensor, bits: int) -> torch.Tensor:  # type: ignore[override]
        alpha = torch.where(alpha > _ALPHA_MIN, alpha, torch.full_like(alpha, _ALPHA_MIN))
        ctx.save_for_backward(w, alpha)
        ctx.gs = _grad_scale(w, 1)
        return w.sign() * alpha

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        w, alpha = ctx.saved_tensors
        x = w / alpha
        mid = 1.0 - (x < -1).float() - (x > 1).float()
        grad_alpha = (w.sign() * g * ctx.gs).sum(-1, keepdim=True)  # ParetoQ's 1-bit branch: in g's dtype
        return (mid * g).to(g.dtype), grad_alpha.reshape(alpha.shape).to(alpha.dtype), None


# ---- grouping --------------------------------------------------------------------------------------------

def effective_group(k: int, group_size: int | None) -> int:
    """Columns per scale: `group_size`, or the whole row when it is None/0 or not smaller than K."""
    if not group_size or group_size <= 0 or group_size >= k:
        return k
    return group_size


def padded_k(k: int, group: int) -> int:
    return -(-k // group) * group


def grouped(w: torch.Tensor, group: int) -> torch.Tensor:
    """(N, K) → (N, K/g, g), zero-padding K up to a multiple of g (zeros quantize to zero or the nearest level)."""
    n, k = w.shape
    kp = padded_k(k, group)
    if kp != k:
        w = torch.nn.functional.pad(w, (0, kp - k))
    return w.reshape(n, kp // group, group)


def init_alpha(w: torch.Tensor, scheme: str, group_size: int | None = None) -> torch.Tensor:
    """ParetoQ's alpha initialisation over each row (or group): (N, K/g, 1)."""
    spec = SCHEMES[scheme]
    wg = grouped(w.detach().float(), effective_group(w.shape[1], group_size))
    if spec.quantizer == "sign":
        return wg.abs().mean(dim=-1, keepdim=True).clamp_min(_ALPHA_MIN)
    amax = wg.abs().amax(dim=-1, keepdim=True)
    if spec.quantizer == "seq":
        alpha = amax
    else:
        alpha = amax / (2 ** (spec.bits - 1) - 1)
    return alpha.clamp_min(_ALPHA_MIN)


def fake_quant(w: torch.Tensor, alpha: torch.Tensor, scheme: str, group_size: int | None = None) -> torch.Tensor:
    """Differentiable quantize-dequantize of a (N, K) weight with alpha of shape (N, K/g, 1)."""
    spec = SCHEMES[scheme]
    n, k = w.shape
    wg = grouped(w, effective_group(k, group_size))
    fn = {"seq": StretchedElasticQuant, "sign": SignQuant}.get(spec.quantizer, LsqQuant)
    out = fn.apply(wg, alpha.to(wg.dtype), spec.bits)
    return out.reshape(n, -1)[:, :k]


def _codes(wg: torch.Tensor, a: torch.Tensor, spec: SchemeSpec) -> torch.Tensor:
    """Unsigned codes (as floats) of grouped weights for alpha `a`."""
    if spec.quantizer == "sign":
        return (wg >= 0).to(wg.dtype)  # sign(0) → +1: two codes cannot hold ParetoQ's 0
    if spec.quantizer == "seq":
        n_levels, shift = _seq_levels(spec.bits)
        r = torch.round(torch.clamp(wg / a, -SEQ_CLIP, SEQ_CLIP) * n_levels - shift)  # SEQ's integer grid
        return r + (spec.levels // 2)  # 2-bit: {-2..1} → {0..3}; ternary: {-1,0,1} → {0,1,2}
    qn, qp = -(2 ** (spec.bits - 1)), 2 ** (spec.bits - 1) - 1
    return torch.clamp(torch.round(wg / a), qn, qp) + spec.offset


#: fractions of the max-based alpha tried by the MSE search (post-training only)
MSE_GRID = {"lsq": (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7), "seq": (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.45, 0.4, 0.35, 0.3)}


@torch.no_grad()
def mse_alpha(w: torch.Tensor, scheme: str, group_size: int | None = None, rows_per_chunk: int = 1024) -> torch.Tensor:
    """Alpha per row/group minimising the weight reconstruction error over a grid of max|w| fractions.

    Opt-in (`quantize_codes(search=True)`): on SmolLM2-135M it lowered weight error but raised the output
    KL (int4 g128: 1.31 vs 0.84 nats with ParetoQ's max|w| init), as clipping the few large weights LLMs
    rely on costs more than it saves, so the default stays ParetoQ's init.
    """
    spec = SCHEMES[scheme]
    base = init_alpha(w, scheme, group_size)
    if scheme in ("int8", "int1"):  # int1: mean|w| is already the least-squares scale for the signs
        return base
    group = effective_group(w.shape[1], group_size)
    out = torch.empty_like(base)
    for i in range(0, w.shape[0], rows_per_chunk):
        wg = grouped(w[i:i + rows_per_chunk].detach().float(), group)
        b = base[i:i + rows_per_chunk]
        best_err, best = None, b
        for frac in MSE_GRID[spec.quantizer]:
            a = (b * frac).clamp_min(_ALPHA_MIN)
            err = ((_codes(wg, a, spec) - spec.offset) * (a * spec.step) - wg).square().sum(-1, keepdim=True)
            if best_err is None:
                best_err, best = err, a
            else:
                better = err < best_err
                best_err, best = torch.where(better, err, best_err), torch.where(better, a, best)
        out[i:i + rows_per_chunk] = best
    return out


#: shrink factors tried for each end of a group's [min, max] range by the opt-in clipping search
ASYM_CLIP_GRID = (1.0, 0.9, 0.8, 0.7)


def _asym_params(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero) mapping codes 0..15 onto [lo, hi], rounded to the bfloat16 they are stored in."""
    scale = ((hi - lo) / 15.0).clamp_min(_ALPHA_MIN).to(torch.bfloat16).float()
    zero = (lo + 8.0 * scale).to(torch.bfloat16).float()
    return scale, zero


def _asym_codes(wg: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.round((wg - zero) / scale) + 8.0, 0.0, 15.0)


@torch.no_grad()
def quantize_int4_asym(w: torch.Tensor, group_size: int | None = 128, clip_search: bool = False,
                       rows_per_chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric int4: (N, K) float → (codes (N, Kp) uint8 in 0..15, scale (N, G), zero (N, G)).

    value = (code - 8)·scale + zero, with scale = (max - min)/15 and zero = min + 8·scale per group, so
    code 0 is the group's min and code 15 its max. `clip_search` shrinks each end of the range toward its
    middle over `ASYM_CLIP_GRID` (16 pairs) and keeps the pair with the least squared weight error per group.
    Codes are computed against the bfloat16-rounded scale/zero that are stored, so they are optimal for them.
    """
    n, k = w.shape
    wg_all = grouped(w.detach().float(), effective_group(k, group_size))
    g = wg_all.shape[1]
    codes = torch.empty(n, g, wg_all.shape[2], dtype=torch.uint8, device=w.device)
    scale = torch.empty(n, g, dtype=torch.float32, device=w.device)
    zero = torch.empty_like(scale)
    for i in range(0, n, rows_per_chunk):
        wg = wg_all[i:i + rows_per_chunk]
        lo, hi = wg.amin(-1, keepdim=True), wg.amax(-1, keepdim=True)
        best_s, best_z = _asym_params(lo, hi)
        if clip_search:
            best_err, mid = None, (lo + hi) / 2
            for f_lo in ASYM_CLIP_GRID:
                for f_hi in ASYM_CLIP_GRID:
                    s_, z_ = _asym_params(mid + (lo - mid) * f_lo, mid + (hi - mid) * f_hi)
                    err = ((_asym_codes(wg, s_, z_) - 8.0) * s_ + z_ - wg).square().sum(-1, keepdim=True)
                    if best_err is None:
                        best_err, best_s, best_z = err, s_, z_
                    else:
                        better = err < best_err
                        best_err = torch.where(better, err, best_err)
                        best_s, best_z = torch.where(better, s_, best_s), torch.where(better, z_, best_z)
        codes[i:i + rows_per_chunk] = _asym_codes(wg, best_s, best_z).to(torch.uint8)
        scale[i:i + rows_per_chunk], zero[i:i + rows_per_chunk] = best_s.squeeze(-1), best_z.squeeze(-1)
    return codes.reshape(n, -1), scale, zero


@torch.no_grad()
def quantize_codes(w: torch.Tensor, scheme: str, group_size: int | None = None,
                   alpha: torch.Tensor | None = None, search: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Post-training quantization: (N, K) float → (codes (N, Kp) unsigned ints, scale (N, Kp/g)).

    `scale` is step·alpha, so value = (code - offset)·scale. Kp is K padded to a multiple of the group.
    Without `alpha`, it is searched for the least reconstruction error (`search`) or ParetoQ's init.
    """
    spec = SCHEMES[scheme]
    n, k = w.shape
    if alpha is None:
        alpha = mse_alpha(w, scheme, group_size) if search else init_alpha(w, scheme, group_size)
    wg = grouped(w.detach().float(), effective_group(k, group_size))
    if alpha.shape != (n, wg.shape[1], 1):
        raise ValueError(f"alpha shape {tuple(alpha.shape)} does not match {(n, wg.shape[1], 1)}")
    a = alpha.float().clamp_min(_ALPHA_MIN)
    codes = _codes(wg, a, spec)
    scale = (a * spec.step).squeeze(-1)
    dtype = torch.int8 if scheme == "int8" else torch.uint8
    return codes.reshape(n, -1).to(dtype), scale


def dequantize_codes(codes: torch.Tensor, scale: torch.Tensor, scheme: str,
                     dtype: torch.dtype = torch.float32, zero: torch.Tensor | None = None) -> torch.Tensor:
    """(N, Kp) codes, (N, G) scales and optional (N, G) zero points → (N, Kp) weights.

    value = (code - offset)·scale (+ zero): the reference every fast path must match.
    """
    spec = SCHEMES[scheme]
    n, kp = codes.shape
    g = scale.shape[1]
    v = codes.to(dtype).reshape(n, g, kp // g)
    if spec.offset:
        v = v - spec.offset
    v = v * scale.to(dtype).unsqueeze(-1)
    if zero is not None:
        v = v + zero.to(dtype).unsqueeze(-1)
    return v.reshape(n, kp)
