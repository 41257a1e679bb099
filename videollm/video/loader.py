"""`load_video`: open a file, choose frames, and hand them out chunk by chunk.

A `Video` holds only the sampling plan until frames are asked for; `iter_chunks` decodes one chunk at
a time so an hour-long video never sits in memory at once. `Video.from_frames` wraps frames that are
already in memory (tests, the demo's webcam, other libraries).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import CorruptVideoError, EmptyVideoError, InvalidRequestError, NotAVideoError, VideoNotFoundError
from ..types import FrameBatch
from .decoders import FrameDecoder, StreamInfo, open_decoder
from .sampling import SamplingConfig, sample_indices, scaled_size

logger = logging.getLogger(__name__)

DEFAULT_CHUNK = 32


@dataclass
class Video:
    """A sampled video: which frames, when, and how to decode them."""

    source: str
    info: StreamInfo
    indices: np.ndarray  # source frame indices of the sampled frames, sorted
    _decoder: FrameDecoder | None = None
    _frames: torch.Tensor | None = None  # in-memory videos only

    @property
    def timestamps(self) -> torch.Tensor:
        fps = self.info.fps if self.info.fps > 0 else 1.0
        return torch.from_numpy(self.indices.astype(np.float64) / fps)

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def in_memory(self) -> bool:
        """Frames handed in rather than decoded from a file (no content key: never cached)."""
        return self._frames is not None

    @classmethod
    def from_frames(cls, frames: torch.Tensor | np.ndarray, fps: float = 1.0, source: str = "<memory>") -> "Video":
        """Wrap uint8 frames (T, H, W, 3) already in memory; all of them count as sampled."""
        t = torch.as_tensor(np.asarray(frames)) if not isinstance(frames, torch.Tensor) else frames
        if t.ndim != 4 or t.shape[-1] != 3:
            raise InvalidRequestError(f"frames must be (T, H, W, 3), got shape {tuple(t.shape)}")
        if t.shape[0] == 0:
            raise EmptyVideoError(f"{source}: zero frames")
        if t.dtype != torch.uint8:
            raise InvalidRequestError(f"frames must be uint8, got {t.dtype}")
        n, h, w = int(t.shape[0]), int(t.shape[1]), int(t.shape[2])
        info = StreamInfo(n, float(fps), w, h, n / fps, "memory")
        return cls(source=source, info=info, indices=np.arange(n, dtype=np.int64), _frames=t)

    def iter_chunks(self, chunk_size: int = DEFAULT_CHUNK, positions: np.ndarray | None = None) -> Iterator[FrameBatch]:
        """Decode the sampled frames (or the given positions into them) `chunk_size` at a time."""
        pos = np.arange(len(self.indices)) if positions is None else np.asarray(positions, dtype=np.int64)
        if chunk_size < 1:
            raise InvalidRequestError("chunk_size must be >= 1")
        ts = self.timestamps
        for start in range(0, len(pos), chunk_size):
            p = pos[start : start + chunk_size]
            src = self.indices[p]
            if self._frames is not None:
                frames = self._frames[torch.from_numpy(p)]
            else:
                arr = self._decode(src)
                if len(arr) < len(src):
                    logger.warning("%s: video ended early (truncated?): got %d of %d frames in a chunk",
                                   self.source, len(arr), len(src))
                    p, src = p[: len(arr)], src[: len(arr)]
                    if len(arr) == 0:
                        return
                frames = torch.from_numpy(np.ascontiguousarray(arr))
            yield FrameBatch(frames=frames, indices=torch.from_numpy(src.copy()), timestamps=ts[torch.from_numpy(p)])

    def _decode(self, src: np.ndarray) -> np.ndarray:
        """Decode source frames; if the primary decoder breaks mid-file, go on with PyAV instead."""
        assert self._decoder is not None
        try:
            return self._decoder.get(src)
        except Exception as err:  # noqa: BLE001 - decord raises bare RuntimeErrors/DECORDErrors mid-stream
            if self._decoder.name == "pyav":
                raise CorruptVideoError(f"{self.source}: decoding failed ({err})") from err
            logger.warning("%s: %s failed mid-file (%s); continuing with PyAV", self.source, self._decoder.name, err)
            size = (self.info.height, self.info.width)
            self._decoder.close()
            self._decoder = open_decoder(Path(self.source), backend="pyav", out_size=size)
            return self._decoder.get(src)

    def read(self, positions: np.ndarray | None = None) -> FrameBatch:
        """All sampled frames (or the given positions) at once: for short videos and tests."""
        batches = list(self.iter_chunks(DEFAULT_CHUNK, positions))
        if not batches:
            raise EmptyVideoError(f"{self.source}: zero decodable frames")
        return FrameBatch(
            frames=torch.cat([b.frames for b in batches]),
            indices=torch.cat([b.indices for b in batches]),
            timestamps=torch.cat([b.timestamps for b in batches]),
        )

    def close(self) -> None:
        if self._decoder is not None:
            self._decoder.close()


def load_video(
    path: str | os.PathLike[str],
    sampling: SamplingConfig | None = None,
    backend: str = "auto",
) -> Video:
    """Open `path` and plan which frames to sample. Raises a specific `VideoError` a user can act on."""
    sampling = sampling or SamplingConfig()
    sampling.validate()
    p = Path(path).expanduser()
    if not p.exists():
        raise VideoNotFoundError(f"{p}: no such file")
    if p.is_dir():
        raise NotAVideoError(f"{p}: is a directory, not a video file")
    if p.stat().st_size == 0:
        raise NotAVideoError(f"{p}: the file is empty")
    probe = open_decoder(p, backend=backend)
    info = probe.info()
    out_size = scaled_size(info.height, info.width, sampling.max_side)
    if info.width <= 0 or info.height <= 0:
        raise NotAVideoError(f"{p}: the video stream has no picture size")
    if out_size != (info.height, info.width):
        probe.close()
        probe = open_decoder(p, backend=info.backend, out_size=out_size)
        info = StreamInfo(info.num_frames, info.fps, out_size[1], out_size[0], info.duration, info.backend)
    indices = sample_indices(info.num_frames, info.fps, sampling)
    if len(indices) == 0 or len(probe.get(indices[:1])) == 0:  # headers can promise frames that never decode
        probe.close()
        raise EmptyVideoError(f"{p}: zero decodable frames")
    logger.debug("%s: %d frames @ %.2f fps via %s; sampling %d", p, info.num_frames, info.fps, info.backend, len(indices))
    return Video(source=str(p), info=info, indices=indices, _decoder=probe)
