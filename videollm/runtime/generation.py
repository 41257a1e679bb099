"""A small decode loop over a backbone's `lm_forward`, with the control reasoning modes need.

transformers' `generate` cannot stop at a string, hand back the live KV cache with the last token still
pending, and report each chosen token's log-probability in one call, so the loop is written here; the
model, cache and logits processors all stay transformers'. `continue_generation` resumes from a returned
cache (pending tokens first, then any forced text such as a closing tag), so a prompt is prefilled once.
"""
from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import torch

from ..protocols import FirstStep, LanguageModel, Tokenizer
from ..timing import stage
from . import prefix_cache

logger = logging.getLogger(__name__)

LogitsProcessor = Callable[[list[int], torch.Tensor], torch.Tensor]
#: sees (tokens generated so far, processed scores) before each choice; for probes such as option letters
StepObserver = Callable[[list[int], torch.Tensor], None]
#: sees the tokens generated so far after each choice (the server streams through it); raising stops generation
TokenListener = Callable[[list[int]], None]
_LISTENER: ContextVar[TokenListener | None] = ContextVar("videollm_token_listener", default=None)


@contextmanager
def token_listener(listener: TokenListener) -> Iterator[None]:
    """Call `listener` with the tokens so far after every token `generate` chooses in this context."""
    token = _LISTENER.set(listener)
    try:
        yield
    finally:
        _LISTENER.reset(token)


@dataclass
class GenerationConfig:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    stop_strings: tuple[str, ...] = ()
    seed: int = 0
    repetition_penalty: float = 1.0  # >1 discourages tokens already generated (CTRL-style); 1 = off
    no_repeat_ngram: int = 0  # >0: never generate an n-gram of this many tokens twice (a loop guard); 0 = off
    #: opt-in fast loop: static KV cache + compiled per-token step (CUDA graphs on a GPU), same tokens as the
    #: eager loop; used for fresh direct-mode prompts on backbones that offer it (`runtime.static_decode`)
    static_decode: bool = False

    def validate(self) -> None:
        """Refuse values that cannot mean anything (checked before a model loads). A large `max_new_tokens`
        is not an error: generation stops where the model's context ends."""
        from ..errors import InvalidRequestError

        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) \
                or self.max_new_tokens < 1:
            raise InvalidRequestError(f"max_new_tokens must be a whole number >= 1, got {self.max_new_tokens!r}")
        checks = [("temperature", self.temperature, lambda v: 0 <= v <= 100, "in [0, 100]"),
                  ("top_p", self.top_p, lambda v: 0 < v <= 1, "in (0, 1]"),
                  ("repetition_penalty", self.repetition_penalty, lambda v: 0 < v <= 100, "in (0, 100]")]
        for name, value, ok, what in checks:
            if not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
                raise InvalidRequestError(f"{name} must be a number {what}, got {value!r}")
        if not isinstance(self.seed, int):
            raise InvalidRequestError(f"seed must be an integer, got {self.seed!r}")
        if isinstance(self.no_repeat_ngram, bool) or not isinstance(self.no_repeat_ngram, int) \
                or not 0 <= self.no_repeat_ngram <= 64:
            raise InvalidRequestError(
                f"no_repeat_ngram must be a whole number in [0, 64], got {self.no_repeat_ngram!r}")
        if not isinstance(self.static_decode, bool):
            raise InvalidRequestError(f"static_decode must be true or false, got {self.static_decode!r}")


@dataclass
class GenerationResult:
    token_ids: list[int]
    text: str
    logprobs: list[float]  # log-probability of each chosen token under the (processed) distribution
    finish_reason: str  # "eos" | "stop" | "length"
    cache: Any = None  # holds every token except `pending_ids`
    pending_ids: list[int] = field(default_factory=list)  # generated but not yet fed: feed them first to continue
    seconds: float = 0.0
    forward_calls: int = 0
    context_len: int = 0  # tokens in the context once `pending_ids` are fed: prompt + everything generated
    continuable: bool = True  # False after the static-cache loop, whose cache the eager loop cannot go on in


