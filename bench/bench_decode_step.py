"""The decode step's cost beside the weights, against the context length: transformers' forward vs videollm's
lean step (`videollm/runtime/decode_step.py`), the latter with each attention path forced.

    python bench/bench_decode_step.py --contexts 64 1024 2048 4096 --threads 1

Qwen2-0.5B (LLaVA-OneVision-0.5B's LLM) built from its config with RANDOM weights, every linear layer replaced
by one returning zeros ("no GEMV"), so what is timed is everything a decode step does besides reading weights:
norms, RoPE, the KV cache, attention over it, Python. `--scheme int4` keeps real quantized layers instead.
Steps of the variants alternate (median of `--steps`), so a change in the machine's load hits all alike.
"""
from __future__ import annotations

import argparse
import time

import torch
from bench_quant import _decode_model, _zero_linears, lm_step, qwen2_05b_config, random_model

from videollm._compat import require
from videollm.runtime import decode_ops

#: name → (forward, LONG_CONTEXT while it runs)
VARIANTS = {"transformers forward": ("transformers", None),
            "videollm step (default)": ("videollm", decode_ops.LONG_CONTEXT),
            "videollm step, C attention loop": ("videollm", 10**9),
            "videollm step, matmul attention": ("videollm", 0)}


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contexts", type=int, nargs="+", default=[64, 1024, 2048, 4096])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--scheme", default=None, help="quantize the linear layers (e.g. int4) instead of zeroing them")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.scheme:
        model, _ = _decode_model(args.scheme, argparse.Namespace(group_size=128, head="auto"))
    else:
        model = random_model(require("transformers").Qwen2ForCausalLM, qwen2_05b_config(), torch.float32, "cpu")
        _zero_linears(model)
    default = decode_ops.LONG_CONTEXT
    print(f"| context | {' | '.join(f'{v} ms' for v in VARIANTS)} |")
    print("| --- |" + " --- |" * len(VARIANTS))
    for context in args.contexts:
        ids = torch.randint(0, 1000, (1, context))
        state = {name: lm_step(model, ids, None, fwd) for name, (fwd, _) in VARIANTS.items()}
        times: dict[str, list[float]] = {name: [] for name in VARIANTS}
        for step in range(args.steps + 1):
            for name, (fwd, long_context) in VARIANTS.items():
                decode_ops.LONG_CONTEXT = default if long_context is None else long_context
                nxt, cache = state[name]
                t0 = time.perf_counter()
                state[name] = lm_step(model, nxt, cache, fwd)
                if step:  # the first step of each grows the cache's buffers
                    times[name].append((time.perf_counter() - t0) * 1e3)
        decode_ops.LONG_CONTEXT = default
        cells = " | ".join(f"{float(torch.tensor(t).median()):.1f}" for t in times.values())
        print(f"| {context} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
