"""Frame decoders behind one small interface: decord first, PyAV as the fallback.

Each decoder returns frames for a sorted list of indices, so callers can stream a long video in
chunks and hold only one chunk of frames at a time.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Protocol

import numpy as np

from ..errors import CorruptVideoError, EmptyVideoError, NotAVideoError
from ..registry import Registry

#: frame decoders by name, tried in this (alphabetical) order under backend="auto": decord, then PyAV
DECODERS: Registry[type] = Registry("video backend")

logger = logging.getLogger(__name__)

# Leading bytes of common video containers: lets us tell "damaged video" from "not a video at all".
_CONTAINER_MAGIC = (b"\x1a\x45\xdf\xa3", b"RIFF", b"OggS", b"FLV", b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3", b"G")
_VIDEO_SUFFIXES = {".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".flv", ".mpg", ".mpeg", ".ts", ".wmv", ".3gp", ".ogv"}


# FFmpeg "plays" text files as ANSI art; such streams are never what a user means by a video.
_NOT_VIDEO_FORMATS = {"tty", "bin", "xbin", "adf", "idf"}
_TEXT_ART_CODECS = {"ansi", "bintext", "xbin", "idf"}


@dataclass(frozen=True)
class StreamInfo:
    num_frames: int
    fps: float
    width: int
    height: int
    duration: float
    backend: str


class FrameDecoder(Protocol):
    name: str

    def info(self) -> StreamInfo: ...

    def get(self, indices: np.ndarray) -> np.ndarray:
        """uint8 frames (len(indices), H, W, 3) for sorted, unique indices; may return fewer at a truncated end."""
        ...

    def close(self) -> None: ...


def looks_like_video_container(path: Path) -> bool:
    try:
        head = path.open("rb").read(16)
    except OSError:
        return False
    if len(head) >= 8 and head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip"):
        return True
    if head.startswith(_CONTAINER_MAGIC[:6]):
        return True
    return path.suffix.lower() in _VIDEO_SUFFIXES and len(head) > 0


@DECODERS.register("decord")
class DecordDecoder:
    name = "decord"

    def __init__(self, path: Path, out_size: tuple[int, int] | None = None, threads: int = 0):
        import decord  # lazy: optional, barely maintained

        decord.bridge.set_bridge("native")
        kwargs = {}
        if out_size is not None:
            kwargs = {"height": out_size[0], "width": out_size[1]}
        try:
            self._vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=threads, **kwargs)
        except decord.DECORDError as err:  # type: ignore[attr-defined]
            raise _classify(path, err) from err
        n = len(self._vr)
        fps = float(self._vr.get_avg_fps() or 0.0)
        if n == 0:
            raise EmptyVideoError(f"{path}: the video has zero decodable frames")
        h, w = self._vr[0].shape[:2] if out_size is None else out_size
        self._info = StreamInfo(n, fps, int(w), int(h), n / fps if fps > 0 else 0.0, self.name)

    def info(self) -> StreamInfo:
        return self._info

    def get(self, indices: np.ndarray) -> np.ndarray:
        return self._vr.get_batch(indices.tolist()).asnumpy()

    def close(self) -> None:
        del self._vr


@DECODERS.register("pyav")
class PyAVDecoder:
    """Sequential decode that keeps only the requested frames: exact for variable frame rate too."""

    name = "pyav"

    def __init__(self, path: Path, out_size: tuple[int, int] | None = None, threads: int = 0):
        import av  # lazy

        self._av = av
        self._path = path
        self._out_size = out_size
        self._threads = threads
        try:
            container = av.open(str(path))
        except (av.error.FFmpegError, UnicodeDecodeError) as err:
            raise _classify(path, err) from err
        try:
            if not container.streams.video:
                raise NotAVideoError(f"{path}: the file has no video stream")
            stream = container.streams.video[0]
            fmt = container.format.name
            if fmt in _NOT_VIDEO_FORMATS or stream.codec_context.name in _TEXT_ART_CODECS:
                raise NotAVideoError(f"{path}: not a video file (FFmpeg reads it as {fmt!r})")
            if fmt == "image2" or fmt.endswith("_pipe"):
                raise NotAVideoError(f"{path}: is a still image, not a video")
            rate = stream.average_rate or stream.guessed_rate or Fraction(0)
            fps = float(rate)
            duration = float(stream.duration * stream.time_base) if stream.duration else (
                container.duration / 1e6 if container.duration else 0.0)
            n = int(stream.frames or 0)
            if n <= 0:
                n = self._count_frames(container)
            if n <= 0:
                raise EmptyVideoError(f"{path}: the video has zero decodable frames")
            h, w = (stream.codec_context.height, stream.codec_context.width) if out_size is None else out_size
            self._info = StreamInfo(n, fps, int(w), int(h), duration or (n / fps if fps else 0.0), self.name)
        finally:
            container.close()
        self._container = None
        self._iter = None
        self._next_index = 0

    def _count_frames(self, container) -> int:
        """Count by demuxing packets (no decoding) when the header does not say."""
        stream = container.streams.video[0]
        try:
            return sum(1 for p in container.demux(stream) if p.size > 0)
        except self._av.error.FFmpegError:
            return 0

    def info(self) -> StreamInfo:
        return self._info

    def _open(self) -> None:
        self.close()
        self._container = self._av.open(str(self._path))
        stream = self._container.streams.video[0]
        stream.thread_type = "AUTO"
        if self._threads:
            stream.codec_context.thread_count = self._threads
        self._stream = stream
        self._start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        self._iter = self._container.decode(stream)
        self._next_index = 0

    def _index_of(self, frame) -> int:
        """Frame index from its timestamp (robust after a seek); the decode counter when there is none."""
        if frame.pts is None or self._info.fps <= 0:
            return self._next_index
        return int(round((float(frame.pts * frame.time_base) - self._start) * self._info.fps))

    def _seek(self, target: int) -> None:
        """Jump to the keyframe before `target` instead of decoding everything in between."""
        t = self._start + max(0.0, target / self._info.fps - 0.5)
        self._container.seek(int(t / self._stream.time_base), stream=self._stream, backward=True, any_frame=False)
        self._iter = self._container.decode(self._stream)

    def get(self, indices: np.ndarray) -> np.ndarray:
        if len(indices) == 0:
            return np.zeros((0, self._info.height, self._info.width, 3), np.uint8)
        if self._iter is None or int(indices[0]) < self._next_index:
            self._open()
        out: list[np.ndarray] = []
        h, w = self._info.height, self._info.width
        pending = [int(i) for i in indices]
        seek_gap = max(64, int(4 * self._info.fps))
        try:
            while pending:
                if self._info.fps > 0 and pending[0] - self._next_index > seek_gap:
                    self._seek(pending[0])
                progressed = False
                for frame in self._iter:  # type: ignore[union-attr]
                    i = self._index_of(frame)
                    self._next_index = i + 1
                    progressed = True
                    if i < pending[0]:
                        continue
                    if i > pending[0]:  # a seek overshot or the frame is missing: take the nearest that follows
                        logger.debug("%s: wanted frame %d, got %d", self._path, pending[0], i)
                        while pending and pending[0] < i:
                            pending.pop(0)
                            out.append(frame.to_ndarray(format="rgb24", width=w, height=h))
                        if pending and pending[0] == i:
                            pending.pop(0)
                        else:
                            break
                        continue
                    out.append(frame.to_ndarray(format="rgb24", width=w, height=h))
                    pending.pop(0)
                    if not pending or pending[0] - self._next_index > seek_gap:
                        break
                if not progressed:
                    break  # end of stream
        except self._av.error.FFmpegError as err:
            logger.warning("%s: decoding stopped at frame %d: %s", self._path, self._next_index, err)
            self._iter = None
        if not out:
            return np.zeros((0, h, w, 3), np.uint8)
        return np.stack(out)

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
        self._container = None
        self._iter = None


def _classify(path: Path, err: Exception) -> Exception:
    if looks_like_video_container(path):
        return CorruptVideoError(f"{path}: the video is corrupt or truncated and cannot be decoded ({_short(err)})")
    return NotAVideoError(f"{path}: not a video file ({_short(err)})")


def _short(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return text[0][:160] if text else type(err).__name__


def open_decoder(path: Path, backend: str = "auto", out_size: tuple[int, int] | None = None) -> FrameDecoder:
    """Open with the first backend that can read the file. A user error from every backend is re-raised."""
    order = DECODERS.names() if backend == "auto" else [backend]
    errors: list[Exception] = []
    for name in order:
        cls = DECODERS.get(name)
        try:
            return cls(path, out_size=out_size)
        except ImportError as err:
            logger.debug("%s unavailable: %s", name, err)
            errors.append(err)
        except (CorruptVideoError, NotAVideoError, EmptyVideoError) as err:
            logger.debug("%s could not read %s: %s", name, path, err)
            errors.append(err)
        except Exception as err:  # noqa: BLE001 - third-party decoders raise anything; fall back, keep it
            logger.debug("%s failed on %s: %r", name, path, err)
            errors.append(_classify(path, err))
    user_errors = [e for e in errors if not isinstance(e, ImportError)]
    if user_errors:
        # Prefer the most specific diagnosis: empty > not-a-video > corrupt.
        for kind in (EmptyVideoError, NotAVideoError, CorruptVideoError):
            for e in user_errors:
                if isinstance(e, kind):
                    raise e
    raise ImportError("no video decoder is installed: pip install decord av")