@torch.inference_mode()
def generate(backbone: LanguageModel, inputs_embeds: torch.Tensor, config: GenerationConfig, cache: Any = None,
             processors: Sequence[LogitsProcessor] = (), prefill_stage: str = "prefill",
             decode_stage: str = "generate", observers: Sequence[StepObserver] = (),
             first_step: FirstStep | None = None, context_used: int = 0, prefix_len: int = 0,
             allow_static: bool = False) -> GenerationResult:
    """Prefill `inputs_embeds` (1, L, D) after `cache` (holding `context_used` tokens), then decode up to
    `max_new_tokens`, never past the model's context: a huge limit cannot run for minutes.

    `prefix_len` > 0 says the first `prefix_len` embeddings do not depend on the question (system turn, user
    turn start, visual tokens: `PromptInputs.prefix_len`); a fresh prompt then reuses their KV from the last
    question with the same prefix and prefills only the rest (`prefix_cache`, off with VIDEOLLM_PREFIX_CACHE=0).
    `allow_static`: the caller will not continue from the result, so `config.static_decode` may take the
    static-cache compiled loop (the result then holds no cache)."""
    tok = backbone.tokenizer
    eos = backbone.eos_token_ids
    gen = torch.Generator(device="cpu").manual_seed(config.seed)
    start = time.perf_counter()
    used = context_used + int(inputs_embeds.shape[1])
    limit = config.max_new_tokens
    max_context = getattr(backbone, "max_context", None)
    if isinstance(max_context, int):
        limit = max(0, min(limit, max_context - used))
    static = _static_decoder(backbone, config, cache, first_step, allow_static)
    with stage(prefill_stage):
        if static is not None:
            cache = static.new_cache(used + limit, max_context if isinstance(max_context, int) else None)
            logits = static.prefill(inputs_embeds, cache)
        else:
            logits, cache = _prefill(backbone, inputs_embeds, cache, prefix_len)
        if first_step is not None:
            logits = first_step(logits, cache)
    calls = 1
    ids: list[int] = []
    logps: list[float] = []
    finish = "length"
    listener = _LISTENER.get()
    with stage(decode_stage):
        while len(ids) < limit:
            scores = logits[0].float()
            if config.repetition_penalty != 1.0 and ids:
                scores = repetition_penalty(ids, scores, config.repetition_penalty)
            if config.no_repeat_ngram and len(ids) >= config.no_repeat_ngram:
                scores = no_repeat_ngram(ids, scores, config.no_repeat_ngram)
            for proc in processors:
                scores = proc(ids, scores)
            for obs in observers:
                obs(ids, scores)
            next_id, logp = _choose(scores, config, gen)
            ids.append(next_id)
            logps.append(logp)
            if listener is not None:
                listener(ids)
            if next_id in eos:
                finish = "eos"
                break
            if config.stop_strings and _hits_stop(tok, ids, config.stop_strings):
                finish = "stop"
                break
            if len(ids) >= limit:
                break
            if static is not None:
                logits = static.next(backbone.embed_ids([[next_id]]), cache, used + len(ids) - 1)
            else:
                logits, cache = backbone.lm_forward(backbone.embed_ids([[next_id]]), cache)
            calls += 1
    text_ids = ids[:-1] if finish == "eos" else ids
    text = tok.decode(text_ids, skip_special_tokens=False)
    if static is not None:
        cache = None  # a static cache cannot be continued by the eager loop
    return GenerationResult(ids, text, logps, finish, cache, pending_ids=ids[-1:] if ids else [],
                            seconds=time.perf_counter() - start, forward_calls=calls, context_len=used + len(ids),
                            continuable=static is None)


