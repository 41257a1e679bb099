"""The `choice` answer format: multiple choice that always yields one of the option letters.

Free generation (the default, as lmms-eval's generate-until video tasks) can answer with no letter at all;
`answer_format="choice"` constrains the first answer token to the option letters' tokens instead, so the
answer is the letter whose token the model ranks highest (lmms-eval's loglikelihood tasks rank options the
same way, by the model's own scores). A backbone that scores options itself (`choice_scorer`, videollm-mini)
keeps doing so; its scores are then constrained the same way.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from ..errors import InvalidRequestError
from ..protocols import FirstStep, Tokenizer
from . import ANSWER_FORMATS  # defined in the package, torch-free, for the CLI

NEG_INF = -math.inf


def check_answer_format(answer_format: str, options: Sequence[str] | None) -> None:
    """Refuse an unknown format, or `choice` without options, before any model work."""
    if answer_format not in ANSWER_FORMATS:
        raise InvalidRequestError(f"answer format must be one of {', '.join(ANSWER_FORMATS)}, got {answer_format!r}")
    if answer_format == "choice" and not options:
        raise InvalidRequestError("answer format 'choice' needs the options of a multiple-choice question")


def letter_token_ids(tokenizer: Tokenizer, letters: Sequence[str]) -> dict[int, str]:
    """Single-token spellings of each letter (`A`, ` A`), asked of the tokenizer: token id → letter."""
    found: dict[int, str] = {}
    for letter in letters:
        for text in (letter, " " + letter):
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(ids) == 1:
                found.setdefault(int(ids[0]), letter)
    return found


class LetterConstraint:
    """A first-step hook that leaves only the option letters' tokens possible.

    Wraps an optional inner hook (a backbone's own option scorer) and masks what it returns, so the choice is
    a letter whatever the inner hook or the weights produce (NaN scores count as impossible).
    """

    def __init__(self, tokenizer: Tokenizer, letters: Sequence[str], inner: FirstStep | None = None):
        self.token_letter = letter_token_ids(tokenizer, letters)
        missing = sorted(set(letters) - set(self.token_letter.values()))
        if missing:
            raise InvalidRequestError(f"the tokenizer has no single token for option letter(s) {', '.join(missing)}; "
                                      "use answer format 'free'")
        self.ids = torch.tensor(sorted(self.token_letter), dtype=torch.long)
        self.inner = inner

    def __call__(self, logits: torch.Tensor, cache: Any) -> torch.Tensor:
        if self.inner is not None:
            logits = self.inner(logits, cache)
        ids = self.ids.to(logits.device)
        keep = torch.nan_to_num(logits[..., ids].float(), nan=NEG_INF, posinf=torch.finfo(torch.float32).max)
        if bool(torch.isinf(keep).all()):  # nothing usable (a broken model): fall back to uniform letters
            keep = torch.zeros_like(keep)
        out = torch.full(logits.shape, NEG_INF, dtype=torch.float32, device=logits.device)
        out[..., ids] = keep
        return out


__all__ = ["ANSWER_FORMATS", "LetterConstraint", "check_answer_format", "letter_token_ids"]
