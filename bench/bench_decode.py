"""Decode throughput: 32 uniformly sampled frames from generated videos of any length, per decoder.

Open (PyAV's packet scan / decord's index build) and decode are timed apart, since on long videos the open
cost grows with the file while the decode cost grows with the GOP length.

    python bench/bench_decode.py [--minutes 1 10 60] [--size 360 640] [--fps 25] [--gop 250]

`--max-side 0 448 224` also times reduced-resolution decode (0 = full size; the decoder still decodes the full
picture, the scaler writes the smaller one). `--ffmpeg` times the ffmpeg CLI on the same frames (the indices
our sampler chose): one `ffmpeg -ss T -i f -frames:v 1` per frame (input seeking, accurate by default), and
one `ffmpeg -i f -vf select=...` pass over the file; raw RGB to a pipe, like our decode to memory.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
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
    ap.add_argument("--max-side", type=int, nargs="+", default=[0], help="0 = full size")
    ap.add_argument("--backends", nargs="+", default=["decord", "pyav"])
    ap.add_argument("--ffmpeg", action="store_true", help="also time the ffmpeg CLI on the same frames")
    args = ap.parse_args()
    ffmpeg = shutil.which("ffmpeg") if args.ffmpeg else None
    if args.ffmpeg and not ffmpeg:
        raise SystemExit("error: --ffmpeg needs the ffmpeg CLI on PATH (apt-get install ffmpeg)")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for minutes in args.minutes:
            n = int(minutes * 60 * args.fps)
            t0 = time.perf_counter()
            path = write_video(Path(tmp) / f"{minutes}min.mp4", n, fps=args.fps, size=tuple(args.size), gop=args.gop)
            print(f"wrote {n} frames in {time.perf_counter() - t0:.1f}s", flush=True)
            label = f"{minutes:g} min ({n} frames, {args.size[0]}p)"
            indices = times_s = None
            for backend in args.backends:
                for side in args.max_side:
                    times, opens = [], []
                    for _ in range(args.repeat):
                        t = time.perf_counter()
                        v = load_video(path, SamplingConfig(num_frames=args.frames, max_side=side or None),
                                       backend=backend)
                        opened = time.perf_counter()
                        chunks = list(v.iter_chunks(8))
                        got, used = sum(len(c) for c in chunks), v.info.backend
                        shape = tuple(chunks[0].frames.shape[1:3])
                        v.close()
                        times.append(time.perf_counter() - t)
                        opens.append(opened - t)
                    assert got == args.frames and used == backend, (got, used)
                    indices = np.concatenate([c.indices.numpy() for c in chunks])
                    times_s = np.concatenate([c.timestamps.numpy() for c in chunks])
                    best = min(times)
                    rows.append([label, f"{backend} {shape[0]}x{shape[1]}", min(opens), best, args.frames / best])
                    print(rows[-1], flush=True)
            if ffmpeg and indices is not None:
                for name, fn in (("ffmpeg -ss per frame", ffmpeg_seek), ("ffmpeg -vf select, one pass", ffmpeg_select)):
                    times = []
                    for _ in range(args.repeat):
                        t = time.perf_counter()
                        nbytes = fn(ffmpeg, path, indices, times_s)
                        times.append(time.perf_counter() - t)
                    assert nbytes == args.frames * args.size[0] * args.size[1] * 3, (name, nbytes)
                    best = min(times)
                    rows.append([label, f"{name} {args.size[0]}x{args.size[1]}", 0.0, best, args.frames / best])
                    print(rows[-1], flush=True)
    print()
    print(environment())
    print(table(["video", "decoder", "open s", "open+decode s (best of %d)" % args.repeat, "frames/s"], rows))
    print(f"peak RSS {peak_rss_mib():.0f} MiB")


def ffmpeg_seek(ffmpeg: str, path: Path, indices: np.ndarray, times_s: np.ndarray) -> int:
    """One ffmpeg process per frame, input-seeking to its time (what a per-frame ffmpeg script does)."""
    total = 0
    for t in times_s:
        out = subprocess.run([ffmpeg, "-v", "error", "-ss", f"{float(t):.6f}", "-i", str(path), "-frames:v", "1",
                              "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], capture_output=True, check=True)
        total += len(out.stdout)
    return total


def ffmpeg_select(ffmpeg: str, path: Path, indices: np.ndarray, times_s: np.ndarray) -> int:
    """One ffmpeg pass decoding the whole file, keeping the frames whose number is in `indices`."""
    expr = "+".join(f"eq(n\\,{int(i)})" for i in indices)
    out = subprocess.run([ffmpeg, "-v", "error", "-i", str(path), "-vf", f"select={expr}", "-fps_mode", "passthrough",
                          "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], capture_output=True, check=True)
    return len(out.stdout)


if __name__ == "__main__":
    main()
