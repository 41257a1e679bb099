"""Fast batch-small CPU GEMV for packed 1/2/3/4-bit and ternary weights (`csrc/lowbit_gemv.c`).

PyTorch has CPU kernels for int8 and int4 weights only; 2-bit and ternary went through a bytes → values
lookup and a dense GEMV, which reads 16× more bytes than the packed weight and was 3× slower than bf16.
This kernel decodes the packed bytes in registers instead, so decode reads ~bits/8 bytes per weight. On
every SIMD level it rounds the activations to int8 per weight group (scale max|x|/127, like llama.cpp's
Q8 activations) and multiplies as int8 (`vpdpbusd`, `vpmaddubsw`, `sdot`); on the scalar level it stays in
float. `int8_reference`
gives the activations that path actually uses, so tests compare it with the reference exactly. That
path streams packed weights near the memory bandwidth (4 rows a call of the inner loop, software
prefetch), so there `QuantLinear` uses it for int4 as well, in place of ATen's int4 kernel.

The int8 path exists for each instruction-set level (`LEVELS`): AVX-512 VNNI, AVX-VNNI, AVX2 (vpmaddubsw),
ARM NEON (sdot where present); "scalar" is the portable float path alone. The best level this CPU runs is
chosen at run time; `VIDEOLLM_CPU_ISA=<level>` forces a lower one (tests, comparisons). A level whose build
fails (a compiler without the flags) falls to the next one down.

It is plain C compiled once per machine and level with the system C compiler (`cc -O3 <level flags>`, cached
under `$VIDEOLLM_CACHE/kernels`) and called through ctypes: no torch headers, so it builds in about a second.
Where no compiler is found or every build fails, `available()` is False and `QuantLinear` keeps its pure
PyTorch paths; the reference (dequantize + `F.linear`) is the oracle every test compares this against.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

import torch

from .._compat import cache_root
from ..errors import InvalidRequestError
from . import packing
from .cpu_isa import ISA_ENV, LEVELS, level_flags, requested_level, runnable_levels

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("csrc") / "lowbit_gemv.c"
#: rows (tokens) the int8 path takes in one call; `lowbit_gemv` uses its float path beyond
INT8_MAX_ROWS = 64
FLAGS = ("-O3", "-ffast-math", "-fPIC", "-shared", "-std=c99", "-Wno-psabi")
#: after the source: with -ffast-math GCC vectorises expf through glibc's libmvec
LIBS = ("-lm",)

def _cache_dir() -> Path:
    return cache_root() / "kernels"


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


def _build(source: Path, cc: str, openmp: bool, level_args: tuple[str, ...] = ()) -> Path:
    src = source.read_bytes()
    flags = FLAGS + level_args + (("-fopenmp",) if openmp else ())
    cc_path = shutil.which(cc) or cc
    key = hashlib.sha256(src + " ".join((cc_path,) + flags + LIBS).encode()).hexdigest()[:16]
    out = _cache_dir() / f"{source.stem}-{key}.so"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        tmp_so = Path(tmp) / out.name
        subprocess.run([cc, *flags, str(source), "-o", str(tmp_so), *LIBS], check=True, capture_output=True,
                       timeout=120)
        os.replace(tmp_so, out)  # atomic: concurrent builders never load a half-written file
    return out


def compiled_library(source: Path, what: str, level: str | None = None) -> ctypes.CDLL | None:
    """`source` (plain C, no torch headers) built once per machine and level, and loaded; None where there is
    no compiler, every build fails or VIDEOLLM_NO_CKERNELS is set (callers then keep their PyTorch paths).

    `level` (default: `requested_level()`) is tried first, then each lower level this CPU runs: a compiler
    without a level's flags just yields the next one down."""
    if os.environ.get("VIDEOLLM_NO_CKERNELS"):
        return None
    cc = _compiler()
    if cc is None:
        logger.info("no C compiler found: %s use PyTorch paths", what)
        return None
    runnable = runnable_levels()
    first = level or requested_level()
    for lv in runnable[runnable.index(first) if first in runnable else 0:]:
        for openmp in (True, False):
            try:
                lib = ctypes.CDLL(str(_build(source, cc, openmp, level_flags(lv))))
                lib.videollm_level = lv  # type: ignore[attr-defined]  # the level it was built for
                return lib
            except (OSError, subprocess.SubprocessError) as err:
                logger.debug("building %s at %s (openmp=%s) failed: %s", source.name, lv, openmp, err)
        logger.info("the %s build of %s failed: trying the next level down", lv, what)
    logger.info("the C kernels for %s did not build: PyTorch paths are used", what)
    return None


