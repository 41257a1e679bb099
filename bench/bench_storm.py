"""STORM's cost: the temporal encoder's time and memory against the vision tower and the LLM prefill it saves.

Real LLaVA-OneVision-0.5B sizes with **random weights** (no hub here): SigLIP-so400m at 384 px, 196 tokens per
frame after the projector, Qwen2-0.5B (D = 896). The encoder is one bidirectional STORM layer (~10 M
parameters, non-zero output projections: the cost of a trained one) on all T x 196 tokens, timed directly at
every T. The prefill is timed for the k = 4 pooled T/4 x 196 tokens and for the uncompressed T x 196 tokens
while that stays under `--max-prefill-tokens` (a full prefill at T frames has as many tokens as the pooled one
at 4T, so one measurement serves both); beyond it the full prefill is **extrapolated** from all measured sizes
with t(n) = a n + b n^2, a, b >= 0 (linear layers + attention; `fit_prefill`) and marked "≈". The vision
tower runs frame by frame in chunks, so it is timed on `--tower-frames` frames and **scaled linearly** to T.
Memory: the peak of the process's resident set while the encoder runs, minus its level just before (sampled
every 2 ms on CPU; `torch.cuda.max_memory_allocated` on GPU).

    taskset -c 0 python bench/bench_storm.py --threads 1 --frames 32 64 128 256
    python bench/bench_storm.py --device cuda --dtype bfloat16 --frames 32 64 128 256 --max-prefill-tokens 60000
"""
from __future__ import annotations

import argparse
import logging
import threading
import time
from collections.abc import Callable

import torch
from common import command_line, environment, table

from videollm.backbones.tiny import build_random_llava_onevision_0_5b
from videollm.compressors.storm import StormConfig, StormEncoder


def timed(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def peak_extra_mib(fn: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """(seconds, peak memory above the level before the call in MiB) of one call of `fn`."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        secs = timed(fn, device)
        return secs, (torch.cuda.max_memory_allocated() - before) / 2**20
    base, peak, done = rss_mib(), [0.0], threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_mib())
            time.sleep(0.002)

    w = threading.Thread(target=watch, daemon=True)
    w.start()
    try:
        secs = timed(fn, device)
    finally:
        done.set()
        w.join()
    return secs, max(0.0, max(peak[0], rss_mib()) - base)


def fit_prefill(points: dict[int, float]) -> Callable[[int], float]:
    """t(n) = a n + b n^2 with a, b >= 0 (linear layers + attention), least squares on relative error over all
    measured sizes (contention on a shared CPU makes single points noisy)."""
    ns = torch.tensor(list(points), dtype=torch.float64)
    ts = torch.tensor(list(points.values()), dtype=torch.float64)
    X = torch.stack([ns, ns * ns], 1) / ts[:, None]
    ones = torch.ones_like(ts)
    a, b = torch.linalg.lstsq(X, ones[:, None]).solution[:, 0].tolist()
    if a < 0 or b < 0:  # one term alone
        fits = []
        for col in (0, 1):
            c = max(0.0, float((X[:, col] @ ones) / (X[:, col] @ X[:, col])))
            fits.append((float(((X[:, col] * c - ones) ** 2).sum()), col, c))
        _, col, c = min(fits)
        a, b = (c, 0.0) if col == 0 else (0.0, c)
    return lambda n: a * n + b * n * n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, nargs="+", default=[32, 64, 128, 256])
    ap.add_argument("--tower-frames", type=int, default=2)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (pin the process with taskset)")
    ap.add_argument("--max-prefill-tokens", type=int, default=12544,
                    help="largest prefill run; bigger full prefills are extrapolated")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    bb = build_random_llava_onevision_0_5b(device=args.device, dtype=args.dtype)
    dev, dt = bb.device, bb.dtype
    rows, cols = bb.frame_grid
    per = rows * cols
    D = bb.hidden_size
    enc = StormEncoder(D, StormConfig()).to(dev, dt).eval()
    for m in enc.mixers():  # non-zero output projections: the cost of a trained encoder
        torch.nn.init.normal_(m.out_proj.weight, std=0.02)
    n_params = sum(p.numel() for p in enc.parameters())
    frames = torch.randint(0, 256, (args.tower_frames, 384, 384, 3), dtype=torch.uint8)
    with torch.inference_mode():
        bb.frame_tokens(frames[:1])  # warm-up
        tower_per_frame = timed(lambda: bb.frame_tokens(frames), dev) / args.tower_frames
        enc(torch.randn(1, rows, cols, D, device=dev, dtype=dt))  # warm-up
    print(f"tower: {tower_per_frame:.2f} s per frame (measured on {args.tower_frames})", flush=True)

    prefill: dict[int, float] = {}

    def prefill_s(n: int) -> float:
        if n not in prefill:
            x = torch.randn(1, n, D, device=dev, dtype=dt)
            with torch.inference_mode():
                prefill[n] = timed(lambda: bb.lm_forward(x), dev)
            print(f"prefill {n} tokens: {prefill[n]:.2f} s", flush=True)
        return prefill[n]

    frames_sorted = sorted(args.frames)
    sizes = sorted({-(-T // args.k) * per for T in frames_sorted} |
                   {T * per for T in frames_sorted if T * per <= args.max_prefill_tokens})
    for n in sizes:
        prefill_s(n)
    fit = fit_prefill(prefill) if len(prefill) >= 2 else None
    rows_out = []
    for T in frames_sorted:
        x = torch.randn(T, rows, cols, D, device=dev, dtype=dt)
        with torch.inference_mode():
            t_enc, mem = peak_extra_mib(lambda x=x: enc(x), dev)
        del x
        full, pooled = T * per, -(-T // args.k) * per
        t_pool = prefill[pooled]
        if full in prefill:
            t_full, full_txt = prefill[full], f"{prefill[full]:.1f}"
        elif fit is not None:
            t_full = fit(full)
            full_txt = f"≈{t_full:.0f} (extrapolated)"
        else:
            t_full, full_txt = float("nan"), "not run"
        tower = tower_per_frame * T
        share = t_enc / (tower + t_enc + t_pool)
        rows_out.append([T, full, pooled, f"{tower:.1f}", f"{t_enc:.2f}", full_txt, f"{t_pool:.1f}",
                         f"{t_full - t_pool:.0f}", f"{t_enc / (t_full - t_pool):.3f}", f"{100 * share:.1f}%",
                         round(mem)])
        print(f"T={T}: encoder {t_enc:.2f} s, {mem:.0f} MiB", flush=True)
    print(f"\n{environment()}; encoder {n_params / 1e6:.1f} M parameters; tower {tower_per_frame:.2f} s/frame "
          f"(timed on {args.tower_frames} frames, scaled); `{command_line()}`\n")
    print(table(["frames", "tokens", f"tokens k={args.k}", "tower s (scaled)", "encoder s", "prefill full s",
                 f"prefill k={args.k} s", "prefill saved s", "encoder / saved",
                 "encoder share of tower + encoder + pooled prefill", "encoder peak MiB"], rows_out))


if __name__ == "__main__":
    main()
