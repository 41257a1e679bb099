"""Every form a video may be handed in as, turned into one `Video`: the one place input forms are normalised.

Accepted (`open_source`):

- a path (`str` / `os.PathLike`, `~` expanded): decoded and sampled by `load_video`;
- the file's bytes (`bytes`, `bytearray`, `memoryview`) or a binary file object (`open(..., "rb")`,
  `io.BytesIO`, anything with `read()` returning bytes): spooled to a private temporary file that is
  removed when the video is closed (decoders need to seek), then as a path;
- frames in memory: a uint8 array or tensor `(T, H, W, 3)` (a torch `(T, 3, H, W)` is accepted too), or a
  list of PIL images / `(H, W, 3)` uint8 arrays, with `fps=` or `timestamps=` (seconds, one per frame,
  non-decreasing) giving their times (default 1 fps). They are sampled with the same plan as a file, so
  `num_frames` / `fps` settings mean the same whatever the source;
- a `Video` (already opened): used as is.

Anything else (None, a number, a 0×0 frame, a text-mode file) is an `InvalidRequestError` saying what was
given and what is accepted. A resolver for other sources (e.g. URLs) plugs in through `SOURCE_RESOLVERS`.
"""
from __future__ import annotations

import io
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, Union, runtime_checkable

import numpy as np
import torch

from ..errors import InvalidRequestError, VideoLLMError
from .loader import Video, expand_path, load_video
from .remote import fetch as fetch_remote
from .remote import is_remote
from .sampling import SamplingConfig, plan_indices

logger = logging.getLogger(__name__)

ACCEPTED = ("a file path, the file's bytes, a binary file object, frames (T, H, W, 3) uint8 as a numpy array or "
            "torch tensor, a list of PIL images, or a Video")
#: at most this many bytes are spooled from a file object or bytes (a request this large is a mistake)
MAX_SPOOL_BYTES = 16 * 2**30
CHUNK_BYTES = 1 << 20


