"""The decode loop: stop strings, pending tokens, continuing in a returned cache, logits processors."""
from __future__ import annotations

import math

import pytest
import torch

from videollm.backbones.tiny import build_tokenizer
from videollm.runtime.generation import (
    OVERTHINK_WORDS,
    GenerationConfig,
    TokenPenalty,
    continue_generation,
    generate,
    word_token_ids,
)


class CountingModel:
    """Next token = (sum of every token fed so far) mod 40 + 40: depends on the whole cache, so a token
    fed twice or skipped changes everything after it."""

    device = torch.device("cpu")

    def __init__(self) -> None:
        self.tokenizer = build_tokenizer()
        self.vocab = len(self.tokenizer)
        self.calls: list[int] = []

    @property
    def eos_token_ids(self) -> set[int]:
        return {self.tokenizer.convert_tokens_to_ids("<|im_end|>")}

    def embed_ids(self, ids) -> torch.Tensor:
        return torch.as_tensor(ids, dtype=torch.float32).unsqueeze(-1)

    def lm_forward(self, x: torch.Tensor, cache=None):
        self.calls.append(x.shape[1])
        total = (cache or 0) + int(x.sum())
        logits = torch.zeros(1, self.vocab)
        logits[0, total % 40 + 40] = 5.0
        return logits, total


def prompt(model, n: int = 7) -> torch.Tensor:
    return model.embed_ids(list(range(1, n + 1))).unsqueeze(0)


def test_split_generation_equals_one_pass():
    one = CountingModel()
    full = generate(one, prompt(one), GenerationConfig(max_new_tokens=12))
    two = CountingModel()
    a = generate(two, prompt(two), GenerationConfig(max_new_tokens=5))
    assert a.finish_reason == "length" and a.pending_ids == a.token_ids[-1:]
    b = continue_generation(two, a, GenerationConfig(max_new_tokens=7))
    assert a.token_ids + b.token_ids == full.token_ids
    assert a.logprobs + b.logprobs == pytest.approx(full.logprobs)
    assert two.calls[0] == 7 and sum(c > 1 for c in two.calls) == 1  # the prompt is fed once


def test_forced_text_and_dropped_pending():
    m = CountingModel()
    a = generate(m, prompt(m), GenerationConfig(max_new_tokens=3))
    forced = m.tokenizer("</think>", add_special_tokens=False)["input_ids"]
    b = continue_generation(m, a, GenerationConfig(max_new_tokens=1), forced_text="</think>")
    assert m.calls[-1] == 1 + len(forced)
    expected = (a.cache + a.pending_ids[0] + sum(forced)) % 40 + 40
    assert b.token_ids == [expected]
    c = continue_generation(m, b, GenerationConfig(max_new_tokens=1), forced_text="<think>", drop_pending=True)
    assert c.token_ids == [(b.cache + sum(m.tokenizer("<think>", add_special_tokens=False)["input_ids"])) % 40 + 40]
    empty = generate(m, prompt(m), GenerationConfig(max_new_tokens=1))
    with pytest.raises(ValueError):
        continue_generation(m, empty, GenerationConfig(max_new_tokens=1), drop_pending=True)


def test_stop_string_stops_and_leaves_the_tag_pending():
    m = CountingModel()
    free = generate(m, prompt(m), GenerationConfig(max_new_tokens=20))
    tok = m.tokenizer
    pieces = [tok.decode(free.token_ids[: i + 1]) for i in range(len(free.token_ids))]
    stop = tok.decode(free.token_ids[3:5])  # a string that appears when the 5th token is produced
    assert stop not in pieces[3]
    out = generate(m, prompt(m), GenerationConfig(max_new_tokens=20, stop_strings=(stop,)))
    assert out.finish_reason == "stop" and out.token_ids == free.token_ids[:5]
    assert out.pending_ids == free.token_ids[4:5] and out.text.endswith(stop)


def test_eos_is_not_in_the_text():
    m = CountingModel()
    eos = next(iter(m.eos_token_ids))

    def to_eos(ids, scores):
        if len(ids) == 2:
            scores = scores.clone()
            scores[eos] = 100.0
        return scores

    out = generate(m, prompt(m), GenerationConfig(max_new_tokens=10), processors=[to_eos])
    assert out.finish_reason == "eos" and out.token_ids[-1] == eos and len(out.token_ids) == 3
    assert "<|im_end|>" not in out.text and out.pending_ids == [eos]


