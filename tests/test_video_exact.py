"""Frame-exact decoding: the frame returned is the frame planned, with the time it really has.

Every frame carries its own code (`synthetic.frame_with_index`); every case lists what it wrote (code and
presentation time of each frame), so a test reads back which frame a decoder returned and checks both its
index and its time, with each decoder, in every container/codec this PyAV can write.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from videollm.synthetic import frame_with_index, read_index
from videollm.video import SamplingConfig, load_video
from videollm.video.decoders import DecoderUnsuitableError, DecordDecoder, PyAVDecoder, scan_video

av = pytest.importorskip("av")


@dataclass(frozen=True)
class Case:
    ext: str
    codec: str
    fmt: str | None = None
    pix: str = "yuv420p"
    size: tuple[int, int] = (48, 64)
    n: int = 36
    fps: float = 10
    opts: tuple[tuple[str, str], ...] = ()
    pts_ms: tuple[int, ...] | None = None  # per frame (in write order): variable rate, stalls, jumps
    interlaced: bool = False
    gop: int | None = None
    #: the clock jumps back mid-file: each monotonic run is its own stretch, end to end (docs/video.md)
    restarts: bool = False


VFR = tuple(int(1000 * (0.1 * i + (1.2 if i >= 18 else 0) + 0.004 * i * i)) for i in range(36))
STALL = tuple([100 * i for i in range(10)] + [900] * 4 + [1000 + 100 * i for i in range(22)])
BACK = tuple([100 * i for i in range(18)] + [1000 + 100 * i for i in range(18)])
X264 = (("preset", "ultrafast"),)

CASES = {
    "mp4-h264": Case("mp4", "libx264", opts=X264),
    "mp4-h264-bframes": Case("mp4", "libx264", opts=(("preset", "medium"), ("bf", "3"))),
    "mkv-h264": Case("mkv", "libx264", opts=X264),
    "mov-h264": Case("mov", "libx264", opts=X264),
    "mp4-mpeg4": Case("mp4", "mpeg4"),
    "webm-vp9": Case("webm", "libvpx-vp9", opts=(("deadline", "realtime"), ("cpu-used", "8"))),
    "webm-vp8": Case("webm", "libvpx", opts=(("deadline", "realtime"),)),
    "ts-mpeg2": Case("ts", "mpeg2video", fps=25),
    "ts-mpeg2-bframes": Case("ts", "mpeg2video", fps=25, opts=(("bf", "2"),)),
    "ps-mpeg2-interlaced": Case("mpg", "mpeg2video", fmt="vob", fps=25, size=(64, 96), interlaced=True),
    "avi-mjpeg": Case("avi", "mjpeg", pix="yuvj420p"),
    "nut-rawrgb": Case("nut", "rawvideo", pix="rgb24"),
    "avi-rawbgr": Case("avi", "rawvideo", pix="bgr24"),
    "mkv-ffv1": Case("mkv", "ffv1"),
    "mp4-wide-16x4000": Case("mp4", "libx264", size=(16, 4000), n=12, opts=X264),
    "mp4-vfr": Case("mp4", "libx264", opts=X264, pts_ms=VFR),
    "mkv-vfr": Case("mkv", "libx264", opts=X264, pts_ms=VFR),
    "mkv-stalled-pts": Case("mkv", "mjpeg", pix="yuvj420p", pts_ms=STALL),
    "mkv-pts-jump-back": Case("mkv", "mjpeg", pix="yuvj420p", pts_ms=BACK, restarts=True),
    "nut-stalled-pts": Case("nut", "mjpeg", pix="yuvj420p", pts_ms=STALL),
}


def write_case(path: Path, c: Case) -> tuple[list[int], list[float]]:
    """Write the case; return (code, time in s) of each frame in presentation order."""
    h, w = c.size
    with av.open(str(path), "w", format=c.fmt) as out:
        s = out.add_stream(c.codec, rate=Fraction(c.fps).limit_denominator(1001))
        s.width, s.height, s.pix_fmt = w, h, c.pix
        if c.opts:
            s.options = dict(c.opts)
        if c.gop:
            s.codec_context.gop_size = c.gop
        if c.interlaced:
            s.codec_context.flags |= av.codec.context.Flags.interlaced_dct | av.codec.context.Flags.interlaced_me
        if c.pts_ms is not None:
            s.time_base = s.codec_context.time_base = Fraction(1, 1000)
        for i in range(c.n):
            f = av.VideoFrame.from_ndarray(frame_with_index(i, h, w), format="rgb24")
            if c.pix not in ("yuv420p", "rgb24"):
                f = f.reformat(format=c.pix)
            if c.pts_ms is not None:
                f.pts, f.time_base = i * 100, Fraction(1, 1000)  # encoders want rising pts: rewritten below
            for pkt in s.encode(f):
                _retime(pkt, c)
                out.mux(pkt)
        for pkt in s.encode():
            _retime(pkt, c)
            out.mux(pkt)
    if c.pts_ms is None:
        return list(range(c.n)), [i / c.fps for i in range(c.n)]
    t = np.asarray(c.pts_ms, dtype=np.float64) / 1000
    if c.restarts:  # runs laid end to end, one frame step apart, in decode order
        return list(range(c.n)), [i / c.fps for i in range(c.n)]
    unique = len(set(c.pts_ms)) == len(c.pts_ms)
    order = np.argsort(t, kind="stable") if unique else np.arange(c.n)  # repeated pts: decode order
    return order.tolist(), (t[order] - t.min()).tolist()


def _retime(pkt, c: Case) -> None:
    if c.pts_ms is None or pkt.pts is None:
        return
    j = int(pkt.pts) // 100
    pkt.pts, pkt.dts = c.pts_ms[j], j * 100 - 10_000  # rising dts, pts as the case says


@pytest.fixture(scope="session")
def exact_videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("exact")
    made = {}
    for name, case in CASES.items():
        path = root / f"{name}.{case.ext}"
        made[name] = (path, *write_case(path, case))
    return made


def _check(batch, codes, times, tol=2e-3):
    got = [read_index(f.numpy()) for f in batch.frames]
    want = [codes[i] for i in batch.indices.tolist()]
    assert got == want, f"decoded frames {got} but planned {want}"
    assert np.allclose(batch.timestamps.numpy(), [times[i] for i in batch.indices.tolist()], atol=tol)


@pytest.mark.parametrize("backend", ["pyav", "decord"])
@pytest.mark.parametrize("name", list(CASES))
def test_every_frame_is_the_planned_one_with_its_time(exact_videos, name, backend):
    path, codes, times = exact_videos[name]
    video = load_video(path, SamplingConfig(num_frames=1000, max_side=None), backend=backend)
    assert video.info.num_frames == len(codes)
    assert np.allclose(video.info.frame_times(), times, atol=2e-3)
    batch = video.read()
    assert len(batch) == len(codes)
    _check(batch, codes, times)
    # sparse, in chunks that skip frames: the decoder must not drift
    sparse = load_video(path, SamplingConfig(num_frames=7, max_side=None), backend=backend)
    for chunk in sparse.iter_chunks(3):
        _check(chunk, codes, times)
    assert sparse.shortfall() is None


@pytest.mark.parametrize("name", ["mp4-vfr", "mkv-vfr", "mkv-stalled-pts", "mkv-pts-jump-back"])
def test_fps_sampling_follows_the_clock(exact_videos, name):
    """Fixed-rate sampling picks the frame on screen at each instant, by time, not by frame count."""
    path, codes, times = exact_videos[name]
    video = load_video(path, SamplingConfig(fps=2.0, max_frames=1000, max_side=None))
    clock = np.maximum.accumulate(times)
    batch = video.read()
    _check(batch, codes, times)
    instants = np.arange(0.0, clock[-1] + 1e-9, 0.5)
    on_screen = np.unique(np.searchsorted(clock, instants + 1e-6, side="right") - 1)
    assert batch.indices.tolist() == on_screen.tolist()


def test_vfr_timestamps_are_the_files_not_frame_count_over_rate(exact_videos):
    path, codes, times = exact_videos["mp4-vfr"]
    video = load_video(path, SamplingConfig(num_frames=4, max_side=None))
    batch = video.read()
    assert batch.timestamps[-1] > 4.0  # 36 frames "at 10 fps" would claim 3.5 s; the file says 5.9 s
    _check(batch, codes, times)


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c.pts_ms is None or len(set(c.pts_ms)) == c.n])
def test_decord_and_pyav_agree_or_decord_steps_aside(exact_videos, name):
    path = exact_videos[name][0]
    scan = scan_video(path)
    pyav = PyAVDecoder(path, scan)
    try:
        dec = DecordDecoder(path, scan)
    except DecoderUnsuitableError:
        assert scan.format in ("mpegts", "mpeg", "nut") or not scan.exact
        return
    idx = np.arange(0, scan.num_frames, 5)
    a, ia, ta = pyav.get(idx)
    b, ib, tb = dec.get(idx)
    assert ia.tolist() == ib.tolist() == idx.tolist()
    assert np.allclose(ta, tb, atol=1e-6)
    assert [read_index(f) for f in a] == [read_index(f) for f in b]


def test_decord_refuses_what_it_decodes_wrong(exact_videos):
    """Measured: decord returns other frames than asked in MPEG-TS/PS and cannot order repeated pts."""
    for name in ("ts-mpeg2", "ps-mpeg2-interlaced", "mkv-stalled-pts"):
        path = exact_videos[name][0]
        with pytest.raises(DecoderUnsuitableError):
            DecordDecoder(path, scan_video(path))


@pytest.fixture(scope="session")
def long_gop_videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("exact_long")
    cases = {
        "mkv-h264": Case("mkv", "libx264", n=600, fps=25, opts=X264, gop=50),
        "mp4-h264-bframes": Case("mp4", "libx264", n=600, fps=25, opts=(("preset", "fast"), ("bf", "3")), gop=50),
        "ts-mpeg2": Case("ts", "mpeg2video", n=600, fps=25, gop=25, opts=(("bf", "2"),)),
        "webm-vp9": Case("webm", "libvpx-vp9", n=600, fps=25, gop=50,
                         opts=(("deadline", "realtime"), ("cpu-used", "8"))),
    }
    return {name: (root / f"{name}.{c.ext}", *write_case(root / f"{name}.{c.ext}", c)) for name, c in cases.items()}


@pytest.mark.parametrize("backend", ["pyav", "decord"])
@pytest.mark.parametrize("name", ["mkv-h264", "mp4-h264-bframes", "ts-mpeg2", "webm-vp9"])
def test_seeking_stays_exact(long_gop_videos, name, backend):
    """24 s with keyframes every 1-2 s, sampled every 5 s: PyAV seeks between targets and must land exactly."""
    path, codes, times = long_gop_videos[name]
    video = load_video(path, SamplingConfig(fps=0.2, max_frames=100, max_side=None), backend=backend)
    assert len(video) == 5
    for chunk in video.iter_chunks(2):
        _check(chunk, codes, times)


@pytest.fixture(scope="session")
def rotated(tmp_path_factory):
    out = {}
    for deg in (90, 180, 270):
        path = tmp_path_factory.mktemp("rot") / f"rot{deg}.mp4"
        with av.open(str(path), "w") as c:
            s = c.add_stream("libx264", rate=10)
            s.width, s.height = 96, 48
            s.set_display_rotation(deg)
            for i in range(10):
                for pkt in s.encode(av.VideoFrame.from_ndarray(frame_with_index(i, 48, 96), format="rgb24")):
                    c.mux(pkt)
            for pkt in s.encode():
                c.mux(pkt)
        out[deg] = path
    return out


@pytest.mark.parametrize("deg", [90, 180, 270])
@pytest.mark.parametrize("max_side", [None, 64])
def test_rotation_is_applied_the_same_by_both_decoders(rotated, deg, max_side):
    """Frames come out as players show them: turned counter-clockwise by the display matrix's angle."""
    path = rotated[deg]
    frames = {}
    for backend in ("pyav", "decord"):
        video = load_video(path, SamplingConfig(num_frames=3, max_side=max_side), backend=backend)
        assert video.info.backend == backend and video.info.rotation == deg
        frames[backend] = video.read().frames.numpy().astype(int)
    a, b = frames["pyav"], frames["decord"]
    assert a.shape == b.shape
    if max_side is None:
        upright = np.rot90(frame_with_index(0, 48, 96), deg // 90)
        assert a.shape[1:] == upright.shape
        assert np.abs(a[0] - upright).mean() < 8 and np.abs(b[0] - upright).mean() < 8
        assert read_index(np.rot90(a[0], -deg // 90)) == 0
    assert np.abs(a - b).mean() < 8
