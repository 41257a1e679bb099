"""Mamba-1's selective scan: a chunked pure-PyTorch reference and a dispatcher to mamba-ssm's CUDA kernel.

`selective_scan_ref` follows mamba-ssm's function of the same name (same argument names, shapes and
semantics, fp32 state) but never materialises the (batch, d_inner, L, d_state) tensors the original builds:
it discretises `chunk_size` steps at a time (exp(delta A) and delta u B for those steps only), runs the
recurrence through them carrying the state, and keeps only the outputs. Peak extra memory is a few
batch x d_inner x d_state x chunk_size floats, whatever L is. (A closed-form chunk solve, exp of segment
sums, was tried: on CPU it is ~100x slower than this loop over step-major contiguous slabs.)

`selective_scan_loop` is the literal one-step-at-a-time recurrence: the readable oracle of the tests.
`selective_scan` uses mamba-ssm's `selective_scan_fn` on CUDA tensors when that package imports, else the
reference. mamba-ssm is never imported at module import (it initialises CUDA and often fails to build).
"""
from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

DEFAULT_CHUNK = 256


def _prepare(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, delta_bias: torch.Tensor | None,
             delta_softplus: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if A.is_complex():
        raise NotImplementedError("complex A is not supported by this reference scan")
    u, delta = u.float(), delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias[..., None].float()
    if delta_softplus:
        delta = F.softplus(delta)
    return u, delta, A.float()


def _per_step(X: torch.Tensor, batch: int, dim: int, start: int, stop: int) -> torch.Tensor:
    """B or C for steps [start, stop), step-major (l, batch, dim or 1, N), from a constant (dim, N), a
    shared (batch, N, L) or a grouped (batch, G, N, L) tensor."""
    X = X.float()
    if X.dim() == 2:
        return X[None, None].expand(stop - start, batch, dim, X.shape[-1])
    if X.dim() == 3:
        return X[:, :, start:stop].permute(2, 0, 1)[:, :, None, :]
    groups = X.shape[1]
    x = X[..., start:stop].permute(3, 0, 1, 2)  # (l, B, G, N)
    return x.repeat_interleave(dim // groups, dim=2)


def _finish(y: torch.Tensor, u: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None, dtype: torch.dtype
            ) -> torch.Tensor:
    out = y if D is None else y + u * D.float()[..., None]
    if z is not None:
        out = out * F.silu(z.float())
    return out.to(dtype)


def selective_scan_ref(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                       D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                       delta_bias: torch.Tensor | None = None, delta_softplus: bool = False,
                       return_last_state: bool = False, *, chunk_size: int | None = DEFAULT_CHUNK,
                       initial_state: torch.Tensor | None = None
                       ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """u, delta, z: (batch, dim, L); A: (dim, N); B, C: (dim, N), (batch, N, L) or (batch, G, N, L); D,
    delta_bias: (dim,). Returns y (batch, dim, L) in u's dtype [, last state (batch, dim, N) fp32].

    `chunk_size=None` discretises the whole sequence at once (memory grows with L: tests only).
    `initial_state` (batch, dim, N) is an extension over mamba-ssm's signature (streaming use).
    """
    dtype_in = u.dtype
    u, delta, A = _prepare(u, delta, A, delta_bias, delta_softplus)
    batch, dim, L = u.shape
    N = A.shape[1]
    h = u.new_zeros(batch, dim, N) if initial_state is None else initial_state.float().clone()
    step = L if not chunk_size else max(1, int(chunk_size))
    ys = []
    delta_t = delta.permute(2, 0, 1).contiguous()  # step-major (L, batch, dim): each step reads a dense slab
    du_t = (delta * u).permute(2, 0, 1).contiguous()
    for start in range(0, L, step):
        stop = min(L, start + step)
        decay = torch.exp(delta_t[start:stop, :, :, None] * A)  # (l, b, d, N)
        inp = du_t[start:stop, :, :, None] * _per_step(B, batch, dim, start, stop)
        hs = []
        # unbind + a list, not indexing or in-place writes: autograd stays linear in l (one Unbind/Stack node)
        for inp_t, decay_t in zip(inp.unbind(0), decay.unbind(0)):
            h = torch.addcmul(inp_t, decay_t, h)
            hs.append(h)
        states = torch.stack(hs)  # (l, b, d, N)
        Cc = _per_step(C, batch, dim, start, stop)  # (l, b, d or 1, N)
        if Cc.shape[2] == 1:  # shared C: one batched matmul
            ys.append(torch.matmul(states, Cc.transpose(-1, -2).contiguous())[..., 0])  # contiguous: 100x faster bmm
        else:
            ys.append((states * Cc).sum(-1))
    y = torch.cat(ys, dim=0).permute(1, 2, 0) if ys else u.new_zeros(batch, dim, 0)
    out = _finish(y, u, D, z, dtype_in)
    return (out, h) if return_last_state else out


def selective_scan_loop(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                        D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                        delta_bias: torch.Tensor | None = None, delta_softplus: bool = False,
                        return_last_state: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """h_t = exp(delta_t A) h_{t-1} + delta_t u_t B_t; y_t = <h_t, C_t>: one step at a time (test oracle)."""
    dtype_in = u.dtype
    u, delta, A = _prepare(u, delta, A, delta_bias, delta_softplus)
    batch, dim, L = u.shape
    h = u.new_zeros(batch, dim, A.shape[1])
    ys = []
    for t in range(L):
        Bt = _per_step(B, batch, dim, t, t + 1)[0]  # (b, d or 1, N)
        Ct = _per_step(C, batch, dim, t, t + 1)[0]
        h = torch.exp(delta[:, :, t, None] * A) * h + (delta[:, :, t] * u[:, :, t])[..., None] * Bt
        ys.append((h * Ct).sum(-1))
    y = torch.stack(ys, dim=2) if ys else u.new_zeros(batch, dim, 0)
    out = _finish(y, u, D, z, dtype_in)
    return (out, h) if return_last_state else out


@functools.lru_cache(maxsize=1)
def cuda_selective_scan() -> Callable[..., torch.Tensor] | None:
    """mamba-ssm's fused kernel, or None when it is not installed / does not import (no CUDA build)."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn  # type: ignore[import-not-found]
    except Exception as err:  # noqa: BLE001 - a broken CUDA build raises anything from OSError to RuntimeError
        logger.info("mamba-ssm kernels unavailable (%s): using the PyTorch reference scan", type(err).__name__)
        return None
    return selective_scan_fn


def selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                   delta_bias: torch.Tensor | None = None, delta_softplus: bool = False,
                   impl: str = "auto", chunk_size: int | None = DEFAULT_CHUNK) -> torch.Tensor:
    """Dispatch: `impl="auto"` uses the CUDA kernel for CUDA tensors when mamba-ssm imports, else the reference;
    `"cuda"` insists on the kernel; `"ref"` always uses the reference."""
    if impl not in ("auto", "cuda", "ref"):
        raise ValueError(f"scan impl must be auto, cuda or ref, got {impl!r}")
    kernel = cuda_selective_scan() if impl != "ref" and u.is_cuda else None
    if impl == "cuda" and kernel is None:
        raise RuntimeError("scan impl 'cuda' needs CUDA tensors and an importable mamba-ssm "
                           "(pip install 'videollm[mamba]')")
    if kernel is not None:
        return kernel(u.contiguous(), delta.contiguous(), A.contiguous(), B.contiguous(), C.contiguous(),
                      D, z if z is None else z.contiguous(), delta_bias, delta_softplus)
    return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk_size=chunk_size)


__all__ = ["cuda_selective_scan", "selective_scan", "selective_scan_loop", "selective_scan_ref"]
