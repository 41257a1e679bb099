"""The think/auto controller against a scripted stand-in model whose logits the test sets.

The stand-in follows a script given as a function of the text it has produced so far, so forced tags and
cut-offs steer it like a real model; it records every `lm_forward` call to check early exit and KV-cache
reuse (one prefill, the visual tokens fed once).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from videollm.answer.reasoning import MODES, ReasoningConfig, ReasoningOptions, run_mode, should_think
from videollm.answer.reasoning_format import BOX_INSTRUCTION, R1_FORMAT_INSTRUCTIONS
from videollm.backbones.base import PromptInputs
from videollm.backbones.tiny import build_tokenizer
from videollm.errors import InvalidRequestError
from videollm.question import Question, option_texts
from videollm.runtime.generation import GenerationConfig
from videollm.types import VisualTokens

EOS = "<|im_end|>"
OPTIONS = ["A. a dog", "B. a cat", "C. a bird", "D. a fish"]
USER = (
    "What animal is shown?\n"
    + "\n".join(OPTIONS)
    + "\nAnswer with the option's letter from the given choices directly."
)
VISUAL_MARK = -7.0


class Cache:
    def __init__(self) -> None:
        self.fed: list[int] = []


class ScriptedBackbone:
    """Backbone subset the reasoning modes use. `respond(generated_text)` gives the whole intended output;
    the model emits its next token with probability `probs.get(generated_text, 0.999)`, the rest going to
    `alt` (a token text). Off script (after a forced or penalised token it did not plan), it emits EOS."""

    name = "scripted"
    notice = None
    device = torch.device("cpu")
    dtype = torch.float32

    def __init__(self, respond: Callable[[str], str], probs: dict[str, float] | None = None, alt: str = " so"):
        self.tokenizer = build_tokenizer()
        self.respond = respond
        self.probs = probs or {}
        self.alt_id = self._ids(alt)[0]
        self.eos_id = self.tokenizer.convert_tokens_to_ids(EOS)
        self.vocab = len(self.tokenizer)
        self.calls: list[tuple[int, bool, int]] = []  # (tokens fed, had cache, visual tokens fed)
        self.caches: list[Cache] = []
        self.prompts: list[tuple[str, str | None, str]] = []
        self.prompt_len = 0

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    @property
    def eos_token_ids(self) -> set[int]:
        return {self.eos_id}

    def embed_ids(self, ids) -> torch.Tensor:
        return torch.as_tensor(ids, dtype=torch.float32).unsqueeze(-1)

    def build_inputs(self, user_text: str, visual: VisualTokens, system: str | None = None,
                     assistant_prefix: str = "") -> PromptInputs:
        self.prompts.append((user_text, system, assistant_prefix))
        head = self._ids(f"<|im_start|>system\n{system or ''}<|im_end|>\n<|im_start|>user\n")
        tail = self._ids(f"{user_text}<|im_end|>\n<|im_start|>assistant\n{assistant_prefix}")
        embeds = torch.cat([self.embed_ids(head), visual.embeds, self.embed_ids(tail)]).unsqueeze(0)
        return PromptInputs(embeds, len(head) + len(tail), visual.num_tokens, "")

    def lm_forward(self, inputs_embeds: torch.Tensor, cache: Cache | None = None):
        x = inputs_embeds[0, :, 0]
        n_visual = int((x == VISUAL_MARK).sum())
        self.calls.append((int(x.shape[0]), cache is not None, n_visual))
        if cache is None:
            cache = Cache()
            self.caches.append(cache)
            self.prompt_len = int(x.shape[0])
        assert cache is self.caches[-1], "a cache the model did not return"
        cache.fed += [int(v) for v in x.round().long().tolist()]
        generated = self.tokenizer.decode([i for i in cache.fed[self.prompt_len:] if i >= 0],
                                          skip_special_tokens=False)
        target = self.respond(generated)
        if target.startswith(generated) and len(target) > len(generated):
            nxt = self._ids(target[len(generated):])[0]
        else:
            nxt = self.eos_id
        p = self.probs.get(generated, 0.999)
        logits = torch.full((1, self.vocab), -1e4)
        logits[0, nxt] = math.log(p)
        if nxt != self.alt_id and p < 1:
            logits[0, self.alt_id] = math.log(1 - p)
        return logits, cache

    def prefills(self) -> int:
        return sum(1 for _, had_cache, _ in self.calls if not had_cache)


def r1_script(first: str, thought: str, final: str, eos_after_first: bool = False,
              eos_in_thought: bool = False) -> Callable[[str], str]:
    """A model that writes `first`, then `<think>thought</think>`, then `final` and EOS."""
    def respond(g: str) -> str:
        if "</think>" in g:
            return g[: g.index("</think>") + len("</think>")] + final + EOS
        if "<think>" in g:
            return g[: g.index("<think>") + len("<think>")] + thought + (EOS if eos_in_thought else "</think>")
        return first + (EOS if eos_after_first else "<think>")
    return respond


def visual(n: int = 6) -> VisualTokens:
    return VisualTokens(embeds=torch.full((n, 1), VISUAL_MARK), frame_ids=torch.arange(n),
                        patch_ids=torch.full((n,), -1), timestamps=torch.arange(n, dtype=torch.float64),
                        num_sampled_frames=n)


def run(model: ScriptedBackbone, mode: str, options=OPTIONS, max_new_tokens: int = 32, **kw):
    question = Question(USER, tuple(option_texts(options)), USER)
    return run_mode(mode, model, question, visual(), GenerationConfig(max_new_tokens=max_new_tokens),
                    ReasoningConfig.build(kw))


def count_tokens(model: ScriptedBackbone, text: str) -> int:
    return len(model._ids(text))


THOUGHT = " I see a dog on the table."


def test_high_confidence_exits_at_think_without_generating_the_thought():
    model = ScriptedBackbone(r1_script("\\boxed{A}", THOUGHT, "\\boxed{A}"), probs={"\\boxed{": 0.99})
    out = run(model, "auto")
    assert out.mode == "auto" and not out.thinking_fired
    assert out.choice == "A" and out.initial_choice == "A" and out.text == "A"
    assert out.confidence == pytest.approx(0.99, abs=1e-6)
    assert out.thought is None and out.finish_reason == "stop"
    n = count_tokens(model, "\\boxed{A}<think>")
    assert out.generated_tokens == n
    assert len(model.calls) == n  # one prefill + one call per token but the last: nothing after <think>
    assert model.prefills() == 1


def test_low_confidence_continues_in_the_same_cache_and_reviews():
    model = ScriptedBackbone(r1_script("\\boxed{A}", THOUGHT, "\\boxed{B}"), probs={"\\boxed{": 0.6})
    out = run(model, "auto")
    assert out.thinking_fired
    assert out.initial_choice == "A" and out.choice == "B" and out.text == "B"
    assert out.confidence == pytest.approx(0.6, abs=1e-6)
    assert out.thought == THOUGHT.strip()
    assert out.extra["final_source"] == "final_box" and out.extra["think_closed"] and out.extra["forced"] == []
    # KV cache reused: one prefill (the only call with the visual tokens), all later calls extend its cache
    assert model.prefills() == 1 and len(model.caches) == 1
    assert sum(v for _, _, v in model.calls) == 6
    assert [c for c in model.calls if c[2]] == [model.calls[0]]
    assert len(model.prompts) == 1
    full = "\\boxed{A}<think>" + THOUGHT + "</think>\\boxed{B}" + EOS
    assert out.generated_tokens == count_tokens(model, full)
    assert out.extra["tokens"]["answer"] == count_tokens(model, "\\boxed{A}<think>")


def test_prompt_is_the_released_format():
    model = ScriptedBackbone(r1_script("\\boxed{A}", THOUGHT, "\\boxed{A}"))
    run(model, "auto")
    user, system, prefix = model.prompts[0]
    assert R1_FORMAT_INSTRUCTIONS in system and system.startswith("You are a helpful assistant.\n")
    assert user.endswith(BOX_INSTRUCTION) and "directly" not in user and "B. a cat" in user and prefix == ""


def test_threshold_is_configurable():
    probs = {"\\boxed{": 0.9}
    low = run(ScriptedBackbone(r1_script("\\boxed{C}", THOUGHT, "\\boxed{C}"), probs), "auto", threshold=0.85)
    high = run(ScriptedBackbone(r1_script("\\boxed{C}", THOUGHT, "\\boxed{C}"), probs), "auto", threshold=0.95)
    default = run(ScriptedBackbone(r1_script("\\boxed{C}", THOUGHT, "\\boxed{C}"), probs), "auto")
    assert not low.thinking_fired and high.thinking_fired and default.thinking_fired
    assert default.extra["threshold"] == 0.97


def test_think_mode_always_thinks_and_still_records_confidence():
    model = ScriptedBackbone(r1_script("\\boxed{A}", THOUGHT, "\\boxed{A}"), probs={"\\boxed{": 0.999})
    out = run(model, "think")
    assert out.mode == "think" and out.thinking_fired and out.confidence == pytest.approx(0.999, abs=1e-6)
    assert out.thought == THOUGHT.strip() and out.choice == "A"


def test_direct_never_thinks_and_stops_at_a_think_tag():
    model = ScriptedBackbone(r1_script("\\boxed{B}", THOUGHT, "\\boxed{B}"), probs={"\\boxed{": 0.8}, alt="A")
    out = run(model, "direct")
    assert out.mode == "direct" and not out.thinking_fired and out.thought is None
    assert out.choice == "B" and out.text == "\\boxed{B}"
    assert out.generated_tokens == count_tokens(model, "\\boxed{B}<think>")
    assert out.confidence == pytest.approx(0.8, abs=1e-4)  # letter probability among A-D (alt is "A")
    assert model.prompts[0] == (USER, None, "")  # the plain direct prompt, no format instructions


def test_deferral_box_has_no_confidence_and_thinks():
    model = ScriptedBackbone(r1_script("\\boxed{Let's analyze the problem step by step.}", THOUGHT, "\\boxed{D}"))
    out = run(model, "auto", threshold=0.0)
    assert out.thinking_fired and out.confidence is None and out.extra["deferred"]
    assert out.initial_choice is None and out.initial_answer.startswith("Let's analyze")
    assert out.choice == "D"


def test_no_box_at_all_falls_back_cleanly():
    """A backbone not trained in the format: prose answer, EOS, no tags."""
    model = ScriptedBackbone(r1_script("The answer is (C).", "", "", eos_after_first=True))
    out = run(model, "auto", max_think_tokens=8)
    assert out.thinking_fired and out.confidence is None
    assert out.initial_choice == "C"
    assert out.extra["forced"][0] == "<think>"
    # the model has nothing to add after the forced tag: the reviewed answer falls back to the initial one
    assert out.choice == "C" and out.extra["final_source"] == "initial_text"


def test_eos_after_confident_box_exits_and_unconfident_is_forced_to_think():
    confident = ScriptedBackbone(r1_script("\\boxed{B}", THOUGHT, "\\boxed{B}", eos_after_first=True),
                                 {"\\boxed{": 0.995})
    out = run(confident, "auto")
    assert not out.thinking_fired and out.choice == "B" and out.finish_reason == "eos"
    unsure = ScriptedBackbone(r1_script("\\boxed{B}", THOUGHT, "\\boxed{A}", eos_after_first=True),
                              {"\\boxed{": 0.5})
    out = run(unsure, "auto")
    assert out.thinking_fired and out.extra["forced"] == ["<think>"] and out.choice == "A"
    assert out.thought == THOUGHT.strip() and unsure.prefills() == 1


def test_max_think_tokens_is_respected_and_unclosed_thought_is_closed():
    long_thought = " the dog" * 40
    model = ScriptedBackbone(r1_script("\\boxed{A}", long_thought, "\\boxed{B}"), {"\\boxed{": 0.5})
    out = run(model, "auto", max_think_tokens=10)
    assert out.extra["tokens"]["think"] == 10 and not out.extra["think_closed"]
    assert out.extra["think_finish"] == "length" and out.extra["forced"] == ["</think>"]
    assert out.choice == "B" and out.extra["final_source"] == "final_box"
    assert len(model.tokenizer(out.thought)["input_ids"]) <= 11
    assert model.prefills() == 1


def test_model_ending_inside_the_thought_still_gives_a_clean_result():
    model = ScriptedBackbone(r1_script("\\boxed{A}", " so it is \\boxed{C}", "", eos_in_thought=True),
                             {"\\boxed{": 0.5})
    out = run(model, "auto")
    assert out.thinking_fired and out.extra["think_finish"] == "eos" and out.extra["forced"] == ["</think>"]
    assert out.choice == "C" and out.extra["final_source"] == "thought_box"


def test_answer_phase_budget_is_respected():
    model = ScriptedBackbone(lambda g: g + " la")  # rambles forever, never writes a tag or a box
    out = run(model, "auto", max_new_tokens=12, max_think_tokens=5)
    assert out.extra["tokens"] == {"answer": 12, "think": 5, "review": 12}
    assert out.generated_tokens == 29 and out.choice is None and out.thinking_fired
    assert out.extra["final_source"] == "none"


def test_answer_phases_are_capped_unless_asked():
    model = ScriptedBackbone(lambda g: g + " la")
    out = run(model, "auto", max_new_tokens=1024, max_think_tokens=3)
    assert out.extra["tokens"] == {"answer": 256, "think": 3, "review": 256}
    out = run(ScriptedBackbone(lambda g: g + " la"), "auto", max_new_tokens=1024, max_think_tokens=3,
              answer_tokens=300)
    assert out.extra["tokens"]["answer"] == 300


def test_letter_confidence_ignores_non_letter_mass():
    # 40% of the first box's mass goes to a non-letter token: the box confidence is 0.6, but among the
    # valid letters "A" holds all of it
    probs = {"\\boxed{": 0.6}
    box = run(ScriptedBackbone(r1_script("\\boxed{A}", THOUGHT, "\\boxed{A}"), probs), "auto")
    letter = run(ScriptedBackbone(r1_script("\\boxed{A}", THOUGHT, "\\boxed{A}"), probs), "auto",
                 confidence="letter")
    assert box.thinking_fired and box.confidence == pytest.approx(0.6, abs=1e-6)
    assert not letter.thinking_fired and letter.confidence == pytest.approx(1.0, abs=1e-6)
    assert letter.extra["confidence_method"] == "letter" and letter.extra["box_confidence"] == pytest.approx(0.6)
    # "B" takes the other 40%: now the letters share it
    split = run(ScriptedBackbone(r1_script("\\boxed{A}", THOUGHT, "\\boxed{A}"), probs, alt="B"), "auto",
                confidence="letter")
    assert split.confidence == pytest.approx(0.6, abs=1e-4) and split.thinking_fired


def test_confidence_is_geometric_mean_over_answer_tokens_only():
    # free-form answer of several tokens; "(A)" style wrappers and the box's own tokens are not scored
    ans = "a red car"
    model = ScriptedBackbone(r1_script("\\boxed{" + ans + "}", THOUGHT, "\\boxed{a red car}"),
                             probs={"\\boxed{": 0.9, "\\boxed{a": 0.8, "\\boxed{a red": 0.7, "\\boxed{a red car": 0.6})
    out = run(model, "auto", options=None)
    assert out.text == ans and out.choice is None
    n = count_tokens(model, ans)
    assert n == 3
    assert out.confidence == pytest.approx(math.exp((math.log(0.9) + math.log(0.8) + math.log(0.7)) / 3), rel=1e-5)
    paren = ScriptedBackbone(r1_script("\\boxed{(B)}", THOUGHT, "\\boxed{B}"),
                             probs={"\\boxed{": 0.6, "\\boxed{(": 0.99, "\\boxed{(B": 0.55})
    out = run(paren, "auto")
    assert out.initial_choice == "B" and out.confidence == pytest.approx(0.99, abs=1e-6)


def test_prefill_box_starts_the_answer_in_the_prompt():
    model = ScriptedBackbone(lambda g: "D}<think>" if "<think>" not in g else r1_script("", THOUGHT, "\\boxed{D}")(g),
                             probs={"": 0.995})
    out = run(model, "auto", prefill_box=True)
    assert model.prompts[0][2] == "\\boxed{"
    assert out.initial_choice == "D" and out.confidence == pytest.approx(0.995, abs=1e-6) and not out.thinking_fired


def test_overthink_penalty_applies_only_while_thinking():
    thought = " hmm wait it is a dog"
    first = "\\boxed{wait}"  # the same word in the answer phase must not be penalised
    probs = {"\\boxed{": 0.5, "\\boxed{wait}<think> hmm": 0.9}
    plain = run(ScriptedBackbone(r1_script(first, thought, "\\boxed{a dog}"), probs), "auto", options=None)
    model = ScriptedBackbone(r1_script(first, thought, "\\boxed{a dog}"), probs)
    damped = run(model, "auto", options=None, overthink_penalty=5.0)
    assert plain.initial_answer == damped.initial_answer == "wait"
    assert plain.thought == thought.strip() and "wait" not in damped.thought
    alt = model.tokenizer.decode([model.alt_id])  # the runner-up took the penalised word's place
    assert damped.thought == "hmm" + alt and damped.text == "a dog"


def test_options_are_validated():
    model = ScriptedBackbone(r1_script("\\boxed{A}", THOUGHT, "\\boxed{A}"))
    with pytest.raises(InvalidRequestError, match="treshold"):
        run(model, "auto", treshold=0.5)
    for bad in ({"threshold": 1.5}, {"max_think_tokens": 0}, {"overthink_penalty": -1.0}, {"confidence": "x"}):
        with pytest.raises(InvalidRequestError):
            run(model, "auto", **bad)
    with pytest.raises(InvalidRequestError, match="unknown reasoning mode"):
        run(model, "ponder")
    # unset (or None) means the backbone's calibrated threshold, else the paper's 0.97
    assert ReasoningOptions.from_kwargs(threshold=None).threshold is None
    assert ReasoningConfig.build({}).threshold_for(model) == 0.97
    model.reasoning_preset = {"confidence_threshold": 0.5}
    assert ReasoningConfig.build({}).threshold_for(model) == 0.5
    assert ReasoningConfig.build({"threshold": 0.9}).threshold_for(model) == 0.9


def test_modes_registered_and_decision_rule():
    assert {"direct", "think", "auto"} <= set(MODES)
    assert should_think("auto", None, 0.0)
    assert not should_think("auto", 0.97, 0.97) and should_think("auto", 0.969, 0.97)
    assert should_think("think", 1.0, 0.5)


def test_videoauto_r1_checkpoint_scores_its_first_box_as_the_release_does():
    """On a backbone trained in the format (its preset says "videoauto-r1") the confidence follows the
    release's rule: "B, a cat" is not one of its letter shapes, so it scores the whole content's tokens (and
    thinks at 0.97); videollm's own rule, kept for prompted backbones, scores the letter alone."""
    probs = {"\\boxed{": 0.99, "\\boxed{B": 0.8, "\\boxed{B,": 0.7, "\\boxed{B, a": 0.6}
    script = r1_script("\\boxed{B, a cat}", THOUGHT, "\\boxed{B}")
    prompted = run(ScriptedBackbone(script, probs), "auto")
    trained_model = ScriptedBackbone(script, probs)
    trained_model.reasoning_preset = {"format": "videoauto-r1", "confidence_threshold": 0.97}
    trained = run(trained_model, "auto")
    assert prompted.initial_choice == trained.initial_choice == "B"
    assert prompted.confidence == pytest.approx(0.99, abs=1e-6) and not prompted.thinking_fired
    want = math.exp((math.log(0.99) + math.log(0.8) + math.log(0.7) + math.log(0.6)) / 4)
    assert trained.confidence == pytest.approx(want, rel=1e-5) and trained.thinking_fired
    assert trained.extra["confidence_rule"] == "videoauto-r1" and prompted.extra["confidence_rule"] == "videollm"
    # the common shape gives the same value under both rules
    same = ScriptedBackbone(r1_script("\\boxed{A}", THOUGHT, "\\boxed{A}"), {"\\boxed{": 0.9})
    same.reasoning_preset = {"format": "videoauto-r1"}
    assert run(same, "auto").confidence == pytest.approx(0.9, abs=1e-6)
