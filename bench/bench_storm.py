"""STORM's cost: the temporal encoder's time and memory against the vision tower and the LLM prefill it saves.

Real LLaVA-OneVision-0.5B sizes with **random weights** (no hub here): SigLIP-so400m at 384 px, 196 tokens per
frame after the projector, Qwen2-0.5B (D = 896). The encoder is one bidirectional STORM layer (~10 M
parameters) on all T x 196 tokens; the prefill is timed for the uncompressed T x 196 tokens and for the k = 4
pooled T/4 x 196. The vision tower is timed on `--tower-frames` frames and scaled linearly (it runs frame by
frame in chunks, so its cost is linear in T). Memory: the process's RSS high-water mark grows as sizes rise,
so the increase over the previous step is reported (an upper bound of what the step needed; CPU only).

    python bench/bench_storm.py --frames 32 64          # CPU; the reference scan is a Python loop per token
    python bench/bench_storm.py --device cuda --dtype bfloat16 --frames 32 64 128 256
"""
from __future__ import annotations

import argparse
import logging
import time

import torch

from common import command_line, cuda_peak_mib, environment, peak_rss_mib, table

from videollm.backbones.tiny import build_random_llava_onevision_0_5b
from videollm.compressors.storm import StormConfig, StormEncoder


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--tower-frames", type=int, default=4)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--no-prefill", action="store_true", help="skip the LLM prefill timings")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)
    bb = build_random_llava_onevision_0_5b(device=args.device, dtype=args.dtype)
    dev, dt = bb.device, bb.dtype
    rows, cols = bb.frame_grid
    D = bb.hidden_size
    enc = StormEncoder(D, StormConfig()).to(dev, dt).eval()
    for m in enc.mixers():  # non-zero output projections: the cost of a trained encoder
        torch.nn.init.normal_(m.out_proj.weight, std=0.02)
    n_params = sum(p.numel() for p in enc.parameters())
    frames = torch.randint(0, 256, (args.tower_frames, 384, 384, 3), dtype=torch.uint8)
    with torch.inference_mode():
        bb.frame_tokens(frames[:1])  # warm-up
        tower_per_frame = timed(lambda: bb.frame_tokens(frames), dev) / args.tower_frames
    rows_out = []
    for T in sorted(args.frames):
        x = torch.randn(T, rows, cols, D, device=dev, dtype=dt)
        rss0 = peak_rss_mib()
        with torch.inference_mode():
            t_enc = timed(lambda: enc(x), dev)
        rss1 = peak_rss_mib()
        full = T * rows * cols
        pooled = -(-T // args.k) * rows * cols
        t_full = t_pool = float("nan")
        if not args.no_prefill:
            with torch.inference_mode():
                t_pool = timed(lambda: bb.lm_forward(torch.randn(1, pooled, D, device=dev, dtype=dt)), dev)
                t_full = timed(lambda: bb.lm_forward(torch.randn(1, full, D, device=dev, dtype=dt)), dev)
        tower = tower_per_frame * T
        mem = cuda_peak_mib() if dev.type == "cuda" else rss1 - rss0
        rows_out.append([T, full, pooled, tower, t_enc, t_full, t_pool, t_full - t_pool,
                         t_enc / (tower + t_enc + t_pool), round(mem)])
        print(table(["frames", "tokens", f"tokens k={args.k}", "tower s", "encoder s", "prefill full s",
                     "prefill pooled s", "prefill saved s", "encoder share", "encoder mem MiB"], rows_out[-1:]),
              flush=True)
    print(f"\n{environment()}; encoder {n_params / 1e6:.1f} M parameters; `{command_line()}`\n")
    print(table(["frames", "tokens", f"tokens k={args.k}", "tower s (scaled)", "encoder s", "prefill full s",
                 "prefill pooled s", "prefill saved s", "encoder share of tower+encoder+pooled prefill",
                 "encoder mem MiB"], rows_out))


if __name__ == "__main__":
    main()
