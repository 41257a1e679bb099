"""Answer extraction against lmms-eval, side by side, on hundreds of generated model outputs (issue 14, item 7).

The oracle below re-implements, in this file, what lmms-eval does to a generated answer of its video
multiple-choice tasks (read from EvolvingLMMs-Lab/lmms-eval):
- `lmms_eval/api/reasoning.py::strip_reasoning_tags`, applied by `evaluator.py` to every response before
  `process_results` (v0.7 on; the closing-tag-only case since v0.7.1), CLI default tags think + analysis;
- current rules (v0.7.2 on): VideoMME, MLVU and LVBench all call
  `_task_utils/mcq_extract.py::extract_mcq_answer(s, choices=["A", "B", "C", "D"])`;
- legacy rules (v0.7.1): VideoMME / LVBench `extract_characters_regex` (phrase removal, first [ABCD]),
  MLVU `extract_characters_regex` (character before the first ")", else the whole text).

The project's scorer must agree with it on every output, except where docs/eval.md documents a difference:
a `\\boxed{}` in the output, a thought that is never closed, or two answers around a closed thought. And it
must never drop a letter lmms-eval finds.
"""
from __future__ import annotations

import itertools
import random
import re

import pytest

from videollm.answer.reasoning_format import answer_candidates, final_answer
from videollm.eval.extract import extract_choice, final_answer_text

CHOICES = ["A", "B", "C", "D"]
TAG_PAIRS = [["<think>", "</think>"], ["<analysis>", "</analysis>"]]


# ---- the oracle: lmms-eval's behaviour ---------------------------------------------------------------
def lmms_strip(text: str) -> str:
    result = text
    for open_tag, close_tag in TAG_PAIRS:
        while open_tag in result and close_tag in result:
            i = result.find(open_tag)
            j = result.find(close_tag, i)
            if i == -1 or j == -1:
                break
            result = result[:i] + result[j + len(close_tag):]
        if close_tag in result and open_tag not in result:
            result = result.rsplit(close_tag, 1)[-1]
    return result.strip()


_PHRASES = [
    "the answer is",
    "answer is",
    "the correct answer is",
    "correct answer is",
    "the best answer is",
    "best answer is",
    "the correct option is",
    "correct option is",
    "the best option is",
    "best option is",
    "the choice is",
    "choice is",
    "the correct choice is",
    "correct choice is",
    "i choose",
    "i select",
    "i pick",
    "my answer is",
    "my choice is",
    "옵션",
    "정답은",
    "답은",
    "답:",
    "答案是",
    "答案为",
    "选",
    "答えは",
]
_RANK = {"start": 10, "end": 9, "phrase": 7, "parentheses": 6, "period": 5, "colon": 4, "right_paren": 3,
         "space": 2, "fallback": 0}


def lmms_mcq(response: str, choices: list[str] = CHOICES) -> str:
    if not response or not response.strip():
        return ""
    t = response.strip()
    for p in ",.!?;:'\"":
        t = t.strip(p)
    t = " " + t + " "
    found: list[tuple[str, int, str]] = []
    for name, left, right in (("parentheses", "(", ")"), ("period", "", "."), ("colon", "", ":"),
                              ("right_paren", "", ")"), ("space", "", " ")):
        for c in choices:
            if left + c + right in t:
                found.append((c, t.rfind(left + c + right), name))
    low = t.lower()
    for phrase in _PHRASES:
        k = low.find(phrase)
        if k != -1:
            for c in choices:
                at = t.find(c, k + len(phrase))
                if at != -1:
                    found.append((c, at, "phrase"))
    core = t.strip()
    for c in choices:
        if core.startswith(c) and (len(core) == 1 or not core[1].isalpha()):
            found.append((c, 0, "start"))
    for c in choices:
        if core.endswith(c) and (len(core) == 1 or not core[-2].isalpha()):
            found.append((c, len(t) - 1, "end"))
    if not found:
        found = [(c, t.rfind(c), "fallback") for c in choices if c in t]
    if not found:
        return ""
    return max(found, key=lambda f: (_RANK[f[2]], f[1]))[0]  # a stable descending sort: ties keep the first


def lmms_regex_legacy(s: str) -> str:
    s = s.strip()
    for prefix in ("The best answer is", "The correct answer is", "The answer is", "The answer",
                   "The best option is" "The correct option is", "Best answer:" "Best option:"):
        s = s.replace(prefix, "")
    if len(s.split()) > 10 and not re.search("[ABCD]", s):
        return ""
    m = re.search(r"[ABCD]", s)
    return m[0] if m else ""


def lmms_paren_legacy(s: str) -> str:
    s = s.strip()
    if ")" in s:
        i = s.index(")")
        return s[i - 1:i]
    return s


RULES = {  # project extractor → lmms-eval's parse of the stripped response
    "mcq-v2026": lmms_mcq,
    "regex-v2024": lmms_regex_legacy,
    "paren-v2024": lmms_paren_legacy,
}


