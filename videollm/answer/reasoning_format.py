"""VideoAuto-R1's output format, as pure functions: the prompt text, boxes, think tags, answer spans.

The format is `\\boxed{a1}<think>...</think>\\boxed{a2}`; a first box that reads "Let's analyze the problem
step by step." defers to the reasoning. Everything here is string work with no model, so the many shapes real
models produce (extra whitespace, lowercase letters, options echoed back, missing or unclosed tags) are
tested exhaustively, and the controller in `reasoning.py` only moves tensors.
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from .prompting import MC_INSTRUCTION, normalize_options, option_letters, parse_choice

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
DEFER_TEXT = "Let's analyze the problem step by step."
BOX_INSTRUCTION = "Put your final answer in \\boxed{}."
BOX_PREFIX = "\\boxed{"

#: the released evaluation prompt (IVUL-KAUST/VideoAuto-R1, lmms_eval/models/simple/qwen*_vl_autothink.py)
R1_FORMAT_INSTRUCTIONS = (
    "FIRST: Output your initial answer inside the first \\boxed{...} without any analysis or explanations. "
    "If you cannot determine the answer without reasoning, output \\boxed{Let's analyze the problem step by step.} "
    "instead.\n"
    "THEN: Think through the reasoning as an internal monologue enclosed within <think>...</think>.\n"
    "AT LAST: Output the final answer again inside \\boxed{...}. If you believe the previous answer was correct, "
    "repeat it; otherwise, correct it.\n"
    "Output format: \\boxed{...}<think>...</think>\\boxed{...}\n"
)
DEFAULT_SYSTEM = "You are a helpful assistant."


def r1_system_prompt(base: str | None = None) -> str:
    """The VideoAuto-R1 system prompt; a user's own system text replaces only its first line."""
    return (base or DEFAULT_SYSTEM).rstrip("\n") + "\n" + R1_FORMAT_INSTRUCTIONS


def r1_user_text(user_text: str) -> str:
    """Swap the direct-answer instruction for the boxed one (the lmms-eval `*_boxed` tasks' suffix)."""
    text = user_text.rstrip()
    if text.endswith(MC_INSTRUCTION):
        text = text[: -len(MC_INSTRUCTION)].rstrip()
    if BOX_INSTRUCTION in text:
        return text
    return text + "\n" + BOX_INSTRUCTION


# ---- boxes -------------------------------------------------------------------------------------------
# "\boxed{", "\\boxed{" (escaped), "\boxed {" and a bare "boxed{" all open a box
_BOX_OPEN = re.compile(r"\\*boxed\s*\{")


@dataclass(frozen=True)
class Box:
    content: str
    start: int  # character span of the content in the text it was found in
    end: int
    closed: bool  # False when the text ends inside the box (a cut-off generation)


def find_boxes(text: str) -> list[Box]:
    """Every `\\boxed{...}` in order, with nested braces balanced (`\\boxed{\\text{B}}`)."""
    boxes: list[Box] = []
    pos = 0
    while True:
        m = _BOX_OPEN.search(text, pos)
        if m is None:
            return boxes
        depth, i = 1, m.end()
        while i < len(text) and depth:
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
            i += 1
        if depth:
            boxes.append(Box(text[m.end():], m.end(), len(text), closed=False))
            return boxes
        boxes.append(Box(text[m.end(): i - 1], m.end(), i - 1, closed=True))
        pos = i


def first_box(text: str) -> Box | None:
    boxes = find_boxes(text)
    return boxes[0] if boxes else None


def last_box(text: str, closed_only: bool = True) -> Box | None:
    boxes = [b for b in find_boxes(text) if b.closed or not closed_only]
    return boxes[-1] if boxes else None


def is_deferral(content: str) -> bool:
    """The first box that hands over to reasoning (the released code tests `startswith("Let's analyze")`)."""
    c = content.strip().replace("\u2019", "'").lower()
    return c.startswith(("let's analyze", "let us analyze", "let's think"))


# ---- answers -----------------------------------------------------------------------------------------
_WRAPPERS = re.compile(r"\\(?:text|textbf|mathrm|mathbf)\{([^{}]*)\}")
_LETTER_ONLY = re.compile(r"^\s*[\(\[]?\s*([A-Za-z])\s*[\)\]]?\s*[\.\):]?\s*$")
_LETTER_LEAD = re.compile(r"^\s*(?:option\s+)?[\(\[]?([A-Z])(?:[\)\]\.:]|\s*$|\s+[-–:]?)", re.IGNORECASE)


@dataclass(frozen=True)
class ParsedAnswer:
    text: str  # the answer as the user should read it: the bare letter for multiple choice
    choice: str | None  # option letter, None for free-form or when no option was recognised
    span: tuple[int, int]  # the characters of `text`'s source that carry the answer (for its confidence)


def clean_content(content: str) -> str:
    """Drop LaTeX wrappers and markdown emphasis around an answer: `\\text{B}` → `B`, `**B**` → `B`."""
    c = content
    for _ in range(3):
        c2 = _WRAPPERS.sub(r"\1", c)
        if c2 == c:
            break
        c = c2
    return c.replace("**", "").replace("$", "").strip()


