"""The low-bit kernel at every instruction-set level: each level this CPU runs against the reference, the
levels against each other, the `VIDEOLLM_CPU_ISA` switch, the build's fall back to lower levels, a failed
allocation raising, and ARM NEON cross-compiled and run under qemu-user where those tools are installed."""
from __future__ import annotations

import ctypes
import os
import platform
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from videollm.errors import InvalidRequestError
from videollm.quant import QuantLinear, cpu_isa, cpu_kernels, packing

needs_kernel = pytest.mark.skipif(not cpu_kernels.available(), reason="no C compiler for the low-bit kernel")
SCHEMES = ["int8", "int4", "int3", "int2", "ternary", "int1"]
# (out, in, group): row blocks with a tail, per-row groups, a partial last vector, a model-sized row, wide groups
# (256-bit builds sum a whole group's vectors in int16 before widening: several widenings a group at 512)
SHAPES = [(37, 130, None), (96, 200, 64), (70, 896, 32), (9, 4864, 128), (10, 2560, 512)]
DRIVER = Path(__file__).parent / "csrc" / "lowbit_main.c"


def _case(scheme: str, shape: tuple, rows: int, level: str) -> tuple[cpu_kernels.LowBitGemv, torch.Tensor,
                                                                       torch.Tensor, torch.Tensor, torch.Tensor]:
    """(kernel at `level`, x, the int8-activation reference, the exact-activation reference, the reference's
    float32 weight) for one layer."""
    n, k, group = shape
    torch.manual_seed(n * 7 + k + rows)
    lin = nn.Linear(k, n, bias=True)
    x = torch.randn(rows, k) * torch.linspace(0.1, 3.0, k)
    if scheme == "int8":
        ref = QuantLinear.from_linear(lin, "int8", kernel="dequant")
        groups = -(-k // 128)
        codes = F.pad(ref.qweight[:, :k].to(torch.int16) + 128, (0, groups * 128 - k), value=128)
        kern = cpu_kernels.LowBitGemv(8, codes.to(torch.uint8), ref.scale.expand(-1, groups), None, k, 128, 128.0,
                                      bias=ref.bias, level=level)
        act = cpu_kernels.int8x2_reference
    else:
        ref = QuantLinear.from_linear(lin, scheme, group, kernel="dequant", zero_point=scheme == "int4")
        width = {"int4": 4, "int3": 3, "int2": 2, "ternary": 2, "int1": 1}[scheme]
        kern = cpu_kernels.LowBitGemv(width, packing.pack(ref.codes(), width), ref.scale, ref.zero, k, ref.group,
                                      ref.spec.offset, bias=ref.bias, level=level)
        act = cpu_kernels.int8_reference
    w = ref.dequantize(torch.float32)
    lanes = kern.idx is not None and rows <= cpu_kernels.INT8_MAX_ROWS
    want8 = F.linear(act(x, kern.group) if lanes else x, w, ref.bias)
    return kern, x, want8, F.linear(x, w, ref.bias), w


def _close(got: torch.Tensor, want: torch.Tensor) -> bool:
    return torch.allclose(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))


@needs_kernel
@pytest.mark.parametrize("level", cpu_kernels.runnable_levels())
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("shape", SHAPES)
def test_every_level_this_cpu_runs_equals_the_reference(level, scheme, shape):
    """SIMD levels: exactly the reference on the int8-rounded activations (up to float summation order);
    scalar: the float path on exact activations. Each is built for the level asked."""
    assert cpu_kernels.isa(level) == level
    for rows in (1, 3):
        kern, x, want8, exact, _ = _case(scheme, shape, rows, level)
        got = kern(x)
        if level == "scalar" or kern.idx is None:
            assert not kern.int8_activations and _close(got, exact)
        else:
            assert kern.int8_activations and _close(got, want8)


