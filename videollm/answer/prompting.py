"""Answer parsing: which option letter a generation commits to. Pure functions, tested on real-world output
shapes; the question side is `videollm.question`."""
from __future__ import annotations

import re
from collections.abc import Sequence

from ..question import Question, choices_of

_ANSWER_PHRASES = re.compile(
    r"(?:final answer|correct answer|best answer|the answer|answer|option|choice|best option)\s*(?:is|:|would be|=)?\s*"
    r"[:\-]?\s*\(?\**([A-Z])\**\)?(?![A-Za-z])", re.IGNORECASE)
# a letter alone, or a letter then ".", ")" or ":" and text; "\boxed{a dog}" is an option's text, not "A"
_BOXED = re.compile(r"\\boxed\{\s*\(?([A-Za-z])\)?\s*(?:[\.:\)]\s*[^{}]*)?\}")


def parse_choice(text: str, options: Question | Sequence[str] | None) -> str | None:
    """The option letter a generation commits to, or None. `options`: the `Question`, or lettered options.

    Order of trust: a \\boxed{X} (last one), an explicit answer phrase ("The answer is (B)"), a leading
    letter ("B", "(B)", "B. cat"), the full text of exactly one option, then a lone letter anywhere.
    """
    if not text:
        return None
    letters, texts = choices_of(options)
    if not letters:
        return None
    valid = set(letters)
    t = text.strip()
    boxed = [m.group(1).upper() for m in _BOXED.finditer(t)]
    boxed = [b for b in boxed if b in valid]
    if boxed:
        return boxed[-1]
    phrases = [m.group(1).upper() for m in _ANSWER_PHRASES.finditer(t) if m.group(1).upper() in valid
               and not (m.group(1).islower() and re.match(r"\s+[A-Za-z]", t[m.end():]))]  # "is a dog"
    if phrases:
        return phrases[-1]
    bodies = [b.lower() for b in texts]
    exact = [letters[i] for i, b in enumerate(bodies) if b and b == t.lower().rstrip(".").strip()]
    if len(exact) == 1:  # "A dog" is option B's text, not option A
        return exact[0]
    m = re.match(r"^\W*\(?([A-Za-z])(?:\)|\.|:|,|\s|$)", t)
    if m and m.group(1).upper() in valid and (m.group(1).isupper() or len(t) <= 3):
        return m.group(1).upper()
    low = t.lower()
    hits = [letters[i] for i, b in enumerate(bodies) if b and b in low]
    if len(hits) == 1:
        return hits[0]
    lone = [c for c in re.findall(r"(?<![A-Za-z])([A-Z])(?![A-Za-z])", t) if c in valid]
    if len(set(lone)) == 1:
        return lone[0]
    return None
