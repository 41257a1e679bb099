"""VideoAuto-R1's output format, as pure functions: the prompt text, boxes, think tags, answer spans.

The format is `\\boxed{a1}<think>...</think>\\boxed{a2}`; a first box that reads "Let's analyze the problem
step by step." defers to the reasoning. Everything here is string work with no model, so the many shapes real
models produce (extra whitespace, lowercase letters, options echoed back, missing or unclosed tags) are
tested exhaustively, and the controller in `reasoning.py` only moves tensors.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..question import MC_INSTRUCTION, Question, choices_of
from .prompting import parse_choice

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


def parse_box_answer(box: Box, source: str, options: Question | Sequence[str] | None) -> ParsedAnswer:
    """A box's answer, with the span of its key characters in `source` (the letter alone for MC).

    The released code normalises `(A)`, `A.`, `A)`, `A:` to `A` before locating the tokens it scores, so
    the confidence of "(A)" is the letter's own probability.
    """
    raw = source[box.start: box.end]
    lead = len(raw) - len(raw.lstrip())
    stripped = (box.start + lead, box.start + len(raw.rstrip()))
    letters, _ = choices_of(options)
    if not letters:
        return ParsedAnswer(clean_content(raw), None, stripped if stripped[1] > stripped[0] else (box.start, box.end))
    choice = choice_from_content(raw, options)
    if choice is None:
        return ParsedAnswer(clean_content(raw), None, stripped)
    # the letter's own character, when the content spells it out
    for m in re.finditer(r"(?<![A-Za-z])([A-Za-z])(?![A-Za-z])", raw):
        if m.group(1).upper() == choice and choice in letters:
            return ParsedAnswer(choice, choice, (box.start + m.start(1), box.start + m.end(1)))
    return ParsedAnswer(choice, choice, stripped)  # the option's text was written instead of its letter


def choice_from_content(content: str, options: Question | Sequence[str] | None) -> str | None:
    """The option letter a box's content names: `B`, `(b)`, `B. a dog`, `\\text{B}`, `a dog`, `Option B`."""
    letters, texts = choices_of(options)
    if not letters:
        return None
    c = clean_content(content)
    m = _LETTER_ONLY.match(c)
    if m and m.group(1).upper() in letters:
        return m.group(1).upper()
    bodies = [t.lower() for t in texts]
    low = c.lower().rstrip(".").strip()
    exact = [letters[i] for i, b in enumerate(bodies) if b and b == low]
    if len(exact) == 1:
        return exact[0]
    m = _LETTER_LEAD.match(c)
    if m and m.group(1).upper() in letters and (m.group(1).isupper() or re.match(r"^\s*[\(\[]", c)
                                                 or re.match(r"^\s*option\s", c, re.IGNORECASE)):
        return m.group(1).upper()
    return parse_choice(c, options)


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


# ---- which part of an output states the final answer (one rule for the modes and for eval) -------------
#: reasoning blocks lmms-eval (>= v0.7) strips before scoring: its CLI default `--reasoning_tags`
REASONING_TAGS: tuple[tuple[str, str], ...] = ((THINK_OPEN, THINK_CLOSE), ("<analysis>", "</analysis>"))
#: where an answer may come from, most trusted first (see `answer_candidates`)
CANDIDATE_SOURCES = ("final_box", "final_text", "thought_box", "initial_box", "initial_text", "whole")


def strip_reasoning_tags(text: str, tag_pairs: Sequence[tuple[str, str]] = REASONING_TAGS) -> str:
    """lmms-eval's pre-step (`lmms_eval/api/reasoning.py`, v0.7.1 on): remove every closed start…end block;
    with only a closing tag left, keep what follows the last one; an unclosed opening tag passes through."""
    out = text
    for start_tag, end_tag in tag_pairs:
        while start_tag in out and end_tag in out:
            start = out.find(start_tag)
            end = out.find(end_tag, start)
            if end == -1:
                break
            out = out[:start] + out[end + len(end_tag):]
        if end_tag in out and start_tag not in out:
            out = out.rsplit(end_tag, 1)[-1]
    return out.strip()


