"""Frame decoders behind one small interface, both frame-exact and in presentation time.

A PyAV *scan* (demuxing packets, no decoding) lists every frame's presentation timestamp once; that list
is the video's frame table. Frame `i` is the i-th frame in presentation order, and its timestamp is the one
the file gives it, so sampling, decoding and reporting all speak about the same frame. PyAV decodes and
identifies each decoded frame by its timestamp (never by a frame counter, which seeks and dropped frames
break); decord is used only where its own frame table matches the scan, so both decoders pick the same
frame for a timestamp. Frames come out as players show them: a rotation in the display matrix is applied.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Protocol

import numpy as np

from ..errors import CorruptVideoError, EmptyVideoError, NotAVideoError, VideoError
from ..registry import Registry

#: frame decoders by name (`@DECODERS.register`); `AUTO_ORDER` is the order `backend="auto"` tries them in
DECODERS: Registry[type] = Registry("video backend")

logger = logging.getLogger(__name__)

# Leading bytes of common video containers: lets us tell "damaged video" from "not a video at all".
_CONTAINER_MAGIC = (b"\x1a\x45\xdf\xa3", b"RIFF", b"OggS", b"FLV", b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3", b"G")
_VIDEO_SUFFIXES = {".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".flv", ".mpg", ".mpeg", ".ts", ".wmv", ".3gp",
                   ".ogv", ".nut", ".vob", ".m2ts"}

# FFmpeg "plays" text files as ANSI art; such streams are never what a user means by a video.
_NOT_VIDEO_FORMATS = {"tty", "bin", "xbin", "adf", "idf"}
_TEXT_ART_CODECS = {"ansi", "bintext", "xbin", "idf"}
# decord returns other frames than the ones it is asked for in these containers (measured in
# tests/test_video_exact.py: frame 0 → 12 in MPEG-TS, a batch ending in frame 2 instead of 39 in MPEG-PS,
# frames 17, 23, 29 → 15, 21, 27 in NUT); raw elementary streams have no timestamps to check it against.
_DECORD_UNSAFE_FORMATS = {"mpegts", "mpeg", "mpegvideo", "vob", "nut", "m4v", "h264", "hevc"}
SEEK_GAP_S = 4.0  # decode through gaps shorter than this; seek to the keyframe before longer ones
REORDER_FRAMES = 16  # without dts, pts may run back this many frames (B-frame reordering) without a jump


class DecoderUnsuitableError(VideoError):
    """This decoder cannot read this file frame-exactly (the other one may)."""


@dataclass(frozen=True)
class StreamInfo:
    num_frames: int
    fps: float
    width: int  # as displayed (after rotation and any decode-time downscale)
    height: int
    duration: float
    backend: str
    #: presentation time of every frame in seconds from the first frame, in presentation order
    timestamps: np.ndarray | None = field(default=None, compare=False, repr=False)
    rotation: int = 0  # degrees counter-clockwise the decoders turn stored frames to show them upright

    def frame_times(self) -> np.ndarray:
        if self.timestamps is not None:
            return self.timestamps
        fps = self.fps if self.fps > 0 else 1.0
        return np.arange(self.num_frames, dtype=np.float64) / fps


@dataclass(frozen=True)
class Scan:
    """What demuxing (no decoding) says about the first real video stream."""

    format: str
    stream_index: int
    time_base: Fraction
    pts: np.ndarray  # int64 in stream time base: presentation order when `exact`, decode order otherwise
    exact: bool  # every packet has a unique pts: frames are identified by pts (else by decode order)
    start: int  # pts of the first frame: time zero
    fps: float
    width: int  # stored (before rotation)
    height: int
    rotation: int
    truncated: bool  # demuxing stopped on an error before the end of the file
    promised_duration: float = 0.0  # what the header says (s): more than the frames found = cut short
    #: timestamp discontinuities (decode timestamps jumping backwards in an intact stream, e.g. joined MPEG-TS
    #: recordings): each monotonic run is its own stretch, laid end to end; frames are known by decode order
    restarts: int = 0

    @property
    def num_frames(self) -> int:
        return len(self.pts)

    @property
    def times(self) -> np.ndarray:
        return (self.pts - self.start).astype(np.float64) * float(self.time_base)

    def info(self, backend: str) -> StreamInfo:
        t = self.times
        step = 1.0 / self.fps if self.fps > 0 else 0.0
        w, h = (self.height, self.width) if self.rotation in (90, 270) else (self.width, self.height)
        return StreamInfo(self.num_frames, self.fps, w, h, float(t.max(initial=0.0)) + step, backend, t, self.rotation)


class FrameDecoder(Protocol):
    name: str

    def info(self) -> StreamInfo: ...

    def get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For sorted, unique frame indices: uint8 frames (k, H, W, 3), the k indices really decoded (a
        subset: frames that do not decode are left out, never replaced) and their presentation times."""
        ...

    def close(self) -> None: ...


