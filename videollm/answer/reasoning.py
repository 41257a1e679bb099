"""Reasoning modes: how the LLM turns a prompt with visual tokens into an answer.

`direct` answers at once and never thinks. `think` and `auto` use VideoAuto-R1's format (initial answer in a
first `\\boxed{}`, reasoning in `<think>...</think>`, reviewed answer in a second box): `think` always goes on
to reason; `auto` stops at `<think>` when the first answer's confidence reaches the threshold, and otherwise
continues in the same KV cache, so the video is encoded and the prompt prefilled once. Each mode is a function
`(backbone, user_text, visual, options, generation, system=None, **options) -> ReasoningOutcome`; options are
those of `ReasoningOptions` (the CLI's --confidence-threshold, --max-think-tokens, --overthink-penalty).
"""
from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch

from ..errors import InvalidRequestError
from ..protocols import SupportsChoiceScoring, SupportsOptionSupport, Tokenizer, VideoLanguageModel, answer_style
from ..question import option_letters, option_texts
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
class ReasoningOptions:
    """Knobs of the think/auto controller; unknown names are refused so a typo cannot pass silently."""

    threshold: float = DEFAULT_THRESHOLD  # auto: exit early when confidence >= threshold; calibrate per backbone
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
    def from_kwargs(cls, **kwargs: Any) -> ReasoningOptions:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise InvalidRequestError(f"unknown reasoning option(s) {', '.join(unknown)}; "
                                      f"known: {', '.join(sorted(known))}")
        opts = cls(**{k: v for k, v in kwargs.items() if v is not None})
        opts.validate()
        return opts

    def validate(self) -> None:
        if not (isinstance(self.threshold, (int, float)) and 0.0 <= float(self.threshold) <= 1.0):
            raise InvalidRequestError(f"confidence threshold must be in [0, 1], got {self.threshold}")
        if int(self.max_think_tokens) < 1:
            raise InvalidRequestError(f"max think tokens must be >= 1, got {self.max_think_tokens}")
        if math.isnan(float(self.overthink_penalty)) or float(self.overthink_penalty) < 0:
            raise InvalidRequestError(f"overthink penalty must be >= 0, got {self.overthink_penalty}")
        if self.confidence not in CONFIDENCE_METHODS:
            raise InvalidRequestError(f"confidence method must be one of {CONFIDENCE_METHODS}, got {self.confidence!r}")
        if self.answer_tokens is not None and int(self.answer_tokens) < 1:
            raise InvalidRequestError(f"answer tokens must be >= 1, got {self.answer_tokens}")
        if self.answer_format not in ANSWER_FORMATS:
            raise InvalidRequestError(f"answer format must be one of {', '.join(ANSWER_FORMATS)}, "
                                      f"got {self.answer_format!r}")


#: the name `PipelineConfig` nests: the reasoning modes' options as one typed dataclass
ReasoningConfig = ReasoningOptions

ReasoningFn = Callable[..., ReasoningOutcome]
MODES: Registry[ReasoningFn] = Registry("reasoning mode")


def register_mode(name: str) -> Callable[[ReasoningFn], ReasoningFn]:
    return MODES.register(name)


def run_mode(name: str, backbone: VideoLanguageModel, user_text: str, visual: VisualTokens,
             options: list[str] | None, generation: GenerationConfig, *args: Any, **kwargs: Any) -> ReasoningOutcome:
    """Run a reasoning mode. A backbone that cannot write a thought (`reasons = False`, e.g. videollm-mini's
    135M LLM, whose own thoughts degenerate into "1.1.1…") gets its direct answer plus a thought written from
    its evidence in think/auto; and a backbone that can tell which options its frames show has its letter
    decided by them when they are unambiguous (`answer.evidence`)."""
    from .evidence import apply_option_support

    fn = MODES.get(name)
    if name in ("think", "auto") and not answer_style(backbone).reasons:
        outcome = _evidence_thought(name, backbone, user_text, visual, options, generation, *args, **kwargs)
    else:
        outcome = fn(backbone, user_text, visual, options, generation, *args, **kwargs)
    return apply_option_support(backbone, outcome, options, visual)


