"""Eval throughput before and after encode-once-ask-many: questions/hour on a fixture with 3 questions per video.

    python bench/eval_throughput.py [--videos 2] [--frames 16] [--model tiny-random] [--rounds 2] [--breakdown]

One process, one pipeline; "before" is 0.1.0's behaviour: feature cache off (the same as
VIDEOLLM_FEATURE_CACHE_MB=0), decode prefetch off (VIDEOLLM_PREFETCH=0) and prompt-prefix KV reuse off
(VIDEOLLM_PREFIX_CACHE=0); "after" is the defaults (all three on). `--breakdown` adds "after, no prefix reuse"
(feature cache + prefetch only). The runs are interleaved `--rounds` times on fresh run directories, so machine
load hits them alike; the ratio is the figure to quote. Predictions must be identical (every field but
timings; floats such as confidences within 1e-4): the script exits 1 when they are not.
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
    ap.add_argument("--compressor", default="uniform")
    ap.add_argument("--budget", type=int, default=None)
    ap.add_argument("--breakdown", action="store_true", help="also run the defaults with prefix reuse off")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    from eval_bench import make_fixture

    from videollm.eval.runner import RunOptions, run
    from videollm.eval.tasks import get_task, load_samples
    from videollm.feature_cache import default_cache
    from videollm.pipeline import VideoQAPipeline
    from videollm.runtime.generation import GenerationConfig
    from videollm.runtime.prefix_cache import default_prefix_cache
    from videollm.video import SamplingConfig

    t0 = time.perf_counter()
    pipe = VideoQAPipeline.from_pretrained(args.model, compressor=args.compressor, budget=args.budget,
                                           sampling=SamplingConfig(num_frames=args.frames),
                                           generation=GenerationConfig(max_new_tokens=args.max_new_tokens))
    print(f"model loaded in {time.perf_counter() - t0:.1f} s", flush=True)
    cache = default_cache()
    prefixes = default_prefix_cache()
    on_bytes = cache.max_bytes
    runs = {"before": (False, False, False), "after": (True, True, True)}  # feature cache, prefetch, prefix reuse
    if args.breakdown:
        runs["after, no prefix reuse"] = (True, True, False)
    times: dict[str, list[float]] = {k: [] for k in runs}
    hits: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = make_fixture(Path(tmp) / "data", args.videos)
        _distinct_videos(root, args.videos)
        task = get_task("videomme")
        samples = load_samples(task, root)
        outputs: dict[str, list[str]] = {}
        for r in range(args.rounds):
            for name, (features, prefetch, reuse) in runs.items():
                cache.clear()
                prefixes.clear()
                cache.max_bytes = on_bytes if features else 0
                os.environ["VIDEOLLM_PREFETCH"] = "1" if prefetch else "0"
                os.environ["VIDEOLLM_PREFIX_CACHE"] = "1" if reuse else "0"
                out = Path(tmp) / f"{name.replace(' ', '_').replace(',', '')}{r}"
                h0 = prefixes.stats.hits
                t = time.perf_counter()
                run(task, samples, pipe, out, options=RunOptions(progress=False))
                times[name].append(time.perf_counter() - t)
                hits[name] = prefixes.stats.hits - h0
                print(f"round {r} {name}: {times[name][-1]:.1f} s", flush=True)
                outputs[name] = (out / "predictions.jsonl").read_text().splitlines()
    n = len(samples)
    best = {k: min(v) for k, v in times.items()}
    qph = {k: n / v * 3600 for k, v in best.items()}
    import torch

    print(f"model {args.model}, compressor {args.compressor}, budget {args.budget}, {args.videos} videos x 3 "
          f"questions = {n}, {args.frames} frames, max_new_tokens {args.max_new_tokens}, best of {args.rounds} "
          f"interleaved rounds, torch threads {torch.get_num_threads()}, os.cpu_count()={os.cpu_count()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print("| run | seconds (all rounds) | questions/hour (best) | prefix reuses (last round) |")
    print("|---|---|---|---|")
    for k, (features, prefetch, reuse) in runs.items():
        what = ", ".join(f"{x} {'on' if v else 'off'}" for x, v in
                         (("feature cache", features), ("prefetch", prefetch), ("prefix reuse", reuse)))
        print(f"| {k} ({what}) | {', '.join(f'{x:.1f}' for x in times[k])} | {qph[k]:.0f} | {hits[k]} |")
    for k in runs:
        stages: dict[str, float] = {}
        for r in _strip_timings(outputs[k]):
            for name, sec in r.items():
                if name not in ("wall", "stages_total"):
                    stages[name] = stages.get(name, 0.0) + sec
        print(f"{k}, last round, summed stage seconds: " + ", ".join(f"{n} {v:.1f}" for n, v in sorted(stages.items())))
    same = all(_same(_strip(outputs["before"]), _strip(outputs[k])) for k in runs)
    for k in runs:
        if k != "before":
            print(f"ratio {k}/before: {qph[k] / qph['before']:.2f}x")
    print(f"identical predictions: {same}")
    if not same:
        sys.exit(1)


def _distinct_videos(root: Path, n: int) -> None:
    """The fixture's videos are byte-identical; caches keyed by content would serve video 2 from video 1, so
    each video is rewritten with its own frames (the frame index drawn is offset per video)."""
    from videollm.synthetic import frame_with_index, write_video

    for v in range(n):
        write_video(root / "data" / f"v{v:03d}.mp4", 48, fps=8, size=(96, 128),
                    frame_fn=lambda i, h, w, v=v: frame_with_index(i + 100 * (v + 1), h, w))


def _same(a: object, b: object, tol: float = 1e-4) -> bool:
    """Equal, floats within `tol` (confidences come from log-probs that reuse may change in the last bits)."""
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= tol * max(1.0, abs(a), abs(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k], tol) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y, tol) for x, y in zip(a, b))
    return a == b


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
