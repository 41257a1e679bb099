"""Per-token decode time: eager loop vs the static-cache compiled loop (`GenerationConfig.static_decode`).

    python bench/bench_static_decode.py --device cuda --dtype bfloat16 [--quant none int8 int4] \\
        [--prompt 1024] [--new-tokens 128] [--bandwidth-gbs 3350]

One process, same model and prompt: a warm-up call per loop (compiles the step), then timed calls, eager and
static interleaved. Asserts identical tokens (greedy) and prints ms/token for each, their ratio, and the
weight-bandwidth floor: bytes of the LLM's weights read per token / `--bandwidth-gbs` (the GPU's HBM
bandwidth: ~3350 GB/s H100 SXM, ~4800 GB/s H200). Model: `llava-onevision-0.5b-random` (real-size
architecture, random weights) unless `--model` says otherwise.
"""
from __future__ import annotations

import argparse
import os
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="llava-onevision-0.5b-random")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--quant", nargs="+", default=["none"], help="LLM weight quantization schemes to measure")
    ap.add_argument("--prompt", type=int, default=1024, help="prompt length in tokens")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--bandwidth-gbs", type=float, default=None)
    ap.add_argument("--no-compile", action="store_true", help="static cache only (VIDEOLLM_COMPILE=0)")
    args = ap.parse_args()
    os.environ["VIDEOLLM_COMPILE"] = "0" if args.no_compile else "1"

    import torch

    from videollm.backbones import load_backbone
    from videollm.runtime.generation import GenerationConfig, generate

    def sync() -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    print("| model | quant | device | dtype | prompt | eager ms/token | static ms/token | speed-up | "
          "weights MB | floor ms/token | same tokens |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for quant in args.quant:
        b = load_backbone(args.model, device=args.device, dtype=args.dtype)
        if quant != "none":
            from videollm.quant import quantize_backbone

            quantize_backbone(b, llm=quant, vision="none")
        decoder, head = b.text_decoder()
        weight_bytes = sum(t.numel() * t.element_size() for m in (decoder, head)
                           for t in list(m.parameters()) + list(m.buffers()))
        e = b.embed_ids(list(range(3, 3 + args.prompt)))[None] if args.prompt < 400 else \
            b.embed_ids([(7 * i) % 400 + 3 for i in range(args.prompt)])[None]
        times: dict[bool, list[float]] = {False: [], True: []}
        ids: dict[bool, list[int]] = {}
        for static in (False, True):  # warm-up: compile, allocate
            generate(b, e, GenerationConfig(max_new_tokens=4, static_decode=static), allow_static=True)
        for _ in range(args.rounds):
            for static in (False, True):
                sync()
                t = time.perf_counter()
                out = generate(b, e, GenerationConfig(max_new_tokens=args.new_tokens, static_decode=static),
                               allow_static=True)
                sync()
                # includes the eager prefill (the same in both loops), small next to --new-tokens steps
                times[static].append((time.perf_counter() - t) / max(1, len(out.token_ids)))
                ids[static] = out.token_ids
        eager, fast = min(times[False]), min(times[True])
        floor = f"{weight_bytes / (args.bandwidth_gbs * 1e9) * 1e3:.3f}" if args.bandwidth_gbs else "n/a"
        print(f"| {args.model} | {quant} | {b.device} | {str(b.dtype).replace('torch.', '')} | {args.prompt} | "
              f"{eager * 1e3:.2f} | {fast * 1e3:.2f} | {eager / fast:.2f}x | {weight_bytes / 2**20:.0f} | {floor} | "
              f"{ids[False] == ids[True]} |", flush=True)
        del b
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
