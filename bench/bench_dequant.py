"""Prefill's weight dequantization: the kernel library's one C pass against PyTorch's unpack-and-scale.

With more than `DENSE_ROWS` rows (prefill, a vision tower) a `QuantLinear` multiplies by its dequantized float32
weight with a dense GEMM, so every prefill pays one dequantization per layer. Per scheme, one layer of each
shape (videollm-mini's SmolLM2-135M at group 32, Qwen2-0.5B's at group 128; random codes: speed does not depend
on their values), best of `--reps` calls, one thread, freed buffers kept as `videollm ask` keeps them; each
result is checked to be bit-equal to PyTorch's.

    taskset -c 1 python bench/bench_dequant.py [--reps 30]
"""
from __future__ import annotations

import argparse
import time

import torch
from common import command_line, environment, table

from videollm.quant import QuantLinear
from videollm.serve.memory import keep_large_buffers

#: (name, out, in, group): SmolLM2-135M's gate/up and down, Qwen2-0.5B's gate/up and down
SHAPES = [("mini gate", 1536, 576, 32), ("mini down", 576, 1536, 32), ("qwen2-0.5b gate", 4864, 896, 128),
          ("qwen2-0.5b down", 896, 4864, 128)]
SCHEMES = ("int8", "int4", "int3", "int2", "ternary", "int1")


def _best_ms(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=30)
    args = ap.parse_args()
    keep_large_buffers()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rows = []
    for scheme in SCHEMES:
        for name, n, k, group in SHAPES:
            q = QuantLinear.from_linear(torch.nn.Linear(k, n), scheme, group, zero_point=scheme == "int4")
            kernel = q._lowbit
            c_ms = exact = None
            if kernel is not None and kernel.dequantize() is not None:
                c_ms = _best_ms(q.dequantize, args.reps)
                fast = q.dequantize()
            q._lowbit = None  # PyTorch's path for the same codes
            torch_ms = _best_ms(q.dequantize, args.reps)
            if c_ms is not None:
                exact = torch.equal(fast, q.dequantize())
            q._lowbit = kernel
            rows.append([scheme, f"{name} {n}x{k} g{group}", torch_ms, "-" if c_ms is None else c_ms,
                         "-" if c_ms is None else f"{torch_ms / c_ms:.1f}x", "-" if exact is None else exact])
    print(table(["scheme", "layer", "PyTorch ms", "C ms", "speed-up", "bit-equal"], rows))
    print(environment())
    print(command_line())


if __name__ == "__main__":
    main()
