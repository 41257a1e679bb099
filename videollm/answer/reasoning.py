"""Reasoning modes: how the LLM turns a prompt with visual tokens into an answer.

`direct` answers at once and never thinks. `think` and `auto` use VideoAuto-R1's format (initial answer in a
first `\\boxed{}`, reasoning in `<think>...</think>`, reviewed answer in a second box): `think` always goes on
to reason; `auto` stops at `<think>` when the first answer's confidence reaches the threshold, and otherwise
continues in the same KV cache, so the video is encoded and the prompt prefilled once. Each mode is a function
`(backbone, question, visual, generation, config, system=None) -> ReasoningOutcome` taking a built `Question`
(`videollm.question`) and a built `ReasoningConfig` (the CLI's --confidence-threshold, --max-think-tokens,
--overthink-penalty), both made once where the request is formed.
"""
from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import torch

from ..errors import InvalidRequestError
from ..options import build_config, check_fields
from ..protocols import (
    SupportsChoiceScoring,
    SupportsOptionSupport,
    Tokenizer,
    VideoLanguageModel,
    answer_style,
    reasoning_preset,
)
from ..question import Question
from ..registry import Registry
from ..runtime.generation import (
    OVERTHINK_WORDS,
    GenerationConfig,
    GenerationResult,
    TokenPenalty,
    continue_generation,
    generate,
)
from ..types import VisualTokens
from .choice import ANSWER_FORMATS, LetterConstraint, check_answer_format, letter_token_ids
from .prompting import parse_choice
from .reasoning_format import (
    BOX_PREFIX,
    DEFER_TEXT,
    THINK_CLOSE,
    THINK_OPEN,
    ParsedAnswer,
    final_answer,
    first_box,
    geometric_mean_prob,
    is_deferral,
    letter_probability,
    parse_box_answer,
    r1_confidence,
    r1_system_prompt,
    r1_user_text,
    span_token_indices,
    split_r1,
)

logger = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.97  # the paper's value for its 7B model (0.98 for the Qwen3-VL-8B release)
DEFAULT_MAX_THINK_TOKENS = 512
#: cap on each answer phase unless `answer_tokens` is set: an answer is one box (the released demo gives its
#: first stage 256 tokens), and eval's large reasoning budget must not let a rambling model spend it twice
MAX_ANSWER_TOKENS = 256
CONFIDENCE_METHODS = ("box", "letter")
#: where a one-sentence answer ends (backbones with `one_sentence_answers`)
SENTENCE_ENDS = (". ", ".\n", "! ", "? ", "\n\n")
_SENTENCE = re.compile(r"^(.+?[.!?])(?=\s|$)", re.DOTALL)


def sentence_stops(backbone: object, options: Sequence[str] | None) -> tuple[str, ...]:
    """Stop strings that end a free-form answer after its first sentence (backbones with
    `one_sentence_answers`); a streaming caller must cut at the same places as the decode loop."""
    return SENTENCE_ENDS if not options and answer_style(backbone).one_sentence_answers else ()


def first_sentence(text: str) -> str:
    """The text up to the end of its first sentence ("3.5" and "e.g" do not end one: a space must follow)."""
    m = _SENTENCE.match(text.strip())
    return m.group(1).strip() if m else text.strip()


