"""videollm against the plain transformers path, side by side in one process: same model, frames, question.

Variants, run interleaved (hf, videollm, fast, hf, videollm, fast, ...), medians reported:
  hf        `LlavaOnevisionProcessor` (video processor + chat template) and
            `LlavaOnevisionForConditionalGeneration.generate`, greedy, fp32: what a user already has
  videollm  `VideoQAPipeline` with its defaults (uniform compressor, all 196 tokens per frame, fp32)
  fast      the same pipeline with `--fast-cpu` (int8 dynamic-activation vision tower, `videollm/cpu_speed.py`)
  int8-all  optional: int8 dynamic tower and LLM decoder layers (`--cpu-int8 all`)

All variants share the same weights (the int8 ones quantize a copy of the parts they change), the same frames
(decoded once, handed to both as uint8 arrays) and the same user text; the answer tokens of each variant are
compared with hf's. `--agreement-prompts` adds the error figures: cosine of the visual tokens against fp32 and
top-1 agreement of the first answer tokens over several questions.

    taskset -c 0 python bench/bench_vs_transformers.py --model llava-onevision-0.5b-random --frames 8 --rounds 3
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from common import command_line, environment, peak_rss_mib, table

logger = logging.getLogger("bench_vs_transformers")

# Every round asks the same question about the same frames: videollm's encode-once caches (per-video features,
# the prompt prefix's KV) would answer rounds 2.. from round 1's work, which a single-question user never sees.
# Both are off here so each round costs what one fresh question costs (`bench/eval_throughput.py` measures them).
os.environ["VIDEOLLM_PREFIX_CACHE"] = "0"
os.environ["VIDEOLLM_FEATURE_CACHE_MB"] = "0"

QUESTIONS = ["What is happening in this video? Describe the scene.",
             "How many objects appear in the video?",
             "Where is the cat? Answer with one word.",
             "Which option is right? A. a dog B. a car C. a cup D. a bike"]


# ---- frames and models ----------------------------------------------------------------------------
def decode_frames(video: str, n: int) -> np.ndarray:
    """`n` uniformly sampled frames of `video` (a file or a `videollm.samples` name), uint8 (n, H, W, 3), full size."""
    from pathlib import Path

    from videollm.samples import SAMPLES, sample_path
    from videollm.video import SamplingConfig, load_video

    path = sample_path(video) if video in SAMPLES and not Path(video).exists() else video
    v = load_video(path, SamplingConfig(num_frames=n, max_side=None))
    try:
        return v.read().frames.numpy()
    finally:
        v.close()


def build_processor(backbone: Any) -> Any:
    """LLaVA-OneVision's processor built offline around the backbone's tokenizer and chat template, with the
    published checkpoint's settings (384², SigLIP mean/std 0.5, bicubic; the video placeholder expanded to
    frames × 14 × 14 pooled tokens + 1 newline)."""
    import transformers

    mean, std = list(backbone.image_mean), list(backbone.image_std)
    vcfg = backbone.model.config.vision_config
    size = {"height": vcfg.image_size, "width": vcfg.image_size}
    ip = transformers.LlavaOnevisionImageProcessor(image_mean=mean, image_std=std, size=size)
    vp = transformers.LlavaOnevisionVideoProcessor(image_mean=mean, image_std=std, size=size)
    n_img = (vcfg.image_size // vcfg.patch_size) ** 2
    return transformers.LlavaOnevisionProcessor(image_processor=ip, tokenizer=backbone.tokenizer, video_processor=vp,
                                                num_image_tokens=n_img,
                                                vision_feature_select_strategy=backbone._strategy,
                                                chat_template=backbone.chat_template)


def int8_variant(backbone: Any, choice: str) -> Any:
    """A second backbone sharing every float module with `backbone` except the parts `choice` quantizes,
    which are deep copies quantized by the model cache's path (`prepare_model`, so one set of random weights
    serves all variants)."""
    from videollm.backbones.llava_onevision import LlavaOneVisionBackbone
    from videollm.models import prepare_model

    model = backbone.model
    m2 = copy.copy(model)
    m2._modules = dict(model._modules)
    inner = copy.copy(model.model)
    inner._modules = dict(model.model._modules)
    m2.model = inner
    if choice in ("vision", "all"):
        inner.vision_tower = copy.deepcopy(model.model.vision_tower)
    if choice in ("llm", "all"):
        inner.language_model = copy.deepcopy(model.model.language_model)
    bb = LlavaOneVisionBackbone(m2, backbone.tokenizer, name=f"{backbone.name}+int8-{choice}",
                                image_mean=backbone.image_mean, image_std=backbone.image_std,
                                chat_template=backbone.chat_template)
    prepare_model(bb, cpu_int8=choice)
    return bb


# ---- the two paths -------------------------------------------------------------------------------
def hf_answer(model: Any, processor: Any, frames: np.ndarray, question: str, new_tokens: int,
              eos: list[int]) -> list[int]:
    """transformers end to end: processor (resize, normalize, chat template, placeholder expansion) + generate,
    greedy, stopping at the same end-of-turn ids as videollm."""
    msgs = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
    text = processor.apply_chat_template(msgs, add_generation_prompt=True)
    inputs = processor(text=text, videos=[frames], return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False, eos_token_id=eos,
                             pad_token_id=processor.tokenizer.pad_token_id)
    return out[0, inputs["input_ids"].shape[1]:].tolist()


def hf_prompt_ids(processor: Any, frames: np.ndarray, question: str) -> list[int]:
    msgs = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
    text = processor.apply_chat_template(msgs, add_generation_prompt=True)
    return processor(text=text, videos=[frames], return_tensors="pt")["input_ids"][0].tolist()


def videollm_prompt_ids(backbone: Any, n_visual: int, question: str) -> list[int]:
    """videollm's prompt as ids, the spliced visual tokens (and the newline) shown as video placeholders."""
    p = backbone.prompt_ids(question)
    return p.before + [backbone._video_token_id] * (n_visual + 1) + p.after