def looks_like_video_container(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            head = fh.read(16)
    except OSError:
        return False
    if len(head) >= 8 and head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip"):
        return True
    if head.startswith(_CONTAINER_MAGIC[:6]):
        return True
    return path.suffix.lower() in _VIDEO_SUFFIXES and len(head) > 0


def _rotation_of(frame) -> int:
    try:
        r = float(frame.rotation or 0)
    except (AttributeError, TypeError, ValueError):
        return 0
    return int(round(r / 90.0)) % 4 * 90


MAX_PIXELS = 16384 * 16384  # a header claiming more per frame is lying or hostile


def _y4m_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from a YUV4MPEG2 header, read before FFmpeg tries to allocate such frames (it fails
    with an unrelated errno on absurd sizes); None for other files."""
    try:
        with path.open("rb") as fh:
            head = fh.read(256)
    except OSError:
        return None
    if not head.startswith(b"YUV4MPEG2 "):
        return None
    fields = {tok[:1]: tok[1:] for tok in head.split(b"\n", 1)[0].split(b" ")[1:] if tok}
    try:
        width, height = int(fields.get(b"W", b"")), int(fields.get(b"H", b""))
    except ValueError:
        width = height = 0
    if width <= 0 or height <= 0:
        raise InvalidHeaderError(f"{path}: the YUV4MPEG2 header has no valid frame size (W and H must be positive "
                                "whole numbers)")
    rate = fields.get(b"F")
    if rate is not None:
        num, _, den = rate.partition(b":")
        if not (num.isdigit() and den.isdigit() and int(num) > 0 and int(den) > 0):
            raise InvalidHeaderError(f"{path}: the YUV4MPEG2 header has an invalid frame rate "
                                    f"{rate.decode('ascii', 'replace')!r} (it must be two positive numbers, e.g. "
                                    "F30:1)")
    return width, height


class InvalidHeaderError(CorruptVideoError):
    """The header is unusable (a size or rate no decoder can honour): final, no other decoder is tried."""


class HugeFrameError(InvalidHeaderError):
    """The header claims frames too large to decode."""


def refuse_huge(path: Path, width: int, height: int) -> None:
    if width * height > MAX_PIXELS:
        raise HugeFrameError(f"{path}: the header claims {width}×{height} pixels per frame, more than the "
                                "16384×16384 this reads; refusing")


def scan_video(path: Path) -> Scan:
    """Demux the first video stream (that is not cover art) and list its frames' timestamps."""
    import av  # lazy

    y4m = _y4m_size(path)
    if y4m is not None:
        refuse_huge(path, *y4m)
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, UnicodeDecodeError, OSError) as err:
        raise _classify(path, err) from err
    try:
        if not container.streams.video:
            raise NotAVideoError(f"{path}: the file has no video stream")
        moving = [s for s in container.streams.video if not (s.disposition & av.stream.Disposition.attached_pic)]
        if not moving:
            what = "an audio file with cover art" if container.streams.audio else "a still picture"
            raise NotAVideoError(f"{path}: {what}, not a video")
        stream = moving[0]
        fmt = container.format.name
        if fmt in _NOT_VIDEO_FORMATS or stream.codec_context.name in _TEXT_ART_CODECS:
            raise NotAVideoError(f"{path}: not a video file (FFmpeg reads it as {fmt!r})")
        if fmt == "image2" or fmt.endswith("_pipe"):
            raise NotAVideoError(f"{path}: is a still image, not a video")
        width, height = int(stream.codec_context.width or 0), int(stream.codec_context.height or 0)
        if width <= 0 or height <= 0:
            raise NotAVideoError(f"{path}: the video stream has no picture size")
        refuse_huge(path, width, height)
        tb = stream.time_base or Fraction(1, 90000)
        rate = stream.average_rate or stream.guessed_rate or Fraction(0)
        # What the header states (not FFmpeg's estimates from bitrate or dts, which are wrong for TS/NUT):
        # MP4/MOV stream duration and sample count, AVI frame count, Matroska/WebM segment duration.
        promised = float(stream.duration * tb) if stream.duration and fmt.startswith(("mov", "matroska")) else 0.0
        segment_only = False  # the promise is the whole file's (every stream's), not this stream's
        if not promised and fmt.startswith("matroska"):
            promised = _tag_seconds(stream.metadata.get("DURATION"))  # the track's own length (FFmpeg, mkvmerge)
            if not promised and container.duration:
                promised, segment_only = container.duration / 1e6, True
        if stream.frames and rate and fmt.startswith(("mov", "avi")):
            promised = max(promised, float(stream.frames / rate))
        pts: list[int | None] = []
        dts: list[int | None] = []
        ends: list[tuple[int, int]] = []  # (byte position, size) of each packet
        truncated = False
        try:
            for pkt in container.demux(stream):
                if pkt.size == 0:
                    continue
                pts.append(pkt.pts)
                dts.append(pkt.dts)
                ends.append((pkt.pos if pkt.pos is not None else -1, pkt.size))
        except (av.error.FFmpegError, OSError) as err:
            logger.info("%s: demuxing stopped after %d packets: %s", path, len(pts), _short(err))
            truncated = True
        index = stream.index
        if fmt == "avi" and stream.frames and len(pts) < stream.frames:
            # AVI times are packet counters: after bytes the demuxer had to skip, every later frame would carry
            # an earlier frame's time. Keep only what precedes the first hole (the rest is reported missing).
            cut = _first_hole(ends)
            if cut is not None:
                logger.info("%s: damaged AVI: frames after byte %d cannot be timed", path, ends[cut][0])
                pts, dts, truncated = pts[: cut + 1], dts[: cut + 1], True
        if segment_only and pts and not truncated and len(container.streams) > 1:
            last = max(p for p in (*pts, *dts) if p is not None) if any(p is not None for p in pts) else None
            end = float(last * tb) if last is not None else 0.0
            if promised > end + 1.0 and _others_outlast(container, index, end + 1.0):
                # an intact file whose other streams (audio, subtitles) run on after the video: the video is
                # short, not cut. Plan over the frames it has.
                logger.debug("%s: video ends at %.1f s, other streams run to %.1f s", path, end, promised)
                promised = 0.0
    finally:
        container.close()
    if not pts:
        raise EmptyVideoError(f"{path}: the video has zero decodable frames")
    runs = _monotonic_runs(pts, dts)
    exact = len(runs) == 1 and all(p is not None for p in pts) and len(set(pts)) == len(pts)
    if exact:
        table = np.sort(np.asarray(pts, dtype=np.int64))
    elif len(runs) > 1:  # decode time jumps back: each run its own stretch, end to end, in decode order
        table = _stretches(pts, dts, runs, rate, tb)
    else:  # stalled, repeated or missing pts: frames are known by decode order only
        table = _fill_times(pts, dts, rate, tb)
    fps = float(rate)
    if fps <= 0 and len(table) > 1 and table[-1] > table[0]:
        fps = (len(table) - 1) / (float(table[-1] - table[0]) * float(tb))
    start = int(table.min())
    return Scan(fmt, index, tb, table, exact, start, fps, width, height, _first_rotation(path, index), truncated,
                promised, len(runs) - 1)