@dataclass
class ReasoningOutcome:
    text: str
    choice: str | None
    generated_tokens: int
    finish_reason: str
    mode: str
    thought: str | None = None
    initial_answer: str | None = None
    initial_choice: str | None = None
    confidence: float | None = None
    thinking_fired: bool = False
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ReasoningConfig:
    """Knobs of the think/auto controller, built and checked once (`build`) and passed down typed."""

    #: auto: exit early when confidence >= threshold; None: the backbone's calibrated value (a VideoAuto-R1
    #: checkpoint's `confidence_threshold`), else DEFAULT_THRESHOLD (`threshold_for`)
    threshold: float | None = None
    max_think_tokens: int = DEFAULT_MAX_THINK_TOKENS  # thinking is closed by force after this many tokens
    overthink_penalty: float = 0.0  # logit penalty on OVERTHINK_WORDS while thinking; inf bans them
    overthink_words: tuple[str, ...] = OVERTHINK_WORDS
    confidence: str = "box"  # "box": exp(mean log p) of the first box's answer tokens (the paper's);
    # "letter": probability of the chosen option letter among the valid letters (for backbones not trained in
    # the format); falls back to "box" where no letter token is found
    prefill_box: bool = False  # start the assistant turn with "\boxed{" (helps backbones not trained in the format)
    answer_tokens: int | None = None  # budget of each answer phase; None = max_new_tokens, at most MAX_ANSWER_TOKENS
    answer_format: str = "free"  # "free": generate; "choice": each answer's first token is an option letter
    # (greedy), so multiple choice always yields a letter (videollm.answer.choice)

    @classmethod
    def build(cls, values: ReasoningConfig | Mapping[str, Any] | None = None) -> ReasoningConfig:
        """The one way user-given options (CLI flags, JSON, YAML, keyword arguments) become a config: names and
        types checked (`build_dataclass`; a None value means the default), then `validate()`. A config passes
        through, checked."""
        if isinstance(values, Mapping):
            values = {k: v for k, v in values.items() if v is not None}
        return build_config(cls, values, "reasoning option",
                            "reasoning options must be a ReasoningConfig or an object of option names and values")

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> ReasoningConfig:
        """`build(kwargs)`, the name earlier releases had."""
        return cls.build(kwargs)

    def validate(self) -> None:
        """The one validator (CLI, Python API, server JSON, eval, lmms-eval): every field's type, then every
        value, each refusal naming the option and its CLI flag. Raises `InvalidRequestError`."""
        check_fields(self, "reasoning option")
        t = self.threshold
        if t is not None and not 0.0 <= float(t) <= 1.0:  # NaN fails the comparison too
            raise InvalidRequestError(f"confidence threshold (--confidence-threshold) must be a number in [0, 1], "
                                      f"got {t}")
        if self.max_think_tokens < 1:
            raise InvalidRequestError(f"max think tokens (--max-think-tokens) must be at least 1, "
                                      f"got {self.max_think_tokens}")
        if math.isnan(float(self.overthink_penalty)) or float(self.overthink_penalty) < 0:
            raise InvalidRequestError(f"overthink penalty (--overthink-penalty) must be a number >= 0 (inf bans the "
                                      f"words), got {self.overthink_penalty}")
        if self.confidence not in CONFIDENCE_METHODS:
            raise InvalidRequestError(f"confidence method (--confidence-method) must be one of "
                                      f"{', '.join(CONFIDENCE_METHODS)}, got {self.confidence!r}")
        if self.answer_tokens is not None and self.answer_tokens < 1:
            raise InvalidRequestError(f"answer tokens must be >= 1, got {self.answer_tokens}")
        if self.answer_format not in ANSWER_FORMATS:
            raise InvalidRequestError(f"answer format must be one of {', '.join(ANSWER_FORMATS)}, "
                                      f"got {self.answer_format!r}")

    def threshold_for(self, backbone: object) -> float:
        """The auto threshold to use: the one given, else the backbone's trained one, else DEFAULT_THRESHOLD."""
        if self.threshold is not None:
            return float(self.threshold)
        trained = reasoning_preset(backbone)  # VideoAuto-R1 checkpoints
        return float(trained.get("confidence_threshold", DEFAULT_THRESHOLD))

    def think_allowance(self) -> int:
        """Tokens a thinking mode may spend beyond the answer (what the context must leave room for)."""
        return int(self.max_think_tokens)


#: the name earlier releases had
ReasoningOptions = ReasoningConfig


