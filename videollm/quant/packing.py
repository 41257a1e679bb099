"""Bit packing of integer weight codes: int8, int4 (2 per byte), int3 (bit-sliced: a 2-bit plane and a 1-bit
plane), int2 (4 per byte), ternary (5 per byte), int1 (8 per byte).

Codes are unsigned (`0..2**bits-1`, ternary `0..2`); the signed value they stand for is decided by the
scheme (see `paretoq.SCHEMES`). Everything here is pure PyTorch, so it is also the reference the fast
kernels' layouts are checked against. Rows are packed independently: a (N, K) code matrix becomes
(N, ceil(K / per_byte)) bytes, padded with code 0 that `unpack` drops again.
"""
from __future__ import annotations

from functools import lru_cache

import torch

#: codes per byte for each storage width
PER_BYTE = {8: 1, 4: 2, 2: 4, "ternary": 5, 1: 8}
#: bits one weight costs in storage
BITS_PER_WEIGHT = {8: 8.0, 4: 4.0, 3: 3.0, 2: 2.0, "ternary": 8.0 / 5.0, 1: 1.0}


def _check(codes: torch.Tensor, levels: int) -> None:
    if codes.dim() != 2:
        raise ValueError(f"codes must be 2-D (out, in), got shape {tuple(codes.shape)}")
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= levels):
        raise ValueError(f"codes must lie in [0, {levels - 1}]")


def _pad_cols(codes: torch.Tensor, multiple: int) -> torch.Tensor:
    k = codes.shape[1]
    pad = (-k) % multiple
    return torch.nn.functional.pad(codes, (0, pad)) if pad else codes


def pack_int8(codes: torch.Tensor) -> torch.Tensor:
    """Signed int8 values are stored as they are (the CPU/CUDA int8 kernels read this layout)."""
    if codes.dim() != 2:
        raise ValueError("codes must be 2-D")
    return codes.to(torch.int8).contiguous()


def unpack_int8(packed: torch.Tensor, k: int) -> torch.Tensor:
    return packed[:, :k]


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """(N, K) codes in 0..15 → (N, ceil(K/2)) uint8; column 2j in the low nibble, 2j+1 in the high one."""
    _check(codes, 16)
    c = _pad_cols(codes.to(torch.uint8), 2)
    return (c[:, 0::2] | (c[:, 1::2] << 4)).contiguous()


def unpack_int4(packed: torch.Tensor, k: int) -> torch.Tensor:
    p = packed.to(torch.uint8)
    out = torch.stack((p & 0x0F, p >> 4), dim=-1).reshape(p.shape[0], -1)
    return out[:, :k]


def pack_int2(codes: torch.Tensor) -> torch.Tensor:
    """(N, K) codes in 0..3 → (N, ceil(K/4)) uint8; column 4j+i in bits 2i..2i+1."""
    _check(codes, 4)
    c = _pad_cols(codes.to(torch.uint8), 4)
    return (c[:, 0::4] | (c[:, 1::4] << 2) | (c[:, 2::4] << 4) | (c[:, 3::4] << 6)).contiguous()


def unpack_int2(packed: torch.Tensor, k: int) -> torch.Tensor:
    p = packed.to(torch.uint8)
    out = torch.stack((p & 3, (p >> 2) & 3, (p >> 4) & 3, p >> 6), dim=-1).reshape(p.shape[0], -1)
    return out[:, :k]


def pack_int1(codes: torch.Tensor) -> torch.Tensor:
    """(N, K) codes in 0..1 → (N, ceil(K/8)) uint8; column 8j+i in bit i."""
    _check(codes, 2)
    c = _pad_cols(codes.to(torch.uint8), 8)
    out = c[:, 0::8].clone()
    for i in range(1, 8):
        out |= c[:, i::8] << i
    return out.contiguous()


def unpack_int1(packed: torch.Tensor, k: int) -> torch.Tensor:
    p = packed.to(torch.uint8)
    out = torch.stack([(p >> i) & 1 for i in range(8)], dim=-1).reshape(p.shape[0], -1)
    return out[:, :k]


def pack_int3(codes: torch.Tensor) -> torch.Tensor:
    """(N, K) codes in 0..7 → (N, ceil(K/4) + ceil(K/8)) uint8, bit-sliced: the low two bits packed as int2,
    then the high bit packed as int1. Two power-of-two planes decode with shifts only (no 3-bit straddling)."""
    _check(codes, 8)
    c = codes.to(torch.uint8)
    return torch.cat((pack_int2(c & 3), pack_int1(c >> 2)), dim=1).contiguous()