def test_oracle_matches_known_lmms_eval_cases():
    """Spot checks of the oracle itself, from lmms-eval's docstrings and the project's earlier tests."""
    assert lmms_mcq("The correct answer is (B).") == "B"
    assert lmms_mcq("The answer is B. Cats and Dogs") == "D"
    assert lmms_mcq("A cat is on the table. The answer is C") == "A"
    assert lmms_mcq("I think it's (A) or maybe (D)") == "D"
    assert lmms_regex_legacy("Answer: B") == "A" and lmms_regex_legacy("Best option: (C)") == "B"
    assert lmms_paren_legacy("B) three") == "B" and lmms_paren_legacy("B.") == "B."
    assert lmms_strip("<think>a</think>B<think>c</think>") == "B"
    assert lmms_strip("reasoning...</think> C") == "C"
    assert lmms_strip("<think>unclosed B") == "<think>unclosed B"


# ---- the generated corpus ----------------------------------------------------------------------------
OPTION_TEXT = {"A": "a red car", "B": "a dog", "C": "two people", "D": "the kitchen"}
ANSWER_FORMS = [
    "{L}", "({L})", "{L}.", "{L})", "{L}: {T}", "{L}. {T}", "({L}) {T}", "The answer is ({L}).", "The answer is {L}",
    "Answer: {L}", "The best answer is {L}.", "Best option: ({L})", "Option {L}", "I choose {L} because it fits.",
    "{l}", "**{L}**", "{T}", "It is {T}.", "答案是{L}", "The correct option is {L}: {T}", "{L}\n", "  {L}  ",
    "My answer is {L}, not the others.", "Definitely {L}.", "Based on the video, {T}.",
]
BOX_FORMS = ["\\boxed{{{X}}}", "\\boxed{{\\text{{{X}}}}}", "\\boxed{{{X}}} ", "$\\boxed{{{X}}}$",
             "The answer is \\boxed{{{X}}}.", "\\boxed{{{X}}}\\boxed{{{Y}}}", "\\boxed{{{X}}} \\boxed{{{Y}}}",
             "\\boxed{{{X}}}, then \\boxed{{{Y}}}", "\\boxed{{{X}"]
THOUGHTS = ["the man opens the door", "maybe A or C, the dog appears at 0:12", "so it is \\boxed{{{Y}}}",
            "Let me check option {Y} again.", "hmm", "The answer is {Y}"]
DEFER = "\\boxed{Let's analyze the problem step by step.}"


def _answer(rng: random.Random, letter: str) -> str:
    form = rng.choice(ANSWER_FORMS)
    return form.format(L=letter, l=letter.lower(), T=OPTION_TEXT[letter])


def _boxed(rng: random.Random, letter: str, other: str) -> str:
    inner = rng.choice([letter, f"({letter})", f"{letter}. {OPTION_TEXT[letter]}", OPTION_TEXT[letter]])
    return rng.choice(BOX_FORMS).format(X=inner, Y=other)


