"""What the evaluator itself costs: per-question bookkeeping, resume scan, merge, and tiny-random end to end.

    python bench/eval_bench.py [--videos 12] [--records 2700]

Builds a VideoMME-layout fixture from generated videos (3 questions per video), then measures
1. runner overhead per question with an instant stand-in model (record, extraction, fsync'd append),
2. the resume scan + merge of a full-size predictions file (2,700 records = all of VideoMME),
3. `videollm eval` on tiny-random (random weights: the score is meaningless, the seconds are not).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def make_fixture(root: Path, n_videos: int) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from videollm.synthetic import write_video

    rows = []
    for v in range(n_videos):
        vid = f"v{v:03d}"
        write_video(root / "data" / f"{vid}.mp4", 48, fps=8, size=(96, 128))
        for q in range(3):
            rows.append({"video_id": f"{v:03d}", "duration": ("short", "medium", "long")[v % 3], "domain": "Knowledge",
                         "sub_category": "Daily Life", "url": "", "videoID": vid, "question_id": f"{v:03d}-{q + 1}",
                         "task_type": "Counting Problem", "question": f"Question {q} about video {v}?",
                         "options": ["A. one", "B. two", "C. three", "D. four"], "answer": "ABCD"[(v + q) % 4]})
    (root / "videomme").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), root / "videomme" / "test-00000-of-00001.parquet")
    return root


class Instant:
    """A stand-in model that answers at once, so only the evaluator's own work is timed."""

    def load(self, path):
        return path

    def __call__(self, video, prompt, options=None):
        from videollm.types import Answer

        return Answer(text="The answer is (B).", visual_tokens=64, tokens_per_frame={0: 32, 1: 32},
                      generated_tokens=5, timings={"wall": 0.0})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--videos", type=int, default=12)
    ap.add_argument("--records", type=int, default=2700)
    args = ap.parse_args()

    from videollm.cli import main as cli_main
    from videollm.eval.runner import RunOptions, run
    from videollm.eval.sharding import collect, merge
    from videollm.eval.store import JsonlWriter
    from videollm.eval.tasks import get_task, load_samples

    with tempfile.TemporaryDirectory() as tmp:
        root = make_fixture(Path(tmp) / "data", args.videos)
        task = get_task("videomme")
        samples = load_samples(task, root)

        t = time.perf_counter()
        run(task, samples, Instant(), Path(tmp) / "instant", options=RunOptions(progress=False))
        per_q = (time.perf_counter() - t) / len(samples)

        big = Path(tmp) / "big"
        rec = json.loads((Path(tmp) / "instant" / "predictions.jsonl").read_text().splitlines()[0])
        with JsonlWriter(big / "predictions.jsonl") as w:
            for i in range(args.records):
                w.append({**rec, "question_id": f"q{i:05d}"})
        t = time.perf_counter()
        n = len(collect(big))
        scan = time.perf_counter() - t
        t = time.perf_counter()
        merge(big, [f"q{i:05d}" for i in range(args.records)])
        merged = time.perf_counter() - t

        out = Path(tmp) / "tiny"
        t = time.perf_counter()
        cli_main(["eval", "--task", "videomme", "--data-dir", str(root), "--output", str(out), "--model",
                  "tiny-random", "--frames", "8", "--budget", "64", "--no-progress", "--no-plots"])
        wall = time.perf_counter() - t
        recs = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
        model_s = sum(r["timings"]["wall"] for r in recs) / len(recs)

    print("| measurement | value |")
    print("|---|---|")
    print("| runner overhead per question (instant model: record + extraction + fsync'd append) | "
          f"{per_q * 1e3:.2f} ms |")
    print(f"| resume scan of {n} records | {scan * 1e3:.0f} ms |")
    print(f"| merge (dedup + order + atomic rewrite) of {n} records | {merged * 1e3:.0f} ms |")
    print(f"| tiny-random, {len(samples)} questions, 8 frames, budget 64: pipeline time per question | "
          f"{model_s:.2f} s |")
    print(f"| tiny-random, same run, wall clock incl. model build and report | {wall:.1f} s |")


if __name__ == "__main__":
    main()