@dataclass(frozen=True)
class AnswerCandidate:
    """A stretch of an output that may state the answer. `text` is a box's content or plain text; `box`
    (positions in the whole output) is set for box candidates; `start`/`end` locate `text` in the output
    (the "whole" candidate, lmms-eval's stripped text, is not one stretch: its span is the whole output)."""

    text: str
    source: str  # one of CANDIDATE_SOURCES
    start: int
    end: int
    box: Box | None = None


def _usable_boxes(text: str, offset: int) -> list[Box]:
    """Boxes that hold an answer (not empty, not a deferral), with positions shifted by `offset`."""
    return [Box(b.content, b.start + offset, b.end + offset, b.closed) for b in find_boxes(text)
            if b.content.strip() and not is_deferral(b.content)]


def _has_words(text: str) -> bool:
    return any(ch.isalnum() for ch in text)


def _regions(output: str, tags: Sequence[tuple[str, str]]) -> tuple[tuple[int, int], tuple[int, int] | None,
                                                                   tuple[int, int] | None]:
    """(initial, thought, final) character ranges; thought/final None when absent. The first tag pair that
    occurs decides. A closing tag without an opening one (the chat template prefilled `<think>`): the head's
    first closed box is an answer given before the thought, the rest of the head is the thought."""
    n = len(output)
    pair = next(((o, c) for o, c in tags if o in output or c in output), None)
    if pair is None:
        return (0, n), None, None
    open_tag, close_tag = pair
    first_open, last_close = output.find(open_tag), output.rfind(close_tag)
    if last_close != -1 and (first_open == -1 or first_open < last_close):
        final = (last_close + len(close_tag), n)
        if first_open != -1:
            return (0, first_open), (first_open + len(open_tag), last_close), final
        head = output[: output.find(close_tag)]
        first = first_box(head)
        cut = first.end + 1 if first is not None and first.closed else 0
        return (0, cut), (cut, last_close), final
    return (0, first_open), (first_open + len(open_tag), n), None  # opened, never closed


def answer_candidates(output: str, tags: Sequence[tuple[str, str]] = REASONING_TAGS) -> list[AnswerCandidate]:
    """Where the final answer of `output` may be stated, most trusted first; the caller takes the first
    candidate its own parser reads an answer from (an option letter, or any text for free-form questions).

    1. after the last closing tag: its last box (`final_box`), else that text (`final_text`);
    2. a box inside the thought (`thought_box`): the reviewed answer of a model that stopped or forgot to
       close before repeating it;
    3. before the thought (the whole text when there is none): its last box (`initial_box`), else that text
       (`initial_text`). So `C<think>…</think>` and `\\boxed{D}<think>…</think>` answer C and D;
    4. lmms-eval's own input, `strip_reasoning_tags(output)` (`whole`), so no answer lmms-eval would find is
       ever dropped.

    Deferral boxes ("Let's analyze the problem step by step.") and empty boxes are never answers.
    """
    out = output or ""
    initial, thought, final = _regions(out, tags)
    cands: list[AnswerCandidate] = []

    def add_box(region: tuple[int, int], source: str) -> None:
        boxes = _usable_boxes(out[region[0]:region[1]], region[0])
        if boxes:
            b = boxes[-1]
            cands.append(AnswerCandidate(out[b.start:b.end], source, b.start, b.end, b))

    def add_text(region: tuple[int, int], source: str) -> None:
        raw = out[region[0]:region[1]]
        if _has_words(raw):
            lead = len(raw) - len(raw.lstrip())
            cands.append(AnswerCandidate(raw.strip(), source, region[0] + lead, region[0] + len(raw.rstrip())))

    if final is not None:
        add_box(final, "final_box")
        add_text(final, "final_text")
    if thought is not None:
        add_box(thought, "thought_box")
    add_box(initial, "initial_box")
    add_text(initial, "initial_text")
    whole = strip_reasoning_tags(out, tags)
    if _has_words(whole) and all(c.text != whole for c in cands):
        cands.append(AnswerCandidate(whole, "whole", 0, len(out)))
    return cands


