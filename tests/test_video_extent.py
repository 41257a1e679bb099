"""Where a video's frames really are: a short video stream in a long container, a clock that jumps back
mid-file, and paths that are not video files at all (FIFO, socket, device, absurd Y4M header).

Every frame carries its own code (`synthetic.frame_with_index`), so each test reads back which frame it got.
"""
from __future__ import annotations

import os
import socket
import stat
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from videollm.errors import CorruptVideoError, NotAVideoError
from videollm.synthetic import frame_with_index, read_index
from videollm.video import SamplingConfig, decoders, load_video

av = pytest.importorskip("av")


def _mkv_with_audio(path: Path, video_s: float, audio_s: int, fps: int = 25) -> Path:
    """H.264 video of `video_s` seconds and Opus silence of `audio_s` seconds in one Matroska file."""
    with av.open(str(path), "w") as out:
        v = out.add_stream("libx264", rate=fps)
        v.width, v.height, v.pix_fmt, v.options = 64, 48, "yuv420p", {"preset": "ultrafast"}
        a = out.add_stream("libopus", rate=48000)
        a.layout = "mono"
        for i in range(int(video_s * fps)):
            f = av.VideoFrame.from_ndarray(frame_with_index(i, 48, 64), format="rgb24")
            f.pts, f.time_base = i, Fraction(1, fps)
            for p in v.encode(f):
                out.mux(p)
        for p in v.encode():
            out.mux(p)
        for k in range(audio_s):
            af = av.AudioFrame.from_ndarray(np.zeros((1, 48000), np.int16), format="s16", layout="mono")
            af.sample_rate, af.pts, af.time_base = 48000, k * 48000, Fraction(1, 48000)
            for p in a.encode(af):
                out.mux(p)
        for p in a.encode():
            out.mux(p)
    return path


def _ts(path: Path, first_code: int, offset_s: float, n: int = 24, bframes: int = 0) -> bytes:
    with av.open(str(path), "w", format="mpegts", options={"output_ts_offset": str(offset_s)}) as out:
        s = out.add_stream("mpeg2video", rate=25)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        s.codec_context.max_b_frames = bframes
        for i in range(n):
            f = av.VideoFrame.from_ndarray(frame_with_index(first_code + i, 48, 64), format="rgb24")
            f.pts, f.time_base = i, Fraction(1, 25)
            for p in s.encode(f):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return path.read_bytes()


def _joined_ts(tmp_path: Path, first_offset: float, second_offset: float, bframes: int) -> Path:
    """Two intact recordings joined byte for byte: the second restarts the clock (backwards)."""
    a = _ts(tmp_path / "a.ts", 0, first_offset, bframes=bframes)
    b = _ts(tmp_path / "b.ts", 24, second_offset, bframes=bframes)
    out = tmp_path / "joined.ts"
    out.write_bytes(a + b)
    return out


def _codes(batch) -> list[int]:
    return [read_index(f.numpy()) for f in batch.frames]


def test_short_video_in_a_long_container_is_planned_over_the_video(tmp_path):
    path = _mkv_with_audio(tmp_path / "short.mkv", video_s=2, audio_s=120)
    video = load_video(path, SamplingConfig(num_frames=24, max_side=None), backend="pyav")
    batch = video.read()
    assert len(batch) == 24 and video.shortfall() is None  # was 1 of 24, "truncated or damaged"
    codes = _codes(batch)
    assert codes[0] == 0 and codes[-1] == 49 and codes == sorted(codes)
    assert float(batch.timestamps[-1]) == pytest.approx(1.96, abs=1e-3)


def test_without_a_track_duration_other_streams_show_the_file_is_intact(tmp_path, monkeypatch):
    """Matroska written without per-track DURATION tags: only the segment (every stream's) length is known;
    audio running on past the video's end shows the video is short, not cut."""
    monkeypatch.setattr(decoders, "_tag_seconds", lambda value: 0.0)
    path = _mkv_with_audio(tmp_path / "short.mkv", video_s=2, audio_s=60)
    scan = decoders.scan_video(path)
    assert scan.promised_duration == 0.0
    video = load_video(path, SamplingConfig(num_frames=10, max_side=None), backend="pyav")
    video.read()
    assert video.shortfall() is None


def test_a_cut_file_with_audio_is_still_reported_cut(tmp_path, monkeypatch):
    monkeypatch.setattr(decoders, "_tag_seconds", lambda value: 0.0)
    full = _mkv_with_audio(tmp_path / "full.mkv", video_s=8, audio_s=8)
    data = full.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) // 2])
    video = load_video(cut, SamplingConfig(num_frames=16, max_side=None), backend="pyav")
    video.read()
    report = video.shortfall()
    assert report is not None and report.decoded < report.planned


