"""How many visual tokens a question can afford, decided before a single frame is decoded.

Without a budget, an hour of frames used to be encoded for minutes and only then refused for overflowing the
LLM's context. The context is known up front: it holds the rendered prompt, the visual tokens, any per-frame
text the backbone interleaves (timestamps, labels) and the tokens the answer may generate. What is left is the
visual budget, and every compressor reduces to it.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Protocol

from .errors import InvalidRequestError

#: the most visual tokens any request may ask for (a model's context is the tighter limit when known)
MAX_BUDGET = 1_000_000


def budget_limit(max_context: int | None = None) -> int:
    """The largest budget a request may give: `MAX_BUDGET`, or less than the model's context when known."""
    return MAX_BUDGET if max_context is None else max(1, min(MAX_BUDGET, int(max_context) - 1))


def check_budget(budget: object, max_context: int | None = None) -> int | None:
    """The one check of a requested visual budget (CLI, Python API, server JSON, eval, demo), with one message.

    Called where a request is formed, before any model loads; what comes after trusts the value. `None` asks
    for all that fits the context (`fit_budget`). `max_context` is the model's context when it is known.
    """
    if budget is None:
        return None
    limit = budget_limit(max_context)
    if isinstance(budget, bool) or not isinstance(budget, numbers.Integral) or not 1 <= budget <= limit:
        context = "" if max_context is None else f", less than the model's context of {int(max_context)} tokens"
        raise InvalidRequestError(f"budget must be a whole number of visual tokens from 1 to {limit}{context}, "
                                  f"got {budget!r}")
    return int(budget)


class _Tokenizer(Protocol):
    def __call__(self, text: str, add_special_tokens: bool = ...) -> dict[str, list[int]]: ...


class ContextModel(Protocol):
    """What the budget needs to know about a backbone."""

    tokenizer: _Tokenizer

    @property
    def max_context(self) -> int: ...

    def render_prompt(self, user_text: str, system: str | None = None) -> str: ...


@dataclass(frozen=True)
class ContextPlan:
    """The split of the model's context for one question."""

    max_context: int
    prompt_tokens: int
    frame_text_tokens: int
    generation_tokens: int

    @property
    def visual_budget(self) -> int:
        return self.max_context - self.prompt_tokens - self.frame_text_tokens - self.generation_tokens


def plan_context(backbone: ContextModel, user_text: str, system: str | None, num_frames: int,
                 generation_tokens: int, text_tokens_per_frame: int = 0) -> ContextPlan:
    prompt = backbone.render_prompt(user_text, system)
    prompt_tokens = len(backbone.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    return ContextPlan(int(backbone.max_context), prompt_tokens, num_frames * text_tokens_per_frame,
                       int(generation_tokens))


def fit_budget(plan: ContextPlan, requested: int | None) -> int:
    """The visual budget to use: the requested one if it fits, else an error; none requested → all that fits."""
    room = plan.visual_budget
    if room < 1:
        raise InvalidRequestError(
            f"the question and the answer allowance ({plan.prompt_tokens} + {plan.generation_tokens} tokens) leave "
            f"no room for visual tokens in the model's context of {plan.max_context}; shorten the question or "
            f"lower --max-new-tokens")
    if requested is None:
        return room
    if requested > room:
        raise InvalidRequestError(
            f"--budget {requested} does not fit: the model's context of {plan.max_context} tokens leaves "
            f"{room} for visual tokens after the prompt ({plan.prompt_tokens}), per-frame text "
            f"({plan.frame_text_tokens}) and the answer allowance ({plan.generation_tokens}); lower --budget")
    return requested