class TokenRecorder:
    """Records the ids every `generate` call of the answer step produced (videollm's `Answer` holds text)."""

    def __init__(self) -> None:
        self.ids: list[list[int]] = []

    def __enter__(self) -> "TokenRecorder":
        from videollm.answer import reasoning

        self._mod, self._orig = reasoning, reasoning.generate

        def wrapped(*a: Any, **k: Any) -> Any:
            out = self._orig(*a, **k)
            self.ids.append(list(out.token_ids))
            return out

        reasoning.generate = wrapped
        return self

    def __exit__(self, *exc: Any) -> None:
        self._mod.generate = self._orig


def videollm_answer(pipe: Any, frames: np.ndarray, question: str, new_tokens: int) -> list[int]:
    from videollm.runtime.generation import GenerationConfig
    from videollm.video import Video

    vid = Video.from_frames(frames)  # in memory: the feature cache never serves it, every run encodes
    with TokenRecorder() as rec:
        ans = pipe(vid, question, prompt=question, generation=GenerationConfig(max_new_tokens=new_tokens))
    assert ans.visual_tokens == len(frames) * pipe.backbone.tokens_per_frame, ans.visual_tokens
    logger.info("  %s stages: %s", pipe.backbone.name,
                {k: round(v, 2) for k, v in ans.timings.items() if isinstance(v, float)})
    return rec.ids[-1]


# ---- error figures -------------------------------------------------------------------------------
def visual_tokens(backbone: Any, frames: np.ndarray) -> torch.Tensor:
    with torch.inference_mode():
        return backbone.project(backbone.encode_frames(torch.from_numpy(frames))).float()


def token_cosine(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """Cosine per visual token (mean and min) between two (n, h, w, d) token grids."""
    cos = torch.nn.functional.cosine_similarity(a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1]), dim=-1)
    return {"mean": float(cos.mean()), "min": float(cos.min())}


def greedy_ids(backbone: Any, tokens: torch.Tensor, question: str, n: int) -> list[int]:
    """The first `n` greedy answer ids for `question` over these visual tokens (no EOS stop)."""
    emb = tokens.reshape(-1, tokens.shape[-1])
    inputs = backbone.build_inputs(question, _visual(emb, tokens.shape[0]))
    ids: list[int] = []
    with torch.inference_mode():
        logits, cache = backbone.lm_forward(inputs.embeds)
        for i in range(n):
            ids.append(int(logits.argmax(-1)))
            if i + 1 < n:
                logits, cache = backbone.lm_forward(backbone.embed_ids([[ids[-1]]]), cache)
    return ids


def _visual(embeds: torch.Tensor, frames: int) -> Any:
    from videollm.types import VisualTokens

    per = embeds.shape[0] // frames
    return VisualTokens(
        embeds=embeds,
        frame_ids=torch.arange(frames).repeat_interleave(per),
        patch_ids=torch.arange(per).repeat(frames),
        timestamps=torch.arange(frames, dtype=torch.float64),
        num_sampled_frames=frames,
    )


def agreement(a: list[int], b: list[int]) -> tuple[int, int]:
    """(matching leading ids, ids compared): how far b follows a token for token."""
    k = 0
    for x, y in zip(a, b):
        if x != y:
            break
        k += 1
    return k, min(len(a), len(b))


# ---- driver --------------------------------------------------------------------------------------
@dataclass
class Variant:
    name: str
    run: Callable[[], list[int]]
    seconds: list[float] = field(default_factory=list)
    ids: list[list[int]] = field(default_factory=list)


