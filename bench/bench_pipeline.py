"""End-to-end latency and peak memory per stage (decode, vision, compress, prefill, generate).

    python bench/bench_pipeline.py --model tiny-random --frames 32
    python bench/bench_pipeline.py --model llava-onevision-0.5b-random --frames 8   # real size, random weights

Stage timings come from the pipeline's own StageTimer; peak memory is the process RSS high-water mark after
each stage (CPU) or torch's CUDA peak per stage (GPU).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from common import cuda_peak_mib, environment, peak_rss_mib, table

from videollm.backbones import load_backbone
from videollm.compressors import create_compressor
from videollm.question import format_question
from videollm.runtime.generation import GenerationConfig, generate
from videollm.synthetic import write_video
from videollm.timing import StageTimer
from videollm.video import SamplingConfig, load_video


def run_once(backbone, video_path, frames, compressor, budget, new_tokens):
    timer = StageTimer()
    mem = {}
    cuda = torch.cuda.is_available()

    def mark(stage):
        mem[stage] = cuda_peak_mib() if cuda else peak_rss_mib()
        if cuda:
            torch.cuda.reset_peak_memory_stats()

    with timer.activate():
        t = time.perf_counter()
        video = load_video(video_path, SamplingConfig(num_frames=frames))
        timer.seconds["open"] += time.perf_counter() - t
        comp = create_compressor(compressor, backbone)
        t = time.perf_counter()
        vt = comp(video, query="What happens?", budget=budget)
        timer.seconds["compress"] += time.perf_counter() - t - timer.seconds["decode"] - timer.seconds["vision"]
        mark("vision")
        inputs = backbone.build_inputs(format_question("What happens in the video?"), vt)
        out = generate(backbone, inputs.embeds, GenerationConfig(max_new_tokens=new_tokens, stop_strings=()))
        mark("llm")
    return timer.as_dict(), mem, vt.num_tokens, inputs.embeds.shape[1], len(out.token_ids)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny-random")
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--compressor", default="uniform")
    ap.add_argument("--budget", type=int, default=None)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    t = time.perf_counter()
    backbone = load_backbone(args.model, device=args.device, dtype=args.dtype)
    load_s = time.perf_counter() - t
    params = sum(p.numel() for p in backbone.model.parameters())
    with tempfile.TemporaryDirectory() as tmp:
        path = write_video(Path(tmp) / "v.mp4", 60 * 25, fps=25, size=(360, 640), gop=250)  # 1 minute
        results = [run_once(backbone, path, args.frames, args.compressor, args.budget, args.new_tokens)
                   for _ in range(args.repeat)]
    timings, mem, n_vis, n_prompt, n_gen = results[-1]  # last run: warm
    print(environment())
    print(f"model {args.model} ({params / 1e6:.0f}M params, {backbone.dtype}), load {load_s:.1f}s; "
          f"{args.frames} frames of a 1-min 360p video, compressor {args.compressor}, budget {args.budget}")
    rows = [[k, v] for k, v in timings.items()]
    print(table(["stage", "seconds"], rows))
    print(f"visual tokens {n_vis}, prompt length {n_prompt}, generated {n_gen} tokens "
          f"({timings.get('generate', 0) / max(n_gen - 1, 1) * 1000:.1f} ms/token)")
    kind = "CUDA peak allocated" if torch.cuda.is_available() else "process peak RSS"
    print(f"{kind}: after vision+compress {mem['vision']:.0f} MiB, during LLM {mem['llm']:.0f} MiB")


if __name__ == "__main__":
    main()
