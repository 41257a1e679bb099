"""The per-frame feature cache: bounded, keyed by content and plan, computes only what is missing."""
from __future__ import annotations

import os

import numpy as np
import torch

from videollm.feature_cache import CacheKey, FeatureCache, cached_chunks, file_fingerprint, model_identity


def _compute_counter(calls: list[list[int]], truncate_at: int | None = None):
    def compute(positions: np.ndarray):
        pos = positions if truncate_at is None else positions[positions < truncate_at]
        calls.append(pos.tolist())
        if len(pos):
            yield pos, torch.stack([torch.full((2, 3), float(p)) for p in pos])
    return compute


KEY = CacheKey("v", "plan", "model", "tokens")


def test_second_pass_computes_nothing_and_returns_the_same_tensors() -> None:
    cache = FeatureCache(max_bytes=1 << 20)
    calls: list[list[int]] = []
    first = list(cached_chunks(cache, KEY, np.arange(10), 4, _compute_counter(calls)))
    second = list(cached_chunks(cache, KEY, np.arange(10), 4, _compute_counter(calls)))
    assert calls == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    for (p1, t1), (p2, t2) in zip(first, second):
        assert np.array_equal(p1, p2) and torch.equal(t1, t2)
    assert cache.hits == 10


def test_only_missing_positions_are_computed() -> None:
    cache = FeatureCache(max_bytes=1 << 20)
    calls: list[list[int]] = []
    list(cached_chunks(cache, KEY, np.array([0, 2, 4]), 8, _compute_counter(calls)))
    out = list(cached_chunks(cache, KEY, np.arange(6), 8, _compute_counter(calls)))
    assert calls[-1] == [1, 3, 5]
    pos, t = out[0]
    assert pos.tolist() == list(range(6)) and [float(x[0, 0]) for x in t] == list(range(6))


def test_truncated_video_ends_the_stream() -> None:
    cache = FeatureCache(max_bytes=1 << 20)
    out = list(cached_chunks(cache, KEY, np.arange(10), 4, _compute_counter([], truncate_at=6)))
    assert [p.tolist() for p, _ in out] == [[0, 1, 2, 3], [4, 5]]


def test_other_keys_never_share_and_memory_is_bounded() -> None:
    per_frame = 2 * 3 * 4
    cache = FeatureCache(max_bytes=per_frame * 10)
    for name in ("a", "b"):
        list(cached_chunks(cache, CacheKey(name, "p", "m", "tokens"), np.arange(6), 6, _compute_counter([])))
    assert cache.nbytes <= per_frame * 10
    assert cache.get(CacheKey("a", "p", "m", "tokens"), [0]) == {}  # least recently used went first
    assert len(cache.get(CacheKey("b", "p", "m", "tokens"), range(6))) == 6
    assert cache.get(CacheKey("b", "p", "m", "features"), [0]) == {}


def test_disabled_cache_always_computes() -> None:
    cache = FeatureCache(max_bytes=0)
    calls: list[list[int]] = []
    for _ in range(2):
        list(cached_chunks(cache, KEY, np.arange(3), 8, _compute_counter(calls)))
    assert len(calls) == 2


def test_fingerprint_follows_content(tmp_path) -> None:
    f = tmp_path / "v.bin"
    f.write_bytes(b"a" * 5000)
    first = file_fingerprint(f)
    f.write_bytes(b"b" * 5000)
    os.utime(f, ns=(1, 1))
    assert file_fingerprint(f) != first
    assert file_fingerprint(tmp_path / "missing") is None


def test_model_identity_is_unique_per_instance() -> None:
    a, b = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)
    assert model_identity(a) == model_identity(a) != model_identity(b)