class Layer(ctypes.Structure):
    """`lowbit_layer` in the C source: one layer's constant arguments, filled once per layer."""

    _fields_ = [("W", ctypes.c_void_p), ("scale", ctypes.c_void_p), ("zero", ctypes.c_void_p),
                ("col", ctypes.c_void_p), ("col2", ctypes.c_void_p), ("idx", ctypes.c_void_p),
                ("idx2", ctypes.c_void_p), ("bias", ctypes.c_void_p), ("rb_pad", ctypes.c_long),
                ("rb_pad2", ctypes.c_long),
                ("kind", ctypes.c_int), ("ldw", ctypes.c_int), ("hi_off", ctypes.c_int), ("K", ctypes.c_int),
                ("N", ctypes.c_int), ("G", ctypes.c_int), ("group", ctypes.c_int), ("gb", ctypes.c_int),
                ("gb2", ctypes.c_int), ("offset", ctypes.c_float)]


def _library(level: str | None = None) -> ctypes.CDLL | None:
    """The kernel library at `level` (default: the requested one)."""
    return _library_at(level or requested_level())


@lru_cache(maxsize=len(LEVELS))
def _library_at(level: str) -> ctypes.CDLL | None:
    lib = compiled_library(SOURCE, "low-bit weights", level)
    if lib is None:
        return None
    f = lib.lowbit_gemv
    f.argtypes = [ctypes.POINTER(Layer), ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    f.restype = ctypes.c_int
    many = lib.lowbit_gemv_many
    many.argtypes = [ctypes.POINTER(ctypes.POINTER(Layer)), ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                     ctypes.c_int]
    many.restype = ctypes.c_int
    deq = lib.lowbit_dequantize
    deq.argtypes = [ctypes.POINTER(Layer), ctypes.c_void_p, ctypes.c_int]
    deq.restype = ctypes.c_int
    lib.lowbit_has_int8_path.restype = ctypes.c_int
    lib.lowbit_isa.restype = ctypes.c_char_p
    return lib


def gemv_many_address(level: str) -> int | None:
    """The address of `lowbit_gemv_many` in the kernel library built for `level`: C code elsewhere (the lean
    decode step's whole-layer call, `runtime/decode_ops`) calls it directly, without linking this library."""
    lib = _library(level)
    return None if lib is None else ctypes.cast(lib.lowbit_gemv_many, ctypes.c_void_p).value


def available() -> bool:
    """Whether the C kernel is built and loadable here."""
    return _library() is not None


def int8_path(level: str | None = None) -> bool:
    """Whether the kernel at `level` (default: in use) rounds activations to int8 when the layout allows it
    (every level but "scalar")."""
    lib = _library(level)
    return bool(lib is not None and lib.lowbit_has_int8_path())


def isa(level: str | None = None) -> str:
    """The instruction-set level the kernel in use was built for ("none": no C kernel here)."""
    lib = _library(level)
    return "none" if lib is None else lib.lowbit_isa().decode()


def build_id(level: str | None = None) -> str:
    """The kernel library in use, by its file name (which holds the hash of its source, compiler and flags):
    results checked against one build are trusted for that build only ("none": no C kernel here)."""
    lib = _library(level)
    return "none" if lib is None else Path(lib._name).name


def describe() -> str:
    """One line for `videollm list` and `-v`: the level in use and what the CPU could run."""
    try:
        level = isa()
    except InvalidRequestError as err:
        return str(err)
    forced = f" (forced by {ISA_ENV})" if os.environ.get(ISA_ENV) else ""
    return f"CPU kernels: {level}{forced}; this CPU runs {', '.join(runnable_levels())}"


def check_failed(rc: int) -> None:
    """The C kernel returns nonzero when it could not allocate its scratch memory (its output is then
    unwritten): raise instead of returning garbage."""
    if rc:
        raise MemoryError("the low-bit C kernel could not allocate its scratch memory")


def _padded(t: torch.Tensor, pad: int = 16) -> torch.Tensor:
    """A contiguous copy with `pad` zero elements after its end: the 256-bit and NEON kernels load 8 scales at a
    time, past a row's last group (those lanes meet zero activations)."""
    flat = torch.zeros(t.numel() + pad, dtype=t.dtype)
    flat[: t.numel()] = t.reshape(-1)
    return flat[: t.numel()].view(t.shape)


def int8_reference(x: torch.Tensor, group: int) -> torch.Tensor:
    """(M, K) activations as the int8 path sees them: per group of `group` columns, round(x / s)·s with
    s = max|x| / 127 (0 for an all-zero group)."""
    m, k = x.shape
    kp = -(-k // group) * group
    xg = torch.nn.functional.pad(x.float(), (0, kp - k)).view(m, kp // group, group)
    s = xg.abs().amax(-1, keepdim=True) / 127.0
    q = torch.where(s > 0, torch.round(xg / torch.where(s > 0, s, torch.ones_like(s))), torch.zeros_like(xg))
    return (q * s).view(m, kp)[:, :k]


#: int8 weights' second activation plane: x ≈ s·q1 + (s/FINE)·q2 (`lowbit_gemv.c`)
FINE = 254


def int8x2_reference(x: torch.Tensor, group: int) -> torch.Tensor:
    """(M, K) activations as the int8 path sees them for 8-bit weights: two int8 planes per group,
    q1 = round(x / s), q2 = round((x - q1·s) / (s / FINE)), with s = max|x| / 127; ~15 bits of each value."""
    m, k = x.shape
    kp = -(-k // group) * group
    xg = torch.nn.functional.pad(x.float(), (0, kp - k)).view(m, kp // group, group)
    s = xg.abs().amax(-1, keepdim=True) / 127.0
    safe = torch.where(s > 0, s, torch.ones_like(s))
    q1 = torch.where(s > 0, torch.round(xg / safe), torch.zeros_like(xg))
    fine = safe / FINE
    q2 = torch.where(s > 0, torch.round((xg - q1 * s) / fine).clamp(-127, 127), torch.zeros_like(xg))
    return (q1 * s + q2 * (s / FINE)).view(m, kp)[:, :k]


def row_planar_index(k: int, group: int, per_byte: int, groups: int) -> tuple[torch.Tensor, int, int]:
    """(index, gb, rb_pad): column of x for each slot [p][j] of the row-planar layout (K = a zero pad).

    Byte j of a row is byte j % gb of group j // gb and holds columns group·(j // gb) + per_byte·(j % gb) + p.
    Rows are padded to a multiple of 64 bytes (the int8 path reads whole 64-byte chunks).
    """
    gb = -(-group // per_byte)
    rb = groups * gb
    rb_pad = -(-rb // 64) * 64
    j = torch.arange(rb_pad).view(1, -1)
    p = torch.arange(per_byte).view(-1, 1)
    within = per_byte * (j % gb) + p
    col = (j // gb) * group + within
    ok = (j < rb) & (within < group) & (col < k)
    return torch.where(ok, col, torch.full_like(col, k)).reshape(-1), gb, rb_pad


def lane_groups(groups: int, gb: int, rb_pad: int) -> torch.Tensor | None:
    """Per 64-byte chunk, the int16 indices that spread a row's bf16 scales onto the 16 int32 lanes (each
    lane = 4 bytes of one group); None where a lane would straddle two groups or there are > 63 groups."""
    if groups > 63 or (groups > 1 and gb % 4):
        return None
    byte = torch.arange(0, rb_pad, 4)
    g = torch.where(byte < groups * gb, byte // gb, torch.full_like(byte, 63))
    idx = torch.stack((torch.full_like(g, 63), g), dim=-1)  # low half of each float: element 63 = 0
    return idx.reshape(-1).to(torch.int16).contiguous()


@lru_cache(maxsize=64)
def _planar_maps(k: int, group: int, per_byte: int, groups: int
                 ) -> tuple[torch.Tensor, int, int, torch.Tensor | None]:
    """`row_planar_index` (int32) and `lane_groups` for one layer shape, made once and shared read-only by every
    layer of that shape (a model has a handful of shapes and hundreds of layers)."""
    index, gb, rb_pad = row_planar_index(k, group, per_byte, groups)
    return index.to(torch.int32).contiguous(), gb, rb_pad, lane_groups(groups, gb, rb_pad)


class LowBitGemv:
    """One layer's prepared call: packed bytes, bf16 scale bits and the activation permutations.

    bits: 1, 2, 4 or 8 (codes of that width in `weight`'s rows), or 3: int3's bit-sliced rows (a 2-bit plane
    then a 1-bit plane, the checkpoint format), converted here once to the kernel's layout
    (`packing.to_int3_kernel`, held in `weight`: ~int4's work per weight instead of two passes).
    Ternary uses bits=2 (codes 0..2; `QuantLinear` re-packs its base-3 bytes).
    """

    def __init__(self, bits: int, weight: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None,
                 in_features: int, group: int, offset: float, bias: torch.Tensor | None = None,
                 level: str | None = None):
        self.level = level or requested_level()
        lib = _library(self.level)
        if lib is None:
            raise NotImplementedError("low-bit C kernel unavailable")
        self._fn = lib.lowbit_gemv
        self.bits = bits
        self.n, self.groups = scale.shape
        if bits == 3:
            if self.groups > 1 and group % 8:
                raise NotImplementedError(f"int3 group {group} does not start on a byte")
            positions = self.groups * -(-group // 8)
            weight = packing.to_int3_kernel(packing.unpack_int3(weight, self.groups * group), positions)
        self.weight = weight.contiguous()
        self.scale = _padded(scale.to(torch.bfloat16).view(torch.int16))
        self.zero = _padded(zero.to(torch.bfloat16).view(torch.int16)) if zero is not None else None
        self.bias = bias.float().contiguous() if bias is not None else None  # added by the kernel
        self.k, self.group, self.offset = in_features, group, float(offset)
        width = 1 if bits == 3 else bits  # int3 positions hold 8 codes, as 1-bit bytes do
        self.index, self.gb, self.rb_pad, self.idx = _planar_maps(in_features, group, 8 // width, self.groups)
        # the C struct's former int3 second-plane fields: unused since int3 has its own layout (kept: ABI)
        self.index2, self.gb2, self.rb_pad2, self.hi_off, self.idx2 = None, 0, 0, 0, None
        self.int8_activations = bool(lib.lowbit_has_int8_path()) and self.idx is not None
        self._layer = self._pack_layer()

    def __getstate__(self) -> dict:
        """Copies and pickles (`copy.deepcopy(model)`) drop the ctypes objects; `__setstate__` rebuilds them
        for the copied tensors."""
        state = self.__dict__.copy()
        for key in ("_fn", "_layer", "_idx_seen"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.scale = _padded(self.scale)  # a copy's storage has no pad
        if self.zero is not None:
            self.zero = _padded(self.zero)
        lib = _library(state.get("level"))
        if lib is None:
            raise NotImplementedError("low-bit C kernel unavailable")
        self._fn = lib.lowbit_gemv
        self._layer = self._pack_layer()

    def _pack_layer(self) -> ctypes.pointer:
        """The C struct of this layer's pointers and sizes (rebuilt when `idx` changes, e.g. in tests)."""
        ptr = lambda t: t.data_ptr() if t is not None else None  # noqa: E731
        layer = Layer(ptr(self.weight), ptr(self.scale), ptr(self.zero), ptr(self.index), ptr(self.index2),
                      ptr(self.idx), ptr(self.idx2), ptr(self.bias), self.rb_pad, self.rb_pad2, self.bits,
                      self.weight.shape[1],
                      self.hi_off, self.k, self.n, self.groups, self.group, self.gb, self.gb2, self.offset)
        self._idx_seen = self.idx
        return ctypes.pointer(layer)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(..., K) float activations → (..., N) outputs (+ bias) in x's dtype, computed in float32. Kept lean:
        a decode step makes ~170 of these calls."""
        dtype, shape = x.dtype, x.shape
        if shape[-1] != self.k:
            raise ValueError(f"expected {self.k} input features, got {shape[-1]}")
        if dtype != torch.float32 or not x.is_contiguous():
            x = x.float().contiguous()
        y = torch.empty(shape[:-1] + (self.n,), dtype=torch.float32)
        check_failed(self._fn(self.current_layer(), x.data_ptr(), y.data_ptr(), x.numel() // self.k,
                              torch.get_num_threads()))
        return y if dtype == torch.float32 else y.to(dtype)

    def dequantize(self) -> torch.Tensor | None:
        """(N, K) float32 weights, (code - offset)·scale (+ zero), equal bit for bit to
        `paretoq.dequantize_codes` in float32, from one C pass over the codes (prefill's dense GEMMs take them);
        None where the build has no such pass (the scalar level, groups that split a byte)."""
        w = torch.empty(self.n, self.k, dtype=torch.float32)
        done = _library(self.level).lowbit_dequantize(self.current_layer(), w.data_ptr(), torch.get_num_threads())
        return w if done else None

    def current_layer(self) -> ctypes.pointer:
        """The C struct for this layer's tensors as they are now."""
        if self.idx is not self._idx_seen:
            self._layer = self._pack_layer()
        return self._layer

    def reference_input(self, x: torch.Tensor) -> torch.Tensor:
        """The activations this call effectively multiplies (int8-rounded on the int8 path, which takes up to
        `INT8_MAX_ROWS` rows; more go through the float path)."""
        if self.int8_activations and x.shape[0] <= INT8_MAX_ROWS:
            return (int8x2_reference if self.bits == 8 else int8_reference)(x, self.group)
        return x.float()


class LowBitGemvGroup:
    """Layers that read the same single activation row (q/k/v, gate/up), run in one C call: one (1, ΣN)
    float32 output with each layer's columns side by side, equal to concatenating their own calls."""

    def __init__(self, gemvs: list[LowBitGemv]):
        if not gemvs or len({g.k for g in gemvs}) != 1:
            raise ValueError("a group needs layers with the same number of input features")
        if len({g.level for g in gemvs}) != 1:
            raise ValueError("a group needs layers built for one instruction-set level")
        lib = _library(gemvs[0].level)
        if lib is None:
            raise NotImplementedError("low-bit C kernel unavailable")
        self._fn = lib.lowbit_gemv_many
        self.gemvs = list(gemvs)
        self.k = gemvs[0].k
        self.n = sum(g.n for g in gemvs)
        self._pack()

    def _pack(self) -> None:
        self._seen = [g.current_layer() for g in self.gemvs]
        self._array = (ctypes.POINTER(Layer) * len(self._seen))(*self._seen)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(1, K) or (1, 1, K) activations → (1, ΣN) float32 (bias included)."""
        if x.numel() != self.k:
            raise ValueError(f"expected one row of {self.k} features, got shape {tuple(x.shape)}")
        if x.dtype != torch.float32 or not x.is_contiguous():
            x = x.float().contiguous()
        if any(g.current_layer() is not s for g, s in zip(self.gemvs, self._seen)):
            self._pack()
        y = torch.empty(1, self.n, dtype=torch.float32)
        check_failed(self._fn(self._array, len(self.gemvs), x.data_ptr(), y.data_ptr(), torch.get_num_threads()))
        return y
