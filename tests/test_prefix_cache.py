"""Prompt-prefix KV reuse: a video's questions share the KV of system turn + user-turn start + visual tokens.

Every test compares the same questions answered with reuse on and off (VIDEOLLM_PREFIX_CACHE=0): same tokens,
same texts and choices, log-probabilities within float tolerance, and checks that reuse actually happened
(the cache's hit counter), or did not where the prefix differs (query-aware compressors).
"""
from __future__ import annotations

import pytest
import torch

from videollm.config import PipelineConfig
from videollm.pipeline import VideoQAPipeline
from videollm.runtime import generation as gen_mod
from videollm.runtime.generation import GenerationConfig
from videollm.runtime.prefix_cache import ENV, clone_cache, default_prefix_cache
from videollm.types import Answer
from videollm.video import SamplingConfig

OPTIONS = ["a dog", "a cat", "a red car", "a cup"]
QUESTIONS = [("Which object appears?", OPTIONS), ("What is happening in this video?", None),
             ("Where is the cat?", ["on the table", "in the park", "on the street", "nowhere"])]


@pytest.fixture(autouse=True)
def _fresh_prefix_cache():
    default_prefix_cache().clear()
    yield
    default_prefix_cache().clear()


@pytest.fixture
def steps(monkeypatch):
    """Every generation's chosen tokens and log-probs, in call order (a spy around `generate`)."""
    seen: list[tuple[list[int], list[float]]] = []
    real = gen_mod.generate

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        seen.append((list(out.token_ids), list(out.logprobs)))
        return out

    monkeypatch.setattr(gen_mod, "generate", spy)
    import videollm.answer.reasoning as reasoning

    monkeypatch.setattr(reasoning, "generate", spy)
    return seen


def _pipe(backbone, compressor: str = "uniform", frames: int = 8, **cfg) -> VideoQAPipeline:
    config = PipelineConfig(model=backbone.name, compressor=compressor, sampling=SamplingConfig(num_frames=frames),
                            generation=GenerationConfig(max_new_tokens=cfg.pop("max_new_tokens", 6)), **cfg)
    return VideoQAPipeline(backbone, config)


def _key(a: Answer) -> tuple:
    return (a.text, a.choice, a.generated_tokens, a.initial_answer, a.initial_choice, a.thinking_fired, a.thought,
            a.finish_reason)


def _assert_same(on, off):
    (a_on, s_on, _), (a_off, s_off, _) = on, off
    assert [_key(a) for a in a_on] == [_key(a) for a in a_off]
    assert [a.confidence is None for a in a_on] == [a.confidence is None for a in a_off]
    for x, y in zip(a_on, a_off):
        if x.confidence is not None:
            assert x.confidence == pytest.approx(y.confidence, rel=1e-4, abs=1e-6)
    assert len(s_on) == len(s_off)
    for (ids_on, lp_on), (ids_off, lp_off) in zip(s_on, s_off):
        assert ids_on == ids_off
        assert lp_on == pytest.approx(lp_off, rel=1e-4, abs=1e-4)


@pytest.mark.parametrize("mode", ["direct", "think", "auto"])
@pytest.mark.parametrize("answer_format", ["free", "choice"])
def test_reuse_gives_the_same_answers_tiny(tiny_backbone, short_video, monkeypatch, steps, mode, answer_format):
    pipe = _pipe(tiny_backbone, reasoning=mode, reasoning_options={"max_think_tokens": 4})
    questions = QUESTIONS if answer_format == "free" else [q for q in QUESTIONS if q[1]]
    kwargs = {"answer_format": answer_format}
    on = _run_q(pipe, short_video, monkeypatch, steps, True, questions, **kwargs)
    off = _run_q(pipe, short_video, monkeypatch, steps, False, questions, **kwargs)
    _assert_same(on, off)
    assert on[2] == len(questions) - 1  # every question after the first reused the prefix
    assert off[2] == 0


def _run_q(pipe, video, monkeypatch, steps, on: bool, questions, **kwargs):
    monkeypatch.setenv(ENV, "1" if on else "0")
    default_prefix_cache().clear()
    steps.clear()
    stats = default_prefix_cache().stats
    hits0 = stats.hits
    answers = pipe.ask_many(video, questions, **kwargs)
    return answers, list(steps), stats.hits - hits0


def test_think_mode_reaches_the_thinking_phase(tiny_backbone, short_video, monkeypatch, steps):
    """think always continues in the cache the reused prefix started: 3 generations per question, identical."""
    pipe = _pipe(tiny_backbone, reasoning="think", reasoning_options={"max_think_tokens": 5})
    on = _run_q(pipe, short_video, monkeypatch, steps, True, QUESTIONS)
    off = _run_q(pipe, short_video, monkeypatch, steps, False, QUESTIONS)
    assert all(a.thinking_fired for a in on[0]) and len(on[1]) == 3 * len(QUESTIONS)
    _assert_same(on, off)