class ReasoningFn(Protocol):
    """A reasoning mode: the question, its visual tokens and the typed options → an outcome."""

    def __call__(self, backbone: VideoLanguageModel, question: Question, visual: VisualTokens,
                 generation: GenerationConfig, config: ReasoningConfig, system: str | None = None
                 ) -> ReasoningOutcome: ...


MODES: Registry[ReasoningFn] = Registry("reasoning mode")


def register_mode(name: str) -> Callable[[ReasoningFn], ReasoningFn]:
    return MODES.register(name)


def run_mode(name: str, backbone: VideoLanguageModel, question: Question, visual: VisualTokens,
             generation: GenerationConfig, config: ReasoningConfig | None = None,
             system: str | None = None) -> ReasoningOutcome:
    """Run a reasoning mode on a built `Question` (`videollm.question.make_question`) with a built
    `ReasoningConfig` (None: the defaults). A backbone that cannot write a thought (`reasons = False`, e.g.
    videollm-mini's 135M LLM, whose own thoughts degenerate into "1.1.1…") gets its direct answer plus a
    thought written from its evidence in think/auto; and a backbone that can tell which options its frames
    show has its letter decided by them when they are unambiguous (`answer.evidence`)."""
    from .evidence import apply_option_support

    if not isinstance(question, Question):
        raise InvalidRequestError("run_mode takes a Question (videollm.question.make_question)")
    config = ReasoningConfig.build(config)  # a config built and checked upstream passes as it is
    fn = MODES.get(name)
    if name in ("think", "auto") and not answer_style(backbone).reasons:
        outcome = _evidence_thought(name, backbone, question, visual, generation, config, system)
    else:
        outcome = fn(backbone, question, visual, generation, config, system)
    return apply_option_support(backbone, outcome, question, visual)


def _evidence_thought(name: str, backbone: VideoLanguageModel, question: Question, visual: VisualTokens,
                      generation: GenerationConfig, config: ReasoningConfig, system: str | None) -> ReasoningOutcome:
    """think/auto for a backbone too small to reason: the direct answer, and as the thought what its frames
    showed (`SupportsOptionSupport.evidence_thought`), so the thought is true rather than a loop."""
    threshold = config.threshold_for(backbone)
    direct = ReasoningConfig(answer_format=config.answer_format)
    out = answer_direct(backbone, question, visual, generation, direct, system)
    fired = name == "think" or should_think(name, out.confidence, threshold)
    thought = None
    if fired and isinstance(backbone, SupportsOptionSupport):
        thought = backbone.evidence_thought(question, visual)
    out.mode, out.thinking_fired, out.thought = name, fired, thought
    out.extra.update(thought_source="evidence" if thought else None, threshold=threshold)
    return out


# ---- confidence probes --------------------------------------------------------------------------------
class LetterProbe:
    """Records, at every step, the log-probabilities of the option letters' tokens (`A`, ` A`, ...)."""

    def __init__(self, tokenizer: Tokenizer, letters: Sequence[str]):
        self.token_letter: dict[int, str] = letter_token_ids(tokenizer, letters)
        self._ids = torch.tensor(sorted(self.token_letter), dtype=torch.long)
        self.rows: list[torch.Tensor] = []

    def __call__(self, ids: list[int], scores: torch.Tensor) -> None:
        if len(self._ids):
            self.rows.append(torch.log_softmax(scores.float(), dim=-1)[self._ids.to(scores.device)].cpu())

    def confidence(self, step: int, token_id: int) -> float | None:
        """P(letter of `token_id`) among the valid letters at `step`; None when that token is no letter."""
        letter = self.token_letter.get(int(token_id))
        if letter is None or step >= len(self.rows):
            return None
        per_letter: dict[str, float] = {}
        for tid, lp in zip(self._ids.tolist(), self.rows[step].tolist()):  # a letter's spellings add up
            name = self.token_letter[tid]
            per_letter[name] = float(torch.logaddexp(torch.tensor(per_letter.get(name, -math.inf)), torch.tensor(lp)))
        return letter_probability(per_letter, letter)


