"""LongVU compressor: visual tokens after each stage, and its own latency per frame next to the vision tower's.

Models are the real architectures with **random weights** (no hub here): the vision tower is SigLIP-so400m at
384 px with LLaVA-OneVision-0.5B's projector (14×14 = 196 tokens per frame), DINOv2-small at 378 px. The LLM
has the 0.5B model's width but only 2 layers (only its input embeddings are used, for the query). Random DINOv2
weights still map identical frames to identical features, so frozen-frame dedup is exact, but how far apart
two *different* real frames land is not what pretrained DINOv2 would give: read real-clip dedup with that in mind.

    python bench/bench_longvu.py                       # CPU, a few minutes on 2 cores
    python bench/bench_longvu.py --device cuda --dtype bfloat16 --long-minutes 20
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from videollm._compat import require
from videollm.timing import StageTimer

logger = logging.getLogger("bench_longvu")
STAGES = ("sampling", "dedup", "query", "stc", "budget")


def build_backbone(device: str, dtype: torch.dtype, llm_layers: int = 2) -> Any:
    """LLaVA-OneVision-0.5B's vision tower and projector at full size, random weights."""
    transformers = require("transformers")
    from videollm.backbones.llava_onevision import LlavaOneVisionBackbone
    from videollm.backbones.tiny import CHATML_TEMPLATE, build_tokenizer

    tok = build_tokenizer()
    vision = transformers.SiglipVisionConfig(hidden_size=1152, intermediate_size=4304, num_hidden_layers=26,
                                             num_attention_heads=16, image_size=384, patch_size=14)
    text = transformers.Qwen2Config(vocab_size=len(tok), hidden_size=896, intermediate_size=4864,
                                    num_hidden_layers=llm_layers, num_attention_heads=14, num_key_value_heads=2,
                                    max_position_embeddings=32768, tie_word_embeddings=True)
    cfg = transformers.LlavaOnevisionConfig(vision_config=vision, text_config=text,
                                            image_token_index=tok.convert_tokens_to_ids("<image>"),
                                            video_token_index=tok.convert_tokens_to_ids("<video>"),
                                            vision_feature_layer=-1, vision_feature_select_strategy="full")
    torch.manual_seed(0)
    model = transformers.LlavaOnevisionForConditionalGeneration(cfg).to(device, dtype)
    return LlavaOneVisionBackbone(model, tok, name="llava-ov-0.5b-shape-random", chat_template=CHATML_TEMPLATE)


def sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def vision_ms_per_frame(backbone: Any, n: int = 16, reps: int = 2) -> float:
    frames = torch.randint(0, 255, (n, 360, 640, 3), dtype=torch.uint8)
    backbone.frame_tokens(frames[:2])  # warm-up
    sync()
    t = time.perf_counter()
    for _ in range(reps):
        backbone.frame_tokens(frames)
    sync()
    return (time.perf_counter() - t) / (reps * n) * 1000


def run_case(name: str, video: Any, backbone: Any, options: dict[str, Any], query: str, budget: int | None,
             warmup: bool = False) -> dict[str, Any]:
    from videollm.compressors import create_compressor

    comp = create_compressor("longvu", backbone, **options)
    comp.dino()(torch.zeros(2, 64, 64, 3, dtype=torch.uint8))  # build and warm up outside the timed region
    if warmup:  # GPU: first calls on new shapes pay for kernel selection; time the second run
        with torch.inference_mode():
            comp(video, query=query, budget=budget)
    sync()
    timer = StageTimer()
    with timer.activate(), torch.inference_mode():
        vt = comp(video, query=query, budget=budget)
    secs = dict(timer.seconds)
    st = vt.stats
    n, kept = st["sampled_frames"], len(st["stages"]["query"]["full_frame_ids"]) + \
        st["stages"]["query"]["reduced_frames"]
    own = secs.get("dino", 0.0) + secs.get("compress", 0.0)
    return {
        "case": name, "budget": budget, "sampled": n, "kept_frames": kept, "final_frames": len(vt.kept_frames),
        "tokens_after": st["tokens_after"], "frames_after": st["frames_after"],
        "full_res_frames": len(st["full_res_frames"]), "tpf_full": st["tokens_per_frame_full"],
        "tpf_reduced": st["tokens_per_frame_reduced"], "stc_ran": st["stages"]["stc"]["ran"],
        "dedup_ran": st["stages"]["dedup"]["ran"], "mode": st["stages"]["query"]["mode"],
        "seconds": {k: round(v, 3) for k, v in secs.items()},
        "ms_per_sampled_frame": {
            "compressor_own": 1000 * own / max(1, n), "dino": 1000 * secs.get("dino", 0.0) / max(1, n),
            "decisions": 1000 * secs.get("compress", 0.0) / max(1, n),
            "vision_per_kept_frame": 1000 * secs.get("vision", 0.0) / max(1, kept)},
    }


