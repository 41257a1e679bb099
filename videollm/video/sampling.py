"""Which frames to decode: pure functions of the video's length and rate, tested exhaustively."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InvalidRequestError

MAX_FRAMES_LIMIT = 100_000  # beyond this a request is a mistake, not a video


@dataclass(frozen=True)
class SamplingConfig:
    """Uniform (`num_frames`) or fixed-rate (`fps`, capped by `max_frames`) sampling.

    Exactly one of `num_frames` / `fps` is used; `fps` wins when both are set.
    """

    num_frames: int | None = 32
    fps: float | None = None
    max_frames: int = 256
    max_side: int | None = 448  # decode-time downscale: bounds memory for 4K sources

    def validate(self) -> None:
        if self.fps is not None:
            if not (self.fps > 0 and np.isfinite(self.fps)) or self.fps > 240:
                raise InvalidRequestError(f"fps must be in (0, 240], got {self.fps}")
            if not 1 <= self.max_frames <= MAX_FRAMES_LIMIT:
                raise InvalidRequestError(f"max_frames must be in [1, {MAX_FRAMES_LIMIT}], got {self.max_frames}")
        elif self.num_frames is None or not 1 <= self.num_frames <= MAX_FRAMES_LIMIT:
            raise InvalidRequestError(f"num_frames must be in [1, {MAX_FRAMES_LIMIT}], got {self.num_frames}")
        if self.max_side is not None and not 16 <= self.max_side <= 8192:
            raise InvalidRequestError(f"max_side must be in [16, 8192], got {self.max_side}")


def uniform_indices(total: int, num: int) -> np.ndarray:
    """`num` indices spread evenly over [0, total), first and last frame included (LLaVA-style linspace)."""
    if total <= 0:
        return np.zeros(0, dtype=np.int64)
    if num >= total:
        return np.arange(total, dtype=np.int64)
    if num == 1:
        return np.array([total // 2], dtype=np.int64)
    return np.round(np.linspace(0, total - 1, num)).astype(np.int64)


def fps_indices(total: int, native_fps: float, target_fps: float, max_frames: int) -> np.ndarray:
    """One frame every 1/target_fps seconds; if that exceeds `max_frames`, spread `max_frames` uniformly."""
    if total <= 0:
        return np.zeros(0, dtype=np.int64)
    if native_fps <= 0:
        raise InvalidRequestError("the video reports no frame rate; use uniform sampling (--frames) instead")
    step = native_fps / target_fps
    idx = np.unique(np.floor(np.arange(0.0, total, max(step, 1.0))).astype(np.int64))
    idx = idx[idx < total]
    if len(idx) > max_frames:
        idx = idx[uniform_indices(len(idx), max_frames)]
    return idx


def sample_indices(total: int, native_fps: float, cfg: SamplingConfig) -> np.ndarray:
    cfg.validate()
    if cfg.fps is not None:
        return fps_indices(total, native_fps, cfg.fps, cfg.max_frames)
    return uniform_indices(total, int(cfg.num_frames))  # type: ignore[arg-type]


def plan_indices(times: np.ndarray, cfg: SamplingConfig) -> np.ndarray:
    """Which frames to decode, chosen in presentation time from every frame's timestamp (seconds).

    Uniform: `num_frames` instants evenly spread from the first to the last frame, each taking the nearest
    frame. Fixed rate: one instant every 1/fps seconds, each taking the frame on screen then (the last
    one that started at or before it); capped by `max_frames`, spread evenly. On a constant-rate video
    both equal `uniform_indices` / `fps_indices`; on a variable-rate one they follow the clock, not the
    frame count. Timestamps that stall or jump back never move the clock backwards.
    """
    cfg.validate()
    t = np.asarray(times, dtype=np.float64)
    n = len(t)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    clock = np.maximum.accumulate(np.nan_to_num(t, nan=0.0))
    if cfg.fps is not None:
        span = clock[-1] - clock[0]
        targets = clock[0] + np.arange(0.0, span + 1e-9, 1.0 / cfg.fps)
        idx = np.searchsorted(clock, targets + 1e-6, side="right") - 1
        idx = np.unique(np.clip(idx, 0, n - 1))
        if len(idx) > cfg.max_frames:
            idx = idx[uniform_indices(len(idx), cfg.max_frames)]
        return idx.astype(np.int64)
    num = int(cfg.num_frames)  # type: ignore[arg-type]
    if num >= n:
        return np.arange(n, dtype=np.int64)
    strict = clock + np.arange(n) * 1e-9  # equal times keep their order
    if num == 1:
        targets = np.array([(strict[0] + strict[-1]) / 2])
    else:
        targets = np.linspace(strict[0], strict[-1], num)
    pos = np.interp(targets, strict, np.arange(n, dtype=np.float64))
    idx = np.unique(np.clip(np.round(pos + 1e-7 * (num == 1)), 0, n - 1).astype(np.int64))
    return idx


def scaled_size(height: int, width: int, max_side: int | None) -> tuple[int, int]:
    """Output (H, W) keeping aspect ratio with the longer side at most `max_side` (even numbers)."""
    if max_side is None or max(height, width) <= max_side:
        return height, width
    s = max_side / max(height, width)
    return max(2, int(round(height * s / 2)) * 2), max(2, int(round(width * s / 2)) * 2)