def test_sampling_with_temperature_is_reproduced(tiny_backbone, short_video, monkeypatch, steps):
    pipe = _pipe(tiny_backbone)
    g = GenerationConfig(max_new_tokens=8, temperature=0.8, top_p=0.9, seed=3)
    on = _run_q(pipe, short_video, monkeypatch, steps, True, QUESTIONS, generation=g)
    off = _run_q(pipe, short_video, monkeypatch, steps, False, QUESTIONS, generation=g)
    _assert_same(on, off)


def test_pool_compressor_reuses(tiny_backbone, short_video, monkeypatch, steps):
    pipe = _pipe(tiny_backbone, compressor="pool", budget=64)
    on = _run_q(pipe, short_video, monkeypatch, steps, True, QUESTIONS)
    off = _run_q(pipe, short_video, monkeypatch, steps, False, QUESTIONS)
    _assert_same(on, off)
    assert on[2] == len(QUESTIONS) - 1


def test_query_aware_compressor_does_not_reuse_another_questions_tokens(tiny_backbone, short_video, monkeypatch,
                                                                       steps):
    """LongVU selects tokens per question: a prefix is reused only where its tokens are bitwise the same."""
    pipe = _pipe(tiny_backbone, compressor="longvu", frames=12, budget=48)
    questions = [("What is happening in this video?", None), ("Which object appears?", OPTIONS),
                 ("What is happening in this video?", None)]
    seen: list[torch.Tensor] = []
    real = pipe.compressor.__class__.__call__

    def spy(self, *a, **k):
        out = real(self, *a, **k)
        seen.append(out.embeds.clone())
        return out

    monkeypatch.setattr(pipe.compressor.__class__, "__call__", spy)
    on = _run_q(pipe, short_video, monkeypatch, steps, True, questions)
    expected_hits = sum(1 for i in range(1, len(seen)) if seen[i].shape == seen[i - 1].shape
                        and torch.equal(seen[i], seen[i - 1]))
    assert on[2] == expected_hits
    off = _run_q(pipe, short_video, monkeypatch, steps, False, questions)
    _assert_same(on, off)


class _PerQuestionTokens:
    """A query-aware compressor stand-in: uniform's tokens, nudged by a function of the question."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, video, query=None, budget=None):
        out = self.inner(video, query=query, budget=budget)
        out.embeds = out.embeds + 1e-3 * (sum(map(ord, query or "")) % 7 + 1)
        return out


def test_tokens_that_change_with_the_question_are_never_reused(tiny_backbone, short_video, monkeypatch, steps):
    base = _pipe(tiny_backbone)
    pipe = VideoQAPipeline(tiny_backbone, base.config, compressor=_PerQuestionTokens(base.compressor))
    questions = [("Which object appears?", OPTIONS), ("Where is the cat?", None)]
    on = _run_q(pipe, short_video, monkeypatch, steps, True, questions)
    assert on[2] == 0
    off = _run_q(pipe, short_video, monkeypatch, steps, False, questions)
    _assert_same(on, off)


def test_other_visual_tokens_miss(tiny_backbone, short_video, monkeypatch, steps):
    pipe = _pipe(tiny_backbone)
    monkeypatch.setenv(ENV, "1")
    stats = default_prefix_cache().stats
    pipe(short_video, "What is happening in this video?")
    h = stats.hits
    pipe(short_video, "What is happening in this video?", sampling=SamplingConfig(num_frames=6))
    assert stats.hits == h  # other frames, other prefix
    pipe(short_video, "What is happening in this video?", reasoning="think")
    assert stats.hits == h  # another system prompt (the R1 format's)
    pipe(short_video, "Where is the cat?", reasoning="auto")
    assert stats.hits == h + 1  # think and auto share theirs


def test_another_backbone_instance_never_reuses(tiny_backbone, short_video, monkeypatch, steps):
    from videollm.backbones.tiny import build_tiny_random

    monkeypatch.setenv(ENV, "1")
    stats = default_prefix_cache().stats
    _pipe(tiny_backbone)(short_video, "q one")
    h = stats.hits
    _pipe(build_tiny_random(seed=1))(short_video, "q one")
    assert stats.hits == h


def test_prefix_split_matches_the_full_prompt(tiny_backbone, short_video):
    """The split sits right after the visual block; the ids on each side of the video placeholder (a special
    token) are exactly the full prompt's, tokenized in one piece."""
    pipe = _pipe(tiny_backbone)
    vid = pipe.load(short_video)
    visual = pipe.compressor(vid, query="q", budget=None)
    vid.close()
    b = tiny_backbone
    for system in (None, "You are a careful assistant."):
        for q in ("What is happening?", "Which colour?\nA. red\nB. blue\n" + "Answer with the letter."):
            p = b.prompt_ids(q, system, assistant_prefix="\\boxed{")
            full = b.tokenizer(p.before_text + b.video_token + p.after_text, add_special_tokens=False)["input_ids"]
            assert p.before + [b.tokenizer.convert_tokens_to_ids(b.video_token)] + p.after == full
            inputs = b.build_inputs(q, visual, system=system, assistant_prefix="\\boxed{")
            n_after = len(p.after)
            assert inputs.prefix_len == inputs.embeds.shape[1] - n_after
            expect = torch.cat([b.embed_ids(p.before), visual.embeds.to(b.dtype), b.visual_suffix()])
            assert torch.equal(inputs.embeds[0, : inputs.prefix_len], expect)
            assert torch.equal(inputs.embeds[0, inputs.prefix_len:], b.embed_ids(p.after))
            assert q.split("\n")[0] not in b.tokenizer.decode(p.before)