def _char_ends(tokenizer: Tokenizer, ids: Sequence[int], upto: int) -> list[int]:
    """Where each token's text ends in the decoded string (decoding prefixes, so byte pieces are right)."""
    ends: list[int] = []
    for i in range(len(ids)):
        e = len(tokenizer.decode(list(ids[: i + 1]), skip_special_tokens=False))
        ends.append(max(e, ends[-1] if ends else 0))
        if e >= upto:
            break
    return ends


def _answer_confidences(backbone: VideoLanguageModel, out: GenerationResult, offset: int, answer: ParsedAnswer,
                        probe: LetterProbe | None) -> tuple[float | None, float | None]:
    """(box confidence, letter confidence) of an answer whose key characters are `answer.span` in
    `prefix + out.text`, the prefix being `offset` characters the model did not generate."""
    start, end = answer.span[0] - offset, answer.span[1] - offset
    if end <= 0:
        return None, None
    text_ids = out.token_ids[: len(out.logprobs)]
    ends = _char_ends(backbone.tokenizer, text_ids, end)
    idx = span_token_indices(ends, max(start, 0), end)
    box = geometric_mean_prob([out.logprobs[i] for i in idx])
    letter = None
    if probe is not None and answer.choice is not None and idx:
        letter = probe.confidence(idx[0], text_ids[idx[0]])
    return box, letter


# ---- modes --------------------------------------------------------------------------------------------
@register_mode("direct")
def answer_direct(backbone: VideoLanguageModel, question: Question, visual: VisualTokens,
                  generation: GenerationConfig, config: ReasoningConfig, system: str | None = None
                  ) -> ReasoningOutcome:
    """One pass with the direct-answer prompt; stops at `<think>` should a reasoning model start one.

    Confidence: the chosen letter's probability among the valid letters (multiple choice), else the geometric
    mean probability of the answer's tokens, recorded so a direct run can be calibrated too. With
    `answer_format="choice"` the answer is one greedy token constrained to the option letters.
    """
    check_answer_format(config.answer_format, question.options)
    start = time.perf_counter()
    inputs = backbone.build_inputs(question.user_text, visual, system=system)
    probe = LetterProbe(backbone.tokenizer, question.letters) if question.is_choice else None
    cfg = replace(generation, stop_strings=tuple(generation.stop_strings) + (THINK_OPEN,))
    guard = answer_style(backbone).repetition_guard  # small LLMs loop: a default n-gram guard
    if guard and not cfg.no_repeat_ngram:
        cfg = replace(cfg, no_repeat_ngram=guard)
    one_sentence = bool(sentence_stops(backbone, question.options))
    if one_sentence:  # a small LLM's first sentence answers; what follows invents details
        cfg = replace(cfg, stop_strings=tuple(cfg.stop_strings) + sentence_stops(backbone, question.options))
    scorer = None
    if question.is_choice and isinstance(backbone, SupportsChoiceScoring):  # an optional capability
        scorer = backbone.choice_scorer(inputs, question, visual)
    if config.answer_format == "choice":
        scorer = LetterConstraint(backbone.tokenizer, question.letters, inner=scorer)
        cfg = replace(cfg, max_new_tokens=1, temperature=0.0, stop_strings=())
    out = generate(backbone, inputs.embeds, cfg, observers=[probe] if probe else (), first_step=scorer,
                   prefix_len=inputs.prefix_len, allow_static=True)
    text = out.text.split(THINK_OPEN)[0].strip()
    if one_sentence:
        text = first_sentence(text)
    choice = parse_choice(text, question)
    if isinstance(scorer, LetterConstraint):
        choice = text = scorer.token_letter[out.token_ids[0]]
    confidence, method = None, None
    if probe is not None and choice is not None:
        confidence = next((probe.confidence(i, t) for i, t in enumerate(out.token_ids)
                           if probe.token_letter.get(t) == choice), None)
        method = "letter" if confidence is not None else None
    if confidence is None and not question.is_choice:
        confidence = geometric_mean_prob(out.logprobs[: len(out.token_ids) - (out.finish_reason == "eos")])
        method = "mean_token" if confidence is not None else None
    return ReasoningOutcome(text=text, choice=choice, generated_tokens=len(out.token_ids),
                            finish_reason=out.finish_reason, mode="direct", initial_answer=text,
                            initial_choice=choice, confidence=confidence, seconds=time.perf_counter() - start,
                            extra={"confidence_method": method, "tokens": {"answer": len(out.token_ids)}})