def parse_box_answer(box: Box, source: str, options: Sequence[str] | None) -> ParsedAnswer:
    """A box's answer, with the span of its key characters in `source` (the letter alone for MC).

    The released code normalises `(A)`, `A.`, `A)`, `A:` to `A` before locating the tokens it scores, so
    the confidence of "(A)" is the letter's own probability.
    """
    raw = source[box.start: box.end]
    lead = len(raw) - len(raw.lstrip())
    stripped = (box.start + lead, box.start + len(raw.rstrip()))
    if not options:
        return ParsedAnswer(clean_content(raw), None, stripped if stripped[1] > stripped[0] else (box.start, box.end))
    letters = option_letters(list(options))
    choice = choice_from_content(raw, options)
    if choice is None:
        return ParsedAnswer(clean_content(raw), None, stripped)
    # the letter's own character, when the content spells it out
    for m in re.finditer(r"(?<![A-Za-z])([A-Za-z])(?![A-Za-z])", raw):
        if m.group(1).upper() == choice and choice in letters:
            return ParsedAnswer(choice, choice, (box.start + m.start(1), box.start + m.end(1)))
    return ParsedAnswer(choice, choice, stripped)  # the option's text was written instead of its letter


def choice_from_content(content: str, options: Sequence[str] | None) -> str | None:
    """The option letter a box's content names: `B`, `(b)`, `B. a dog`, `\\text{B}`, `a dog`, `Option B`."""
    if not options:
        return None
    letters = option_letters(list(options))
    c = clean_content(content)
    m = _LETTER_ONLY.match(c)
    if m and m.group(1).upper() in letters:
        return m.group(1).upper()
    bodies = [re.sub(r"^\s*\(?[A-Za-z][\.\):]\s*", "", o, count=1).strip().lower() for o in normalize_options(
        list(options)) or []]
    low = c.lower().rstrip(".").strip()
    exact = [letters[i] for i, b in enumerate(bodies) if b and b == low]
    if len(exact) == 1:
        return exact[0]
    m = _LETTER_LEAD.match(c)
    if m and m.group(1).upper() in letters and (m.group(1).isupper() or re.match(r"^\s*[\(\[]", c)
                                                 or re.match(r"^\s*option\s", c, re.IGNORECASE)):
        return m.group(1).upper()
    return parse_choice(c, list(options))


# ---- the whole output --------------------------------------------------------------------------------
@dataclass(frozen=True)
class R1Output:
    """A generation split along the format. Missing parts are None; flags say what the model closed."""

    initial: str  # text before <think> (the whole text when no tag opened)
    thought: str | None  # text inside <think>...</think> (to the end when never closed)
    final: str | None  # text after </think>
    think_opened: bool
    think_closed: bool


def split_r1(text: str) -> R1Output:
    if THINK_OPEN not in text:
        if THINK_CLOSE in text:  # a model that forgot the opening tag
            head, _, tail = text.partition(THINK_CLOSE)
            first = first_box(head)
            cut = first.end + 1 if first is not None and first.closed else 0
            return R1Output(head[:cut], head[cut:].strip() or None, tail, False, True)
        return R1Output(text, None, None, False, False)
    initial, _, rest = text.partition(THINK_OPEN)
    if THINK_CLOSE not in rest:
        return R1Output(initial, rest.strip(), None, True, False)
    thought, _, final = rest.partition(THINK_CLOSE)
    return R1Output(initial, thought.strip(), final, True, True)


def final_answer(final_text: str | None, thought: str | None, options: Sequence[str] | None
                 ) -> tuple[ParsedAnswer | None, str]:
    """The reviewed answer and where it came from: the last box after </think>, else that text's answer
    phrase, else the last box inside the thought; (None, "none") when nothing is there."""
    for source, name in ((final_text, "final_box"), (thought, "thought_box")):
        if not source:
            continue
        box = last_box(source, closed_only=False)
        if box is not None and box.content.strip() and not is_deferral(box.content):
            return parse_box_answer(box, source, options), name
        if name == "final_box" and source.strip():
            choice = parse_choice(source, list(options)) if options else None
            if choice is not None:
                return ParsedAnswer(choice, choice, (0, len(source))), "final_text"
            if not options and source.strip():
                return ParsedAnswer(source.strip(), None, (0, len(source))), "final_text"
    return None, "none"


# ---- confidence --------------------------------------------------------------------------------------
def span_token_indices(char_ends: Sequence[int], start: int, end: int) -> list[int]:
    """Indices of the tokens whose characters overlap [start, end). `char_ends[i]` is where token i ends."""
    out = []
    prev = 0
    for i, e in enumerate(char_ends):
        if e > start and prev < end and e > prev:
            out.append(i)
        prev = max(prev, e)
        if prev >= end:
            break
    return out


def geometric_mean_prob(logprobs: Sequence[float]) -> float | None:
    """exp(mean log p): VideoAuto-R1's confidence of an answer's tokens; None for an empty span."""
    if not logprobs:
        return None
    return float(math.exp(sum(logprobs) / len(logprobs)))


def letter_probability(letter_logprobs: dict[str, float], chosen: str) -> float | None:
    """Probability of `chosen` renormalised over the valid option letters only."""
    if chosen not in letter_logprobs:
        return None
    m = max(letter_logprobs.values())
    if m == -math.inf:
        return None
    z = sum(math.exp(v - m) for v in letter_logprobs.values())
    return float(math.exp(letter_logprobs[chosen] - m) / z)