@pytest.mark.parametrize("offsets,bframes", [((0.0, 0.0), 0), ((10.0, 0.0), 2)], ids=["restart-same-pts", "back-10s"])
def test_mpegts_clock_jumping_back_plays_each_run_in_turn(tmp_path, offsets, bframes):
    path = _joined_ts(tmp_path, *offsets, bframes=bframes)
    scan = decoders.scan_video(path)
    assert scan.restarts == 1
    video = load_video(path, SamplingConfig(num_frames=24, max_side=None), backend="pyav")
    assert video.info.num_frames == 48
    times = video.info.frame_times()
    assert np.all(np.diff(times) > 0)  # one time line: the second run follows the first
    assert times[-1] == pytest.approx(47 / 25, abs=1e-3)
    batch = video.read()
    assert video.shortfall() is None and len(batch) == 24  # was 12 of 24 (or all from the first run)
    assert _codes(batch) == batch.indices.tolist()  # frame i of the joined time line is the i-th frame shown
    assert np.allclose(batch.timestamps.numpy(), batch.indices.numpy() / 25, atol=1e-3)
    every = load_video(path, SamplingConfig(num_frames=1000, max_side=None)).read()
    assert _codes(every) == list(range(48))


def _not_regular(kind: str, tmp_path: Path):
    if kind == "fifo":
        p = tmp_path / "pipe.mp4"
        os.mkfifo(p)
        return p, None
    if kind == "socket":
        p = tmp_path / "s.mp4"
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(p))
        return p, sock
    return Path("/dev/urandom"), None


@pytest.mark.parametrize("kind,word", [("fifo", "FIFO"), ("socket", "socket"), ("device", "character device")])
def test_special_files_say_what_they_are(tmp_path, kind, word):
    path, keep = _not_regular(kind, tmp_path)
    if kind == "device" and not (path.exists() and stat.S_ISCHR(path.stat().st_mode)):
        pytest.skip("no /dev/urandom here")
    try:
        with pytest.raises(NotAVideoError, match=word) as err:
            load_video(path)
        assert "empty" not in str(err.value)
    finally:
        if keep is not None:
            keep.close()


def test_y4m_claiming_huge_frames_is_refused_with_its_size(tmp_path):
    p = tmp_path / "big.y4m"
    p.write_bytes(b"YUV4MPEG2 W30000 H30000 F25:1 Ip A1:1 C420jpeg\nFRAME\n" + bytes(4096))
    with pytest.raises(CorruptVideoError, match="30000×30000") as err:
        load_video(p)
    assert "busy" not in str(err.value).lower()


@pytest.mark.parametrize("header, word", [
    (b"YUV4MPEG2 W-5 H0 F30:1 C420", "frame size"),
    (b"YUV4MPEG2 Wabc H48 F30:1 C420", "frame size"),
    (b"YUV4MPEG2 H48 F30:1 C420", "frame size"),
    (b"YUV4MPEG2 W64 H48 F0:0 C420", "frame rate '0:0'"),
    (b"YUV4MPEG2 W64 H48 F30:-1 C420", "frame rate"),
])
def test_y4m_with_an_invalid_header_says_which_field(tmp_path, header, word):
    """FFmpeg answers these with 'Device or resource busy'; the header is checked first and no decoder guesses."""
    p = tmp_path / "bad.y4m"
    p.write_bytes(header + b"\nFRAME\n" + bytes(4608))
    with pytest.raises(decoders.InvalidHeaderError, match="YUV4MPEG2 header") as err:
        load_video(p)
    assert word in str(err.value) and "busy" not in str(err.value).lower()


def test_ffmpeg_errors_carry_no_errno_number(tmp_path):
    p = tmp_path / "noise.mp4"
    p.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(CorruptVideoError) as err:
        load_video(p)
    assert "Errno" not in str(err.value) and str(err.value).count(str(p)) == 1


def test_special_files_through_the_cli(tmp_path, capfd):
    from videollm.cli import main

    path, _ = _not_regular("fifo", tmp_path)
    rc = main(["ask", str(path), "what?", "--model", "tiny-random"])
    err = capfd.readouterr().err
    assert rc == 2 and err.count("error:") == 1 and "FIFO" in err


@pytest.mark.parametrize("ext,codec", [("mkv", "libx264"), ("mov", "libx264"), ("avi", "mpeg4"), ("flv", "libx264")])
def test_b_frame_reordering_is_not_a_clock_jump(tmp_path, ext, codec):
    """B-frames put presentation times out of order in decode order (and Matroska gives the first packets no
    dts): that is reordering, not a restart, and frames stay exact in presentation order."""
    path = tmp_path / f"bframes.{ext}"
    with av.open(str(path), "w") as out:
        s = out.add_stream(codec, rate=25)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        if codec == "libx264":
            s.options = {"preset": "medium", "bf": "3"}
        else:
            s.codec_context.max_b_frames = 2
        for i in range(40):
            f = av.VideoFrame.from_ndarray(frame_with_index(i, 48, 64), format="rgb24")
            f.pts, f.time_base = i, Fraction(1, 25)
            for p in s.encode(f):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    scan = decoders.scan_video(path)
    assert scan.restarts == 0 and scan.exact
    video = load_video(path, SamplingConfig(num_frames=1000, max_side=None), backend="pyav")
    assert _codes(video.read()) == list(range(40))