def _evidence_thought(name: str, backbone: VideoLanguageModel, user_text: str, visual: VisualTokens,
                      options: list[str] | None, generation: GenerationConfig, system: str | None = None,
                      **kwargs: Any) -> ReasoningOutcome:
    """think/auto for a backbone too small to reason: the direct answer, and as the thought what its frames
    showed (`SupportsOptionSupport.evidence_thought`), so the thought is true rather than a loop."""
    opts = ReasoningOptions.from_kwargs(**kwargs)
    direct_kwargs = {"answer_format": opts.answer_format}
    out = answer_direct(backbone, user_text, visual, options, generation, system=system, **direct_kwargs)
    fired = name == "think" or should_think(name, out.confidence, opts.threshold)
    thought = None
    if fired and isinstance(backbone, SupportsOptionSupport):
        thought = backbone.evidence_thought(user_text, options, visual)
    out.mode, out.thinking_fired, out.thought = name, fired, thought
    out.extra.update(thought_source="evidence" if thought else None, threshold=opts.threshold)
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
def answer_direct(backbone: VideoLanguageModel, user_text: str, visual: VisualTokens, options: list[str] | None,
                  generation: GenerationConfig, system: str | None = None, **kwargs: Any) -> ReasoningOutcome:
    """One pass with the direct-answer prompt; stops at `<think>` should a reasoning model start one.

    Confidence: the chosen letter's probability among the valid letters (multiple choice), else the geometric
    mean probability of the answer's tokens, recorded so a direct run can be calibrated too. With
    `answer_format="choice"` the answer is one greedy token constrained to the option letters.
    """
    opts = ReasoningOptions.from_kwargs(**kwargs)
    check_answer_format(opts.answer_format, options)
    start = time.perf_counter()
    inputs = backbone.build_inputs(user_text, visual, system=system)
    probe = LetterProbe(backbone.tokenizer, option_letters(options)) if options else None
    cfg = replace(generation, stop_strings=tuple(generation.stop_strings) + (THINK_OPEN,))
    guard = answer_style(backbone).repetition_guard  # small LLMs loop: a default n-gram guard
    if guard and not cfg.no_repeat_ngram:
        cfg = replace(cfg, no_repeat_ngram=guard)
    one_sentence = bool(sentence_stops(backbone, options))
    if one_sentence:  # a small LLM's first sentence answers; what follows invents details
        cfg = replace(cfg, stop_strings=tuple(cfg.stop_strings) + sentence_stops(backbone, options))
    scorer = None
    if options and isinstance(backbone, SupportsChoiceScoring):  # an optional capability
        scorer = backbone.choice_scorer(inputs, option_texts(options), visual, question=user_text)
    if opts.answer_format == "choice":
        scorer = LetterConstraint(backbone.tokenizer, option_letters(options), inner=scorer)
        cfg = replace(cfg, max_new_tokens=1, temperature=0.0, stop_strings=())
    out = generate(backbone, inputs.embeds, cfg, observers=[probe] if probe else (), first_step=scorer,
                   prefix_len=inputs.prefix_len, allow_static=True)
    text = out.text.split(THINK_OPEN)[0].strip()
    if one_sentence:
        text = first_sentence(text)
    choice = parse_choice(text, options)
    if isinstance(scorer, LetterConstraint):
        choice = text = scorer.token_letter[out.token_ids[0]]
    confidence, method = None, None
    if probe is not None and choice is not None:
        confidence = next((probe.confidence(i, t) for i, t in enumerate(out.token_ids)
                           if probe.token_letter.get(t) == choice), None)
        method = "letter" if confidence is not None else None
    if confidence is None and not options:
        confidence = geometric_mean_prob(out.logprobs[: len(out.token_ids) - (out.finish_reason == "eos")])
        method = "mean_token" if confidence is not None else None
    return ReasoningOutcome(text=text, choice=choice, generated_tokens=len(out.token_ids),
                            finish_reason=out.finish_reason, mode="direct", initial_answer=text,
                            initial_choice=choice, confidence=confidence, seconds=time.perf_counter() - start,
                            extra={"confidence_method": method, "tokens": {"answer": len(out.token_ids)}})


