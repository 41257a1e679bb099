"""Encode once, ask many: per-frame features kept across questions about the same video.

Benchmarks ask several questions per video (VideoMME three, MLVU and LVBench more), and a user asks
follow-ups. Decoding and the vision tower dominate the cost of a question, and neither depends on the
question, so their per-frame outputs are cached; query-aware compressors (LongVU, Tempo) then redo only their
query step. Entries are keyed by the video's *content* (size, modification time and a hash of its first and
last bytes), the sampled frames' timestamps and decode size, the model instance and the kind of feature, so a
changed file, another sampling plan or another (or re-quantized) model never reads a stale entry. Memory is
bounded: least recently used videos are dropped first.
"""
from __future__ import annotations

import hashlib
import os
import threading
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

#: default bound on cached features, in MiB (`VIDEOLLM_FEATURE_CACHE_MB`; 0 turns caching off)
DEFAULT_MAX_MB = 2048
_FINGERPRINT_BYTES = 1 << 20


@dataclass(frozen=True)
class CacheKey:
    video: str  # content fingerprint of the file
    plan: str  # hash of the sampled timestamps and the decode size
    model: str  # the model instance that made the features
    kind: str  # "tokens" (projected), "features" (pre-projector), "dino", …


def file_fingerprint(path: str | os.PathLike[str]) -> str | None:
    """A cheap content key: size, mtime and a hash of the first and last MiB (None if unreadable)."""
    try:
        p = Path(path)
        st = p.stat()
        h = hashlib.blake2b(digest_size=16)
        h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
        with p.open("rb") as f:
            h.update(f.read(_FINGERPRINT_BYTES))
            if st.st_size > 2 * _FINGERPRINT_BYTES:
                f.seek(-_FINGERPRINT_BYTES, os.SEEK_END)
                h.update(f.read(_FINGERPRINT_BYTES))
        return h.hexdigest()
    except OSError:
        return None


def plan_digest(timestamps: torch.Tensor | np.ndarray, extra: Iterable[object] = ()) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(np.round(np.asarray(timestamps, dtype=np.float64), 6).tobytes())
    h.update(repr(tuple(extra)).encode())
    return h.hexdigest()


_MODEL_IDS: "weakref.WeakKeyDictionary[object, str]" = weakref.WeakKeyDictionary()


def model_identity(model: object) -> str:
    """A process-unique id for a model instance (never reused, unlike `id()`), plus its name for readability."""
    try:
        uid = _MODEL_IDS.setdefault(model, uuid.uuid4().hex)
    except TypeError:  # not weak-referenceable: fall back to id() (the caller keeps the model alive)
        uid = f"id{id(model)}"
    return f"{getattr(model, 'name', type(model).__name__)}:{uid}"


class FeatureCache:
    """Per-frame tensors by (key, frame position), evicted least-recently-used video first, bounded in bytes."""

    def __init__(self, max_bytes: int | None = None):
        if max_bytes is None:
            max_bytes = int(float(os.environ.get("VIDEOLLM_FEATURE_CACHE_MB", DEFAULT_MAX_MB)) * 2**20)
        self.max_bytes = max(0, int(max_bytes))
        self._entries: OrderedDict[CacheKey, dict[int, torch.Tensor]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    @property
    def nbytes(self) -> int:
        return self._bytes

    def get(self, key: CacheKey, positions: Sequence[int]) -> dict[int, torch.Tensor]:
        with self._lock:
            frames = self._entries.get(key)
            if frames is None:
                self.misses += len(positions)
                return {}
            self._entries.move_to_end(key)
            found = {int(p): frames[int(p)] for p in positions if int(p) in frames}
            self.hits += len(found)
            self.misses += len(positions) - len(found)
            return found

    def has_any(self, key: CacheKey, positions: Sequence[int]) -> bool:
        """Whether any of `positions` is cached under `key` (no effect on hit counts or recency)."""
        with self._lock:
            frames = self._entries.get(key)
            return frames is not None and any(int(p) in frames for p in positions)

    def put(self, key: CacheKey, positions: Sequence[int], values: torch.Tensor) -> None:
        """Store `values[i]` for `positions[i]` (detached, on the CPU so GPU memory is not pinned by the cache)."""
        if not self.enabled:
            return
        with self._lock:
            frames = self._entries.setdefault(key, {})
            self._entries.move_to_end(key)
            for p, v in zip(positions, values):
                t = v.detach().to("cpu", copy=True) if v.device.type != "cpu" else v.detach().clone()
                old = frames.get(int(p))
                if old is not None:
                    self._bytes -= _nbytes(old)
                frames[int(p)] = t
                self._bytes += _nbytes(t)
            while self._bytes > self.max_bytes and self._entries:
                _, dropped = self._entries.popitem(last=False)
                self._bytes -= sum(_nbytes(t) for t in dropped.values())

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def cached_chunks(cache: FeatureCache, key: CacheKey | None, positions: np.ndarray, chunk_size: int,
                  compute: Callable[[np.ndarray], Iterator[tuple[np.ndarray, torch.Tensor]]],
                  device: torch.device | str | None = None) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """Yield (positions, per-frame tensors) chunk by chunk in order, computing only frames not cached.

    `compute(missing_positions)` streams (positions, tensors) for the frames it is given; it may return fewer
    than asked (a truncated or damaged video): frames that did not decode are left out of their chunk.
    """
    if key is None or not cache.enabled:
        yield from compute(positions)
        return
    for start in range(0, len(positions), chunk_size):
        chunk = positions[start : start + chunk_size]
        have = cache.get(key, chunk.tolist())
        missing = np.array([p for p in chunk if int(p) not in have], dtype=np.int64)
        if len(missing):
            for pos, values in compute(missing):
                cache.put(key, pos.tolist(), values)
                have.update({int(p): v for p, v in zip(pos, values)})
        got = [int(p) for p in chunk if int(p) in have]
        if got:
            yield np.array(got, dtype=np.int64), torch.stack([have[p].to(device) if device else have[p] for p in got])


class SampledVideo(Protocol):
    """What a cache key needs from a `Video`."""

    source: str

    @property
    def in_memory(self) -> bool: ...

    @property
    def timestamps(self) -> torch.Tensor: ...


def video_key(video: SampledVideo, model: object, kind: str, extra: Iterable[object] = ()) -> CacheKey | None:
    """The cache key of `kind` features of `video` by `model`; None (do not cache) for in-memory videos."""
    if video.in_memory:
        return None
    fingerprint = _fingerprint_cached(video.source)
    if fingerprint is None:
        return None
    return CacheKey(fingerprint, plan_digest(video.timestamps, extra), model_identity(model), kind)


_FINGERPRINTS: dict[tuple[str, int, int], str | None] = {}


def _fingerprint_cached(source: str) -> str | None:
    """Fingerprints are computed once per (path, size, mtime): a question does not re-read the file's bytes."""
    try:
        st = os.stat(source)
    except OSError:
        return None
    k = (os.path.realpath(source), st.st_size, st.st_mtime_ns)
    if k not in _FINGERPRINTS:
        _FINGERPRINTS[k] = file_fingerprint(source)
    return _FINGERPRINTS[k]


_DEFAULT: FeatureCache | None = None


def default_cache() -> FeatureCache:
    """The process-wide cache that the pipeline, eval and the demo share."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = FeatureCache()
    return _DEFAULT