def test_question_before_video_shares_only_what_precedes_it(tiny_backbone, short_video, monkeypatch):
    b = tiny_backbone
    template = b.chat_template.replace(
        "{% if part['type'] == 'video' %}<video>\n{% elif part['type'] == 'image' %}<image>\n"
        "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}",
        "{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}"
        "{% for part in message['content'] %}{% if part['type'] == 'video' %}\n<video>{% endif %}")
    assert template != b.chat_template
    monkeypatch.setattr(b, "chat_template", template)
    pipe = _pipe(b)
    vid = pipe.load(short_video)
    visual = pipe.compressor(vid, query="q", budget=None)
    vid.close()
    p = b.prompt_ids("Where is the cat?")
    assert p.fixed_before < len(p.before)
    inputs = b.build_inputs("Where is the cat?", visual)
    assert inputs.prefix_len == p.fixed_before
    assert "cat" not in b.tokenizer.decode(p.before[: p.fixed_before])


def test_cache_copies_are_independent(tiny_backbone):
    b = tiny_backbone
    with torch.inference_mode():
        _, cache = b.lm_forward(b.embed_ids([[1, 2, 3, 4, 5, 6]]))
        part = clone_cache(cache, 4)
        assert part.get_seq_length() == 4 and cache.get_seq_length() == 6
        b.lm_forward(b.embed_ids([[7]]), part)
        assert part.get_seq_length() == 5 and cache.get_seq_length() == 6
        assert torch.equal(part.layers[0].keys[..., :4, :], cache.layers[0].keys[..., :4, :])


def test_a_question_leaves_nothing_in_the_stored_prefix(tiny_backbone, short_video, monkeypatch, steps):
    """Answering the same question twice after a long other question gives the same tokens: nothing leaked."""
    monkeypatch.setenv(ENV, "1")
    pipe = _pipe(tiny_backbone, max_new_tokens=10)
    first = pipe(short_video, "What is happening in this video?")
    pipe(short_video, "Describe the scene. " * 5)
    again = pipe(short_video, "What is happening in this video?")
    assert _key(first) == _key(again)
    entry = default_prefix_cache()._entries[tiny_backbone]
    assert entry.cache.get_seq_length() == entry.embeds.shape[1]


# ---- videollm-mini (real packaged weights) ---------------------------------------------------------------
@pytest.fixture(scope="module")
def mini():
    import importlib.util

    from videollm.backbones.mini import assets

    if not all(importlib.util.find_spec(m) for m in (assets.LLM_MODULE, assets.ENCODER_MODULE, "gguf", "timm")):
        pytest.skip("videollm-mini weights packages are not installed")
    from videollm.backbones import load_backbone

    return load_backbone("videollm-mini", device="cpu")


@pytest.mark.slow
@pytest.mark.parametrize("mode,answer_format", [("direct", "choice"), ("auto", "choice")])
def test_reuse_gives_the_same_answers_mini(mini, monkeypatch, steps, mode, answer_format):
    """videollm-mini: its option scorer runs on the prompt's cache (reused prefix + suffix) and crops it back."""
    from videollm.samples import sample_path

    pipe = _pipe(mini, reasoning=mode, frames=4, max_new_tokens=5, reasoning_options={"max_think_tokens": 4})
    questions = QUESTIONS if answer_format == "free" else [q for q in QUESTIONS if q[1]]
    video = sample_path("carphone")
    on = _run_q(pipe, video, monkeypatch, steps, True, questions, answer_format=answer_format)
    off = _run_q(pipe, video, monkeypatch, steps, False, questions, answer_format=answer_format)
    _assert_same(on, off)
    assert on[2] == len(questions) - 1


def test_demo_follow_up_question_reuses_the_prefix(short_video, monkeypatch):
    from videollm.demo.app import answer

    monkeypatch.setenv(ENV, "1")
    stats = default_prefix_cache().stats
    args = dict(options_text="", model="tiny-random", compressor="uniform", budget=None, frames=4,
                reasoning="direct", quant="none", vision_quant="none", max_new_tokens=3, device="cpu")
    first = answer(str(short_video), "What happens?", **args)
    h = stats.hits
    follow = answer(str(short_video), "And what happens then?", **args)
    assert stats.hits == h + 1
    assert first.details.get("text") is not None and follow.details.get("text") is not None  # answers, not errors
