"""Tempo: time per segment of the relevance pass, and tokens per frame actually used at 4K / 8K budgets.

Three parts, each printed as a markdown table:

1. **allocation** (pure ATA, instant): tokens per frame used at budgets 4096 / 8192 for videos of 5-60 minutes
   at 2 fps (capped at 1024 frames → up to 128 segments), m = 4, M = 128 per segment as the reference, with
   timestamps counted, for flat, random and peaked (10 % relevant) relevance.
2. **end to end on tiny-random** (random weights: relevance is noise, only the mechanics and timing count):
   a generated long video at 2 fps through `TempoCompressor` at 4K / 8K: segments, tokens per frame, relevance
   seconds per segment.
3. **real weights, videollm-mini**: the 24 s real-footage video with a one-second cheetah photo (as in
   tests/test_tempo_mini.py): relevance seconds per segment, the moment's rank, uniform vs Tempo at budget 36.
4. **real-size architecture, random weights** (`--real-size`): LLaVA-OneVision-0.5B's SigLIP + Qwen2-0.5B as the
   SVLM, seconds per segment of the relevance pass with native tokens (8 × 196 per prompt) and pooled to 16
   per frame.

    python bench/bench_tempo.py                      # parts 1-3, a few minutes on 2 cores
    python bench/bench_tempo.py --real-size          # + part 4 (slow on CPU)
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import command_line, environment, table  # noqa: E402

from videollm.compressors.ata import allocate, tokens_per_segment  # noqa: E402
from videollm.timing import StageTimer  # noqa: E402

logger = logging.getLogger("bench_tempo")
BUDGETS = (4096, 8192)


def part_allocation(stamp_cost: int) -> str:
    rows = []
    rng = np.random.default_rng(0)
    m, big_m = tokens_per_segment(0.5, 8), tokens_per_segment(16, 8)
    for minutes in (5, 10, 30, 60):
        frames = min(int(minutes * 60 * 2), 1024)
        n = -(-frames // 8)
        patterns = {"flat": np.full(n, 0.5), "random": rng.random(n)}
        peaked = rng.random(n) * 0.2
        peaked[rng.choice(n, max(1, n // 10), replace=False)] = 0.9 + 0.1 * rng.random(max(1, n // 10))
        patterns["peaked 10%"] = peaked
        for name, scores in patterns.items():
            row = [minutes, frames, n, name]
            for b in BUDGETS:
                a = allocate(scores, b, m, big_m, np.full(n, stamp_cost))
                row += [round(a.tokens.sum() / frames, 2), a.total]
            rows.append(row)
    heads = ["minutes", "frames", "segments", "relevance"]
    for b in BUDGETS:
        heads += [f"tok/frame @{b // 1024}K", f"total @{b // 1024}K"]
    return table(heads, rows)


def part_tiny(minutes: float) -> str:
    from videollm.backbones.tiny import build_tiny_random
    from videollm.compressors.tempo import TempoCompressor
    from videollm.synthetic import write_video
    from videollm.video import SamplingConfig, load_video

    bb = build_tiny_random()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = write_video(Path(tmp) / "long.mp4", int(minutes * 60 * 5), fps=5, size=(64, 80))
        video = load_video(path, SamplingConfig(num_frames=8))
        for b in BUDGETS:
            timer = StageTimer()
            with timer.activate():
                out = TempoCompressor(bb, chunk_size=64)(video, query="What moves? A. a square B. a circle",
                                                         budget=b)
            t = timer.as_dict()
            s = out.stats
            rows.append([b, out.num_sampled_frames, s["num_segments"], s["segment_tokens"], s["timestamp_tokens"],
                         out.num_tokens, round(s["segment_tokens"] / out.num_sampled_frames, 2),
                         round(t.get("relevance", 0) / s["num_segments"], 4), round(t.get("vision", 0), 1)])
    return table(["budget", "frames", "segments", "segment tokens", "stamp tokens", "total", "tok/frame",
                  "relevance s/segment", "vision s (all)"], rows)


def part_mini() -> str:
    from videollm.backbones import load_backbone
    from videollm.compressors import create_compressor
    from videollm.question import format_question
    from videollm.synthetic import footage_with_moment, shipped_photo
    from videollm.video import SamplingConfig, load_video

    mini = load_backbone("videollm-mini", device="cpu")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = footage_with_moment(Path(tmp) / "needle.mp4", shipped_photo("cheetah"), seconds=24.0,
                                   moment=(11.0, 12.0))
        video = load_video(path, SamplingConfig(fps=2, max_frames=256))
        q = format_question("What animal appears in the video?", ["a cheetah", "a dog", "a horse", "an elephant"])
        cheetah = mini.class_names.index("cheetah")
        for name in ("uniform", "tempo"):
            timer = StageTimer()
            with timer.activate():
                out = create_compressor(name, mini)(video, query=q, budget=36)
            t = timer.as_dict()
            seen = any(cheetah in c for _, c, _ in mini.read_frames(out.without_text()))
            segs = out.stats.get("segments")
            if segs:
                order = sorted(range(len(segs)), key=lambda i: -segs[i]["relevance"])
                rank = 1 + next(r for r, i in enumerate(order) if segs[i]["start"] <= 11.0 <= segs[i]["end"] + 0.5)
                per_seg = round(t.get("relevance", 0) / len(segs), 2)
                rel = " ".join(f"{s['relevance']:.2f}" for s in segs)
            else:
                rank, per_seg, rel = "-", "-", "-"
            rows.append([name, out.num_tokens, len(out.kept_frames), "yes" if seen else "no", rank, per_seg, rel,
                         round(t.get("vision", 0), 1)])
    return table(["compressor", "tokens", "kept frames", "cheetah in kept tokens", "moment's relevance rank",
                  "relevance s/segment", "relevance per segment", "vision s (48 frames)"], rows)


def part_real_size(segments: int) -> str:
    from videollm.backbones.tiny import build_random_llava_onevision_0_5b
    from videollm.compressors.tempo import TempoCompressor
    from videollm.video import Video

    bb = build_random_llava_onevision_0_5b(device="cpu", dtype="float32")
    frames = torch.randint(0, 255, (8 * segments, 224, 224, 3), dtype=torch.uint8)
    rows = []
    for per_frame in (None, 16):
        timer = StageTimer()
        with timer.activate():
            out = TempoCompressor(bb, relevance_tokens_per_frame=per_frame)(Video.from_frames(frames, fps=2.0),
                                                                            query="What happens?", budget=1024)
        t = timer.as_dict()
        prompt = 8 * (per_frame or bb.tokens_per_frame)
        rows.append([per_frame or "native (196)", prompt, segments, round(t.get("relevance", 0) / segments, 2),
                     round(t.get("vision", 0) / (8 * segments), 2), out.num_tokens])
    return table(["SVLM tokens/frame", "visual tokens per prompt", "segments", "relevance s/segment",
                  "vision s/frame", "tokens out"], rows)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--minutes", type=float, default=4.0, help="length of the generated video of part 2")
    p.add_argument("--skip-mini", action="store_true")
    p.add_argument("--real-size", action="store_true")
    p.add_argument("--real-size-segments", type=int, default=2)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)
    from videollm.backbones.tiny import build_tokenizer

    stamp = len(build_tokenizer()("<1234.0 seconds>", add_special_tokens=False)["input_ids"])
    print(f"`{command_line()}` — {environment()}\n")
    t0 = time.perf_counter()
    print(f"### 1. ATA alone (m=4, M=128 per 8-frame segment, {stamp} timestamp tokens per segment)\n")
    print(part_allocation(stamp) + "\n")
    print(f"### 2. tiny-random end to end ({args.minutes:g} min generated video, 2 fps; random weights)\n")
    print(part_tiny(args.minutes) + "\n")
    if not args.skip_mini:
        print("### 3. videollm-mini (real weights), 24 s real footage + 1 s cheetah photo, budget 36\n")
        print(part_mini() + "\n")
    if args.real_size:
        print("### 4. LLaVA-OneVision-0.5B architecture as SVLM (random weights)\n")
        print(part_real_size(args.real_size_segments) + "\n")
    print(f"(wall {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
