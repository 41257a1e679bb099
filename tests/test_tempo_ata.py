"""Tempo's strict Adaptive Token Allocation against a faithful re-implementation of the released rule."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from videollm.compressors.ata import allocate, keep_mask, linear_allocation, tokens_per_segment


def reference_allocation(scores, max_budget=8192, min_tokens=4, max_tokens=128):
    """The released `adaptive_linear_budget_allocation`, token counts only (torch, float32, as written);
    the only change: ties in the remainder's argsort are broken stably so the oracle is deterministic."""
    n = len(scores)
    base = n * min_tokens
    if base > max_budget:
        min_tokens = max(1, max_budget // n)
    s = torch.tensor(scores, dtype=torch.float32)
    rng = s.max() - s.min()
    if rng < 1e-8:
        k = min(max_tokens, max_budget // n)
        return np.full(n, k)
    u = (s - s.min()) / rng
    ideal = min_tokens + (u * (max_tokens - min_tokens)).floor().long()
    if ideal.sum().item() > max_budget:
        extra = max_budget - n * min_tokens
        total = u.sum().item()
        w = torch.ones_like(u) / n if total < 1e-8 else u / total
        add = (w * extra).floor().long()
        rem = int(extra - add.sum().item())
        if rem > 0:
            for i in torch.argsort(w, descending=True, stable=True)[:rem]:
                add[i] += 1
        alloc = min_tokens + add
    else:
        alloc = ideal
    return alloc.clamp(min=min_tokens, max=max_tokens).numpy()


# ---- parity with the reference wherever the reference is within budget ---------------------------
@pytest.mark.parametrize("seed", range(40))
def test_matches_reference_when_reference_fits(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 300))
    budget = int(rng.integers(n, 9000))  # n <= budget: the reference never overshoots
    scores = rng.random(n).round(int(rng.integers(1, 5)))  # rounding makes ties common
    m, big_m = int(rng.integers(1, 9)), int(rng.integers(8, 200))
    ours = allocate(scores, budget, m, big_m)
    ref = reference_allocation(scores.tolist(), budget, m, big_m)
    assert ours.tokens.tolist() == ref.tolist()
    assert ours.total <= budget


def test_uniform_scores_split_evenly_like_reference():
    a = allocate([0.3] * 10, 100, 4, 128)
    assert a.tokens.tolist() == [10] * 10 == reference_allocation([0.3] * 10, 100).tolist()
    a = allocate([0.3] * 10, 10_000, 4, 128)
    assert a.tokens.tolist() == [128] * 10  # capped at M


def test_peaked_scores_spend_on_the_peak():
    scores = [0.01] * 20
    scores[7] = 0.99
    a = allocate(scores, 256, 4, 128)
    assert a.tokens[7] == 128 and all(a.tokens[i] == 4 for i in range(20) if i != 7)
    assert a.tokens.tolist() == reference_allocation(scores, 256).tolist()
    assert a.total <= 256


def test_over_budget_scales_proportionally_and_gives_remainder_to_the_most_relevant():
    scores = np.linspace(0, 1, 50)
    a = allocate(scores, 1000, 4, 128)
    assert a.total == 1000  # the reference fills the budget exactly here
    assert np.all(np.diff(a.tokens) >= 0)  # monotone in relevance
    assert a.tokens[0] == 4 and a.tokens[-1] > a.tokens[25] > a.tokens[0]


def test_flat_scores_use_budget_over_n():
    a = allocate(np.full(7, 0.5), 50, 4, 128)
    assert a.tokens.tolist() == [7] * 7


# ---- strictness: timestamps counted, more segments than budget ----------------------------------
def test_more_segments_than_budget_reference_overshoots_ours_does_not():
    rng = np.random.default_rng(0)
    scores = rng.random(300)
    ref = reference_allocation(scores.tolist(), 256)
    assert ref.sum() == 300 > 256  # the documented gap
    a = allocate(scores, 256, 4, 128)
    assert a.total <= 256 and a.kept.sum() == 256
    dropped = np.flatnonzero(~a.kept)
    assert scores[dropped].max() <= scores[a.kept].min()  # the least relevant are the ones dropped


def test_flat_scores_with_more_segments_than_budget_drop_evenly():
    a = allocate(np.zeros(100), 10, 4, 128)
    kept = np.flatnonzero(a.kept)
    assert len(kept) == 10 and a.total == 10
    gaps = np.diff(kept)
    assert gaps.max() - gaps.min() <= 2 and kept[0] <= 10 and kept[-1] >= 89  # spread over the whole video


def test_timestamps_are_counted():
    scores = np.linspace(0, 1, 10)
    stamps = np.full(10, 5)
    a = allocate(scores, 200, 4, 128, stamps)
    assert a.total <= 200 and a.stamp_tokens.sum() == 50
    assert a.tokens.sum() <= 150
    # without counting them the reference would use the whole 200 for visual tokens alone
    assert reference_allocation(scores.tolist(), 200).sum() + 50 > 200


def test_timestamps_force_drops_when_they_do_not_fit():
    scores = np.array([0.9, 0.1, 0.5, 0.2])
    a = allocate(scores, 13, 4, 128, [5, 5, 5, 5])  # one segment costs >= 6: two fit
    assert a.kept.tolist() == [True, False, True, False]
    assert a.total <= 13


@pytest.mark.parametrize("budget", [0, 1, 2, 3, 5, 8])
def test_tiny_budgets_never_overshoot(budget):
    rng = np.random.default_rng(budget)
    for n in (1, 2, 5, 40):
        for stamp in (0, 1, 3):
            a = allocate(rng.random(n), budget, 4, 128, [stamp] * n)
            assert a.total <= budget
            assert np.all(a.tokens[a.kept] >= 1)
            if budget >= n * (stamp + 1):
                assert a.kept.all()


@pytest.mark.parametrize("seed", range(60))
def test_random_invariants(seed):
    rng = np.random.default_rng(1000 + seed)
    n = int(rng.integers(1, 400))
    budget = int(rng.integers(0, 3000))
    m = int(rng.integers(1, 10))
    big_m = int(rng.integers(m, 300))
    stamps = rng.integers(0, 8, n)
    scores = rng.random(n) if seed % 3 else rng.integers(0, 3, n).astype(float)
    a = allocate(scores, budget, m, big_m, stamps)
    assert a.total <= budget
    assert np.all(a.tokens[a.kept] <= big_m) and np.all(a.tokens[a.kept] >= 1)
    assert np.all(a.stamp_tokens[~a.kept] == 0)


def test_fractional_rates_per_frame():
    assert tokens_per_segment(0.5, 8) == 4
    assert tokens_per_segment(16, 8) == 128
    assert tokens_per_segment(0.5, 1) == 1  # a 1-frame tail still gets a token
    assert tokens_per_segment(0.25, 8) == 2
    with pytest.raises(ValueError):
        tokens_per_segment(0, 8)


def test_keep_mask_prefers_relevance_then_spread():
    keep = keep_mask(np.array([0.0, 0.0, 0.0, 0.0, 0.0, 1.0]), np.ones(6, dtype=int), 1)
    assert np.flatnonzero(keep).tolist() == [5]
    keep = keep_mask(np.zeros(9), np.ones(9, dtype=int), 3)
    assert np.flatnonzero(keep).tolist() == [0, 4, 8]


def test_linear_allocation_rejects_impossible():
    with pytest.raises(ValueError):
        linear_allocation(np.ones(5), 4, 1, 8)
    with pytest.raises(ValueError):
        allocate([1.0, float("nan")], 10)
    with pytest.raises(ValueError):
        allocate([1.0], 10, 0, 4)


@pytest.mark.parametrize("seed,n,budget,m,big_m", [(1, 947, 42312, 5, 142), (24, 766, 26790, 3, 149)])
def test_normalised_scores_are_summed_as_the_release_sums_them(seed, n, budget, m, big_m):
    """NumPy's float32 sum differs from torch's in the last bit here, which moved one token between two
    segments while the release stays within budget: the sum is taken with torch.sum, as released."""
    rng = np.random.default_rng(seed)
    assert int(rng.integers(2, 2000)) == n
    scores = rng.random(n).astype(np.float32)
    s = torch.from_numpy(scores)
    u = (s - s.min()) / (s.max() - s.min())
    assert float(u.numpy().sum()) != u.sum().item()  # the case really tells the two sums apart
    ref = reference_allocation(scores.tolist(), budget, m, big_m)
    assert ref.sum() <= budget
    assert allocate(scores, budget, m, big_m).tokens.tolist() == ref.tolist()


def test_flat_scores_with_more_segments_than_budget_the_release_drops_the_whole_video():
    """docs/tempo.md: flat or all-zero scores and n > B give every released segment min(M, B // n) = 0."""
    for scores in (np.zeros(300), np.full(300, 0.7)):
        assert reference_allocation(scores.tolist(), 256).sum() == 0
        assert allocate(scores, 256, 4, 128).kept.sum() == 256  # ours keeps an even spread instead
    assert reference_allocation(np.random.default_rng(0).random(300).tolist(), 256).min() == 1  # not flat: 1 each
