"""Which CPU settings pay, part by part, on the real-size LLaVA-OneVision-0.5B (random weights).

Every comparison is interleaved in one process (A B C A B C ...) and reported as medians and ratios:
  --part tower    the SigLIP tower (+ projector) on the same frames: fp32, int8 dynamic (`--cpu-int8 vision`),
                  bf16 (only meaningful where the CPU has AVX512-BF16/AMX); cosine of the visual tokens vs fp32
  --part batch    seconds per frame of the fp32 and int8 tower at several frame batch sizes (`chunk_size`)
  --part prefill  the LLM prefill of a video prompt (frames × 196 tokens + text): fp32 vs int8 decoder layers
                  (`--cpu-int8 llm`), with the cosine of the last logits and top-1 agreement

    taskset -c 0 python bench/bench_cpu_fast.py --part tower batch prefill --threads 1
"""
from __future__ import annotations

import argparse
import copy
import logging
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from common import command_line, environment, table

logger = logging.getLogger("bench_cpu_fast")


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def interleaved(fns: dict[str, Callable[[], Any]], rounds: int) -> tuple[dict[str, list[float]], dict[str, Any]]:
    secs: dict[str, list[float]] = {k: [] for k in fns}
    outs: dict[str, Any] = {}
    for r in range(rounds):
        for k, fn in fns.items():
            s, outs[k] = timed(fn)
            secs[k].append(s)
            logger.info("round %d %-10s %.2f s", r + 1, k, s)
    return secs, outs


def cosine(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    c = torch.nn.functional.cosine_similarity(a.float().reshape(-1, a.shape[-1]), b.float().reshape(-1, b.shape[-1]),
                                              dim=-1)
    return float(c.mean()), float(c.min())


def variant(bb: Any, part: str, how: str) -> Any:
    """A backbone sharing `bb`'s modules except a copy of `part` ("vision"/"llm") made int8 or bf16."""
    from bench_vs_transformers import int8_variant

    if how == "int8":
        return int8_variant(bb, part)
    from videollm.backbones.llava_onevision import LlavaOneVisionBackbone

    m2 = copy.copy(bb.model)
    m2._modules = dict(bb.model._modules)
    inner = copy.copy(bb.model.model)
    inner._modules = dict(bb.model.model._modules)
    m2.model = inner
    if part == "vision":
        inner.vision_tower = copy.deepcopy(bb.model.model.vision_tower).to(torch.bfloat16)
        inner.multi_modal_projector = copy.deepcopy(bb.model.model.multi_modal_projector).to(torch.bfloat16)
    out = LlavaOneVisionBackbone(m2, bb.tokenizer, name=bb.name + "+bf16", chat_template=bb.chat_template)
    out.dtype = torch.bfloat16
    return out


def part_tower(bb: Any, frames: torch.Tensor, rounds: int, bf16: bool) -> list[list[Any]]:
    variants = {"fp32": bb, "int8": variant(bb, "vision", "int8")}
    if bf16:
        variants["bf16"] = variant(bb, "vision", "bf16")
    fns = {k: (lambda v: lambda: v.project(v.encode_frames(frames)))(v) for k, v in variants.items()}
    secs, outs = interleaved(fns, rounds)
    base = statistics.median(secs["fp32"])
    rows = []
    for k in fns:
        med = statistics.median(secs[k])
        cm, cmin = cosine(outs["fp32"], outs[k])
        rows.append([f"tower+projector, {len(frames)} frames", k, med, med / len(frames), base / med, f"{cm:.5f}",
                     f"{cmin:.5f}"])
    return rows


def part_batch(bb: Any, frames: torch.Tensor, sizes: list[int], rounds: int) -> list[list[Any]]:
    q = variant(bb, "vision", "int8")
    fns = {}
    for b in sizes:
        for name, v in (("fp32", bb), ("int8", q)):
            fns[f"{name} b={b}"] = (lambda v, b: lambda: [v.encode_frames(frames[i:i + b])
                                                          for i in range(0, len(frames), b)])(v, b)
    secs, _ = interleaved(fns, rounds)
    rows = []
    for k, s in secs.items():
        name, b = k.split(" b=")
        med = statistics.median(s)
        rows.append([f"tower, {len(frames)} frames", name, int(b), med, med / len(frames)])
    return rows


def part_prefill(bb: Any, n_frames: int, rounds: int, prompts: int) -> list[list[Any]]:
    q = variant(bb, "llm", "int8")
    g = torch.Generator().manual_seed(0)
    n = n_frames * bb.tokens_per_frame + 30
    # visual-token-like inputs: embeddings of random ids (the scale the LLM sees)
    inputs = [bb.embed_ids(torch.randint(0, len(bb.tokenizer), (n,), generator=g))[None] for _ in range(prompts)]
    fns = {"fp32": lambda: [bb.lm_forward(x)[0] for x in inputs], "int8": lambda: [q.lm_forward(x)[0] for x in inputs]}
    secs, outs = interleaved(fns, rounds)
    base = statistics.median(secs["fp32"])
    top1 = sum(int(a.argmax()) == int(b.argmax()) for a, b in zip(outs["fp32"], outs["int8"]))
    rows = []
    for k in fns:
        med = statistics.median(secs[k]) / prompts
        cm = statistics.mean(cosine(a, b)[0] for a, b in zip(outs["fp32"], outs[k]))
        rows.append(
            [
                f"LLM prefill, {n} tokens",
                k,
                med,
                base / prompts / med,
                f"{cm:.5f}",
                f"{top1}/{prompts}" if k == "int8" else "-",
            ]
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", nargs="+", default=["tower"], choices=["tower", "batch", "prefill"])
    ap.add_argument("--model", default="llava-onevision-0.5b-random")
    ap.add_argument("--frames", type=int, default=2, help="frames per tower measurement")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--prefill-frames", type=int, default=8)
    ap.add_argument("--prompts", type=int, default=3, help="prefill: random prompts compared")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-bf16", action="store_true", help="skip bf16 in --part tower")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    from bench_vs_transformers import decode_frames

    from videollm.backbones import load_backbone
    from videollm.cpu_speed import describe_cpu

    bb = load_backbone(args.model, device="cpu", dtype="float32")
    need = max([args.frames, *args.batch_sizes])
    frames = torch.from_numpy(decode_frames("bigbuckbunny", need))
    out = [command_line(), f"{environment()} | {describe_cpu()}"]
    with torch.inference_mode():
        if "tower" in args.part:
            rows = part_tower(bb, frames[: args.frames], args.rounds, not args.no_bf16)
            out.append(table(["measure", "variant", "median s", "s/frame", "speed-up vs fp32", "cosine mean",
                              "cosine min"], rows))
        if "batch" in args.part:
            rows = part_batch(bb, frames[:need], args.batch_sizes, args.rounds)
            out.append(table(["measure", "variant", "batch", "median s", "s/frame"], rows))
        if "prefill" in args.part:
            rows = part_prefill(bb, args.prefill_frames, args.rounds, args.prompts)
            out.append(table(["measure", "variant", "median s/prompt", "speed-up vs fp32", "last-logit cosine",
                              "top-1 = fp32"], rows))
    print("\n\n".join(out))


if __name__ == "__main__":
    main()
