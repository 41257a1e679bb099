"""Eval throughput before and after encode-once-ask-many: questions/hour on a fixture with 3 questions per video.

    python bench/eval_throughput.py [--videos 2] [--frames 16] [--model tiny-random] [--rounds 2]

One process, one pipeline; "before" runs with the feature cache off (the same as VIDEOLLM_FEATURE_CACHE_MB=0)
and decode prefetch off (VIDEOLLM_PREFETCH=0), "after" with both on (the defaults). The two are interleaved
`--rounds` times on fresh run directories, so machine load hits both alike; the ratio is the figure to quote.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--videos", type=int, default=2)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--model", default="tiny-random")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=4,
                    help="a multiple-choice answer is a letter; random weights never stop on their own")
    args = ap.parse_args()

    from eval_bench import make_fixture

    from videollm.eval.runner import RunOptions, run
    from videollm.eval.tasks import get_task, load_samples
    from videollm.feature_cache import default_cache
    from videollm.pipeline import VideoQAPipeline
    from videollm.video import SamplingConfig

    from videollm.answer.generation import GenerationConfig

    pipe = VideoQAPipeline.from_pretrained(args.model, sampling=SamplingConfig(num_frames=args.frames),
                                           generation=GenerationConfig(max_new_tokens=args.max_new_tokens))
    cache = default_cache()
    on_bytes = cache.max_bytes
    times: dict[str, list[float]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = make_fixture(Path(tmp) / "data", args.videos)
        task = get_task("videomme")
        samples = load_samples(task, root)
        outputs: dict[str, list[str]] = {}
        for r in range(args.rounds):
            for name in ("before", "after"):
                cache.clear()
                cache.max_bytes = 0 if name == "before" else on_bytes
                os.environ["VIDEOLLM_PREFETCH"] = "0" if name == "before" else "1"
                out = Path(tmp) / f"{name}{r}"
                t = time.perf_counter()
                run(task, samples, pipe, out, options=RunOptions(progress=False))
                times[name].append(time.perf_counter() - t)
                outputs[name] = (out / "predictions.jsonl").read_text().splitlines()
    n = len(samples)
    best = {k: min(v) for k, v in times.items()}
    qph = {k: n / v * 3600 for k, v in best.items()}
    print(f"model {args.model}, {args.videos} videos x 3 questions = {n}, {args.frames} frames, "
          f"max_new_tokens {args.max_new_tokens}, best of {args.rounds} interleaved rounds, "
          f"os.cpu_count()={os.cpu_count()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print("| run | seconds (all rounds) | questions/hour (best) |")
    print("|---|---|---|")
    for k in ("before", "after"):
        print(f"| {k} ({'cache + prefetch on' if k == 'after' else 'cache off, prefetch off'}) | "
              f"{', '.join(f'{x:.1f}' for x in times[k])} | {qph[k]:.0f} |")
    for k in ("before", "after"):
        stages: dict[str, float] = {}
        for r in _strip_timings(outputs[k]):
            for name, sec in r.items():
                if name not in ("wall", "stages_total"):
                    stages[name] = stages.get(name, 0.0) + sec
        print(f"{k}, last round, summed stage seconds: " + ", ".join(f"{n} {v:.1f}" for n, v in sorted(stages.items())))
    print(f"ratio after/before: {qph['after'] / qph['before']:.2f}x; identical predictions: "
          f"{_strip(outputs['before']) == _strip(outputs['after'])}")


def _strip_timings(lines: list[str]) -> list[dict]:
    import json

    return [json.loads(x).get("timings") or {} for x in lines]


def _strip(lines: list[str]) -> list[dict]:
    """Predictions without their timings (which differ run to run)."""
    import json

    recs = [json.loads(x) for x in lines]
    return sorted(({k: v for k, v in r.items() if k != "timings"} for r in recs), key=lambda r: r["question_id"])


if __name__ == "__main__":
    main()
