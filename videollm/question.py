"""A question and its options → the user turn: pure functions on the base floor, so every part (backbones
included) shapes a question the same way. Parsing an answer back is `answer.prompting`'s job."""
from __future__ import annotations

import re
import string

from .errors import InvalidRequestError

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
