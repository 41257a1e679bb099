"""Decode throughput: 32 uniformly sampled frames from generated videos of any length, per decoder.

Open (PyAV's packet scan / decord's index build) and decode are timed apart, since on long videos the open
cost grows with the file while the decode cost grows with the GOP length.

    python bench/bench_decode.py [--minutes 1 10 60] [--size 360 640] [--fps 25] [--gop 250]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import environment, peak_rss_mib, table

from videollm.synthetic import write_video
from videollm.video import SamplingConfig, load_video


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, nargs="+", default=[1, 10])
    ap.add_argument("--size", type=int, nargs=2, default=[360, 640])
    ap.add_argument("--fps", type=float, default=25.0)
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--gop", type=int, default=250)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for minutes in args.minutes:
            n = int(minutes * 60 * args.fps)
            t0 = time.perf_counter()
            path = write_video(Path(tmp) / f"{minutes}min.mp4", n, fps=args.fps, size=tuple(args.size), gop=args.gop)
            print(f"wrote {n} frames in {time.perf_counter() - t0:.1f}s", flush=True)
            for backend in ("decord", "pyav"):
                times, opens = [], []
                for _ in range(args.repeat):
                    t = time.perf_counter()
                    v = load_video(path, SamplingConfig(num_frames=args.frames, max_side=None), backend=backend)
                    opened = time.perf_counter()
                    got = sum(len(c) for c in v.iter_chunks(8))
                    used = v.info.backend
                    v.close()
                    times.append(time.perf_counter() - t)
                    opens.append(opened - t)
                assert got == args.frames and used == backend, (got, used)
                best = min(times)
                rows.append([f"{minutes:g} min ({n} frames, {args.size[0]}p)", backend, min(opens), best,
                             args.frames / best])
                print(rows[-1], flush=True)
    print()
    print(environment())
    print(table(["video", "decoder", "open s", "open+decode s (best of %d)" % args.repeat, "frames/s"], rows))
    print(f"peak RSS {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
