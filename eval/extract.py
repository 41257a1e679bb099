"""Answer extraction: which option letter a model output commits to, by the rules lmms-eval used.

Scores are only comparable across papers when the same output is parsed the same way, and lmms-eval
changed its parser in April 2026 (v0.7.2). Every rule is therefore kept under a versioned name, the
default is the current one, and the run summary records which one scored it.

Two steps, both pure functions:
1. `videollm.answer.reasoning_format.answer_candidates` lists the parts of the output that may hold the *final*
   answer, most trusted first (the same list the reasoning modes read): a think-then-review output
   (``\\boxed{B}<think>...</think>\\boxed{C}``) holds two answers, and only the last one counts.
2. an extractor maps a part to a letter ("" when none), exactly as the named lmms-eval version did; the
   first part it reads a letter from wins. The last part is lmms-eval's own input (the output with its
   reasoning blocks stripped), so no answer lmms-eval would find is dropped. docs/eval.md lists where the
   two still differ, and why.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from videollm.answer.reasoning_format import REASONING_TAGS, answer_candidates, find_boxes, strip_reasoning_tags

__all__ = ["DEFAULT_CHOICES", "EXTRACTORS", "REASONING_TAGS", "boxed_contents", "extract_choice",
           "extract_mcq_v2026", "extract_paren_v2024", "extract_regex_v2024", "final_answer_text",
           "get_extractor", "strip_reasoning_tags"]

DEFAULT_CHOICES = ("A", "B", "C", "D")  # what all three lmms-eval tasks pass, whatever the option count

def boxed_contents(text: str) -> list[str]:
    """Contents of every closed ``\\boxed{...}`` in order, allowing nested braces."""
    return [b.content for b in find_boxes(text) if b.closed]


def final_answer_text(text: str) -> str:
    """The part of an output that states the final answer: the first of `answer_candidates` (the rule the
    reasoning modes use). After the last ``</think>`` (its last box, else its text); else a box inside the
    thought; else before ``<think>`` (its last box, else its text: ``C<think>…</think>`` → ``C``); plain
    direct answers pass through stripped. "" when the output states nothing."""
    cands = answer_candidates(text or "")
    return cands[0].text if cands else ""


# --- lmms-eval >= v0.7.2 (2026-04-11, PR #1276 + #1274, phrases from 7a69a9a1): extract_mcq_answer ---------
_PHRASES = (
    "the answer is", "answer is", "the correct answer is", "correct answer is", "the best answer is",
    "best answer is", "the correct option is", "correct option is", "the best option is", "best option is",
    "the choice is", "choice is", "the correct choice is", "correct choice is", "i choose", "i select", "i pick",
    "my answer is", "my choice is", "옵션", "정답은", "답은", "답:", "答案是", "答案为", "选", "答えは",
)
_PRIORITY = {"start": 10, "end": 9, "phrase": 7, "parentheses": 6, "period": 5, "colon": 4, "right_paren": 3,
             "space": 2, "fallback": 0}


def extract_mcq_v2026(response: str, choices: Sequence[str] = DEFAULT_CHOICES) -> str:
    """lmms-eval's current multiple-choice parser: rank letter candidates by format, then by position.

    Reproduced with its quirks (e.g. "The answer is B. Cats and Dogs" -> "D": every letter after an
    answer phrase is a candidate and the latest wins), because parity matters more than taste here.
    """
    if not response or not response.strip():
        return ""
    text = response.strip()
    for ch in (",", ".", "!", "?", ";", ":", "'", '"'):
        text = text.strip(ch)
    text = f" {text} "
    cands: list[tuple[str, int, str]] = []
    for fmt, pattern in (("parentheses", "({})"), ("period", "{}."), ("colon", "{}:"), ("right_paren", "{})"),
                         ("space", "{} ")):
        for ch in choices:
            needle = pattern.format(ch)
            if needle in text:
                cands.append((ch, text.rfind(needle), fmt))
    low = text.lower()
    for phrase in _PHRASES:
        idx = low.find(phrase)
        if idx != -1:
            for ch in choices:
                pos = text.find(ch, idx + len(phrase))
                if pos != -1:
                    cands.append((ch, pos, "phrase"))
    stripped = text.strip()
    for ch in choices:
        if stripped.startswith(ch) and (len(stripped) == 1 or not stripped[1].isalpha()):
            cands.append((ch, 0, "start"))
        if stripped.endswith(ch) and (len(stripped) == 1 or not stripped[-2].isalpha()):
            cands.append((ch, len(text) - 1, "end"))
    if not cands:
        cands = [(ch, text.rfind(ch), "fallback") for ch in choices if ch in text]
    if not cands:
        return ""
    cands.sort(key=lambda c: (_PRIORITY[c[2]], c[1]), reverse=True)
    return cands[0][0]


# --- lmms-eval <= v0.7.1: VideoMME (2024-06 on) and LVBench (2025-09 on) `extract_characters_regex` -------
# Upstream lost two commas, so two entries are concatenations; kept so legacy scores reproduce exactly.
_LEGACY_PREFIXES = ("The best answer is", "The correct answer is", "The answer is", "The answer",
                    "The best option isThe correct option is", "Best answer:Best option:")


def extract_regex_v2024(response: str, choices: Sequence[str] = DEFAULT_CHOICES) -> str:
    """The first uppercase A-D anywhere after removing a few answer phrases (case-sensitive)."""
    s = (response or "").strip()
    for prefix in _LEGACY_PREFIXES:
        s = s.replace(prefix, "")
    klass = "[" + "".join(re.escape(c) for c in choices) + "]"
    if len(s.split()) > 10 and not re.search(klass, s):
        return ""
    m = re.search(klass, s)
    return m[0] if m else ""


# --- lmms-eval <= v0.7.1: MLVU (2024-07 to 2024-10 and 2025-03 to 2026-04) ------------------------------
def extract_paren_v2024(response: str, choices: Sequence[str] = DEFAULT_CHOICES) -> str:
    """The character before the first ')', else the whole stripped text (compared verbatim upstream).

    Fits the MLVU prompt, which ends in "Best option: (", so a model typically answers "B)" or "B".
    """
    s = (response or "").strip()
    if ")" in s:
        i = s.index(")")
        return s[i - 1:i]
    return s


Extractor = Callable[..., str]
EXTRACTORS: dict[str, Extractor] = {
    "mcq-v2026": extract_mcq_v2026,
    "regex-v2024": extract_regex_v2024,
    "paren-v2024": extract_paren_v2024,
}


def get_extractor(name: str) -> Extractor:
    if name not in EXTRACTORS:
        from videollm.errors import InvalidRequestError

        raise InvalidRequestError(f"unknown extractor {name!r}; choose from {', '.join(EXTRACTORS)}")
    return EXTRACTORS[name]


def extract_choice(text: str, extractor: str = "mcq-v2026", choices: Sequence[str] = DEFAULT_CHOICES,
                   final_only: bool = True) -> str:
    """The letter a (possibly think-then-review) output commits to, by the named rule; "" if none.

    The extractor reads the answer candidates in order and the first letter it finds wins; when none gives a
    letter, its reading of the first candidate is returned (a legacy MLVU parse may be a non-letter string,
    which scores wrong, as upstream).
    """
    ex = get_extractor(extractor)
    if not final_only:
        return ex(text or "", choices)
    first: str | None = None
    for cand in answer_candidates(text or ""):
        got = ex(cand.text, choices)
        if got in choices:
            return got
        first = got if first is None else first
    return first if first is not None else ex("", choices)
