"""Question formatting and answer parsing: pure functions, tested on real-world output shapes."""
from __future__ import annotations

import re
import string

from ..errors import InvalidRequestError

MC_INSTRUCTION = "Answer with the option's letter from the given choices directly."
MAX_QUESTION_CHARS = 20_000
MAX_OPTIONS = 26

_LEAD = re.compile(r"^\s*\(?([A-Za-z])[\.\):：]\s*")


def check_text(text: str, what: str) -> None:
    """Refuse text a tokenizer cannot encode: lone surrogates, which is what Python makes of invalid UTF-8
    bytes on a command line (surrogateescape) or what a JSON `\\ud800` escape gives."""
    for i, ch in enumerate(text):
        if "\ud800" <= ch <= "\udfff":
            raw = 0xFFFF & ord(ch)
            why = (f"invalid UTF-8 byte 0x{raw - 0xDC00:02x}" if 0xDC80 <= raw <= 0xDCFF
                   else f"a lone surrogate U+{raw:04X}")
            raise InvalidRequestError(f"{what} is not valid text: {why} at character {i + 1} (use UTF-8)")


def normalize_options(options: list[str] | None) -> list[str] | None:
    """Give every option a letter label ("A. text"), keeping labels the user already wrote."""
    if isinstance(options, (str, bytes)):
        raise InvalidRequestError("options must be a list of strings (one per option), not one string")
    if not options:
        return None
    if not isinstance(options, (list, tuple)):
        raise InvalidRequestError(f"options must be a list of strings, got {type(options).__name__}")
    if len(options) > MAX_OPTIONS:
        raise InvalidRequestError(f"at most {MAX_OPTIONS} options are supported, got {len(options)}")
    out = []
    for i, opt in enumerate(options):
        if not isinstance(opt, str):
            raise InvalidRequestError(f"option {i + 1} must be a string, got {type(opt).__name__}")
        check_text(opt, f"option {i + 1}")
        text = opt.strip()
        if not text:
            raise InvalidRequestError(f"option {i + 1} is empty")
        letter = string.ascii_uppercase[i]
        m = _LEAD.match(text)
        body = text[m.end():] if m and m.group(1).upper() == letter else text
        out.append(f"{letter}. {body}")
    return out


def option_texts(options: list[str] | None) -> list[str]:
    """The options' texts without their letters, in letter order (what choice scoring receives)."""
    return [_LEAD.sub("", o, count=1).strip() for o in normalize_options(options) or []]


def option_letters(options: list[str] | None) -> list[str]:
    return list(string.ascii_uppercase[: len(options or [])])


def format_question(question: str, options: list[str] | None = None) -> str:
    """The user turn: question, then lettered options and the lmms-eval style instruction."""
    if question is not None and not isinstance(question, str):
        raise InvalidRequestError(f"the question must be a string, got {type(question).__name__}")
    check_text(question or "", "the question")
    q = (question or "").strip()
    if not q:
        raise InvalidRequestError("the question is empty")
    if len(q) > MAX_QUESTION_CHARS:
        raise InvalidRequestError(f"the question is {len(q)} characters; at most {MAX_QUESTION_CHARS} are supported")
    opts = normalize_options(options)
    if not opts:
        return q
    return q + "\n" + "\n".join(opts) + "\n" + MC_INSTRUCTION


_ANSWER_PHRASES = re.compile(
    r"(?:final answer|correct answer|best answer|the answer|answer|option|choice|best option)\s*(?:is|:|would be|=)?\s*"
    r"[:\-]?\s*\(?\**([A-Z])\**\)?(?![A-Za-z])", re.IGNORECASE)
# a letter alone, or a letter then ".", ")" or ":" and text; "\boxed{a dog}" is an option's text, not "A"
_BOXED = re.compile(r"\\boxed\{\s*\(?([A-Za-z])\)?\s*(?:[\.:\)]\s*[^{}]*)?\}")


def parse_choice(text: str, options: list[str] | None) -> str | None:
    """The option letter a generation commits to, or None.

    Order of trust: a \\boxed{X} (last one), an explicit answer phrase ("The answer is (B)"), a leading
    letter ("B", "(B)", "B. cat"), the full text of exactly one option, then a lone letter anywhere.
    """
    letters = option_letters(options)
    if not letters or not text:
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
    bodies = [b.lower() for b in option_texts(options)]
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
