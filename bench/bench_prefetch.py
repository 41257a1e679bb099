"""Decode/encode overlap: the compressor's wall time with and without prefetch vs the decode + vision sum.

    python bench/bench_prefetch.py [--frames 64] [--chunk 8] [--rounds 2]

A generated 640×360 H.264 video, tiny-random backbone, feature cache off (every pass decodes and encodes).
With prefetch the wall time should approach max(decode, vision) rather than their sum.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    from videollm.backbones.tiny import build_tiny_random
    from videollm.compressors import create_compressor
    from videollm.feature_cache import default_cache
    from videollm.synthetic import write_video
    from videollm.timing import StageTimer
    from videollm.video import SamplingConfig, load_video

    default_cache().max_bytes = 0
    backbone = build_tiny_random()
    comp = create_compressor("uniform", backbone, chunk_size=args.chunk)
    with tempfile.TemporaryDirectory() as tmp:
        path = write_video(Path(tmp) / "v.mp4", 4 * args.frames, fps=25, size=(360, 640))
        rows = {"0": [], "1": []}
        outs = {}
        for _ in range(args.rounds):
            for flag in ("0", "1"):
                os.environ["VIDEOLLM_PREFETCH"] = flag
                vid = load_video(path, SamplingConfig(num_frames=args.frames, max_side=640))
                timer = StageTimer()
                t = time.perf_counter()
                with timer.activate():
                    outs[flag] = comp(vid, query=None).embeds
                rows[flag].append((time.perf_counter() - t, dict(timer.seconds)))
                vid.close()
    print(f"{args.frames} frames 640x360, chunk {args.chunk}, tiny-random, load average {os.getloadavg()[0]:.1f}")
    print("| prefetch | wall s (each round) | decode s (waiting, if prefetch) | vision s |")
    print("|---|---|---|---|")
    for flag, name in (("0", "off"), ("1", "on")):
        print(f"| {name} | {', '.join(f'{w:.2f}' for w, _ in rows[flag])} | "
              f"{_col(rows[flag], 'decode')} | "
              f"{_col(rows[flag], 'vision')} |")
    best = {f: min(w for w, _ in rows[f]) for f in rows}
    print(f"best wall off/on: {best['0'] / best['1']:.2f}x; identical tokens: {bool((outs['0'] == outs['1']).all())}")


def _col(rows: list, stage: str) -> str:
    return ", ".join(f"{s.get(stage, 0.0):.2f}" for _, s in rows)


if __name__ == "__main__":
    main()