def _static_decoder(backbone: LanguageModel, config: GenerationConfig, cache: Any, first_step: FirstStep | None,
                    allow_static: bool) -> Any:
    """The backbone's static-cache decoder when the fast loop applies here, else None (the eager loop)."""
    if not (config.static_decode and allow_static and cache is None and first_step is None):
        return None
    from ..protocols import SupportsStaticDecode

    if not isinstance(backbone, SupportsStaticDecode):
        logger.debug("static_decode: %s offers no text_decoder(); eager loop", type(backbone).__name__)
        return None
    from . import static_decode

    return static_decode.for_backbone(backbone, compile=os.environ.get("VIDEOLLM_COMPILE", "1") != "0")


def _prefill(backbone: LanguageModel, embeds: torch.Tensor, cache: Any, prefix_len: int) -> tuple[torch.Tensor, Any]:
    """`lm_forward` on the whole prompt, or on its suffix after a reused prefix KV."""
    n = int(embeds.shape[1])
    if cache is not None or not 0 < prefix_len < n or not prefix_cache.enabled():
        return backbone.lm_forward(embeds, cache)
    store = prefix_cache.default_prefix_cache()
    prefix = embeds[:, :prefix_len]
    reused = store.lookup(backbone, prefix)
    if reused is not None:
        return backbone.lm_forward(embeds[:, prefix_len:], reused)
    logits, cache = backbone.lm_forward(embeds, None)  # the first question: one full prefill, as without reuse
    store.store(backbone, prefix, cache)
    return logits, cache


