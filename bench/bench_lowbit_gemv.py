"""One Qwen2-0.5B decode token's GEMVs through builds of the low-bit kernel, interleaved: the kernel alone.

Builds each given C source (default: the one in the tree) at `--level`, makes the 24 decoder layers' seven
projections (random codes of each scheme, group 128) and the LM head (int4; int8 for int8), and times
one sweep over all of them per build in turn, `--reps` times (process CPU time, so other processes on a
shared machine count less). Comparing an older kernel with the current one:

    git show HEAD~1:videollm/quant/csrc/lowbit_gemv.c > /tmp/old.c
    taskset -c 1 python bench/bench_lowbit_gemv.py int4 int2 --src /tmp/old.c videollm/quant/csrc/lowbit_gemv.c

The outputs of the builds are compared too (they must agree up to float summation order).

`--resident` times the compute instead: one 896×896 and one 4864×896 layer called over and over, so their
weights stay in L2/L3 (the kernel's cost per weight, without the DRAM stream).
"""
from __future__ import annotations

import argparse
import ctypes
import statistics
import time
from pathlib import Path

import torch

from videollm.quant import cpu_kernels, packing

HIDDEN, INTER, VOCAB = 896, 4864, 151936
#: (out, in) of q, k, v, o, gate, up, down
SHAPES = [(HIDDEN, HIDDEN), (128, HIDDEN), (128, HIDDEN), (HIDDEN, HIDDEN), (INTER, HIDDEN), (INTER, HIDDEN),
          (HIDDEN, INTER)]
WIDTH = {"int8": 8, "int4": 4, "int3": 3, "int2": 2, "ternary": 2, "int1": 1}
CODES = {"int8": 256, "int4": 16, "int3": 8, "int2": 4, "ternary": 3, "int1": 2}
OFFSET = {"int8": 128.0, "int4": 8.0, "int3": 4.0, "int2": 1.5, "ternary": 1.0, "int1": 0.5}


def _function(source: Path, level: str) -> ctypes._CFuncPtr:
    lib = cpu_kernels.compiled_library(source, source.name, level)
    if lib is None:
        raise SystemExit(f"{source} did not build at {level}")
    fn = lib.lowbit_gemv
    fn.argtypes = [ctypes.POINTER(cpu_kernels.Layer), ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def _layer(scheme: str, n: int, k: int, group: int, level: str) -> cpu_kernels.LowBitGemv:
    gen = torch.Generator().manual_seed(n * 7 + k)
    if scheme == "int8":
        groups = -(-k // 128)
        codes = torch.randint(0, 256, (n, groups * 128), dtype=torch.uint8, generator=gen)
        scale = (torch.rand(n, 1, generator=gen) * 0.01).expand(-1, groups)
        return cpu_kernels.LowBitGemv(8, codes, scale, None, k, 128, OFFSET[scheme], level=level)
    groups = -(-k // group)
    codes = torch.randint(0, CODES[scheme], (n, groups * group), dtype=torch.uint8, generator=gen)
    zero = torch.rand(n, groups, generator=gen) if scheme == "int4" else None
    return cpu_kernels.LowBitGemv(WIDTH[scheme], packing.pack(codes, WIDTH[scheme]),
                                  torch.rand(n, groups, generator=gen) * 0.01, zero, k, group, OFFSET[scheme],
                                  level=level)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("schemes", nargs="+", choices=sorted(WIDTH))
    ap.add_argument("--src", nargs="+", type=Path, default=[cpu_kernels.SOURCE])
    ap.add_argument("--level", default="avx2")
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--group", type=int, default=128)
    ap.add_argument("--resident", action="store_true", help="cache-resident layers: compute cost per weight")
    args = ap.parse_args()
    fns = [_function(s, args.level) for s in args.src]
    if args.resident:
        return _resident(args, fns)
    for scheme in args.schemes:
        kerns = [_layer(scheme, n, k, args.group, args.level) for _ in range(args.layers) for n, k in SHAPES]
        kerns.append(_layer("int8" if scheme == "int8" else "int4", VOCAB, HIDDEN, args.group, args.level))
        mb = sum(t.numel() * t.element_size() for kk in kerns
                 for t in (kk.weight, kk.scale, kk.zero) if t is not None) / 1e6
        xs = {HIDDEN: torch.randn(1, HIDDEN), INTER: torch.randn(1, INTER)}
        ys = {kk.n: torch.empty(1, kk.n) for kk in kerns}
        times: list[list[float]] = [[] for _ in fns]
        heads = []
        for rep in range(args.reps):
            for i, fn in enumerate(fns):
                t0 = time.process_time()
                for kk in kerns:
                    cpu_kernels.check_failed(fn(kk.current_layer(), xs[kk.k].data_ptr(), ys[kk.n].data_ptr(), 1, 1))
                times[i].append((time.process_time() - t0) * 1e3)
                if rep == 0:
                    heads.append(ys[VOCAB].clone())
        scale = float(heads[0].abs().max())
        agree = all(torch.allclose(h, heads[0], rtol=1e-4, atol=1e-4 * scale) for h in heads[1:])
        cells = [f"{s.name}: median {statistics.median(t):.1f} / best {min(t):.1f} CPU ms"
                 for s, t in zip(args.src, times)]
        print(f"{scheme} ({mb:.0f} MB a token, {args.level}): " + " | ".join(cells)
              + ("" if agree else " | OUTPUTS DIFFER"), flush=True)


def _resident(args: argparse.Namespace, fns: list[ctypes._CFuncPtr]) -> None:
    for scheme in args.schemes:
        for n, k, calls in ((HIDDEN, HIDDEN, 400), (INTER, HIDDEN, 60)):
            kk = _layer(scheme, n, k, args.group, args.level)
            x, y = torch.randn(1, k), torch.empty(1, n)
            times: list[list[float]] = [[] for _ in fns]
            for _ in range(args.reps):
                for i, fn in enumerate(fns):
                    t0 = time.process_time()
                    for _ in range(calls):
                        fn(kk.current_layer(), x.data_ptr(), y.data_ptr(), 1, 1)
                    times[i].append((time.process_time() - t0) / calls * 1e6)
            cells = [f"{s.name}: best {min(t):.1f} / median {statistics.median(t):.1f} µs"
                     for s, t in zip(args.src, times)]
            print(f"{scheme} {n}x{k} resident ({args.level}): " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
