"""`load_video`: open a file, choose frames, and hand them out chunk by chunk.

A `Video` holds only the sampling plan until frames are asked for; `iter_chunks` decodes one chunk at
a time so an hour-long video never sits in memory at once. `Video.from_frames` wraps frames that are
already in memory (tests, the demo's webcam, other libraries). A planned frame that does not decode
(a truncated or damaged file) is left out, never replaced by another, and counted: `shortfall()` says
how many were missing and where the video really ends; with `strict` it is an error instead.
"""
from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..errors import CorruptVideoError, EmptyVideoError, InvalidRequestError, NotAVideoError, VideoNotFoundError
from ..types import FrameBatch
from .decoders import FrameDecoder, InvalidHeaderError, StreamInfo, open_decoder, refuse_huge, scan_video
from .sampling import SamplingConfig, plan_indices, scaled_size

logger = logging.getLogger(__name__)

DEFAULT_CHUNK = 32


@dataclass
class DecodeReport:
    """How much of the plan decoded: feeds `Answer.warnings` and the stats."""

    planned: int
    decoded: int
    ends_at: float  # presentation time of the last frame that decoded (seconds)

    @property
    def complete(self) -> bool:
        return self.decoded >= self.planned

    def message(self, source: str = "") -> str:
        where = f"{source}: " if source else ""
        return (f"{where}{self.decoded} of {self.planned} planned frames decoded, video ends at "
                f"{self.ends_at:.1f} s (truncated or damaged file)")


@dataclass
class DecodeLog:
    requested: set[int] = field(default_factory=set)
    missing: set[int] = field(default_factory=set)
    beyond_end: int = 0  # planned frames past the last frame in the file (the header promised more)
    times: dict[int, float] = field(default_factory=dict)  # frame index → time the decoder reported