def _tag_seconds(value: str | None) -> float:
    """A Matroska `DURATION` tag ("HH:MM:SS.nnnnnnnnn") in seconds; 0 when absent or unreadable."""
    try:
        h, m, sec = (value or "").split(":")
        return max(0.0, int(h) * 3600 + int(m) * 60 + float(sec))
    except ValueError:
        return 0.0


def _others_outlast(container, video_index: int, t: float) -> bool:
    """Whether a stream other than the video has packets later than `t` seconds (its own clock, which
    Matroska shares across streams). Reads the rest of the file, only when a file's length is in doubt."""
    import av

    others = [s for s in container.streams if s.index != video_index]
    try:
        container.seek(0)  # the video's scan read to the end
        for pkt in container.demux(*others):
            stamp = pkt.pts if pkt.pts is not None else pkt.dts
            if stamp is not None and pkt.time_base is not None and float(stamp * pkt.time_base) > t:
                return True
    except (av.error.FFmpegError, OSError):
        return False
    return False


def _monotonic_runs(pts: list[int | None], dts: list[int | None]) -> list[tuple[int, int]]:
    """[start, end) packet ranges in which decode time never goes back. A backward jump in decode time starts
    a new run: the stream was restarted or spliced (joined recordings, a wrapped MPEG-TS clock). Presentation
    times reordered by B-frames do not count: dts stays monotonic. Where the file gives no dts at all, pts
    must fall more than `REORDER_FRAMES` frames below the run's latest to count as a jump."""
    have_dts = any(d is not None for d in dts)
    clock = dts if have_dts else pts
    slack = 0
    if not have_dts:
        known = np.unique(np.asarray([p for p in pts if p is not None], dtype=np.int64))
        steps = np.diff(known)
        slack = REORDER_FRAMES * int(np.median(steps)) if len(steps) else 0
    runs: list[tuple[int, int]] = []
    start, top = 0, None
    for i, c in enumerate(clock):
        if c is None:
            continue
        if top is not None and c < top - slack:
            runs.append((start, i))
            start, top = i, c
        else:
            top = c if top is None else max(top, c)
    runs.append((start, len(clock)))
    return runs