@register_mode("think")
def answer_think(backbone: VideoLanguageModel, question: Question, visual: VisualTokens,
                 generation: GenerationConfig, config: ReasoningConfig, system: str | None = None
                 ) -> ReasoningOutcome:
    """Always reason: initial answer, `<think>`, reviewed answer. The initial answer's confidence is still
    recorded, which is what `videollm calibrate` sweeps thresholds over."""
    return _AnswerThenThink(backbone, question, generation, config, "think").run(visual, system)


@register_mode("auto")
def answer_auto(backbone: VideoLanguageModel, question: Question, visual: VisualTokens,
                generation: GenerationConfig, config: ReasoningConfig, system: str | None = None
                ) -> ReasoningOutcome:
    """VideoAuto-R1: answer; if the answer's confidence reaches the threshold stop there, else think on."""
    return _AnswerThenThink(backbone, question, generation, config, "auto").run(visual, system)


def _trained_format(backbone: object) -> bool:
    """Whether the backbone is a checkpoint trained in VideoAuto-R1's format (its preset says so)."""
    return reasoning_preset(backbone).get("format") == "videoauto-r1"


def should_think(mode: str, confidence: float | None, threshold: float) -> bool:
    """The decision, as the paper has it: no confidence (a deferral, or no box) always thinks."""
    if mode == "think":
        return True
    return confidence is None or confidence < threshold


def no_confidence_reason(boxed: bool, deferred: bool, initial_text: str) -> str:
    """Why the first answer has no confidence, in words for the user (auto then always thinks)."""
    if deferred:
        return "the first answer deferred to thinking"
    if not boxed:
        return ("the first answer had no \\boxed{} answer" if initial_text.strip()
                else "no first answer was written before <think>")
    return "the first answer's \\boxed{} was empty or its tokens had no probabilities"


def auto_notes(outcome: ReasoningOutcome) -> list[str]:
    """What the user should know about an auto-mode decision: thinking that fired with no confidence at all
    (not below the threshold, but unknown), which is easy to mistake for a calibrated decision."""
    if outcome.mode != "auto" or not outcome.thinking_fired or outcome.confidence is not None:
        return []
    reason = outcome.extra.get("no_confidence") or "the first answer had no confidence"
    return [f"auto reasoning: {reason}, so there was no confidence to compare with the threshold and it thought "
            "(VideoAuto-R1 thinks whenever the confidence is unknown)"]


@dataclass
class _Initial:
    """What the initial stage found: the first answer, its confidences and the generation it came from."""

    out: GenerationResult
    head: str  # prefix + generated text
    answer: ParsedAnswer | None
    confidence: float | None
    extra: dict[str, Any]