def final_answer(output: str, options: Question | Sequence[str] | None) -> tuple[ParsedAnswer | None, str]:
    """The reviewed answer of a whole output and the candidate it came from (`answer_candidates`); with
    options, the first candidate that names one; (None, "none") when nothing does."""
    if isinstance(options, Question):
        options = options if options.is_choice else None
    for cand in answer_candidates(output):
        if cand.box is not None:
            parsed = parse_box_answer(cand.box, output, options)
            if options and parsed.choice is None:
                continue
            return parsed, cand.source
        if options:
            choice = parse_choice(cand.text, options)
            if choice is not None:
                return ParsedAnswer(choice, choice, (cand.start, cand.end)), cand.source
            continue
        return ParsedAnswer(cand.text, None, (cand.start, cand.end)), cand.source
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


# ---- VideoAuto-R1's own confidence rule (IVUL-KAUST/VideoAuto-R1, lmms_eval/models/simple/early_exit.py) ------
# A box as the release's pattern reads it: content with up to two levels of nested braces, closed.
_R1_BOX = re.compile(r"\\boxed\{((?:[^{}]|\{(?:[^{}]|\{[^{}]*\})*\})*)\}")
# the release's letter normalisation: "(A)…", "A." / "A)" / "A:" / "A-"…, or a lone letter → "A"
_R1_LETTER = (re.compile(r"^\s*[\(\[\{]\s*([A-Za-z])\s*[\)\]\}]"), re.compile(r"^\s*([A-Za-z])\s*[.)/:;\-]"),
              re.compile(r"^\s*([A-Za-z])\s*\.?\s*$"))
#: what the released demo appends to the first stage's text before scoring it, so the two-box test passes
R1_STAGE1_SUFFIX = "<think>\n</think>\\boxed{}"


def r1_first_box(text: str) -> str | None:
    """The release's first box: its content when `text` holds at least two boxes, else None."""
    found = _R1_BOX.findall(text)
    return found[0] if len(found) >= 2 else None


def r1_normalize(content: str) -> str:
    """The piece the release looks up: an option letter where the content starts with one, else the content."""
    for pattern in _R1_LETTER:
        m = pattern.match(content)
        if m:
            return m.group(1)
    return content


def r1_token_span(gen_ids: Sequence[int], piece: str, encode: Callable[[str], list[int]],
                  decoded: str) -> tuple[int, int] | None:
    """The generated tokens the release scores for `piece`: the first place the piece's own tokens occur in
    `gen_ids` (as is, stripped, left-stripped, or after a space); failing that, the span its characters in
    `decoded` would have if the text before them and the piece were tokenized apart."""
    variants = [piece, piece.strip(), piece.lstrip(), piece if piece.startswith(" ") else " " + piece]
    ids = list(gen_ids)
    for v in variants:
        needle = encode(v)
        n = len(needle)
        if not n:
            continue
        for i in range(len(ids) - n + 1):
            if ids[i:i + n] == needle:
                return i, i + n
    for v in variants:
        pos = decoded.find(v) if v else -1
        if pos != -1:
            start = len(encode(decoded[:pos]))
            end = start + len(encode(v))
            return (start, end) if end <= len(ids) else None
    return None


def r1_confidence(gen_ids: Sequence[int], logprobs: Sequence[float], stage1_text: str,
                  encode: Callable[[str], list[int]]) -> float | None:
    """VideoAuto-R1's confidence of a first stage that stopped at `<think>` (the released demo's early exit):
    exp(mean log p) over the tokens `r1_token_span` finds for the first box's normalised content; None (the
    release's -1, "think") with no box or a box starting "Let's analyze". `stage1_text` is the stage's
    decoded text without special tokens; `logprobs[i]` is that of `gen_ids[i]`."""
    answer = stage1_text.split(THINK_OPEN)[0].strip() + R1_STAGE1_SUFFIX
    content = r1_first_box(answer)
    if content is None or content.lstrip().startswith("Let's analyze"):
        return None
    span = r1_token_span(gen_ids, r1_normalize(content), encode, answer)
    if span is None or not logprobs:
        return None
    s, e = (max(0, min(v, len(logprobs))) for v in span)
    return geometric_mean_prob(list(logprobs[s:e])) if e > s else None