def _stretches(pts: list[int | None], dts: list[int | None], runs: list[tuple[int, int]], rate: Fraction,
               tb: Fraction) -> np.ndarray:
    """One time line from runs that each restart the clock: within a run, frames in presentation order with
    their own spacing; each run starts one frame after the previous one ends."""
    filled = _fill_times(pts, dts, rate, tb)
    sorted_runs = [np.sort(filled[a:b]) for a, b in runs]
    steps = np.concatenate([np.diff(r) for r in sorted_runs])
    step = int(np.median(steps[steps > 0])) if np.any(steps > 0) else 1
    out: list[np.ndarray] = []
    offset = 0
    for run in sorted_runs:
        run = run - run[0] + offset
        out.append(run)
        offset = int(run[-1]) + step
    return np.concatenate(out)


def _first_hole(ends: list[tuple[int, int]]) -> int | None:
    """Index of the last packet before a stretch of bytes the demuxer skipped (AVI chunks are contiguous)."""
    for i in range(len(ends) - 1):
        (pos, size), (nxt, _) = ends[i], ends[i + 1]
        if pos >= 0 and nxt >= 0 and nxt - (pos + size) > 64:
            return i
    return None


def _fill_times(pts: list[int | None], dts: list[int | None], rate: Fraction, tb: Fraction) -> np.ndarray:
    step = int(round(1 / (float(rate) * float(tb)))) if rate and tb else 1
    out: list[int] = []
    for i, (p, d) in enumerate(zip(pts, dts)):
        v = p if p is not None else d
        out.append(int(v) if v is not None else (out[-1] + step if out else i * step))
    return np.asarray(out, dtype=np.int64)


def _first_rotation(path: Path, index: int) -> int:
    """The display-matrix rotation, read from the first decoded frame (PyAV exposes it per frame)."""
    import av

    try:
        with av.open(str(path)) as c:
            for frame in c.decode(c.streams[index]):
                return _rotation_of(frame)
    except (av.error.FFmpegError, OSError, StopIteration):
        pass
    return 0