def long_video(path: Path, minutes: float) -> Path:
    """Static scenes that come back (A B A C B D ...) at 1 fps: the repeats LongVU's dedup is built for."""
    from videollm.synthetic import scenes_video

    total = int(minutes * 60)
    pattern = [40, 25, 40, 60, 25, 30, 50, 20]  # seconds per scene; scene ids repeat through the palette
    lengths: list[int] = []
    while sum(lengths) < total:
        lengths.append(pattern[len(lengths) % len(pattern)])
    lengths[-1] -= sum(lengths) - total
    return scenes_video(path, lengths, fps=1.0, size=(224, 384))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--clip", action="append", default=None, help="video files (default: the shipped samples)")
    ap.add_argument("--clip-fps", type=float, default=4.0, help="LongVU sampling rate for the short real clips")
    ap.add_argument("--long-minutes", type=float, default=3.0)
    ap.add_argument("--budgets", default="none,1024,256")
    ap.add_argument("--dino-model", default="vit_small_patch14_dinov2", help="any timm DINOv2 (LongVU: giant)")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--warmup", action="store_true", help="run each case once untimed first (GPU)")
    ap.add_argument("--vision-frames", type=int, default=16, help="batch for the standalone vision-tower timing")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from videollm.device import resolve_dtype
    from videollm.video import SamplingConfig, load_video

    dtype = resolve_dtype(args.dtype, torch.device(args.device))
    backbone = build_backbone(args.device, dtype)
    dino_opts = {"dino_pretrained": False, "dino_model": args.dino_model}
    clips = args.clip
    if clips is None:
        from videollm.samples import SAMPLES, sample_path

        clips = [str(sample_path(n)) for n in SAMPLES]
    budgets = [None if b == "none" else int(b) for b in args.budgets.split(",")]
    query = "What does the rabbit do after the butterfly lands?"
    results: list[dict[str, Any]] = []
    vision_ms = vision_ms_per_frame(backbone, n=args.vision_frames, reps=2 if args.vision_frames >= 8 else 1)
    with tempfile.TemporaryDirectory() as tmp:
        long_path = long_video(Path(tmp) / "long.mp4", args.long_minutes)
        cases = [(Path(c).stem, c, {"fps": args.clip_fps}) for c in clips]
        cases.append((f"generated {args.long_minutes:g} min, repeats", str(long_path),
                      {"max_frames": int(args.long_minutes * 60) + 1}))
        for name, path, opts in cases:
            for budget in budgets:
                video = load_video(path, SamplingConfig(num_frames=8))
                try:
                    r = run_case(name, video, backbone, {**dino_opts, **opts}, query, budget, args.warmup)
                finally:
                    video.close()
                results.append(r)
                logger.warning("%s budget=%s: %s", name, budget, r["tokens_after"])
    report = {"device": args.device, "dino_model": args.dino_model, "dtype": str(dtype),
              "torch_threads": torch.get_num_threads(),
              "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
              "vision_ms_per_frame": vision_ms, "vision_frames": args.vision_frames, "results": results}
    print(markdown(report))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
    return 0


def markdown(report: dict[str, Any]) -> str:
    dev = report["gpu"] or f"CPU, {report['torch_threads']} threads"
    lines = [f"Device: {dev}, {report['dtype']}; DINOv2: `{report['dino_model']}`. "
             "Vision tower (SigLIP-so400m + projector) alone: "
             f"**{report['vision_ms_per_frame']:.1f} ms/frame** (batch {report['vision_frames']}).", "",
             "| video | budget | frames sampled → after dedup → with tokens | tokens: sampled → dedup → query → "
             "STC → budget | full-res frames (of kept) | tokens/frame full / reduced | LongVU own ms/frame "
             "(DINOv2 + decisions) | vision ms/kept frame |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in report["results"]:
        t = r["tokens_after"]
        ms = r["ms_per_sampled_frame"]
        lines.append(
            f"| {r['case']} | {r['budget'] or 'none (8192 ctx)'} | {r['sampled']} → {r['kept_frames']} → "
            f"{r['final_frames']} | " + " → ".join(str(t[s]) for s in STAGES) +
            f" | {r['full_res_frames']}/{r['kept_frames']} ({r['mode']}) | {r['tpf_full']} / {r['tpf_reduced']} | "
            f"{ms['compressor_own']:.1f} ({ms['dino']:.1f} + {ms['decisions']:.2f}) | "
            f"{ms['vision_per_kept_frame']:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
