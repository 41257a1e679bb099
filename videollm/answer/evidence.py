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
from ..question import option_letters, option_texts

if TYPE_CHECKING:
    from ..types import VisualTokens
    from .reasoning import ReasoningOutcome

logger = logging.getLogger(__name__)
NONE_SEEN = ("none of the options was recognised in the kept frames, so the answer is a guess (the frames "
             "showed: {seen})")


def apply_option_support(backbone: object, outcome: ReasoningOutcome, options: list[str] | None,
                         visual: VisualTokens) -> ReasoningOutcome:
    """The outcome, with its letter decided by the evidence when exactly one option is shown, and a warning
    (in `extra["warnings"]`) when none is. `options` are lettered ("A. a cat")."""
    if not options or not isinstance(backbone, SupportsOptionSupport):
        return outcome
    texts, letters = option_texts(options), option_letters(options)
    found = backbone.option_support(texts, visual)
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