@runtime_checkable
class BinaryReadable(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...


#: the video input forms `open_source` accepts (for type hints at the API)
VideoInput = Union[str, os.PathLike, bytes, bytearray, memoryview, BinaryReadable, np.ndarray, torch.Tensor,
                   Sequence[object], Video]

#: extra sources by test → path: `(accepts(obj), resolve(obj) -> local path)`; a resolved path is opened like any
#: other and removed on close when `resolve` returns `(path, True)`
def _fetch_remote(source: object) -> tuple[Path, bool]:
    """A URL or data URI → a local copy owned by `video.remote`'s store (same caps as the server)."""
    return Path(fetch_remote(str(source))), False


SOURCE_RESOLVERS: list[tuple[Callable[[object], bool], Callable[[object], tuple[Path, bool]]]] = [
    (is_remote, _fetch_remote),
]


def open_source(video: object, sampling: SamplingConfig, backend: str = "auto", strict: bool = False,
                fps: float | None = None, timestamps: Sequence[float] | np.ndarray | None = None) -> Video:
    """Any accepted input → a sampled `Video` (see the module docstring). Closing it frees what it made."""
    if isinstance(video, Video):
        return video
    frames_given = fps is not None or timestamps is not None
    for accepts, resolve in SOURCE_RESOLVERS:
        if accepts(video):
            _no_times(frames_given, "a URL")
            path, owned = resolve(video)
            return _open_path(path, owned, str(video)[:200], sampling, backend, strict)
    if isinstance(video, (str, os.PathLike)):
        _no_times(frames_given, "a file path")
        return load_video(expand_path(video), sampling, backend=backend, strict=strict)
    if isinstance(video, (bytes, bytearray, memoryview)):
        _no_times(frames_given, "a file's bytes")
        return _open_bytes(bytes(video), "<bytes>", "", sampling, backend, strict)
    if _is_frames(video):
        return from_frames(video, sampling, fps=fps, timestamps=timestamps)
    if hasattr(video, "read"):
        _no_times(frames_given, "a file object")
        return _open_file_object(video, sampling, backend, strict)
    what = "None" if video is None else type(video).__name__
    raise InvalidRequestError(f"cannot read a video from {what}; give {ACCEPTED}")


def _no_times(given: bool, what: str) -> None:
    if given:
        raise InvalidRequestError(f"fps= and timestamps= apply to frames in memory, not to {what} (its own "
                                  "timestamps are used)")


def _open_path(path: Path, owned: bool, label: str, sampling: SamplingConfig, backend: str, strict: bool) -> Video:
    try:
        video = load_video(path, sampling, backend=backend, strict=strict)
    except VideoLLMError as err:
        if owned:
            path.unlink(missing_ok=True)
        raise _relabel(err, str(path), label) from err
    if owned:  # `source` stays the real file: the other decoder may reopen it mid-file
        video.on_close(lambda: path.unlink(missing_ok=True))
    return video


def _relabel(err: VideoLLMError, path: str, label: str) -> VideoLLMError:
    """The same error naming the input the user gave, not a private temporary file."""
    msg = str(err).replace(path, label)
    try:
        return type(err)(msg)
    except TypeError:  # an error class with another constructor
        return VideoLLMError(msg)


def _open_bytes(data: bytes, label: str, suffix: str, sampling: SamplingConfig, backend: str, strict: bool) -> Video:
    if not data:
        raise InvalidRequestError(f"{label}: no bytes (an empty video)")
    fd, name = tempfile.mkstemp(prefix="videollm-", suffix=suffix)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    return _open_path(Path(name), True, label, sampling, backend, strict)


def _open_file_object(fh: object, sampling: SamplingConfig, backend: str, strict: bool) -> Video:
    """A file object of a file on disk, at its start, is opened by name (nothing copied); any other readable
    object is copied to a temporary file in chunks."""
    name = getattr(fh, "name", None)
    label = f"<file {name}>" if isinstance(name, str) else f"<{type(fh).__name__}>"
    if isinstance(fh, io.TextIOBase) or "b" not in str(getattr(fh, "mode", "b")):
        raise InvalidRequestError(f"{label}: opened in text mode; open the video with open(path, 'rb')")
    if isinstance(name, str) and os.path.isfile(name) and _at_start(fh):
        return load_video(Path(name), sampling, backend=backend, strict=strict)
    suffix = Path(name).suffix if isinstance(name, str) else ""
    fd, tmp = tempfile.mkstemp(prefix="videollm-", suffix=suffix)
    path = Path(tmp)
    try:
        with os.fdopen(fd, "wb") as out:
            total = 0
            while True:
                chunk = fh.read(CHUNK_BYTES)  # type: ignore[attr-defined]
                if isinstance(chunk, str):
                    raise InvalidRequestError(f"{label}: read() gives text; open the video in binary mode ('rb')")
                if not isinstance(chunk, (bytes, bytearray, memoryview)):
                    raise InvalidRequestError(f"{label}: read() gives {type(chunk).__name__}, not bytes")
                if not chunk:
                    break
                total += len(chunk)
                if total > MAX_SPOOL_BYTES:
                    raise InvalidRequestError(f"{label}: more than {MAX_SPOOL_BYTES >> 30} GiB; pass a file path")
                out.write(chunk)
    except (OSError, ValueError) as err:  # closed, not readable
        path.unlink(missing_ok=True)
        raise InvalidRequestError(f"{label}: cannot be read ({err})") from err
    except InvalidRequestError:
        path.unlink(missing_ok=True)
        raise
    if total == 0:
        path.unlink(missing_ok=True)
        where = _position(fh)
        if where:  # read from where it stands: a stream already read to its end is not an empty video
            raise InvalidRequestError(f"{label}: nothing left to read at byte {where}; call .seek(0) first")
        raise InvalidRequestError(f"{label}: no bytes (an empty video)")
    return _open_path(path, True, label, sampling, backend, strict)


def _position(fh: object) -> int:
    try:
        return int(fh.tell()) if fh.seekable() else 0  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return 0


def _at_start(fh: object) -> bool:
    try:
        return bool(fh.seekable()) and fh.tell() == 0  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return False


def _is_frames(video: object) -> bool:
    if isinstance(video, (np.ndarray, torch.Tensor)):
        return True
    if isinstance(video, (list, tuple)) and video:
        return all(_is_image(x) for x in video)
    return False


def _is_image(x: object) -> bool:
    if isinstance(x, (np.ndarray, torch.Tensor)):
        return True
    try:
        from PIL import Image
    except ImportError:
        return False
    return isinstance(x, Image.Image)


def _as_array(frames: object) -> np.ndarray | torch.Tensor:
    """(T, H, W, 3) uint8, from any accepted frame form."""
    if isinstance(frames, (list, tuple)):
        arrays = []
        for i, f in enumerate(frames):
            a = _image_array(f, i)
            if arrays and a.shape != arrays[0].shape:
                raise InvalidRequestError(f"frame {i} is {a.shape[1]}×{a.shape[0]}, frame 0 is "
                                          f"{arrays[0].shape[1]}×{arrays[0].shape[0]}: all frames must be one size")
            arrays.append(a)
        return np.stack(arrays)
    t = frames
    if isinstance(t, torch.Tensor):
        t = t.detach().cpu()
        if t.ndim == 4 and t.shape[-1] != 3 and t.shape[1] == 3:  # (T, 3, H, W), torchvision's layout
            t = t.permute(0, 2, 3, 1).contiguous()
    shape = tuple(t.shape)
    if len(shape) == 3 and shape[-1] == 3:
        raise InvalidRequestError(f"frames of shape {shape} look like one image; give (T, H, W, 3) (add a first "
                                  "axis for one frame) or a list of images")
    if len(shape) != 4 or shape[-1] != 3:
        raise InvalidRequestError(f"frames must be (T, H, W, 3) RGB, got shape {shape}")
    dtype = t.dtype
    if dtype not in (np.uint8, torch.uint8):
        raise InvalidRequestError(f"frames must be uint8 (0-255 RGB), got {dtype}; convert with "
                                  "(x * 255).round().clip(0, 255).astype(np.uint8) if they are floats in [0, 1]")
    return t


def _image_array(f: object, i: int) -> np.ndarray:
    if isinstance(f, torch.Tensor):
        f = f.detach().cpu().numpy()
    if isinstance(f, np.ndarray):
        if f.ndim != 3 or f.shape[-1] != 3 or f.dtype != np.uint8:
            raise InvalidRequestError(f"frame {i}: expected (H, W, 3) uint8, got shape {f.shape} {f.dtype}")
        return f
    if f.width == 0 or f.height == 0:  # type: ignore[attr-defined]
        raise InvalidRequestError(f"frame {i} is 0×0 pixels")
    return np.asarray(f.convert("RGB"))  # type: ignore[attr-defined]


def frame_times(n: int, fps: float | None, timestamps: Sequence[float] | np.ndarray | None) -> np.ndarray:
    """Each frame's time (s): the given timestamps (checked), else i / fps (default 1 fps)."""
    if timestamps is not None:
        if fps is not None:
            raise InvalidRequestError("give fps= or timestamps=, not both")
        try:
            t = np.asarray(timestamps, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise InvalidRequestError(f"timestamps must be numbers (seconds), got {timestamps!r:.80}") from err
        if t.ndim != 1 or len(t) != n:
            raise InvalidRequestError(f"timestamps must hold one time per frame ({n}), got shape {t.shape}")
        if not np.all(np.isfinite(t)) or np.any(t < 0) or np.any(np.diff(t) < 0):
            raise InvalidRequestError("timestamps must be finite, >= 0 and non-decreasing (seconds)")
        return t
    rate = 1.0 if fps is None else fps
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not (np.isfinite(rate) and rate > 0):
        raise InvalidRequestError(f"fps must be a positive number, got {fps!r}")
    return np.arange(n, dtype=np.float64) / float(rate)


def from_frames(frames: object, sampling: SamplingConfig, fps: float | None = None,
                timestamps: Sequence[float] | np.ndarray | None = None, source: str = "<frames>") -> Video:
    """Frames in memory → a `Video` sampled with `sampling`'s plan over their times."""
    sampling.validate()
    arr = _as_array(frames)
    n, h, w = int(arr.shape[0]), int(arr.shape[1]), int(arr.shape[2])
    if n == 0:
        raise InvalidRequestError("no frames given (T = 0)")
    if h == 0 or w == 0:
        raise InvalidRequestError(f"frames are {w}×{h} pixels; a frame needs at least 1×1")
    times = frame_times(n, fps, timestamps)
    held = torch.from_numpy(np.ascontiguousarray(arr)) if isinstance(arr, np.ndarray) else arr  # no copy
    return Video.from_frames(held, fps=_rate(times, fps), source=source, timestamps=times,
                             indices=plan_indices(times, sampling))


def _rate(times: np.ndarray, fps: float | None) -> float:
    if fps is not None:
        return float(fps)
    span = float(times[-1] - times[0]) if len(times) > 1 else 0.0
    return (len(times) - 1) / span if span > 0 else 1.0


__all__ = ["ACCEPTED", "SOURCE_RESOLVERS", "VideoInput", "from_frames", "frame_times", "open_source"]