def corpus(n_random: int = 500, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out: list[str] = []
    # every plain answer form with every letter
    out += [f.format(L=L, l=L.lower(), T=OPTION_TEXT[L]) for f in ANSWER_FORMS for L in CHOICES]
    # the shapes, each letter
    for L in CHOICES:
        out += [f"{L}<think>the dog runs</think>", f"\\boxed{{{L}}}<think>…</think>", f"({L})<think>x</think>\n",
                f"\\boxed{{{L}}}<think>on reflection</think>\\boxed{{{L}}}", f"<think>x</think>{L}",
                f"{L}<analysis>x</analysis>", f"x</think>{L}", f"\\boxed{{{L}}} x</think>"]
    # random structures
    letters = CHOICES
    for _ in range(n_random):
        a, b, y = rng.choice(letters), rng.choice(letters), rng.choice(letters)
        first = rng.choice([_answer(rng, a), _boxed(rng, a, y), DEFER, ""])
        second = rng.choice([_answer(rng, b), _boxed(rng, b, y), ""])
        thought = rng.choice(THOUGHTS).format(Y=y)
        ws = rng.choice(["", "\n", " ", "\n\n"])
        shape = rng.choice(["plain", "closed", "closed_empty", "unclosed", "no_open", "lead_think", "analysis"])
        if shape == "plain":
            s = first + ws + second
        elif shape == "closed":
            s = f"{first}{ws}<think>{thought}</think>{ws}{second}"
        elif shape == "closed_empty":
            s = f"{first}{ws}<think>{thought}</think>{ws}"
        elif shape == "unclosed":
            s = f"{first}{ws}<think>{thought}"
        elif shape == "no_open":
            s = f"{first} {thought}</think>{ws}{second}"
        elif shape == "lead_think":
            s = f"<think>{thought}</think>{ws}{second}"
        else:
            s = f"{first}<analysis>{thought}</analysis>{second}"
        out.append(s)
    return list(dict.fromkeys(out))


CORPUS = corpus()


def documented_difference(s: str) -> str | None:
    """Which difference listed in docs/eval.md may apply to `s` (None: the two must agree exactly)."""
    for open_tag, close_tag in TAG_PAIRS:
        if open_tag in s and close_tag not in s[s.rfind(open_tag):]:
            return "unclosed_think"
    if "boxed" in s:
        return "boxes"
    for open_tag, close_tag in TAG_PAIRS:
        if open_tag in s and close_tag in s:
            before, after = s[:s.find(open_tag)], s[s.rfind(close_tag) + len(close_tag):]
            if any(ch.isalnum() for ch in before) and any(ch.isalnum() for ch in after):
                return "two_answers"
    return None


def test_corpus_is_large_and_varied():
    assert len(CORPUS) >= 400
    kinds = {documented_difference(s) for s in CORPUS}
    assert kinds == {None, "boxes", "unclosed_think", "two_answers"}
    assert sum(documented_difference(s) is None for s in CORPUS) >= 150


@pytest.mark.parametrize("rule", sorted(RULES))
def test_agrees_with_lmms_eval_except_documented_differences(rule):
    oracle = RULES[rule]
    differ: dict[str, int] = {}  # both read a letter, not the same one
    more = 0  # we read a letter where lmms-eval reads none
    for s in CORPUS:
        ours, theirs = extract_choice(s, rule, CHOICES), oracle(lmms_strip(s))
        if theirs in CHOICES:  # never drop an answer lmms-eval would find
            assert ours in CHOICES, (s, theirs, ours)
        reason = documented_difference(s)
        if reason is None:
            assert ours == theirs, (s, theirs, ours)
        elif ours != theirs and theirs in CHOICES:
            differ[reason] = differ.get(reason, 0) + 1
        elif ours != theirs:
            more += 1
    # the documented differences are real ones (each shows up), and they stay a minority
    assert differ.get("boxes", 0) > 0 and differ.get("two_answers", 0) > 0 and differ.get("unclosed_think", 0) > 0
    assert sum(differ.values()) < len(CORPUS) * (0.1 if rule == "mcq-v2026" else 0.2), differ
    if rule == "paren-v2024":  # legacy MLVU compares `\boxed{B}` verbatim with "B": we read the box
        assert more > 100


@pytest.mark.parametrize("s, letter, segment", [
    ("C<think>the video shows a dog, so maybe A</think>", "C", "C"),
    ("\\boxed{D}<think>…</think>", "D", "D"),
    ("\\boxed{D}\n<think>long thought</think>\n", "D", "D"),
    ("(B)<analysis>x</analysis>", "B", "(B)"),
])
@pytest.mark.parametrize("rule", sorted(RULES))
def test_answer_before_a_closed_thought_is_read(s, letter, segment, rule):
    """The issue's cases: "" before; lmms-eval reads the letter (MLVU's legacy parse only without a box)."""
    assert extract_choice(s, rule, CHOICES) == letter
    if rule != "paren-v2024" or "boxed" not in s:
        assert RULES[rule](lmms_strip(s)) == letter
    assert final_answer_text(s) == segment


@pytest.mark.parametrize("s, ours, mcq, regex", [
    # first vs last of two boxes: we read the last one, lmms-eval reads the text
    ("\\boxed{(A)}, then \\boxed{C}", "C", "A", "A"),  # "(A)" is a parentheses-format candidate, "C}" none
    ("\\boxed{B}<think>x</think>\\boxed{C}", "C", "C", "B"),  # the legacy regex takes the first letter
    # an unclosed thought: we read the answer before it, lmms-eval the whole text
    ("\\boxed{B}<think>wait, the answer is C", "B", "C", "B"),
])
def test_documented_differences(s, ours, mcq, regex):
    assert extract_choice(s, "mcq-v2026", CHOICES) == ours
    assert extract_choice(s, "regex-v2024", CHOICES) == ours
    assert lmms_mcq(lmms_strip(s)) == mcq and lmms_regex_legacy(lmms_strip(s)) == regex


def test_reasoning_modes_and_eval_pick_the_same_answer():
    """On outputs whose every answer is a clean letter form, the modes' parser and lmms-eval's extractor
    disagree on nothing, so the pick is the shared candidate order's alone."""
    rng = random.Random(3)
    clean = ["{L}", "({L})", "\\boxed{{{L}}}", "\\boxed{{({L})}}", "The answer is ({L})."]
    options = [f"{L}. {OPTION_TEXT[L]}" for L in CHOICES]
    checked = 0
    for first, second, closed in itertools.product(clean + [""], clean + [""], (True, False)):
        a, b, y = rng.choice(CHOICES), rng.choice(CHOICES), rng.choice(CHOICES)
        f, g = first.format(L=a), second.format(L=b)
        s = f"{f}<think>it is \\boxed{{{y}}}</think>{g}" if closed else f"{f}<think>hmm {y}"
        parsed, _ = final_answer(s, options)
        got = extract_choice(s, "mcq-v2026", CHOICES)
        assert (parsed.choice if parsed else "") == got, s
        assert got == (b if closed and g else y if closed else (a if f else got)), s
        checked += 1
    assert checked == 72
    assert answer_candidates("")[:1] == []
