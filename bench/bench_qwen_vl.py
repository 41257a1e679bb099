"""Qwen2.5-VL through videollm against transformers' processor + `generate`, on one model in one run.

Real Qwen2.5-VL-3B architecture with random weights (`qwen2.5-vl-3b-random`): tower, prefill and decode per
token for both, and a check that the greedy answer ids are the same. Frames are generated in memory (no video
decoding in either timing).

Random weights give near-uniform logits over a 151,936-token vocabulary, so the top two candidates of a step
often differ by less than bf16 rounding; two correct implementations can then pick different tokens. Each
row therefore reports, besides "same ids", the first step where the ids differ, the largest logit difference
between the two stacks at the first step (prompt and prefill identical: 0) and each stack's top-1 − top-2
margin at the diverging step. `--dtype float32 bfloat16` runs both on one model (built in float32 then cast
down): the id check that proves parity is the float32 one; bf16 is the speed that matters on GPUs.

    python bench/bench_qwen_vl.py --frames 8 32 --new-tokens 4 --dtype float32 bfloat16
"""
from __future__ import annotations

import argparse
import gc
import logging
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import command_line, environment, peak_rss_mib, table  # noqa: E402

QUESTION = "What is happening in this video?"
logger = logging.getLogger("bench_qwen_vl")


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
    steps: list[torch.Tensor] = []
    with timer.activate():
        visual = create_compressor("uniform", bb)(video, budget=None)
        inputs = bb.build_inputs(QUESTION, visual)
        out = generate(bb, inputs.embeds, GenerationConfig(max_new_tokens=new_tokens),
                       observers=[lambda ids, scores: steps.append(scores.detach().float().cpu())])
    t = timer.as_dict(wall=0.0)
    return {"tower": t.get("vision", 0.0), "prefill": t.get("prefill", 0.0),
            "decode_per_token": t.get("generate", 0.0) / max(1, len(out.token_ids) - 1), "ids": out.token_ids,
            "visual_tokens": visual.num_tokens, "logits": steps}


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
        out = model.generate(**enc, max_new_tokens=new_tokens, do_sample=False, output_logits=True,
                             return_dict_in_generate=True, logits_processor=LogitsProcessorList([clock]))
        t2 = time.perf_counter()
    ids = out.sequences[0, enc["input_ids"].shape[1]:].tolist()
    first = clock.times[0] - t1
    return {"tower": tower, "prefill": max(0.0, first - tower), "decode_per_token": (t2 - clock.times[0])
            / max(1, len(ids) - 1), "ids": ids, "logits": [x[0].float().cpu() for x in out.logits]}


def _margin(scores: torch.Tensor) -> float:
    top = torch.topk(scores, 2).values
    return float(top[0] - top[1])


def compare(ours: dict, ref: dict) -> dict:
    """Where the greedy ids part, and how close the two stacks' logits are there (see the module docstring)."""
    a, b = ours["ids"], ref["ids"]
    first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
    if first is None and len(a) != len(b):
        first = min(len(a), len(b))
    out = {"same": a == b, "first_diff": first,
           "step0_max_abs": float((ours["logits"][0] - ref["logits"][0]).abs().max())}
    if first is not None and first < min(len(ours["logits"]), len(ref["logits"])):
        out["margin_videollm"] = _margin(ours["logits"][first])
        out["margin_transformers"] = _margin(ref["logits"][first])
        out["step_max_abs"] = float((ours["logits"][first] - ref["logits"][first]).abs().max())
    return out


def _note(c: dict) -> str:
    if c["same"]:
        return "yes"
    if "margin_videollm" not in c:
        return f"NO (from token {c['first_diff']})"
    return (f"NO from token {c['first_diff']}: top-2 margin {c['margin_videollm']:.3g} (videollm) / "
            f"{c['margin_transformers']:.3g} (transformers), max |Δlogit| there {c['step_max_abs']:.3g}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-vl-3b-random")
    ap.add_argument("--frames", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--new-tokens", type=int, default=4)
    ap.add_argument("--size", type=int, nargs=2, default=(96, 128), metavar=("H", "W"))
    ap.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"],
                    help="one run per dtype on the same model (built in the first, cast to the next)")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from videollm.backbones import load_backbone
    from videollm.backbones.qwen_vl import QwenVLBackbone
    from videollm.backbones.qwen_vl_tiny import build_processor
    from videollm.device import resolve_dtype

    bb = load_backbone(args.model, device=args.device, dtype=args.dtype[0])
    processor = build_processor("qwen2_5_vl", bb.tokenizer, 16, 768)
    bb.video_processor = processor.video_processor  # the same processor config on both sides
    rows, details = [], []
    first_logits: dict[int, torch.Tensor] = {}  # frames → videollm's step-0 logits in the first dtype
    for k, dtype in enumerate(args.dtype):
        if k:  # the same weights, cast: a fresh backbone so nothing built for the last dtype is reused
            bb.model.to(resolve_dtype(dtype, bb.device))
            gc.collect()
            bb = QwenVLBackbone(bb.model, bb.tokenizer, processor.video_processor, name=bb.name,
                                chat_template=bb.chat_template, notice=bb.notice)
        for n in args.frames:
            frames = _frames(n, *args.size)
            ours = run_videollm(bb, frames, 2.0, args.new_tokens)
            ref = run_transformers(bb.model, processor, frames, 2.0, args.new_tokens)
            c = compare(ours, ref)
            step0 = ours["logits"][0]
            noise = ""
            if n in first_logits:  # how far this dtype moves the same stack's logits: the rounding noise scale
                noise = (f"; videollm step-0 max |Δlogit| vs {args.dtype[0]} "
                         f"{float((step0 - first_logits[n]).abs().max()):.3g}")
            else:
                first_logits[n] = step0
            details.append(f"{dtype}, {n} frames: videollm {ours['ids']} / transformers {ref['ids']}; step-0 "
                           f"max |Δlogit| {c['step0_max_abs']:.3g}, top-2 margin {_margin(step0):.3g} (videollm) / "
                           f"{_margin(ref['logits'][0]):.3g} (transformers){noise}")
            for who, r in (("videollm", ours), ("transformers", ref)):
                rows.append([n, ours["visual_tokens"], dtype, who, r["tower"], r["prefill"],
                             r["decode_per_token"] * 1000, _note(c)])
            logger.info("%s | %s | %s", rows[-2], rows[-1], details[-1])
    print(f"{environment()}; {args.model}; frames {args.size[0]}×{args.size[1]}; peak RSS {peak_rss_mib():.0f} MiB")
    print(table(["frames", "visual tokens", "dtype", "stack", "tower s", "prefill s", "decode ms/token",
                 "same answer ids"], rows))
    print("\n".join(details))
    print(command_line())


if __name__ == "__main__":
    main()