def test_observers_see_every_step_after_processors():
    m = CountingModel()
    seen = []
    boost = TokenPenalty([41, 42, 43], math.inf)
    generate(m, prompt(m), GenerationConfig(max_new_tokens=4), processors=[boost],
             observers=[lambda ids, s: seen.append((len(ids), float(s[41])))])
    assert [n for n, _ in seen] == [0, 1, 2, 3] and all(v == -math.inf for _, v in seen)


def test_token_penalty_soft_and_hard():
    scores = torch.zeros(10)
    soft = TokenPenalty({2, 5}, 3.0)([], scores)
    assert soft[2] == -3.0 and soft[5] == -3.0 and soft[0] == 0.0 and scores[2] == 0.0
    hard = TokenPenalty({2}, math.inf)([], scores)
    assert hard[2] == -math.inf
    assert torch.equal(TokenPenalty({2}, 0.0)([], scores), scores)
    with pytest.raises(ValueError):
        TokenPenalty({2}, -1.0)


def test_overthinking_words_come_from_the_tokenizer():
    tok = build_tokenizer()
    ids = word_token_ids(tok, OVERTHINK_WORDS)
    pieces = {tok.decode([i]) for i in ids}
    assert {" wait", " but", " alternatively"} <= pieces
    letters = {tok("B", add_special_tokens=False)["input_ids"][0], tok("H", add_special_tokens=False)["input_ids"][0]}
    assert not ids & letters  # "But" = "B" + "ut" must not penalise the option letter B
    assert all(sum(c.isalpha() for c in p) >= 3 for p in pieces)
    assert word_token_ids(tok, ["zzqx"]) == set()


def test_sampling_is_seeded():
    m = CountingModel()
    cfg = GenerationConfig(max_new_tokens=6, temperature=5.0, top_p=0.9, seed=3)
    assert generate(m, prompt(m), cfg).token_ids == generate(m, prompt(m), cfg).token_ids


def test_continuation_in_a_real_kv_cache_matches_one_pass(tiny_backbone):
    bb = tiny_backbone
    ids = bb.tokenizer("The video shows a red car.", add_special_tokens=False)["input_ids"]
    embeds = bb.embed_ids(ids).unsqueeze(0)
    full = generate(bb, embeds, GenerationConfig(max_new_tokens=10))
    a = generate(bb, embeds, GenerationConfig(max_new_tokens=4))
    b = continue_generation(bb, a, GenerationConfig(max_new_tokens=6))
    assert a.token_ids + b.token_ids == full.token_ids
    assert a.logprobs + b.logprobs == pytest.approx(full.logprobs, abs=1e-4)


def test_repetition_penalty_matches_transformers_processor():
    import torch
    from transformers import RepetitionPenaltyLogitsProcessor

    from videollm.runtime.generation import repetition_penalty

    scores = torch.tensor([2.0, -1.0, 0.5, -3.0, 1.0])
    ids = [0, 1, 1, 3]
    ours = repetition_penalty(ids, scores, 1.3)
    ref = RepetitionPenaltyLogitsProcessor(1.3)(torch.tensor([ids]), scores[None].clone())[0]
    assert torch.allclose(ours, ref)
    assert ours[2] == scores[2] and ours[4] == scores[4]


def test_repetition_penalty_changes_greedy_loop(tiny_backbone):
    import torch

    from videollm.runtime.generation import GenerationConfig, generate

    x = tiny_backbone.embed_ids([[5, 9, 17]])
    plain = generate(tiny_backbone, x, GenerationConfig(max_new_tokens=24))
    damped = generate(tiny_backbone, x, GenerationConfig(max_new_tokens=24, repetition_penalty=5.0))
    assert len(set(damped.token_ids)) >= len(set(plain.token_ids))
    assert torch.is_tensor(x)


def test_first_step_hook_rewrites_only_the_prefill_logits(tiny_backbone):
    import torch

    from videollm.runtime.generation import GenerationConfig, generate

    calls = []

    def force_token_7(logits, cache):
        calls.append(cache.get_seq_length())
        out = torch.full_like(logits, -float("inf"))
        out[0, 7] = 0.0
        return out

    x = tiny_backbone.embed_ids([[5, 9, 17]])
    out = generate(tiny_backbone, x, GenerationConfig(max_new_tokens=4), first_step=force_token_7)
    assert out.token_ids[0] == 7 and out.logprobs[0] == 0.0
    assert calls == [3], "called once, with the prompt's cache"