@dataclass
class Video:
    """A sampled video: which frames, when, and how to decode them."""

    source: str
    info: StreamInfo
    indices: np.ndarray  # source frame indices of the sampled frames, sorted
    _decoder: FrameDecoder | None = None
    _frames: torch.Tensor | None = None  # in-memory videos only
    strict: bool = False  # a planned frame that does not decode is an error, not a warning
    #: what decoding found, by source frame index; shared by re-sampled copies (`dataclasses.replace`)
    _log: "DecodeLog" = field(default_factory=lambda: DecodeLog())
    #: run once by `close()`: frees what opening made (a spooled temporary file)
    _cleanup: list[Callable[[], None]] = field(default_factory=list)

    @property
    def timestamps(self) -> torch.Tensor:
        """Presentation time (s) of each sampled frame: the decoder's own once decoded, the file's before."""
        t = self.info.frame_times()[self.indices].astype(np.float64)
        seen = self._log.times
        if seen:
            t = np.array([seen.get(int(i), float(v)) for i, v in zip(self.indices, t)], dtype=np.float64)
        return torch.from_numpy(t)

    def __len__(self) -> int:
        return len(self.indices)

    @classmethod
    def from_frames(cls, frames: torch.Tensor | np.ndarray, fps: float = 1.0, source: str = "<memory>",
                    timestamps: np.ndarray | None = None, indices: np.ndarray | None = None) -> "Video":
        """Wrap uint8 frames (T, H, W, 3) already in memory. Their times are `timestamps` (s) when given, else
        i / fps; the sampled ones are `indices` (all by default; `sources.from_frames` passes a plan)."""
        t = torch.as_tensor(np.asarray(frames)) if not isinstance(frames, torch.Tensor) else frames
        if t.ndim != 4 or t.shape[-1] != 3:
            raise InvalidRequestError(f"frames must be (T, H, W, 3), got shape {tuple(t.shape)}")
        if t.shape[0] == 0:
            raise EmptyVideoError(f"{source}: zero frames")
        if t.dtype != torch.uint8:
            raise InvalidRequestError(f"frames must be uint8, got {t.dtype}")
        if not (fps > 0 and np.isfinite(fps)):
            raise InvalidRequestError(f"fps must be a positive number, got {fps}")
        n, h, w = int(t.shape[0]), int(t.shape[1]), int(t.shape[2])
        times = None
        if timestamps is not None:
            times = np.asarray(timestamps, dtype=np.float64)
            if times.shape != (n,):
                raise InvalidRequestError(f"timestamps must hold one time per frame ({n}), got shape {times.shape}")
        end = float(times[-1]) + 1 / fps if times is not None else n / fps
        info = StreamInfo(n, float(fps), w, h, end, "memory", times)
        idx = np.arange(n, dtype=np.int64) if indices is None else np.asarray(indices, dtype=np.int64)
        if len(idx) and (idx.min() < 0 or idx.max() >= n):
            raise InvalidRequestError(f"frame indices outside 0..{n - 1}")
        return cls(source=source, info=info, indices=idx, _frames=t)

    def iter_chunks(self, chunk_size: int = DEFAULT_CHUNK, positions: np.ndarray | None = None) -> Iterator[FrameBatch]:
        """Decode the sampled frames (or the given positions into them) `chunk_size` at a time.

        Each batch carries the positions and frame indices it really holds and each frame's own time."""
        pos = np.arange(len(self.indices)) if positions is None else np.asarray(positions, dtype=np.int64)
        if chunk_size < 1:
            raise InvalidRequestError("chunk_size must be >= 1")
        ts = self.timestamps
        for start in range(0, len(pos), chunk_size):
            p = pos[start : start + chunk_size]
            src = self.indices[p]
            if self._frames is not None:
                yield FrameBatch(frames=self._frames[torch.from_numpy(src)], indices=torch.from_numpy(src.copy()),
                                 timestamps=ts[torch.from_numpy(p)], positions=torch.from_numpy(p.copy()))
                continue
            self._log.requested.update(int(x) for x in src)
            arr, got, times = self._decode(src)
            keep = np.isin(src, got)
            if not keep.all():
                lost = p[~keep]
                self._log.missing.update(int(x) for x in src[~keep])
                if self.strict:
                    raise CorruptVideoError(f"{self.source}: {len(lost)} planned frame(s) did not decode (first at "
                                            f"{float(ts[int(lost[0])]):.1f} s); the file is truncated or damaged "
                                            "(drop --strict-video to answer from the frames that decode)")
                logger.info("%s: %d of %d frames in a chunk did not decode", self.source, len(lost), len(p))
            p = p[keep]
            for i, v in zip(got.tolist(), times.tolist()):
                self._log.times[int(i)] = float(v)
            if len(p) == 0:
                continue
            yield FrameBatch(frames=torch.from_numpy(np.ascontiguousarray(arr)), indices=torch.from_numpy(got.copy()),
                             timestamps=torch.from_numpy(times.copy()), positions=torch.from_numpy(p.copy()))

    def _decode(self, src: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Decode source frames; if the decoder breaks mid-file, go on with the other one."""
        assert self._decoder is not None
        try:
            return self._decoder.get(src)
        except Exception as err:  # noqa: BLE001 - decord raises bare RuntimeErrors/DECORDErrors mid-stream
            failed = self._decoder.name
            other = "pyav" if failed == "decord" else "decord"
            logger.warning("%s: %s failed mid-file (%s); continuing with %s", self.source, failed, err, other)
            size = (self.info.height, self.info.width)
            self._decoder.close()
            try:
                self._decoder = open_decoder(Path(self.source), backend=other, out_size=size)
                if self._decoder.name == failed:
                    raise CorruptVideoError(f"{self.source}: no other decoder can read it")
                return self._decoder.get(src)
            except Exception as err2:  # noqa: BLE001
                raise CorruptVideoError(f"{self.source}: decoding failed with both decoders ({err}; {err2})") from err2

    def shortfall(self) -> DecodeReport | None:
        """None when every frame asked for decoded; else how many did and where the video ends."""
        log = self._log
        if not log.missing and not log.beyond_end:
            return None
        ok = sorted(log.requested - log.missing)
        if ok:
            end = log.times.get(ok[-1], float(self.info.frame_times()[ok[-1]]))
        else:
            end = float(self.info.frame_times()[-1])
        planned = log.requested | {int(i) for i in self.indices}
        return DecodeReport(planned=len(planned) + log.beyond_end, decoded=len(planned - log.missing), ends_at=end)

    @property
    def in_memory(self) -> bool:
        """True for `from_frames` videos: no frames exist beyond those held, and no file to key a cache on."""
        return self._frames is not None

    def resampled(self, indices: np.ndarray) -> "Video":
        """The same file with another sampling plan (source frame indices), sharing the open decoder, so a
        compressor can sample more densely than the pipeline did (LongVU). Not for in-memory videos."""
        if self._decoder is None:
            raise InvalidRequestError(f"{self.source}: an in-memory video cannot be resampled")
        idx = np.asarray(indices, dtype=np.int64)
        if len(idx) and (idx.min() < 0 or idx.max() >= max(self.info.num_frames, 1)):
            raise InvalidRequestError(f"{self.source}: frame indices outside 0..{self.info.num_frames - 1}")
        return replace(self, indices=idx)  # same decoder, same decode log (a shortfall is reported once)

    def read(self, positions: np.ndarray | None = None) -> FrameBatch:
        """The sampled frames at `positions` (all by default) at once, e.g. to re-read chosen frames after a
        decision; long videos should stream with `iter_chunks` instead."""
        batches = list(self.iter_chunks(DEFAULT_CHUNK, positions))
        if not batches:
            raise EmptyVideoError(f"{self.source}: zero decodable frames")
        return FrameBatch(
            frames=torch.cat([b.frames for b in batches]),
            indices=torch.cat([b.indices for b in batches]),
            timestamps=torch.cat([b.timestamps for b in batches]),
            positions=torch.cat([b.positions for b in batches if b.positions is not None]),
        )

    def on_close(self, fn: Callable[[], None]) -> None:
        self._cleanup.append(fn)

    def close(self) -> None:
        if self._decoder is not None:
            self._decoder.close()
        while self._cleanup:
            self._cleanup.pop()()


def _any_decodes(video: Video) -> bool:
    """Headers can promise frames that never decode: try the first planned frame, then (damaged files only)
    the whole plan."""
    for idx in (video.indices[:1], video.indices):
        try:
            _, got, _ = video._decode(idx)
        except CorruptVideoError:
            return False
        if len(got):
            return True
    return False


def expand_path(path: str | os.PathLike[str]) -> Path:
    """`~` and `~user` expanded; an unknown user is a `VideoNotFoundError` (pathlib raises RuntimeError)."""
    if not str(path).strip():  # Path("") is "." (the current directory)
        raise VideoNotFoundError("no video given (the path is empty)")
    if "://" in str(path):  # pathlib would fold "http://x/y.mp4" into "http:/x/y.mp4: no such file"
        raise VideoNotFoundError(f"{path}: a URL; videollm reads local files: download the video first")
    p = Path(path)
    try:
        return p.expanduser()
    except RuntimeError as err:
        head = str(path).split(os.sep)[0]
        raise VideoNotFoundError(f"{path}: no such file (cannot expand {head!r}: no such user)") from err


def _special_kind(mode: int) -> str:
    """What a path that is not a regular file is ('' for a regular file)."""
    for test, what in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return what
    return "" if stat.S_ISREG(mode) else "not a regular file"


def load_video(
    path: str | os.PathLike[str],
    sampling: SamplingConfig | None = None,
    backend: str = "auto",
    strict: bool = False,
) -> Video:
    """Open `path` and plan which frames to sample. Raises a specific `VideoError` a user can act on."""
    sampling = sampling or SamplingConfig()
    sampling.validate()
    p = expand_path(path)
    try:
        if not p.exists():
            raise VideoNotFoundError(f"{p}: no such file")
        if p.is_dir():
            raise NotAVideoError(f"{p}: is a directory, not a video file")
        kind = _special_kind(p.stat().st_mode)
        if kind:
            raise NotAVideoError(f"{p}: is {kind}, not a video file (a video must be a regular file that can be "
                                 "read from the start and sought in)")
        if p.stat().st_size == 0:
            raise NotAVideoError(f"{p}: the file is empty")
    except OSError as err:  # permission denied, name too long, ...
        raise VideoNotFoundError(f"{p}: cannot be read ({err.strerror or err})") from err
    try:
        scan = scan_video(p)
    except ImportError:
        scan = None
    except InvalidHeaderError:
        raise
    except (CorruptVideoError, EmptyVideoError):
        scan = None  # decord may still read it; open_decoder re-diagnoses
    if scan is not None:
        refuse_huge(p, scan.width, scan.height)
    probe = open_decoder(p, backend=backend, scan=scan)
    info = probe.info()
    if info.width <= 0 or info.height <= 0:
        probe.close()
        raise NotAVideoError(f"{p}: the video stream has no picture size")
    out_size = scaled_size(info.height, info.width, sampling.max_side)
    if out_size != (info.height, info.width):
        probe.close()
        probe = open_decoder(p, backend=info.backend, out_size=out_size, scan=scan)
        info = probe.info()
    times = info.frame_times()
    promised = scan.promised_duration if scan is not None else 0.0
    fps = info.fps if info.fps > 0 else 25.0
    beyond = 0
    if len(times) and promised > times[-1] + max(1.0, 2.0 / fps):  # cut short: plan over what was promised
        extra = times[-1] + np.arange(1, int((promised - times[-1]) * fps) + 1) / fps
        plan = plan_indices(np.concatenate([times, extra]), sampling)
        indices, beyond = plan[plan < len(times)], int(np.sum(plan >= len(times)))
        logger.debug("%s: header promises %.1f s, frames end at %.1f s", p, promised, times[-1])
    else:
        indices = plan_indices(times, sampling)
    video = Video(source=str(p), info=info, indices=indices, _decoder=probe, strict=strict)
    video._log.beyond_end = beyond
    if beyond and strict:
        video.close()
        raise CorruptVideoError(f"{p}: {DecodeReport(len(indices) + beyond, len(indices), float(times[-1])).message()}"
                                " (drop --strict-video to answer from the frames that decode)")
    if len(indices) == 0 or not _any_decodes(video):
        video.close()
        raise EmptyVideoError(f"{p}: zero decodable frames")
    logger.debug(
        "%s: %d frames @ %.2f fps via %s; sampling %d", p, info.num_frames, info.fps, info.backend, len(indices)
    )
    return video
