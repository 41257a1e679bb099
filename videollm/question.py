"""A question and its options → the user turn: built once, on the base floor, so every part (backbones
included) reads the same `Question`. Parsing an answer back is `answer.prompting`'s job.

`Question` holds the question, the options' texts as data (no letters), their letters and the rendered user
turn; scorers read the options from it and never parse the rendered text back (an option may hold a newline
or "B." and still be one option).
"""
from __future__ import annotations

import re
import string
from collections.abc import Sequence
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Question:
    """One multiple-choice or open question, as every stage after the request reads it.

    `text` is the question as asked (what a compressor reads as its query, and what decides mini's evidence
    shape), `options` the options' texts without letters (in letter order, empty for an open question),
    `user_text` the user turn the LLM reads (`format_question`'s, or a benchmark's own wording passed as
    `prompt=`). Built by `make_question`, which checks everything once.
    """

    text: str
    options: tuple[str, ...] = ()
    user_text: str = ""

    @property
    def letters(self) -> tuple[str, ...]:
        return _letters(len(self.options))

    @property
    def lettered(self) -> list[str] | None:
        """The options as shown to the model ("A. a cat"), None for an open question."""
        return _lettered(self.options)

    @property
    def is_choice(self) -> bool:
        return bool(self.options)


def make_question(question: str | Question, options: list[str] | None = None, prompt: str | None = None
                  ) -> Question:
    """The one place a question is checked and shaped: text, options (labels the user wrote are kept as the
    letter, as `normalize_options`), and the user turn. `prompt`, when given, is the exact user turn (options
    then only say which letters are valid). A `Question` passes through unchanged."""
    if isinstance(question, Question):
        if options is not None or prompt is not None:
            raise InvalidRequestError("a Question already holds its options and user turn; give them there")
        return question
    bodies = _option_bodies(options)
    if prompt is not None:
        if not isinstance(prompt, str) or not prompt.strip():
            raise InvalidRequestError("the prompt is empty")
        check_text(prompt, "the prompt")
        user_text = prompt
    else:
        user_text = format_question(question, options)
    return Question(text=question if isinstance(question, str) else "", options=tuple(bodies), user_text=user_text)


def _option_bodies(options: list[str] | None) -> list[str]:
    """Each option's text without the letter label the user may have written for its own position."""
    if isinstance(options, (str, bytes)):
        raise InvalidRequestError("options must be a list of strings (one per option), not one string")
    if not options:
        return []
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
        out.append(text[m.end():] if m and m.group(1).upper() == letter else text)
    return out


def choices_of(options: Question | Sequence[str] | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(letters, option texts) of a `Question` as built, or of user-given options (eval's dataset options)."""
    if isinstance(options, Question):
        return options.letters, options.options
    bodies = tuple(_option_bodies(list(options) if options else None))
    return _letters(len(bodies)), bodies


def _letters(n: int) -> tuple[str, ...]:
    return tuple(string.ascii_uppercase[:n])


def _lettered(bodies: Sequence[str]) -> list[str] | None:
    """Option texts with their letter labels ("A. text"); None when there are none."""
    return [f"{letter}. {body}" for letter, body in zip(_letters(len(bodies)), bodies)] or None


def normalize_options(options: list[str] | None) -> list[str] | None:
    """Give every option a letter label ("A. text"), keeping labels the user already wrote."""
    return _lettered(_option_bodies(options))


def option_texts(options: list[str] | None) -> list[str]:
    """The options' texts without their letters, in letter order (`Question.options` for a built question)."""
    return _option_bodies(options)


def option_letters(options: list[str] | None) -> list[str]:
    return list(_letters(len(options or [])))


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
