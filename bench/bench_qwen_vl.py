"""Qwen2.5-VL through videollm against transformers' processor + `generate`, on one model in one run.

Real Qwen2.5-VL-3B architecture with random weights (`qwen2.5-vl-3b-random`): tower, prefill and decode per
token for both, and a check that the greedy answer ids are the same. Frames are generated in memory (no video
decoding in either timing).

    python bench/bench_qwen_vl.py --frames 8 32 --new-tokens 8 --dtype bfloat16
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import command_line, environment, peak_rss_mib, table  # noqa: E402

QUESTION = "What is happening in this video?"


def _frames(n: int, h: int, w: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 255, (n, h, w, 3), dtype=torch.uint8, generator=g)


def run_videollm(bb, frames: torch.Tensor, fps: float, new_tokens: int) -> dict:
    from videollm.compressors import create_compressor
    from videollm.runtime.generation import GenerationConfig, generate
    from videollm.timing import StageTimer
    from videollm.video import Video

    video = Video.from_frames(frames, fps=fps)
    timer = StageTimer()
    with timer.activate():
        visual = create_compressor("uniform", bb)(video, budget=None)
        inputs = bb.build_inputs(QUESTION, visual)
        out = generate(bb, inputs.embeds, GenerationConfig(max_new_tokens=new_tokens))
    t = timer.as_dict(wall=0.0)
    return {"tower": t.get("vision", 0.0), "prefill": t.get("prefill", 0.0),
            "decode_per_token": t.get("generate", 0.0) / max(1, len(out.token_ids) - 1), "ids": out.token_ids,
            "visual_tokens": visual.num_tokens}


class _Clock:
    """A logits processor that only records when each generation step reaches it."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.times.append(time.perf_counter())
        return scores


def run_transformers(model, processor, frames: torch.Tensor, fps: float, new_tokens: int) -> dict:
    """Processor → generate; the tower is timed on its own once, prefill = first step − tower."""
    from transformers import LogitsProcessorList
    from transformers.video_utils import VideoMetadata

    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": QUESTION}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    n = frames.shape[0]
    meta = [VideoMetadata(total_num_frames=n, fps=fps, frames_indices=list(range(n)))]
    t0 = time.perf_counter()
    enc = processor(text=[text], videos=[frames.numpy()], video_metadata=meta, do_sample_frames=False,
                    return_tensors="pt")
    with torch.inference_mode():
        model.model.get_video_features(enc["pixel_values_videos"].to(model.dtype), enc["video_grid_thw"])
        tower = time.perf_counter() - t0
        clock = _Clock()
        t1 = time.perf_counter()
        out = model.generate(**enc, max_new_tokens=new_tokens, do_sample=False,
                             logits_processor=LogitsProcessorList([clock]))
        t2 = time.perf_counter()
    ids = out[0, enc["input_ids"].shape[1]:].tolist()
    first = clock.times[0] - t1
    return {"tower": tower, "prefill": max(0.0, first - tower), "decode_per_token": (t2 - clock.times[0])
            / max(1, len(ids) - 1), "ids": ids}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-vl-3b-random")
    ap.add_argument("--frames", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--new-tokens", type=int, default=8)
    ap.add_argument("--size", type=int, nargs=2, default=(96, 128), metavar=("H", "W"))
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from videollm.backbones import load_backbone
    from videollm.backbones.qwen_vl_tiny import build_processor

    bb = load_backbone(args.model, device=args.device, dtype=args.dtype)
    processor = build_processor("qwen2_5_vl", bb.tokenizer, 16, 768)
    rows = []
    for n in args.frames:
        frames = _frames(n, *args.size)
        ours = run_videollm(bb, frames, 2.0, args.new_tokens)
        ref = run_transformers(bb.model, processor, frames, 2.0, args.new_tokens)
        same = ours["ids"] == ref["ids"]
        for who, r in (("videollm", ours), ("transformers", ref)):
            rows.append([n, ours["visual_tokens"], who, r["tower"], r["prefill"], r["decode_per_token"] * 1000,
                         "yes" if same else "NO"])
            print(rows[-1], flush=True)
    print(f"{environment()}; {args.model}, {args.dtype}; frames {args.size[0]}×{args.size[1]}; "
          f"peak RSS {peak_rss_mib():.0f} MiB")
    print(table(["frames", "visual tokens", "stack", "tower s", "prefill s", "decode ms/token", "same ids"], rows))
    print(command_line())


if __name__ == "__main__":
    main()