@needs_kernel
@pytest.mark.parametrize("scheme", SCHEMES)
def test_levels_agree_with_each_other(scheme):
    """Every SIMD level gives the same numbers (same integer dot products, float order aside); the fused
    group call equals the separate calls at each level."""
    levels = [lv for lv in cpu_kernels.runnable_levels() if lv != "scalar"]
    outs = []
    for level in levels:
        kern, x, _, _, _ = _case(scheme, (70, 896, 32), 1, level)
        outs.append(kern(x))
        twin, _, _, _, _ = _case(scheme, (70, 896, 32), 1, level)
        group = cpu_kernels.LowBitGemvGroup([kern, twin])
        assert torch.equal(group(x), torch.cat([kern(x), twin(x)], dim=-1))
    for out in outs[1:]:
        assert _close(out, outs[0])


@needs_kernel
@pytest.mark.parametrize("level", [lv for lv in cpu_kernels.runnable_levels() if lv != "scalar"])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_largest_products_do_not_overflow(level, scheme):
    """Every code at its extreme and every activation at ±127 (whole groups of one sign, wide groups): the
    int16 sums that AVX2 keeps over several vectors of a group before widening, and 8-bit weights' int32
    lanes, reach their bounds without saturating or wrapping."""
    k, group = 2560, 512
    width = {"int8": 8, "int4": 4, "int3": 3, "int2": 2, "ternary": 2, "int1": 1}[scheme]
    top = {"int8": 255, "int4": 15, "int3": 7, "int2": 3, "ternary": 2, "int1": 1}[scheme]
    offset = {"int8": 128.0, "int4": 8.0, "int3": 4.0, "int2": 1.5, "ternary": 1.0, "int1": 0.5}[scheme]
    codes = torch.full((6, k), top, dtype=torch.uint8)
    codes[1::2] = 0  # 8-bit weights: code 0 is -128, the largest magnitude
    x = torch.full((1, k), 3.0)
    x[:, group:2 * group] = -3.0  # one group all negative
    if scheme == "int8":
        kern = cpu_kernels.LowBitGemv(8, codes, torch.ones(6, k // 128), None, k, 128, offset, level=level)
    else:
        kern = cpu_kernels.LowBitGemv(width, packing.pack(codes, width), torch.ones(6, k // group), None, k, group,
                                      offset, level=level)
    assert kern.int8_activations
    want = F.linear(kern.reference_input(x), codes.float() - offset)
    assert torch.equal(kern.reference_input(x), x)  # ±3 rounds to ±127 exactly
    assert _close(kern(x), want)


def test_runnable_levels_follow_the_cpu_flags(monkeypatch):
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    avx2 = {"avx2", "fma", "f16c"}
    cases = [(set(), ("scalar",)), (avx2, ("avx2", "scalar")),
             (avx2 | {"avx_vnni"}, ("avxvnni", "avx2", "scalar")),
             (avx2 | {"avx512f", "avx512bw", "avx512vl", "avx512_vnni"}, ("avx512vnni", "avx2", "scalar"))]
    for flags, want in cases:
        monkeypatch.setattr(cpu_isa, "cpu_features", lambda f=flags: frozenset(f))
        assert cpu_isa.runnable_levels() == want
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    assert cpu_isa.runnable_levels() == ("neon", "scalar")
    assert cpu_kernels.level_flags("neon", frozenset({"asimd", "asimddp"})) == ("-march=armv8.2-a+dotprod",)
    assert cpu_kernels.level_flags("neon", frozenset({"asimd"})) == ()


@needs_kernel
def test_the_switch_forces_a_lower_level(monkeypatch):
    best = cpu_kernels.runnable_levels()[0]
    monkeypatch.delenv(cpu_kernels.ISA_ENV, raising=False)
    assert cpu_kernels.requested_level() == best and cpu_kernels.isa() == best
    monkeypatch.setenv(cpu_kernels.ISA_ENV, "scalar")
    assert cpu_kernels.isa() == "scalar" and not cpu_kernels.int8_path()
    assert "scalar (forced by VIDEOLLM_CPU_ISA)" in cpu_kernels.describe()
    lin = nn.Linear(256, 64)
    assert QuantLinear.from_linear(lin, "int4", 64).kernel == "int4_cpu"  # ATen's int4 on the scalar level
    assert QuantLinear.from_linear(lin, "int2", 64).kernel == "lowbit"  # the float path
    monkeypatch.setenv(cpu_kernels.ISA_ENV, "sse9")
    with pytest.raises(InvalidRequestError, match="not a level"):
        cpu_kernels.requested_level()
    missing = [lv for lv in cpu_kernels.LEVELS if lv not in cpu_kernels.runnable_levels()]
    monkeypatch.setenv(cpu_kernels.ISA_ENV, missing[0])
    with pytest.raises(InvalidRequestError, match="cannot run"):
        cpu_kernels.requested_level()
    assert "cannot run" in cpu_kernels.describe()


def test_a_level_that_does_not_build_falls_to_the_next(monkeypatch, tmp_path):
    """A compiler without a level's flags (here: a flag no compiler knows) yields the next level down."""
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler")
    monkeypatch.setenv("VIDEOLLM_CACHE", str(tmp_path))
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(cpu_kernels, "runnable_levels", lambda: ("avx2", "scalar"))
    real = cpu_kernels.level_flags
    monkeypatch.setattr(cpu_kernels, "level_flags",
                        lambda lv, f=None: ("-mno-such-isa-flag",) if lv == "avx2" else real(lv, f))
    lib = cpu_kernels.compiled_library(cpu_kernels.SOURCE, "test", "avx2")
    assert lib is not None and lib.videollm_level == "scalar"
    lib.lowbit_isa.restype = ctypes.c_char_p
    assert lib.lowbit_isa() == b"scalar"


@needs_kernel
@pytest.mark.skipif(sys.platform != "linux", reason="address-space limits are Linux's")
def test_a_failed_allocation_raises_instead_of_returning_garbage(tmp_path):
    """The float path's scratch (the activations gathered into the row-planar layout, as large as x) cannot be
    allocated under a tight address-space limit: the kernel reports it and Python raises MemoryError."""
    code = """
import resource, torch
from videollm.quant import cpu_kernels
torch.set_num_threads(1)
k, rows = 1024, 20000
kern = cpu_kernels.LowBitGemv(1, torch.zeros(8, k // 8, dtype=torch.uint8), torch.ones(8, 1), None, k, k, 0.5,
                              level="scalar")
x = torch.randn(rows, k)
kern(x[:2])
used = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (used + 40 * 2**20, resource.RLIM_INFINITY))
try:
    kern(x)
except MemoryError as err:
    print("raised:", err)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False,
                         env={**os.environ, "VIDEOLLM_CACHE": str(tmp_path), "OMP_NUM_THREADS": "1"})
    assert "raised: the low-bit C kernel could not allocate" in out.stdout, out.stderr[-2000:]


def _check_driver(prefix: list[str], exe: Path, scheme: str, want_isa: str, tmp: Path,
                  dequantizes: bool = False) -> None:
    """Every shape at 1, 3 and more rows than the int8 path takes; prefill's dequantized weight bit-equal to the
    reference's wherever the build has that pass (`dequantizes`: it must, for groups that start on a byte)."""
    per = 8 if scheme == "int3" else {"int8": 1, "int4": 2, "int2": 4, "ternary": 4, "int1": 8}[scheme]
    for shape in SHAPES:
        for rows in (1, 3, cpu_kernels.INT8_MAX_ROWS + 1):
            kern, x, want8, exact, w = _case(scheme, shape, rows, "scalar")  # layouts do not depend on the level
            got, isa, dequantized = _run_driver(prefix, exe, kern, x, tmp)
            assert isa == want_isa
            lanes = kern.idx is not None and rows <= cpu_kernels.INT8_MAX_ROWS
            assert _close(got, want8 if lanes else exact), (shape, rows)
            if dequantizes and kern.group % per == 0:
                assert dequantized is not None, shape
            if dequantized is not None:
                assert torch.equal(dequantized, w), shape


@needs_kernel
@pytest.mark.skipif("avx2" not in cpu_kernels.runnable_levels() or shutil.which("cc") is None,
                    reason="needs an AVX2 CPU and cc")
@pytest.mark.parametrize("scheme", SCHEMES)
def test_avxvnni_path_with_its_dot_product_emulated(scheme, tmp_path):
    """The AVX-VNNI build's code (unsigned 8-bit codes, vpdpbusd chains) on an AVX2 CPU, with vpdpbusd done
    exactly in AVX2 instructions: the same reference. (Neither this machine nor qemu 7.2 runs AVX-VNNI.)"""
    exe = tmp_path / "lowbit_avxvnni_emulated"
    subprocess.run(["cc", "-O2", "-std=c99", "-ffast-math", "-Wno-psabi", "-mavx2", "-mfma", "-mf16c",
                    "-DLOWBIT_EMULATE_AVXVNNI", str(DRIVER), "-o", str(exe), "-lm"], check=True, capture_output=True,
                   timeout=300)
    _check_driver([], exe, scheme, "avxvnni sdot=0", tmp_path, dequantizes=True)


def _simde_avx512() -> bool:
    """Whether SIMDe's AVX-512 header is installed (Debian: libsimde-dev)."""
    cc = shutil.which("cc")
    if cc is None:
        return False
    probe = subprocess.run([cc, "-E", "-x", "c", "-"], input="#include <simde/x86/avx512.h>\n", text=True,
                           capture_output=True, check=False, timeout=120)
    return probe.returncode == 0


@pytest.fixture(scope="module")
def avx512_emulated(tmp_path_factory) -> Path:
    """The driver built with the AVX-512 VNNI code and SIMDe's portable intrinsics (one build: ~30 s)."""
    if not _simde_avx512():
        pytest.skip("no SIMDe headers for the AVX-512 emulation (apt-get install libsimde-dev)")
    exe = tmp_path_factory.mktemp("avx512") / "lowbit_avx512_emulated"
    subprocess.run(["cc", "-O1", "-std=c99", "-ffast-math", "-Wno-psabi", "-DLOWBIT_EMULATE_AVX512", str(DRIVER),
                    "-o", str(exe), "-lm"], check=True, capture_output=True, timeout=600)
    return exe


@needs_kernel
@pytest.mark.parametrize("scheme", SCHEMES)
def test_avx512vnni_path_under_simde_emulation(scheme, avx512_emulated, tmp_path):
    """The AVX-512 VNNI build's code (vpdpbusd, masked loads, vpermt2w lane scales) with every intrinsic from
    SIMDe's portable implementations: checked against the reference on any CPU, since neither this machine nor
    qemu-user runs AVX-512 (its speed is measured only where a CPU has it)."""
    _check_driver([], avx512_emulated, scheme, "avx512vnni sdot=0", tmp_path)


# ---- ARM NEON under qemu-user ----------------------------------------------------------------------------
CROSS_CC = shutil.which("aarch64-linux-gnu-gcc")
QEMU = shutil.which("qemu-aarch64") or shutil.which("qemu-aarch64-static")
needs_qemu = pytest.mark.skipif(
    CROSS_CC is None or QEMU is None or platform.machine().lower() in ("aarch64", "arm64"),
    reason="NEON runs natively here" if platform.machine().lower() in ("aarch64", "arm64") else
    "no aarch64 cross compiler or qemu-user (apt-get install gcc-aarch64-linux-gnu qemu-user)")


@pytest.fixture(scope="module")
def neon_drivers(tmp_path_factory) -> dict[str, Path]:
    """The driver built for NEON with the dot-product extension (sdot) and without it (smull + adds)."""
    out = tmp_path_factory.mktemp("neon")
    hello = out / "hello.c"
    hello.write_text("int main(void) { return 0; }\n")
    probe = subprocess.run([CROSS_CC, "-static", str(hello), "-o", str(out / "hello")], capture_output=True,
                           text=True, check=False, timeout=300)
    if probe.returncode:  # a toolchain without its static C library: not our code's failure
        pytest.skip(f"the aarch64 toolchain cannot link a static program: {probe.stderr.strip()[-200:]}")
    drivers = {}
    for name, flags in (("sdot", ["-march=armv8.2-a+dotprod"]), ("plain", [])):
        exe = out / f"lowbit_{name}"
        subprocess.run([CROSS_CC, "-O2", "-static", "-std=c99", "-ffast-math", "-Wno-psabi", *flags, str(DRIVER),
                        "-o", str(exe), "-lm"], check=True, capture_output=True, timeout=300)
        drivers[name] = exe
    return drivers


def _blob(t: torch.Tensor | None) -> bytes:
    if t is None:
        return struct.pack("<q", 0)
    data = t.contiguous().numpy().tobytes()
    return struct.pack("<q", len(data)) + data


def _run_driver(prefix: list[str], exe: Path, kern: cpu_kernels.LowBitGemv, x: torch.Tensor,
                tmp: Path) -> tuple[torch.Tensor, str, torch.Tensor | None]:
    """The layer and x written for `csrc/lowbit_main.c`, run as `prefix exe in out`: (its y, the level it names,
    its dequantized weight or None where the build has no dequantization pass)."""
    pad = torch.zeros(16, dtype=torch.int16)
    head = struct.pack("<10i2qf", kern.bits, kern.weight.shape[1], kern.hi_off, kern.k, kern.n, kern.groups,
                       kern.group, kern.gb, kern.gb2, x.shape[0], kern.rb_pad, kern.rb_pad2, kern.offset)
    parts = [struct.pack("<q", len(head)) + head, _blob(kern.weight), _blob(torch.cat([kern.scale.flatten(), pad])),
             _blob(None if kern.zero is None else torch.cat([kern.zero.flatten(), pad])), _blob(kern.index),
             _blob(kern.index2), _blob(kern.idx), _blob(kern.idx2), _blob(kern.bias), _blob(x.float())]
    src, dst = tmp / "in.bin", tmp / "out.bin"
    src.write_bytes(b"".join(parts))
    run = subprocess.run([*prefix, str(exe), str(src), str(dst)], capture_output=True, text=True, check=False,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    out = bytearray(dst.read_bytes())
    ny = x.shape[0] * kern.n
    y = torch.frombuffer(out[: 4 * ny], dtype=torch.float32).view(x.shape[0], kern.n)
    done = struct.unpack("<i", out[4 * ny: 4 * ny + 4])[0]
    w = torch.frombuffer(out[4 * ny + 4:], dtype=torch.float32).view(kern.n, kern.k) if done else None
    return y, run.stdout.strip(), w


@needs_kernel
@needs_qemu
@pytest.mark.parametrize("variant", ["sdot", "plain"])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_neon_under_qemu_equals_the_reference(variant, scheme, neon_drivers, tmp_path):
    """The NEON build (cross-compiled, run by qemu-user) equals the int8-activation reference on every scheme
    and shape, with and without sdot; with more rows than the int8 path takes, the float path on exact ones."""
    _check_driver([QEMU, "-cpu", "max"], neon_drivers[variant], scheme, f"neon sdot={int(variant == 'sdot')}",
                  tmp_path, dequantizes=True)


@pytest.mark.skipif(CROSS_CC is None, reason="no aarch64 cross compiler (apt-get install gcc-aarch64-linux-gnu)")
def test_decode_ops_compile_for_aarch64(tmp_path):
    """The decode step's ops (the fused layer included) are plain C: the aarch64 build must compile warning-free
    (it runs the same loops as every x86 level, which the decode-step tests check)."""
    from videollm.runtime import decode_ops

    run = subprocess.run([CROSS_CC, "-O3", "-std=c99", "-ffast-math", "-fPIC", "-Wall", "-Werror", "-c",
                          str(decode_ops.SOURCE), "-o", str(tmp_path / "decode_ops.o")], capture_output=True,
                         text=True, check=False, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