def unpack_int3(packed: torch.Tensor, k: int) -> torch.Tensor:
    lo_cols = -(-k // 4)
    lo = unpack_int2(packed[:, :lo_cols], k)
    hi = unpack_int1(packed[:, lo_cols:], k)
    return lo | (hi << 2)


#: positions (8 columns each) in one block of the int3 kernel layout (`to_int3_kernel`)
INT3_BLOCK = 64


def to_int3_kernel(codes: torch.Tensor, positions: int) -> torch.Tensor:
    """(N, K) codes in 0..7 → (N, 3 * positions) uint8: the C kernel's int3 layout, built once at load.

    Position j holds columns 8j..8j+7 (codes c0..c7) in three bytes, so every code is one shift and one mask
    away, as an int4 code is (the checkpoint's bit planes need two passes, ~1.4x int4's work per weight):
    b0 = c0 | c1 << 3 | (c6 & 3) << 6, b1 = c2 | c3 << 3 | (c7 & 3) << 6, b2 = c4 | c5 << 3 | (c6 >> 2) << 6
    | (c7 >> 2) << 7. Blocks of `INT3_BLOCK` positions hold all their b0 bytes, then their b1, then their b2
    (the last block is shorter), so one vector load gets the same byte of consecutive positions.
    """
    _check(codes, 8)
    n, k = codes.shape
    if k > 8 * positions:
        raise ValueError(f"{k} columns do not fit {positions} int3 positions")
    c = torch.nn.functional.pad(codes.to(torch.uint8), (0, 8 * positions - k)).view(n, positions, 8)
    b0 = c[..., 0] | (c[..., 1] << 3) | ((c[..., 6] & 3) << 6)
    b1 = c[..., 2] | (c[..., 3] << 3) | ((c[..., 7] & 3) << 6)
    b2 = c[..., 4] | (c[..., 5] << 3) | ((c[..., 6] >> 2) << 6) | ((c[..., 7] >> 2) << 7)
    planes = torch.stack((b0, b1, b2), dim=1)  # (N, 3, positions)
    blocks = [planes[:, :, j: j + INT3_BLOCK].reshape(n, -1) for j in range(0, positions, INT3_BLOCK)]
    return torch.cat(blocks, dim=1).contiguous() if blocks else planes.reshape(n, 0)


def from_int3_kernel(packed: torch.Tensor, k: int) -> torch.Tensor:
    """Inverse of `to_int3_kernel`: (N, 3 * positions) kernel bytes → (N, k) codes."""
    n, positions = packed.shape[0], packed.shape[1] // 3
    parts = []
    for j in range(0, positions, INT3_BLOCK):
        width = min(INT3_BLOCK, positions - j)
        parts.append(packed[:, 3 * j: 3 * j + 3 * width].reshape(n, 3, width))
    b0, b1, b2 = torch.cat(parts, dim=2).to(torch.uint8).unbind(1) if parts else (packed.new_empty(n, 0),) * 3
    c = torch.stack((b0 & 7, (b0 >> 3) & 7, b1 & 7, (b1 >> 3) & 7, b2 & 7, (b2 >> 3) & 7,
                     (b0 >> 6) | (((b2 >> 6) & 1) << 2), (b1 >> 6) | ((b2 >> 7) << 2)), dim=-1)
    return c.reshape(n, -1)[:, :k]


_POW3 = (1, 3, 9, 27, 81)


def pack_ternary(codes: torch.Tensor) -> torch.Tensor:
    """(N, K) codes in 0..2 → (N, ceil(K/5)) uint8 in base 3 (3**5 = 243 ≤ 256): 1.6 bits per weight."""
    _check(codes, 3)
    c = _pad_cols(codes.to(torch.int32), 5).reshape(codes.shape[0], -1, 5)
    weights = torch.tensor(_POW3, dtype=torch.int32, device=c.device)
    return (c * weights).sum(-1).to(torch.uint8).contiguous()


@lru_cache(maxsize=8)
def _ternary_table(device: str) -> torch.Tensor:
    b = torch.arange(256, dtype=torch.int32)
    digits = torch.stack([(b // p) % 3 for p in _POW3], dim=-1)
    return digits.to(torch.uint8).to(device)


def unpack_ternary(packed: torch.Tensor, k: int) -> torch.Tensor:
    table = _ternary_table(str(packed.device))
    out = table[packed.long()].reshape(packed.shape[0], -1)
    return out[:, :k]


_PACK = {8: pack_int8, 4: pack_int4, 3: pack_int3, 2: pack_int2, "ternary": pack_ternary, 1: pack_int1}
_UNPACK = {8: unpack_int8, 4: unpack_int4, 3: unpack_int3, 2: unpack_int2, "ternary": unpack_ternary, 1: unpack_int1}


def pack(codes: torch.Tensor, width: int | str) -> torch.Tensor:
    """Pack codes of storage width 8, 4, 3, 2, "ternary" or 1."""
    return _PACK[width](codes)


def unpack(packed: torch.Tensor, width: int | str, k: int) -> torch.Tensor:
    """Inverse of `pack`; `k` is the number of columns the codes had."""
    return _UNPACK[width](packed, k)


@lru_cache(maxsize=8)
def byte_table(width: int | str) -> torch.Tensor:
    """(256, per_byte) codes held by each possible byte: unpacking becomes one gather (see `QuantLinear`)."""
    b = torch.arange(256, dtype=torch.int32)
    if width == 4:
        cols = [b & 15, b >> 4]
    elif width == 2:
        cols = [(b >> (2 * i)) & 3 for i in range(4)]
    elif width == "ternary":
        cols = [(b // p) % 3 for p in _POW3]
    elif width == 1:
        cols = [(b >> i) & 1 for i in range(8)]
    else:
        raise ValueError(f"no byte table for width {width!r}")
    return torch.stack(cols, dim=-1).to(torch.uint8)


def packed_cols(k: int, width: int | str) -> int:
    if width == 3:
        return -(-k // 4) + -(-k // 8)
    per = PER_BYTE[width]
    return -(-k // per)


# ---- the layout of PyTorch's CPU int4 kernel (`aten::_weight_int4pack_mm_for_cpu`) ------------------------
# `_convert_weight_to_int4pack_for_cpu` interleaves rows in blocks whose size depends on the CPU's vector
# width (32 rows on AVX2, 64 on AVX-512). We detect the block once so the kernel layout can be turned back
# into our portable one for saving (files must load on any machine).

def to_cpu_int4_kernel(codes: torch.Tensor) -> torch.Tensor:
    """(N, K) codes in 0..15 → the CPU kernel's packed uint8 layout."""
    return torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32).contiguous(), 1)


def _blocked(codes: torch.Tensor, block: int) -> torch.Tensor:
    n, k = codes.shape
    b = codes.to(torch.uint8).reshape(n // block, block, k)
    lo, hi = b[:, : block // 2], b[:, block // 2:]
    return ((hi << 4) | lo).permute(0, 2, 1).reshape(-1)


@lru_cache(maxsize=1)
def cpu_int4_kernel_block() -> int | None:
    """Row block of the CPU int4 layout on this machine, or None if it is none we know."""
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 16, (256, 64), generator=g, dtype=torch.int32)
    packed = to_cpu_int4_kernel(codes).reshape(-1)
    for block in (32, 64, 16, 128, 256):
        if torch.equal(_blocked(codes, block), packed):
            return block
    return None


def from_cpu_int4_kernel(packed: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """The CPU kernel layout back to (N, K) codes; raises if this machine's layout is unknown or N is ragged."""
    block = cpu_int4_kernel_block()
    if block is None or n % block:
        raise NotImplementedError("cannot invert the CPU int4 kernel layout here")
    p = packed.reshape(n // block, k, block // 2).permute(0, 2, 1)  # (nb, block/2, k)
    lo, hi = p & 0x0F, p >> 4
    return torch.cat((lo, hi), dim=1).reshape(n, k)


def rows_from_cpu_int4_kernel(packed: torch.Tensor, n: int, k: int, rows: torch.Tensor) -> torch.Tensor:
    """Codes (len(rows), K) of some rows of the CPU kernel layout, decoding only their row blocks (embedding
    lookups through a tied, int4-quantized LM head)."""
    block = cpu_int4_kernel_block()
    if block is None or n % block:
        raise NotImplementedError("cannot invert the CPU int4 kernel layout here")
    rows = rows.reshape(-1).long()
    p = packed.reshape(n // block, k, block // 2)[rows // block]  # (R, k, block/2)
    half = block // 2
    within = rows % block
    col = (within % half).view(-1, 1, 1).expand(-1, k, 1)
    byte = p.gather(2, col).squeeze(-1)  # (R, k)
    return torch.where((within < half).view(-1, 1), byte & 0x0F, byte >> 4)
