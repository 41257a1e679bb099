"""Let what the frames show decide a multiple-choice letter, in every reasoning mode.

A backbone that can tell which options its kept frames show (`SupportsOptionSupport`, e.g. videollm-mini,
whose classifier's classes are matched to the options through WordNet) gets the last word when the frames
are unambiguous: exactly one option shown → that option, whatever a 135M LLM wrote; no option shown → the
answer stands but its warnings say it is a guess. Several shown → the mode's own answer stands.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..protocols import SupportsOptionSupport
from ..question import Question

if TYPE_CHECKING:
    from ..types import VisualTokens
    from .reasoning import ReasoningOutcome

logger = logging.getLogger(__name__)
NONE_SEEN = ("none of the options was recognised in the kept frames, so the answer is a guess (the frames "
             "showed: {seen})")
#: a free-form answer the LLM ended before its first word (SmolLM2-135M sometimes writes only end-of-turn)
EMPTY_ANSWER = "the model wrote no answer; the text says what the kept frames showed instead"


def apply_option_support(backbone: object, outcome: ReasoningOutcome, question: Question,
                         visual: VisualTokens) -> ReasoningOutcome:
    """The outcome, with its letter decided by the evidence when exactly one option is shown, and a warning
    (in `extra["warnings"]`) when none is. The options are `question.options`, as data. A free-form answer left
    empty says what the frames showed instead (`fill_empty_answer`)."""
    if not isinstance(backbone, SupportsOptionSupport):
        return outcome
    if not question.is_choice:
        return fill_empty_answer(backbone, outcome, visual)
    letters = question.letters
    found = backbone.option_support(list(question.options), visual)
    outcome.extra["option_support"] = {letter: {"shown": s, "when": w, "seen_as": n}
                                       for letter, s, w, n in zip(letters, found.supported, found.when,
                                                                  found.seen_as)}
    i = found.decisive
    if i is not None:
        if outcome.choice != letters[i]:
            logger.info("evidence decides: %s (shown at %.1fs) instead of %s", letters[i], found.when[i] or 0.0,
                        outcome.choice)
            outcome.extra["evidence_override"] = {"model_choice": outcome.choice, "choice": letters[i]}
            outcome.choice = letters[i]
            outcome.text = letters[i]
    elif not any(found.supported):
        outcome.extra.setdefault("warnings", []).append(NONE_SEEN.format(seen=backbone.seen_summary(visual)))
    return outcome


def fill_empty_answer(backbone: SupportsOptionSupport, outcome: ReasoningOutcome, visual: VisualTokens
                      ) -> ReasoningOutcome:
    """A free-form answer with no text becomes what the kept frames showed ("The frames show: …"), with a
    warning: an empty line is no answer, and the frames' classes are what a tiny LLM would have named."""
    if outcome.text.strip():
        return outcome
    outcome.text = f"The frames show: {backbone.seen_summary(visual)}."
    outcome.extra.setdefault("warnings", []).append(EMPTY_ANSWER)
    return outcome