def continue_generation(backbone: LanguageModel, previous: GenerationResult, config: GenerationConfig,
                        forced_text: str = "", drop_pending: bool = False,
                        processors: Sequence[LogitsProcessor] = (), observers: Sequence[StepObserver] = (),
                        prefill_stage: str = "prefill", decode_stage: str = "generate",
                        first_step: FirstStep | None = None) -> GenerationResult:
    """Go on from `previous` in its KV cache: feed its pending token (unless dropped, e.g. an EOS the caller
    overrides), then `forced_text` (a tag the model did not write), then decode. Nothing is re-encoded.
    `first_step` rewrites the logits of the first token chosen after the forced text."""
    if not previous.continuable:
        raise ValueError("this generation holds no cache to continue (static_decode results cannot be continued)")
    ids = [] if drop_pending else list(previous.pending_ids)
    if forced_text:
        ids += backbone.tokenizer(forced_text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError("nothing to feed: the previous generation made no token and no text is forced")
    embeds = backbone.embed_ids(ids).unsqueeze(0)
    in_cache = previous.context_len - len(previous.pending_ids)
    return generate(backbone, embeds, config, cache=previous.cache, processors=processors,
                    prefill_stage=prefill_stage, decode_stage=decode_stage, observers=observers,
                    context_used=in_cache, first_step=first_step)


# ---- logits processors --------------------------------------------------------------------------------
OVERTHINK_WORDS = ("wait", "but", "alternatively", "however", "hmm", "hold on", "actually", "double-check",
                   "re-examine", "reconsider")


def word_token_ids(tokenizer: Tokenizer, words: Sequence[str], min_cover: float = 0.67) -> set[int]:
    """Token ids that start one of `words` in any of its usual spellings (`wait`, ` Wait`, `WAIT`, ...).

    Found by asking the tokenizer, never hard-coded. A word that splits into several tokens contributes
    its first token only when that piece holds most of the word (`min_cover` of its letters): penalising
    "B" because "But" splits into "B"+"ut", or "How" because of "How"+"ever", would hit unrelated text.
    """
    found: set[int] = set()
    for word in words:
        w = word.strip()
        if not w:
            continue
        for variant in {w, w.lower(), w.capitalize(), w.upper()}:
            for text in (variant, " " + variant, "\n" + variant):
                ids = tokenizer(text, add_special_tokens=False)["input_ids"]
                if text.startswith("\n") and len(ids) > 1:
                    ids = ids[1:] if tokenizer.decode(ids[:1]).strip() == "" else ids
                if not ids:
                    continue
                piece = tokenizer.decode(ids[:1]).strip()
                letters = sum(c.isalpha() for c in piece)
                whole = len(ids) == 1 and letters >= 2
                most = (letters >= max(3, min_cover * sum(c.isalpha() for c in variant))
                        and variant.lower().startswith(piece.lower()))
                if whole or most:
                    found.add(int(ids[0]))
    return found


class TokenPenalty:
    """Subtract `penalty` from the logits of fixed tokens (math.inf bans them).

    As the overthinking damper it is used during the thinking phase only: TIP-style soft penalties
    (about 3) shorten chains while keeping the text fluent; NoWait-style bans (inf) cut the markers.
    """

    def __init__(self, token_ids: set[int] | Sequence[int], penalty: float):
        if penalty < 0:
            raise ValueError(f"penalty must be >= 0, got {penalty}")
        self.token_ids = sorted({int(i) for i in token_ids})
        self.penalty = float(penalty)
        self._index: torch.Tensor | None = None

    @classmethod
    def overthinking(cls, tokenizer: Tokenizer, penalty: float, words: Sequence[str] = OVERTHINK_WORDS) -> TokenPenalty:
        return cls(word_token_ids(tokenizer, words), penalty)

    def __call__(self, ids: list[int], scores: torch.Tensor) -> torch.Tensor:
        if not self.token_ids or self.penalty == 0:
            return scores
        if self._index is None or self._index.device != scores.device:
            self._index = torch.tensor([i for i in self.token_ids if i < scores.shape[-1]], dtype=torch.long,
                                       device=scores.device)
        out = scores.clone()
        if math.isinf(self.penalty):
            out[..., self._index] = -math.inf
        else:
            out[..., self._index] -= self.penalty
        return out


def repetition_penalty(ids: list[int], scores: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's penalty, as transformers applies it: positive logits of seen tokens divided, negative multiplied.

    Small models loop ("a type of a type of ..."); a mild penalty (1.1-1.3) breaks the loop."""
    if penalty <= 0:
        raise ValueError(f"repetition penalty must be > 0, got {penalty}")
    seen = torch.tensor(sorted(set(ids)), dtype=torch.long, device=scores.device)
    picked = scores[seen]
    out = scores.clone()
    out[seen] = torch.where(picked > 0, picked / penalty, picked * penalty)
    return out


def _choose(scores: torch.Tensor, config: GenerationConfig, gen: torch.Generator) -> tuple[int, float]:
    logp = torch.log_softmax(scores, dim=-1)
    if config.temperature <= 0:
        i = int(torch.argmax(scores))
        return i, float(logp[i])
    probs = torch.softmax(scores / config.temperature, dim=-1)
    if config.top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_p, 0) - sorted_p < config.top_p
        probs = torch.zeros_like(probs).scatter_(0, order[keep], sorted_p[keep])
        probs /= probs.sum()
    i = int(torch.multinomial(probs.cpu(), 1, generator=gen))
    return i, float(logp[i])


def banned_ngram_tokens(ids: list[int], n: int) -> set[int]:
    """Tokens that would complete an n-gram already in `ids` (transformers' `no_repeat_ngram_size` rule)."""
    if n < 1 or len(ids) < n:
        return set()
    prefix = tuple(ids[len(ids) - n + 1:]) if n > 1 else ()
    return {ids[i + n - 1] for i in range(len(ids) - n + 1) if tuple(ids[i:i + n - 1]) == prefix}


def no_repeat_ngram(ids: list[int], scores: torch.Tensor, n: int) -> torch.Tensor:
    """`scores` with every token that would repeat an n-gram of `ids` set to -inf: a 135M model's loops
    ("a type of a type of …", "1.1.1.1…") cannot start again."""
    banned = banned_ngram_tokens(ids, n)
    if not banned:
        return scores
    out = scores.clone()
    out[torch.tensor(sorted(banned), dtype=torch.long, device=scores.device)] = -float("inf")
    return out


def _hits_stop(tok: Any, ids: list[int], stops: tuple[str, ...]) -> bool:
    longest = max(len(s) for s in stops)
    tail = tok.decode(ids[-(longest + 4):], skip_special_tokens=False)
    return any(s in tail for s in stops)