def interleave(variants: list[Variant], rounds: int) -> None:
    for r in range(rounds):
        for v in variants:
            t = time.perf_counter()
            v.ids.append(v.run())
            v.seconds.append(time.perf_counter() - t)
            logger.info("round %d %-9s %.2f s  ids %s", r + 1, v.name, v.seconds[-1], v.ids[-1][:8])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="llava-onevision-0.5b-random")
    ap.add_argument("--video", default="bigbuckbunny", help="a file or a videollm.samples name")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--question", default=QUESTIONS[0])
    ap.add_argument("--new-tokens", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0, help="random-weight draw of the *-random presets")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    ap.add_argument("--variants", nargs="+", default=["hf", "videollm", "fast"],
                    choices=["hf", "videollm", "fast", "int8-all"])
    ap.add_argument("--agreement-prompts", type=int, default=0,
                    help="also compare the first answer ids of fp32 and int8 over this many questions")
    ap.add_argument("--agreement-tokens", type=int, default=4)
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)

    from videollm.backbones import load_backbone
    from videollm.config import PipelineConfig
    from videollm.cpu_speed import FAST_CPU_INT8, describe_cpu
    from videollm.pipeline import VideoQAPipeline

    frames = decode_frames(args.video, args.frames)
    logger.info("frames %s; cpu %s", frames.shape, describe_cpu())
    t = time.perf_counter()
    seed = {"seed": args.seed} if args.seed else {}
    bb = load_backbone(args.model, device="cpu", dtype="float32", **seed)
    logger.info("model built in %.1f s", time.perf_counter() - t)
    processor = build_processor(bb)
    n_visual = args.frames * bb.tokens_per_frame
    same_prompt = hf_prompt_ids(processor, frames, args.question) == videollm_prompt_ids(bb, n_visual, args.question)
    logger.info("prompt ids identical: %s", same_prompt)

    pipes = {"videollm": (bb, "none")}
    if "fast" in args.variants:
        pipes["fast"] = (int8_variant(bb, FAST_CPU_INT8), FAST_CPU_INT8)
    if "int8-all" in args.variants:
        pipes["int8-all"] = (int8_variant(bb, "all"), "all")
    runners: dict[str, Callable[[], list[int]]] = {
        "hf": lambda: hf_answer(bb.model, processor, frames, args.question, args.new_tokens,
                                sorted(bb.eos_token_ids))}
    for name, (backbone, choice) in pipes.items():
        pipe = VideoQAPipeline(backbone, PipelineConfig(model=args.model, device="cpu", dtype="float32",
                                                        cpu_int8=choice))
        runners[name] = (lambda p: lambda: videollm_answer(p, frames, args.question, args.new_tokens))(pipe)
    variants = [Variant(n, runners[n]) for n in args.variants]
    interleave(variants, args.rounds)

    ref = next((v for v in variants if v.name == "hf"), variants[0])
    base = statistics.median(ref.seconds)
    rows, result = [], {"command": command_line(), "environment": environment(), "cpu": describe_cpu(),
                        "frames": list(frames.shape), "prompt_ids_identical": same_prompt, "variants": {}}
    for v in variants:
        med = statistics.median(v.seconds)
        same = all(ids == ref.ids[0] for ids in v.ids)
        rows.append([v.name, med, min(v.seconds), max(v.seconds), base / med, "yes" if same else "NO"])
        result["variants"][v.name] = {"seconds": v.seconds, "median": med, "speedup_vs_hf": base / med,
                                      "ids": v.ids[0], "identical_to_hf": same}
    if args.agreement_prompts:
        result["agreement"] = measure_agreement(bb, pipes, frames, args.agreement_prompts, args.agreement_tokens)
    print()
    print(environment(), "|", describe_cpu())
    print(f"{args.model} (seed {args.seed}), {args.video}: {args.frames} frames {frames.shape[1]}x{frames.shape[2]}, "
          f"{args.new_tokens} new tokens, {args.rounds} interleaved rounds; prompt ids identical: {same_prompt}")
    print(table(["variant", "median s", "min s", "max s", "speed-up vs hf (medians)", "answer ids = hf"], rows))
    for name, a in result.get("agreement", {}).items():
        print(f"{name}: visual-token cosine mean {a['cosine']['mean']:.5f} min {a['cosine']['min']:.5f}; "
              f"first-token agreement {a['first_token']}; leading ids matching {a['leading']}")
    print(f"peak RSS {peak_rss_mib():.0f} MiB")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


def measure_agreement(bb: Any, pipes: dict[str, tuple[Any, str]], frames: np.ndarray, prompts: int,
                      tokens: int) -> dict[str, Any]:
    """Cosine of each int8 variant's visual tokens against fp32, and how many of the first `tokens` greedy
    answer ids match fp32's, over `prompts` questions (each variant sees its own visual tokens)."""
    ref_tokens = visual_tokens(bb, frames)
    questions = (QUESTIONS * prompts)[:prompts]
    ref_ids = [greedy_ids(bb, ref_tokens, q, tokens) for q in questions]
    out: dict[str, Any] = {}
    for name, (backbone, choice) in pipes.items():
        if choice == "none":
            continue
        toks = visual_tokens(backbone, frames)
        ids = [greedy_ids(backbone, toks, q, tokens) for q in questions]
        first = sum(a[0] == b[0] for a, b in zip(ref_ids, ids))
        lead = [agreement(a, b) for a, b in zip(ref_ids, ids)]
        out[name] = {"cosine": token_cosine(ref_tokens, toks), "first_token": f"{first}/{len(questions)}",
                     "leading": [f"{k}/{n}" for k, n in lead], "ids": ids, "ref_ids": ref_ids}
        logger.info("%s agreement %s", name, out[name])
    return out


if __name__ == "__main__":
    main()
