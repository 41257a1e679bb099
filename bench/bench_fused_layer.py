"""The whole decode step of quantized Qwen2-0.5B, step by step interleaved: each layer as one C call (the
fused layer, default) against the per-op lean step, and schemes against each other, in one process.

    cd bench && VIDEOLLM_CPU_ISA=avx2 taskset -c 1 python bench_fused_layer.py int4 int3 int2 ternary int1 int8

RANDOM weights (speed does not depend on their values), group 128, LM head per `HEAD_AUTO`, one thread, a
64-token prompt. Every round times one step of every (scheme, path) pair in turn, so a change in the machine's
load hits all of them alike (`bench_quant.py --part decode --interleave` does the same across schemes only).
"Per-op" runs the same plan with its fused layers switched off (`LeanStep.scratch = 0`). CPU ms per token
(process time) and × the copy-bandwidth limit measured in the same run, as `bench_quant.py` reports them.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from bench_quant import _decode_bytes, copy_bandwidth, lm_step, make_config, qwen2_05b_config, random_model

from videollm._compat import require
from videollm.quant import cpu_kernels, quantize_, quantize_head
from videollm.quant.config import HEAD_AUTO
from videollm.runtime import decode_step


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("schemes", nargs="+")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--context", type=int, default=64)
    ap.add_argument("--no-per-op", action="store_true", help="time the fused step only (scheme against scheme)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t = require("transformers")
    print(cpu_kernels.describe(), flush=True)
    runs: dict[tuple[str, str], dict] = {}
    for scheme in args.schemes:
        model = random_model(t.Qwen2ForCausalLM, qwen2_05b_config(), torch.float32, "cpu")
        cfg = make_config(scheme, 128, "native")
        quantize_(model, cfg, filter_fn=lambda m, n: "lm_head" not in n)
        quantize_head(model, HEAD_AUTO[cfg.scheme], 128, "native")
        mb = _decode_bytes(model, args.context) / 1e6
        for path in ("fused",) if args.no_per_op else ("fused", "per-op"):
            nxt, cache = lm_step(model, torch.randint(0, 1000, (1, args.context)), None)
            for _ in range(2):  # warm-up; the plan is made on the first step
                nxt, cache = lm_step(model, nxt, cache)
            plan = decode_step._PLANS[model.model]
            runs[scheme, path] = {"model": model, "plan": plan, "scratch": plan.scratch, "next": nxt,
                                  "cache": cache, "MB": mb, "cpu": []}
            if path == "fused" and not plan.scratch:
                print(f"{scheme}: no fused layer here (a projection is not on the low-bit kernel)", flush=True)
    bw = copy_bandwidth()
    for _ in range(args.rounds):
        for (scheme, path), run in runs.items():
            run["plan"].scratch = run["scratch"] if path == "fused" else 0
            c0 = time.process_time()
            run["next"], run["cache"] = lm_step(run["model"], run["next"], run["cache"])
            run["cpu"].append((time.process_time() - c0) * 1e3)
            run["plan"].scratch = run["scratch"]
    print(f"copy bandwidth {bw['copy_GBps_cpu']:.1f} GB/s per CPU second; {args.rounds} rounds")
    print("| Qwen2-0.5B decode | path | CPU ms/token (median / best) | MB read/token | × copy limit (median / best) |")
    print("| --- | --- | --- | --- | --- |")
    for (scheme, path), run in runs.items():
        limit = run["MB"] / bw["copy_GBps_cpu"]  # ms
        med, best = statistics.median(run["cpu"]), min(run["cpu"])
        print(f"| {scheme} | {path} | {med:.1f} / {best:.1f} | {run['MB']:.0f} | {med / limit:.2f} / "
              f"{best / limit:.2f} |", flush=True)


if __name__ == "__main__":
    main()