class _AnswerThenThink:
    """think/auto in three named stages over one KV cache: `initial` (the first boxed answer and its
    confidence, up to `<think>`), `think` (the reasoning, closed by force at its budget) and `review` (the
    reviewed answer); `run` decides between them with `should_think`."""

    def __init__(self, backbone: VideoLanguageModel, question: Question, generation: GenerationConfig,
                 config: ReasoningConfig, mode: str):
        check_answer_format(config.answer_format, question.options)
        self.backbone, self.question, self.config, self.mode = backbone, question, config, mode
        self.tok = backbone.tokenizer
        self.threshold = config.threshold_for(backbone)
        self.answer_budget = int(config.answer_tokens or min(generation.max_new_tokens, MAX_ANSWER_TOKENS))
        # choice: every answer is a box whose first token is an option letter (greedy), so there always is one
        choice = config.answer_format == "choice"
        self.letters = LetterConstraint(self.tok, question.letters) if choice else None
        self.generation = replace(generation, temperature=0.0) if choice else generation
        self.prefix = BOX_PREFIX if config.prefill_box or choice else ""
        self.probe = LetterProbe(self.tok, question.letters) if question.is_choice else None

    def run(self, visual: VisualTokens, system: str | None) -> ReasoningOutcome:
        start = time.perf_counter()
        first = self.initial(visual, system)
        initial_answer = DEFER_TEXT if first.extra["deferred"] else (first.answer.text if first.answer else None)
        initial_choice = first.answer.choice if first.answer else None
        if not should_think(self.mode, first.confidence, self.threshold):
            first.extra["raw"] = first.head
            return ReasoningOutcome(text=first.answer.text, choice=first.answer.choice,
                                    generated_tokens=len(first.out.token_ids), finish_reason=first.out.finish_reason,
                                    mode=self.mode, initial_answer=initial_answer, initial_choice=initial_choice,
                                    confidence=first.confidence, thinking_fired=False,
                                    seconds=time.perf_counter() - start, extra=first.extra)
        forced, thought = self.think(first)
        reviewed, source, raw, last = self.review(first, forced, thought)
        n = len(first.out.token_ids) + len(thought.token_ids) + len(last.token_ids)
        first.extra.update(raw=raw, final_source=source, think_closed=thought.finish_reason == "stop",
                           think_finish=thought.finish_reason,
                           tokens={"answer": len(first.out.token_ids), "think": len(thought.token_ids),
                                   "review": len(last.token_ids)})
        if reviewed is None:
            logger.info("no answer found in the reasoning output (%d tokens)", n)
        parts = split_r1(raw)
        return ReasoningOutcome(
            text=reviewed.text if reviewed else (parts.final or "").strip(),
            choice=reviewed.choice if reviewed else None, generated_tokens=n, finish_reason=last.finish_reason,
            mode=self.mode, thought=parts.thought, initial_answer=initial_answer, initial_choice=initial_choice,
            confidence=first.confidence, thinking_fired=True, seconds=time.perf_counter() - start,
            extra=first.extra)

    def initial(self, visual: VisualTokens, system: str | None) -> _Initial:
        """Stage 1: the initial answer, up to `<think>`, and its box and letter confidences."""
        q, prefix, letters = self.question, self.prefix, self.letters
        inputs = self.backbone.build_inputs(r1_user_text(q.user_text), visual, system=r1_system_prompt(system),
                                            assistant_prefix=prefix)
        cfg1 = replace(self.generation, max_new_tokens=self.answer_budget, stop_strings=(THINK_OPEN,))
        s1 = generate(self.backbone, inputs.embeds, cfg1, observers=[self.probe] if self.probe else (),
                      first_step=letters, prefix_len=inputs.prefix_len)
        head = prefix + s1.text
        initial_text = head.split(THINK_OPEN)[0]
        box = first_box(initial_text)
        initial: ParsedAnswer | None = None
        box_conf = letter_conf = None
        deferred = box is not None and is_deferral(box.content)
        if box is not None and not deferred and box.content.strip():
            initial = parse_box_answer(box, initial_text, q)
            box_conf, letter_conf = _answer_confidences(self.backbone, s1, len(prefix), initial, self.probe)
        elif box is None and initial_text.strip():
            # malformed: no box at all. Keep what the text says as the initial answer, with no confidence
            choice = parse_choice(initial_text, q) if q.is_choice else None
            initial = ParsedAnswer(choice or initial_text.strip(), choice, (0, 0))
        trained = _trained_format(self.backbone) and letters is None and not prefix
        if trained and initial is not None and box is not None and not deferred:
            # a VideoAuto-R1 checkpoint: its confidence exactly as the release computes it (`r1_confidence`)
            box_conf = r1_confidence(s1.token_ids, s1.logprobs,
                                     self.tok.decode(s1.token_ids, skip_special_tokens=True), self._encode)
        if letters is not None and s1.token_ids:  # the constrained token is the answer, whatever follows it
            letter = letters.token_letter[s1.token_ids[0]]
            if initial is None or initial.choice != letter:
                span = (len(prefix), len(prefix) + len(self.tok.decode(s1.token_ids[:1])))
                initial = ParsedAnswer(letter, letter, span)
                box_conf, letter_conf = _answer_confidences(self.backbone, s1, len(prefix), initial, self.probe)
        confidence, method = box_conf, "box" if box_conf is not None else None
        if self.config.confidence == "letter" and letter_conf is not None:
            confidence, method = letter_conf, "letter"
        extra: dict[str, Any] = {"confidence_method": method, "box_confidence": box_conf,
                                 "confidence_rule": "videoauto-r1" if trained else "videollm",
                                 "letter_confidence": letter_conf, "deferred": deferred, "threshold": self.threshold,
                                 "tokens": {"answer": len(s1.token_ids)}, "forced": []}
        if confidence is None:
            extra["no_confidence"] = no_confidence_reason(box is not None, deferred, initial_text)
        return _Initial(s1, head, initial, confidence, extra)

    def _encode(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def think(self, first: _Initial) -> tuple[str, GenerationResult]:
        """Stage 2: reason in the same cache, opening the tag ourselves if the model did not."""
        s1, opts = first.out, self.config
        forced = "" if s1.finish_reason == "stop" else THINK_OPEN
        if forced:
            first.extra["forced"].append(THINK_OPEN)
        cfg2 = replace(self.generation, max_new_tokens=int(opts.max_think_tokens), stop_strings=(THINK_CLOSE,))
        processors = []
        if opts.overthink_penalty:
            processors.append(TokenPenalty.overthinking(self.tok, opts.overthink_penalty, opts.overthink_words))
        s2 = continue_generation(self.backbone, s1, cfg2, forced_text=forced, drop_pending=s1.finish_reason == "eos",
                                 processors=processors, prefill_stage="think", decode_stage="think")
        return forced, s2

    def review(self, first: _Initial, forced: str, s2: GenerationResult
               ) -> tuple[ParsedAnswer | None, str, str, GenerationResult]:
        """Stage 3: the reviewed answer, closing the tag ourselves when the model ran out of budget or stopped.
        Returns (answer, where it was found, the whole raw output, the stage's generation)."""
        forced2 = "" if s2.finish_reason == "stop" else THINK_CLOSE
        if forced2:
            first.extra["forced"].append(THINK_CLOSE)
        cfg3 = replace(self.generation, max_new_tokens=self.answer_budget, stop_strings=())
        box3 = BOX_PREFIX if self.letters is not None else ""
        if box3:
            first.extra["forced"].append(box3)
        s3 = continue_generation(self.backbone, s2, cfg3, forced_text=forced2 + box3,
                                 drop_pending=s2.finish_reason == "eos", first_step=self.letters)
        raw = first.head + forced + s2.text + forced2 + box3 + s3.text
        reviewed, source = final_answer(raw, self.question)  # the same candidates eval's scorer reads
        if self.letters is not None and s3.token_ids:
            letter = self.letters.token_letter[s3.token_ids[0]]
            if reviewed is None or reviewed.choice != letter or source != "final_box":
                start_at = len(raw) - len(s3.text)
                reviewed, source = ParsedAnswer(letter, letter, (start_at, start_at + 1)), "choice"
        return reviewed, source, raw, s3
