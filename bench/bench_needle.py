"""Needle in a haystack on the offline model: accuracy by length × depth for each compressor and budget.

Builds the `needle` task's set (shipped footage + shipped photos), then runs the eval task's resumable runner
once per (compressor, budget) with `videollm-mini` at 1 fps, and reports accuracy per cell, whether the moment
survived the compressor, and accuracy split by that. The vision tower's output is cached across runs (the same
frames are encoded once), so only the compressors and the LLM run per configuration.

    python bench/bench_needle.py --out runs/needle [--lengths 60 180] [--budgets 48 144] [--per-cell 1]
        [--variants square wide everyday]

Variants: `square` (160×160 frames, ImageNet class names as options: every compressor and budget), `wide`
(640×360 frames) and `everyday` (options in everyday words: synonyms, broader names, plurals), the last two
with every frame kept.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from common import command_line, environment, table


class CachedEncoder:
    """`encode_frames` memoised per frame (by content hash): every configuration sees identical features."""

    def __init__(self, backbone: Any):
        self.inner = backbone.encode_frames
        self.cache: dict[str, torch.Tensor] = {}
        backbone.encode_frames = self

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        keys = [hashlib.sha1(f.contiguous().numpy().tobytes()).hexdigest() for f in frames.cpu()]
        todo = [i for i, k in enumerate(keys) if k not in self.cache]
        if todo:
            out = self.inner(frames[todo])
            for i, row in zip(todo, out):
                self.cache[keys[i]] = row
        return torch.stack([self.cache[k] for k in keys])


class KeptRecorder:
    """Wraps the pipeline for the runner and remembers, per video, the timestamps the compressor kept."""

    def __init__(self, pipe: Any):
        self.pipe, self.kept, self.path = pipe, {}, ""

    def load(self, path: str) -> Any:
        self.path = str(path)
        return self.pipe.load(path)

    def __call__(self, video: Any, question: str, options: Any, prompt: str | None = None) -> Any:
        ans = self.pipe(video, question, options, prompt=prompt)
        self.kept[Path(self.path).name] = list(ans.kept_timestamps)
        return ans


VARIANTS: dict[str, dict[str, Any]] = {"square": {}, "wide": {"aspect": "16:9", "size": 360},
                                       "everyday": {"words": "everyday"}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/needle")
    ap.add_argument("--lengths", type=float, nargs="+", default=[60.0, 180.0])
    ap.add_argument("--depths", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0])
    ap.add_argument("--per-cell", type=int, default=1, help="videos per (length, depth)")
    ap.add_argument("--budgets", type=int, nargs="+", default=[48, 144])
    ap.add_argument("--compressors", nargs="+", default=["uniform", "pool", "longvu"])
    ap.add_argument("--fps", type=float, default=1.0, help="sampling rate of the model")
    ap.add_argument("--plot", default=None, help="heat-map PNG (default OUT/needle_heatmap.png)")
    ap.add_argument("--variants", nargs="+", default=["square", "wide", "everyday"], choices=list(VARIANTS))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from videollm.backbones import load_backbone
    from videollm.config import PipelineConfig
    from videollm.eval.report import summarize_run
    from videollm.eval.runner import RunOptions, run
    from videollm.eval.tasks import get_task
    from videollm.eval.tasks.needle import NeedleSpec, build_needle_set, plot_heatmaps, to_sample
    from videollm.pipeline import VideoQAPipeline
    from videollm.runtime.generation import GenerationConfig
    from videollm.video import SamplingConfig

    out = Path(args.out)
    bb = load_backbone("videollm-mini", device="cpu")
    CachedEncoder(bb)
    task = get_task("needle")
    rows, summaries, titles, details = [], [], [], {}
    t_build, n_items = 0.0, 0
    for variant in args.variants:
        spec = NeedleSpec(lengths=args.lengths, depths=args.depths, needles_per_cell=args.per_cell,
                          **VARIANTS[variant])
        t0 = time.perf_counter()
        data = out / ("data" if variant == "square" else f"data_{variant}")
        items = build_needle_set(data, spec)
        t_build += time.perf_counter() - t0
        n_items += len(items)
        samples = [to_sample(i, data) for i in items]
        spans = {i.video: (i.start, i.end) for i in items}
        configs = [("uniform", None)]
        if variant == "square":
            configs += [(c, b) for c in args.compressors for b in args.budgets]
        for comp, budget in configs:
            label = f"{comp} all frames" if budget is None else f"{comp} b{budget}"
            if variant != "square":
                label = f"{variant}: {label}"
            cfg = PipelineConfig(model="videollm-mini", compressor=comp, budget=budget,
                                 sampling=SamplingConfig(num_frames=None, fps=args.fps, max_frames=1024),
                                 generation=GenerationConfig(max_new_tokens=4))
            pipe = KeptRecorder(VideoQAPipeline(bb, cfg))
            run_dir = out / label.replace(": ", "_").replace(" ", "_")
            settings = {"task": "needle", "model": "videollm-mini", "compressor": comp, "budget": budget,
                        "sampling": {"fps": args.fps}, "n_questions": len(samples), "variant": variant}
            t = time.perf_counter()
            run(task, samples, pipe, run_dir, options=RunOptions(progress=True, settings=settings))
            secs = time.perf_counter() - t
            s = summarize_run(run_dir)
            recs = [json.loads(x) for x in (run_dir / "predictions.jsonl").read_text().splitlines() if x.strip()]
            kept = {}
            for r in recs:
                ts = pipe.kept.get(r["video"])
                if ts is None:  # resumed: not re-run this time
                    continue
                a, b = spans[r["video"]]
                kept[r["question_id"]] = any(a <= x < b for x in ts)
            k_ok = [r["correct"] for r in recs if kept.get(r["question_id"]) is True]
            l_ok = [r["correct"] for r in recs if kept.get(r["question_id"]) is False]
            pct = lambda xs: 100.0 * sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
            rows.append([label, s["accuracy"], len(recs), f"{len(k_ok)}/{len(k_ok) + len(l_ok)}", pct(k_ok),
                         pct(l_ok), s["visual_tokens_mean"], secs])
            details[label] = {"summary_cells": s["breakdowns"]["cell"], "kept": kept}
            summaries.append(s)
            titles.append(label)
    plot = plot_heatmaps(summaries, titles, args.plot or out / "needle_heatmap.png", cols=len(args.budgets) + 1
                         if len(args.budgets) + 1 <= 4 else 3)
    print(environment())
    print(command_line())
    print(f"sets: {n_items} videos over {', '.join(args.variants)} ({', '.join(f'{x:g}s' for x in args.lengths)} "
          f"× depths {', '.join(f'{d:g}' for d in args.depths)} × {args.per_cell} needles), built in {t_build:.1f} s")
    print(table(["run", "accuracy %", "questions", "moment kept", "acc. when kept %", "acc. when lost %",
                 "visual tokens", "seconds"], rows))
    print()
    for s, title in zip(summaries, titles):
        cells = s["breakdowns"]["cell"]
        print(f"{title}: " + "; ".join(f"{k} {v['accuracy']:.0f}" for k, v in cells.items()))
    print(f"heat map: {plot}")
    (out / "bench_needle.json").write_text(json.dumps({"rows": rows, "details": details, "env": environment()},
                                                      indent=1, default=str))


if __name__ == "__main__":
    main()