def _upright(arr: np.ndarray, rotation: int) -> np.ndarray:
    return np.ascontiguousarray(np.rot90(arr, rotation // 90)) if rotation else arr


@DECODERS.register("pyav")
class PyAVDecoder:
    """Decodes forward, seeking to the keyframe before far targets; identifies every frame by its pts."""

    name = "pyav"

    def __init__(self, path: Path, scan: Scan, out_size: tuple[int, int] | None = None, threads: int = 0):
        import av  # lazy

        self._av = av
        self._path = path
        self._scan = scan
        self._threads = threads
        info = scan.info(self.name)
        if out_size is not None:
            info = StreamInfo(info.num_frames, info.fps, out_size[1], out_size[0], info.duration, self.name,
                              info.timestamps, info.rotation)
        self._info = info
        self._times = scan.times
        self._container = None
        self._iter = None
        self._last = -1  # index of the last frame decoded
        self._ordinal = 0  # decode-order counter (streams without unique pts)
        self._no_seek = not scan.exact
        self._seek_check = False  # the next frame is the first after a seek: must not lie past the target
        steps = np.diff(scan.pts) if scan.exact and len(scan.pts) > 1 else np.zeros(0, np.int64)
        self._tolerance = int(np.median(steps[steps > 0]) // 2) if np.any(steps > 0) else 0

    def info(self) -> StreamInfo:
        return self._info

    def _open(self) -> None:
        self.close()
        self._container = self._av.open(str(self._path))
        stream = self._container.streams[self._scan.stream_index]
        stream.thread_type = "AUTO"
        if self._threads:
            stream.codec_context.thread_count = self._threads
        self._stream = stream
        self._iter = self._frames()
        self._last, self._ordinal, self._seek_check = -1, 0, False

    def _frames(self):
        """Decoded frames, packet by packet: a damaged packet is skipped, not the end of the video."""
        assert self._container is not None
        packets = self._container.demux(self._stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                return
            except (self._av.error.FFmpegError, OSError) as err:
                logger.info("%s: reading stopped after frame %d: %s", self._path, self._last, _short(err))
                return
            try:
                frames = packet.decode()
            except self._av.error.FFmpegError as err:
                logger.debug("%s: a damaged packet was skipped: %s", self._path, _short(err))
                continue
            yield from frames

    def _seek(self, target: int) -> None:
        assert self._container is not None
        self._container.seek(int(self._scan.pts[target]), stream=self._stream, backward=True, any_frame=False)
        self._iter = self._frames()
        self._last, self._seek_check = -1, True

    def _far(self, target: int) -> bool:
        if self._no_seek:
            return False
        here = self._times[self._last] if self._last >= 0 else -SEEK_GAP_S
        return bool(self._times[target] - here > SEEK_GAP_S)

    def _identify(self, frame) -> tuple[int | None, float]:
        """(frame index, presentation time) of a decoded frame."""
        if not self._scan.exact:
            i = self._ordinal
            self._ordinal += 1
            own = frame.pts is not None and not self._scan.restarts  # stretched clocks: the joined time line
            t = ((frame.pts - self._scan.start) * float(self._scan.time_base) if own
                 else float(self._times[min(i, len(self._times) - 1)]))
            return i, float(t)
        if frame.pts is None:
            i = min(self._last + 1, len(self._times) - 1)
            return i, float(self._times[i])
        table = self._scan.pts
        j = int(np.searchsorted(table, frame.pts))
        if j >= len(table) or table[j] != frame.pts:  # not a listed time: within half a frame, or unknown
            j = min(range(max(0, j - 1), min(len(table), j + 1)), key=lambda k: abs(int(table[k]) - frame.pts))
            if abs(int(table[j]) - frame.pts) > self._tolerance:
                logger.debug("%s: decoded pts %s is not in the frame table; skipped", self._path, frame.pts)
                return None, 0.0
        return j, float(self._times[j])

    def _to_rgb(self, frame) -> np.ndarray:
        h, w = self._info.height, self._info.width
        rot = self._scan.rotation
        sh, sw = (w, h) if rot in (90, 270) else (h, w)
        return _upright(frame.to_ndarray(format="rgb24", width=sw, height=sh), rot)

    def get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        want = [int(i) for i in indices]
        frames: list[np.ndarray] = []
        got: list[int] = []
        times: list[float] = []
        if want:
            if self._iter is None or want[0] <= self._last or (not self._scan.exact and want[0] < self._ordinal):
                self._open()
            if self._far(want[0]):
                self._seek(want[0])
        k = 0
        while k < len(want):
            try:
                frame = next(self._iter)  # type: ignore[arg-type]
            except StopIteration:
                break
            except self._av.error.FFmpegError as err:
                logger.info("%s: decoding stopped after frame %d: %s", self._path, self._last, _short(err))
                self._iter = None
                break
            i, t = self._identify(frame)
            if i is None:
                continue
            if self._seek_check:
                self._seek_check = False
                if i > want[k]:  # the seek landed past the target: decode from the start, never seek again
                    logger.debug("%s: seek overshot (wanted %d, got %d); decoding sequentially", self._path, want[k], i)
                    self._no_seek = True
                    self._open()
                    continue
            self._last = max(self._last, i)
            while k < len(want) and want[k] < i:  # listed but never decoded (damaged): left out, not replaced
                logger.debug("%s: frame %d did not decode", self._path, want[k])
                k += 1
            if k < len(want) and want[k] == i:
                frames.append(self._to_rgb(frame))
                got.append(i)
                times.append(t)
                k += 1
                if k < len(want) and self._far(want[k]):
                    self._seek(want[k])
        h, w = self._info.height, self._info.width
        arr = np.stack(frames) if frames else np.zeros((0, h, w, 3), np.uint8)
        return arr, np.asarray(got, dtype=np.int64), np.asarray(times, dtype=np.float64)

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
        self._container = None
        self._iter = None


@DECODERS.register("decord")
class DecordDecoder:
    """decord, used only when its frame table is the scan's (same count, same timestamps)."""

    name = "decord"

    def __init__(self, path: Path, scan: Scan | None, out_size: tuple[int, int] | None = None, threads: int = 0):
        import decord  # lazy: optional, barely maintained

        if scan is not None and scan.format in _DECORD_UNSAFE_FORMATS:
            raise DecoderUnsuitableError(f"{path}: decord does not decode {scan.format!r} streams frame-exactly")
        if scan is not None and not scan.exact:
            raise DecoderUnsuitableError(f"{path}: timestamps stall or repeat; only PyAV decodes it in order")
        decord.bridge.set_bridge("native")
        decord.logging.set_level(decord.logging.QUIET)  # its FFmpeg's messages are noise: failures are ours to report
        rotation = scan.rotation if scan is not None else 0
        kwargs = {}
        if out_size is not None and not rotation:  # decord resizes rotated frames into 4 channels: resize here
            kwargs = {"height": out_size[0], "width": out_size[1]}
        try:
            with _native_stderr_silenced():  # decord's C++ logs "ERROR opening: <path>" itself; ours is one line
                self._vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=threads, **kwargs)
            n = len(self._vr)
            if n == 0:
                raise EmptyVideoError(f"{path}: the video has zero decodable frames")
            stamps = np.asarray(self._vr.get_frame_timestamp(list(range(n))), dtype=np.float64)[:, 0]
            first = self._vr[0].shape
        except VideoError:
            raise
        except Exception as err:  # noqa: BLE001 - decord raises DECORDError, RuntimeError, ...
            raise _classify(path, err) from err
        times = stamps - stamps[0]
        fps = float(self._vr.get_avg_fps() or 0.0)
        if scan is not None:
            tol = max(1e-3, 0.25 / scan.fps) if scan.fps > 0 else 1e-3
            if n != scan.num_frames or np.max(np.abs(times - scan.times)) > tol:
                raise DecoderUnsuitableError(f"{path}: decord's frame table differs from the file's timestamps")
            times, fps = scan.times, scan.fps
        h, w = out_size if out_size is not None else first[:2]
        self._out = (int(h), int(w))
        self._resize = out_size is not None and tuple(first[:2]) != self._out
        self._info = StreamInfo(n, fps, int(w), int(h), float(times[-1]) + (1 / fps if fps > 0 else 0.0), self.name,
                                times, rotation)

    def info(self) -> StreamInfo:
        return self._info

    def get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        idx = np.asarray(indices, dtype=np.int64)
        arr = self._vr.get_batch(idx.tolist()).asnumpy()
        if arr.ndim != 4 or arr.shape[-1] != 3:
            raise RuntimeError(f"decord returned frames of shape {arr.shape}")
        if self._resize:
            import torch
            import torch.nn.functional as F

            x = torch.from_numpy(arr).permute(0, 3, 1, 2).float()
            x = F.interpolate(x, size=self._out, mode="bilinear", align_corners=False, antialias=True)
            arr = x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
        return arr, idx, self._info.frame_times()[idx]

    def close(self) -> None:
        self._vr = None


def _classify(path: Path, err: Exception) -> Exception:
    if looks_like_video_container(path):
        return CorruptVideoError(f"{path}: the video is corrupt or truncated and cannot be decoded ({_short(err)})")
    return NotAVideoError(f"{path}: not a video file ({_short(err)})")


def _short(err: Exception) -> str:
    """FFmpeg's own words, without the errno number and the repeated path ('[Errno 1094995529] ...: 'x.mp4'')."""
    strerror = getattr(err, "strerror", None)
    text = (strerror if isinstance(strerror, str) and strerror else str(err)).strip().splitlines()
    return text[0][:160] if text else type(err).__name__


@contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null while a native library that prints its own errors runs: the user
    gets our one-line error (or the other decoder's result), never a server path printed by C++ code."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


#: in the order `auto` tries them: PyAV first (faster on long videos, exact everywhere; bench/RESULTS.md) ...
AUTO_ORDER = ("pyav", "decord")
#: ... except for clips shorter than this, where decord measured faster (bench/RESULTS.md, decoding: 1-minute
#: video 0.29 s vs 0.35 s; 10 minutes 2.6 s vs 1.5 s). Either way the decoder is used only where the packet
#: scan confirms its frame table, so both return the same frames.
SHORT_CLIP_SECONDS = 120.0
#: the Python module each decoder needs, to list only installed ones
DECODER_MODULES = {"pyav": "av", "decord": "decord"}


def open_decoder(path: Path, backend: str = "auto", out_size: tuple[int, int] | None = None,
                 scan: Scan | None = None) -> FrameDecoder:
    """Open with the preferred backend, falling back to the other one on any failure.

    `backend` is a preference, not a promise: a file one decoder cannot read exactly is read by the other.
    Only when both fail is it an error, the most specific diagnosis first.
    """
    if backend != "auto":
        DECODERS.get(backend)  # an unknown name is a one-line user error
    order = AUTO_ORDER if backend == "auto" else (backend, *[d for d in AUTO_ORDER if d != backend])
    errors: list[Exception] = []
    scan_error: Exception | None = None
    if scan is None:
        try:
            scan = scan_video(path)
        except ImportError as err:
            errors.append(err)
        except (NotAVideoError, InvalidHeaderError):
            raise  # no video stream / cover art / absurd frame size: decord would only guess
        except (CorruptVideoError, EmptyVideoError) as err:
            scan_error = err
    if backend == "auto" and scan is not None and len(scan.times) and float(scan.times.max()) < SHORT_CLIP_SECONDS:
        order = tuple(reversed(AUTO_ORDER))
    for name in order:
        try:
            if name == "pyav":
                if scan is None:
                    raise scan_error or ImportError("PyAV is not installed: pip install av")
                return PyAVDecoder(path, scan, out_size=out_size)
            return DecordDecoder(path, scan, out_size=out_size)
        except ImportError as err:
            logger.debug("%s unavailable: %s", name, err)
            errors.append(err)
        except VideoError as err:
            logger.debug("%s could not read %s: %s", name, path, err)
            errors.append(err)
        except Exception as err:  # noqa: BLE001 - third-party decoders raise anything; fall back, keep it
            logger.debug("%s failed on %s: %r", name, path, err)
            errors.append(_classify(path, err))
        if backend == name:
            logger.warning("%s: %s cannot read it (%s); using the other decoder", path, name, errors[-1])
    user_errors = [e for e in errors if not isinstance(e, ImportError)]
    for kind in (EmptyVideoError, NotAVideoError, CorruptVideoError, DecoderUnsuitableError):
        for e in user_errors:
            if isinstance(e, kind):
                raise e
    raise ImportError("no video decoder is installed: pip install av (and optionally decord)")
