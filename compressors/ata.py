"""Tempo's Adaptive Token Allocation (ATA), made strict: how many tokens each segment gets under a budget.

The released code (`adaptive_linear_budget_allocation`) maps min-max normalised relevance linearly onto
[m, M] tokens per segment, scales the extra tokens proportionally when the total would exceed the budget B,
and gives the rounding remainder (+1 each) to the most relevant segments. With more segments than tokens
(n > B) it overshoots B (every segment keeps at least 1 token, so n tokens) unless the scores are flat or all
equal (range < 1e-8): then every segment gets min(M, B // n) = 0 tokens and the whole video is dropped. It
also always overshoots by the timestamp text ("<12.0 seconds>") put before each segment, which it does not
count.

`allocate` is that rule with the timestamps counted and the first case closed: when not every segment can
keep its timestamp plus one token, the least relevant segments are *dropped* (ties broken so the kept ones
stay evenly spread over time). We drop rather than merge neighbouring anchors because a merged anchor would
need its own timestamp range and a token pooled across unrelated scenes, which says less than one clean
frame of a neighbour; with flat scores dropping gives exactly uniform subsampling, the baseline everyone
compares against (the release gives every segment min(M, B // n) = 0 tokens there: the whole video is
dropped). Whenever the reference fits its budget (n ≤ B, no timestamps) the result is identical, to the
token.

NumPy on small arrays, except the one float32 sum whose last bit decides where a token goes: that is taken
with `torch.sum`, as the release takes it (NumPy sums in another order). Exhaustively tested in
tests/test_tempo_ata.py against a re-implementation of the reference.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

EPS = 1e-8  # the reference's "all scores equal" tolerance


@dataclass(frozen=True)
class Allocation:
    """Tokens per segment (0 = dropped) and what the allocation cost, timestamps included."""

    tokens: np.ndarray  # (n,) int64 visual tokens per segment; 0 for a dropped segment
    stamp_tokens: np.ndarray  # (n,) int64 timestamp text tokens charged per segment (0 when dropped)
    min_tokens: int  # the m actually used (lowered like the reference when n*m does not fit)
    max_tokens: int

    @property
    def kept(self) -> np.ndarray:
        return self.tokens > 0

    @property
    def total(self) -> int:
        """Everything the allocation puts before the LLM: visual tokens plus timestamp tokens."""
        return int(self.tokens.sum() + self.stamp_tokens.sum())


def tokens_per_segment(per_frame: float, frames: int) -> int:
    """A per-frame rate (may be fractional: 0.5 token/frame) as whole tokens for a segment, at least 1."""
    if per_frame <= 0 or frames < 1:
        raise ValueError(f"need per_frame > 0 and frames >= 1, got {per_frame} and {frames}")
    return max(1, int(math.floor(per_frame * frames + 0.5)))


def keep_mask(scores: np.ndarray, costs: np.ndarray, budget: int) -> np.ndarray:
    """Which segments to keep when not all fit: most relevant first, each costing `costs[i]`.

    Groups of equal score are taken whole while they fit; of the first group that does not fit, as many as
    fit are kept, spread evenly over its positions (so flat scores give uniform subsampling).
    """
    keep = np.zeros(len(scores), dtype=bool)
    left = budget
    for value in np.unique(scores)[::-1]:
        group = np.flatnonzero(scores == value)
        cost = int(costs[group].sum())
        if cost <= left:
            keep[group] = True
            left -= cost
            continue
        for j in range(len(group) - 1, 0, -1):
            pick = group[_spread(j, len(group))]
            if int(costs[pick].sum()) <= left:
                keep[pick] = True
                break
        break
    return keep


def _spread(k: int, n: int) -> np.ndarray:
    """k of n positions spread evenly (both ends included when k > 1)."""
    if k == 1:
        return np.array([(n - 1) // 2])
    return np.unique(np.round(np.linspace(0, n - 1, k)).astype(np.int64))


def linear_allocation(scores: np.ndarray, budget: int, min_tokens: int, max_tokens: int) -> tuple[np.ndarray, int]:
    """The reference's linear rule on segments that are all kept (requires len(scores) <= budget).

    Returns (tokens per segment, the m used). Same steps and rounding as the released code.
    """
    n = len(scores)
    if n == 0:
        return np.zeros(0, dtype=np.int64), min_tokens
    if n > budget:
        raise ValueError("linear_allocation needs at least one token per segment")
    m = min_tokens
    if n * m > budget:
        m = max(1, budget // n)
    s = scores.astype(np.float32)
    lo, hi = float(s.min()), float(s.max())
    if hi - lo < EPS:
        return np.full(n, min(max_tokens, budget // n), dtype=np.int64), m
    u = ((s - lo) / np.float32(hi - lo)).astype(np.float32)
    ideal = m + np.floor(u * (max_tokens - m)).astype(np.int64)
    if ideal.sum() > budget:
        extra = budget - n * m
        total = _release_sum(u)
        w = (u / np.float32(total)).astype(np.float32) if total >= EPS else np.full(n, 1.0 / n, np.float32)
        add = np.floor(w * extra).astype(np.int64)
        remainder = int(extra - add.sum())
        if remainder > 0:
            top = np.argsort(-w, kind="stable")[:remainder]
            add[top] += 1
        alloc = m + add
    else:
        alloc = ideal
    return np.clip(alloc, m, max_tokens), m


def _release_sum(u: np.ndarray) -> float:
    """The float32 sum of the normalised scores as the release takes it (`torch.sum(...).item()`).

    NumPy's float32 sum adds in another order, and its last bit differs for some inputs (n = 947 scores: 475.64243
    against torch's 475.64240); the weights then move one token between segments where the release is within
    budget. Summing with torch keeps the allocation identical to the release.
    """
    import torch

    return float(torch.from_numpy(np.ascontiguousarray(u, dtype=np.float32)).sum().item())


def allocate(scores: Sequence[float] | np.ndarray, budget: int, min_tokens: int = 4, max_tokens: int = 128,
             stamp_tokens: Sequence[int] | np.ndarray | None = None) -> Allocation:
    """Strict ATA: tokens per segment such that `Allocation.total <= budget`, timestamps included.

    `scores`: relevance per segment (any real numbers; only their order and spacing matter).
    `min_tokens`/`max_tokens`: m and M per kept segment. `stamp_tokens`: the text tokens of each segment's
    timestamp (0 if none), charged only for kept segments.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    n = len(s)
    if budget < 0:
        raise ValueError("budget must be >= 0")
    if min_tokens < 1 or max_tokens < min_tokens:
        raise ValueError(f"need 1 <= min_tokens <= max_tokens, got {min_tokens}, {max_tokens}")
    if not np.all(np.isfinite(s)):
        raise ValueError("relevance scores must be finite")
    stamps = np.zeros(n, dtype=np.int64) if stamp_tokens is None else np.asarray(stamp_tokens, dtype=np.int64)
    if stamps.shape != (n,) or (stamps < 0).any():
        raise ValueError("stamp_tokens must hold one non-negative count per segment")
    keep = np.ones(n, dtype=bool)
    if int((stamps + 1).sum()) > budget:  # not every segment fits with its stamp and one token: drop
        keep = keep_mask(s, stamps + 1, budget)
    idx = np.flatnonzero(keep)
    tokens = np.zeros(n, dtype=np.int64)
    m_used = min_tokens
    if len(idx):
        inner = budget - int(stamps[idx].sum())
        tokens[idx], m_used = linear_allocation(s[idx], inner, min_tokens, max_tokens)
    charged = np.where(keep, stamps, 0)
    alloc = Allocation(tokens, charged, m_used, max_tokens)
    assert alloc.total <= budget, (alloc.total, budget)  # the invariant every caller relies on
    return alloc


__all__ = ["Allocation", "allocate", "keep_mask", "linear_allocation", "tokens_per_segment"]
