"""videollm-mini on needle sets built from photos the method was not developed on (gradio's bus, cheetah, lion).

16:9 videos (640×360) of looped shipped footage (bikes, bigbuckbunny, carphone), one photo filling the frame for
4 s at depth 0.1, 0.5 or 0.9, every sampled frame kept (uniform, no budget, 0.5 fps), "Which of these objects
appears in the video?" with four options: ImageNet's own names (each photo's top class) or everyday words
("a vehicle", "cheetahs", "a lion") against everyday distractors.

    python bench/bench_needle_heldout.py [--length 60] [--out runs/needle_heldout]
"""
from __future__ import annotations

import argparse
import importlib.util
import logging
import time
from pathlib import Path

import torch

logger = logging.getLogger("bench_needle_heldout")
PHOTOS = {"bus": "bus.png", "cheetah": "cheetah.jpg", "lion": "lion.jpg"}
EVERYDAY = {"bus": "a vehicle", "cheetah": "cheetahs", "lion": "a lion"}
EVERYDAY_DISTRACTORS = ["a banana", "an umbrella", "a guitar", "pizza", "a teapot", "a zebra", "a tractor"]
IMAGENET_DISTRACTORS = ["banana", "umbrella", "acoustic guitar", "pizza", "teapot", "zebra", "tractor"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--length", type=float, default=60.0)
    ap.add_argument("--out", type=Path, default=Path("runs/needle_heldout"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from videollm.answer.reasoning import run_mode
    from videollm.backbones import load_backbone
    from videollm.compressors import create_compressor
    from videollm.config import PipelineConfig
    from videollm.eval.tasks.needle import QUESTION, NeedleSpec, build_needle_set, load_image
    from videollm.pipeline import VideoQAPipeline
    from videollm.question import format_question, normalize_options
    from videollm.runtime.generation import GenerationConfig
    from videollm.video import SamplingConfig

    spec = importlib.util.find_spec("gradio")
    images = Path(next(iter(spec.submodule_search_locations))) / "media_assets" / "images"
    photos = {n: images / f for n, f in PHOTOS.items()}
    mini = load_backbone("videollm-mini", device="cpu")
    pipe = VideoQAPipeline(mini, PipelineConfig(model="videollm-mini"))
    labels = {}
    for n, p in photos.items():
        top = mini.frame_classes(torch.from_numpy(load_image(p, 360, 640))[None], k=3)[0].classes
        labels[n] = mini.class_names[top[0]]
        logger.info("%s reads as %s", n, [mini.class_names[c] for c in top])
    for kind in ("imagenet", "everyday"):
        t = time.perf_counter()
        words = labels if kind == "imagenet" else EVERYDAY
        root = args.out / f"{kind}_{args.length:g}s"
        items = build_needle_set(root, NeedleSpec(
            lengths=[args.length], depths=[0.1, 0.5, 0.9], needles=[f"{p}={words[n]}" for n, p in photos.items()],
            needles_per_cell=3, aspect="16:9", size=360,
            distractors=IMAGENET_DISTRACTORS if kind == "imagenet" else EVERYDAY_DISTRACTORS), progress=False)
        right = 0
        for it in items:
            video = pipe.load(root / "videos" / it.video, SamplingConfig(num_frames=None, fps=0.5))
            try:
                visual = create_compressor("uniform", mini)(video, query=QUESTION, budget=None)
            finally:
                video.close()
            out = run_mode("direct", mini, format_question(QUESTION, it.options), visual,
                           normalize_options(it.options), GenerationConfig(max_new_tokens=2))
            right += out.choice == it.answer
            if out.choice != it.answer:
                logger.info("wrong: %s %s answer %s, chose %s", it.qid, it.options, it.answer, out.choice)
        print(f"{kind} words: {right} of {len(items)} right ({time.perf_counter() - t:.0f} s)")


if __name__ == "__main__":
    main()