@register_mode("think")
def answer_think(backbone: VideoLanguageModel, user_text: str, visual: VisualTokens, options: list[str] | None,
                 generation: GenerationConfig, system: str | None = None, **kwargs: Any) -> ReasoningOutcome:
    """Always reason: initial answer, `<think>`, reviewed answer. The initial answer's confidence is still
    recorded, which is what `videollm calibrate` sweeps thresholds over."""
    opts = ReasoningOptions.from_kwargs(**kwargs)
    return _answer_then_think(backbone, user_text, visual, options, generation, system, opts, "think")


@register_mode("auto")
def answer_auto(backbone: VideoLanguageModel, user_text: str, visual: VisualTokens, options: list[str] | None,
                generation: GenerationConfig, system: str | None = None, **kwargs: Any) -> ReasoningOutcome:
    """VideoAuto-R1: answer; if the answer's confidence reaches the threshold stop there, else think on."""
    opts = ReasoningOptions.from_kwargs(**kwargs)
    return _answer_then_think(backbone, user_text, visual, options, generation, system, opts, "auto")


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


def _answer_then_think(backbone: VideoLanguageModel, user_text: str, visual: VisualTokens, options: list[str] | None,
                       generation: GenerationConfig, system: str | None, opts: ReasoningOptions,
                       mode: str) -> ReasoningOutcome:
    check_answer_format(opts.answer_format, options)
    start = time.perf_counter()
    tok = backbone.tokenizer
    answer_budget = int(opts.answer_tokens or min(generation.max_new_tokens, MAX_ANSWER_TOKENS))
    # choice: every answer is a box whose first token is an option letter (greedy), so there always is one
    letters = LetterConstraint(tok, option_letters(options)) if opts.answer_format == "choice" else None
    if letters is not None:
        generation = replace(generation, temperature=0.0)
    prefix = BOX_PREFIX if opts.prefill_box or letters is not None else ""
    inputs = backbone.build_inputs(r1_user_text(user_text), visual, system=r1_system_prompt(system),
                                   assistant_prefix=prefix)
    probe = LetterProbe(tok, option_letters(options)) if options else None

    # phase 1: the initial answer, up to <think>
    cfg1 = replace(generation, max_new_tokens=answer_budget, stop_strings=(THINK_OPEN,))
    s1 = generate(backbone, inputs.embeds, cfg1, observers=[probe] if probe else (), first_step=letters,
                  prefix_len=inputs.prefix_len)
    head = prefix + s1.text
    initial_text = head.split(THINK_OPEN)[0]
    box = first_box(initial_text)
    initial: ParsedAnswer | None = None
    box_conf = letter_conf = None
    deferred = box is not None and is_deferral(box.content)
    if box is not None and not deferred and box.content.strip():
        initial = parse_box_answer(box, initial_text, options)
        box_conf, letter_conf = _answer_confidences(backbone, s1, len(prefix), initial, probe)
    elif box is None and initial_text.strip():
        # malformed: no box at all. Keep what the text says as the initial answer, with no confidence
        choice = parse_choice(initial_text, options) if options else None
        initial = ParsedAnswer(choice or initial_text.strip(), choice, (0, 0))
    if letters is not None and s1.token_ids:  # the constrained token is the answer, whatever follows it
        letter = letters.token_letter[s1.token_ids[0]]
        if initial is None or initial.choice != letter:
            span = (len(prefix), len(prefix) + len(tok.decode(s1.token_ids[:1])))
            initial = ParsedAnswer(letter, letter, span)
            box_conf, letter_conf = _answer_confidences(backbone, s1, len(prefix), initial, probe)
    confidence, method = box_conf, "box" if box_conf is not None else None
    if opts.confidence == "letter" and letter_conf is not None:
        confidence, method = letter_conf, "letter"
    extra: dict[str, Any] = {"confidence_method": method, "box_confidence": box_conf,
                             "letter_confidence": letter_conf, "deferred": deferred, "threshold": opts.threshold,
                             "tokens": {"answer": len(s1.token_ids)}, "forced": []}
    if confidence is None:
        extra["no_confidence"] = no_confidence_reason(box is not None, deferred, initial_text)
    initial_answer = DEFER_TEXT if deferred else (initial.text if initial else None)
    initial_choice = initial.choice if initial else None

    if not should_think(mode, confidence, opts.threshold):
        extra["raw"] = head
        return ReasoningOutcome(text=initial.text, choice=initial.choice, generated_tokens=len(s1.token_ids),
                                finish_reason=s1.finish_reason, mode=mode, initial_answer=initial_answer,
                                initial_choice=initial_choice, confidence=confidence, thinking_fired=False,
                                seconds=time.perf_counter() - start, extra=extra)

    # phase 2: think, in the same cache; open the tag ourselves if the model did not
    forced = "" if s1.finish_reason == "stop" else THINK_OPEN
    if forced:
        extra["forced"].append(THINK_OPEN)
    cfg2 = replace(generation, max_new_tokens=int(opts.max_think_tokens), stop_strings=(THINK_CLOSE,))
    processors = []
    if opts.overthink_penalty:
        processors.append(TokenPenalty.overthinking(tok, opts.overthink_penalty, opts.overthink_words))
    s2 = continue_generation(backbone, s1, cfg2, forced_text=forced, drop_pending=s1.finish_reason == "eos",
                             processors=processors, prefill_stage="think", decode_stage="think")
    # phase 3: the reviewed answer; close the tag ourselves when the model ran out of budget or stopped
    forced2 = "" if s2.finish_reason == "stop" else THINK_CLOSE
    if forced2:
        extra["forced"].append(THINK_CLOSE)
    cfg3 = replace(generation, max_new_tokens=answer_budget, stop_strings=())
    box3 = BOX_PREFIX if letters is not None else ""
    if box3:
        extra["forced"].append(box3)
    s3 = continue_generation(backbone, s2, cfg3, forced_text=forced2 + box3, drop_pending=s2.finish_reason == "eos",
                             first_step=letters)

    raw = head + forced + s2.text + forced2 + box3 + s3.text
    parts = split_r1(raw)
    reviewed, source = final_answer(raw, options)  # the same candidates eval's scorer reads (answer_candidates)
    if letters is not None and s3.token_ids:
        letter = letters.token_letter[s3.token_ids[0]]
        if reviewed is None or reviewed.choice != letter or source != "final_box":
            start_at = len(raw) - len(s3.text)
            reviewed, source = ParsedAnswer(letter, letter, (start_at, start_at + 1)), "choice"
    n = len(s1.token_ids) + len(s2.token_ids) + len(s3.token_ids)
    extra.update(raw=raw, final_source=source, think_closed=s2.finish_reason == "stop",
                 think_finish=s2.finish_reason,
                 tokens={"answer": len(s1.token_ids), "think": len(s2.token_ids), "review": len(s3.token_ids)})
    if reviewed is None:
        logger.info("no answer found in the reasoning output (%d tokens)", n)
    return ReasoningOutcome(
        text=reviewed.text if reviewed else (parts.final or "").strip(), choice=reviewed.choice if reviewed else None,
        generated_tokens=n, finish_reason=s3.finish_reason, mode=mode, thought=parts.thought,
        initial_answer=initial_answer, initial_choice=initial_choice, confidence=confidence, thinking_fired=True,
        seconds=time.perf_counter() - start, extra=extra)
