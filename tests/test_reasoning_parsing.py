"""Parsing VideoAuto-R1-format outputs and answers in the shapes real models write them."""
from __future__ import annotations

import math

import pytest

from videollm.answer.prompting import parse_choice
from videollm.answer.reasoning_format import (
    BOX_INSTRUCTION,
    Box,
    choice_from_content,
    final_answer,
    find_boxes,
    first_box,
    geometric_mean_prob,
    is_deferral,
    last_box,
    letter_probability,
    parse_box_answer,
    r1_confidence,
    r1_first_box,
    r1_normalize,
    r1_system_prompt,
    r1_token_span,
    r1_user_text,
    span_token_indices,
    split_r1,
)
from videollm.question import MC_INSTRUCTION, format_question

OPTS = ["A. a dog", "B. a cat", "C. a bird", "D. a fish"]


@pytest.mark.parametrize("text, contents", [
    ("\\boxed{A}", ["A"]),
    ("\\boxed{A}<think>x</think>\\boxed{B}", ["A", "B"]),
    ("  \\boxed{ (B) }  ", [" (B) "]),
    ("$\\boxed{\\text{C}}$", ["\\text{C}"]),
    ("\\boxed{\\frac{1}{2}}", ["\\frac{1}{2}"]),
    ("\\\\boxed{D}", ["D"]),  # escaped backslash, as some models print it
    ("\\boxed {A}", ["A"]),
    ("boxed{A}", ["A"]),  # backslash dropped
    ("no box here", []),
])
def test_find_boxes(text, contents):
    assert [b.content for b in find_boxes(text)] == contents


def test_unclosed_box_is_reported_open():
    boxes = find_boxes("\\boxed{A}<think>so \\boxed{B")
    assert [(b.content, b.closed) for b in boxes] == [("A", True), ("B", False)]
    assert last_box("\\boxed{A} then \\boxed{B", closed_only=True).content == "A"
    assert last_box("\\boxed{A} then \\boxed{B", closed_only=False).content == "B"
    assert first_box("nothing") is None


@pytest.mark.parametrize("content, deferral", [
    ("Let's analyze the problem step by step.", True),
    ("  let's analyze the problem step by step", True),
    ("Let\u2019s analyze the problem step by step.", True),
    ("Let us analyze this.", True),
    ("A", False),
    ("analysis needed", False),
])
def test_deferral(content, deferral):
    assert is_deferral(content) is deferral


@pytest.mark.parametrize("content, letter", [
    ("A", "A"), (" b ", "B"), ("(C)", "C"), ("C.", "C"), ("C)", "C"), ("C:", "C"), ("[D]", "D"),
    ("C. a bird", "C"), ("\\text{D}", "D"), ("**B**", "B"), ("a dog", "A"), ("A cat", "B"), ("a fish.", "D"),
    ("Option B", "B"), ("option c", "C"), ("The answer is B", "B"), ("B: a cat", "B"), ("E", None),
    ("none of these", None), ("c", "C"),
])
def test_choice_from_box_content(content, letter):
    assert choice_from_content(content, OPTS) == letter


def test_choice_without_options_is_none():
    assert choice_from_content("A", None) is None


def test_answer_span_is_the_letter_alone():
    text = "\\boxed{ (B) }<think>"
    box = first_box(text)
    ans = parse_box_answer(box, text, OPTS)
    assert (ans.text, ans.choice) == ("B", "B") and text[ans.span[0]:ans.span[1]] == "B"
    text = "\\boxed{a cat}"  # option text instead of its letter: the whole answer is scored
    ans = parse_box_answer(first_box(text), text, OPTS)
    assert ans.choice == "B" and text[ans.span[0]:ans.span[1]] == "a cat"
    text = "\\boxed{  a red car }"
    ans = parse_box_answer(first_box(text), text, None)
    assert ans.text == "a red car" and text[ans.span[0]:ans.span[1]] == "a red car"


@pytest.mark.parametrize("text, initial, thought, final, opened, closed", [
    ("\\boxed{A}<think>look</think>\\boxed{B}", "\\boxed{A}", "look", "\\boxed{B}", True, True),
    ("\\boxed{A}\n<think>\n look \n</think>\n\n\\boxed{B}\n", "\\boxed{A}\n", "look", "\n\n\\boxed{B}\n", True, True),
    ("\\boxed{A}<think>never closed", "\\boxed{A}", "never closed", None, True, False),
    ("\\boxed{A}", "\\boxed{A}", None, None, False, False),
    ("The answer is (B).", "The answer is (B).", None, None, False, False),
    ("\\boxed{A} reasoning without opening</think>\\boxed{C}", "\\boxed{A}", "reasoning without opening",
     "\\boxed{C}", False, True),
])
def test_split_r1(text, initial, thought, final, opened, closed):
    parts = split_r1(text)
    assert (parts.initial, parts.thought, parts.final, parts.think_opened, parts.think_closed) == (
        initial, thought, final, opened, closed)


@pytest.mark.parametrize("output, options, expect, source", [
    ("\\boxed{A}<think>x</think>\\boxed{B}", OPTS, "B", "final_box"),
    ("\\boxed{A}<think>x</think>\n\n\\boxed{ (c) }", OPTS, "C", "final_box"),
    ("\\boxed{A}<think>x</think>So the answer is \\boxed{A}. Final: \\boxed{D}", OPTS, "D", "final_box"),
    ("\\boxed{A}<think>x</think>The answer is (B).", OPTS, "B", "final_text"),
    ("\\boxed{A}<think>it must be \\boxed{C} because</think>", OPTS, "C", "thought_box"),
    ("<think>hmm", OPTS, None, "none"),
    ("\\boxed{Let's analyze the problem step by step.}", OPTS, None, "none"),
    ("\\boxed{x}<think>x</think>\\boxed{12 seconds}", None, "12 seconds", "final_box"),
    ("<think>x</think>about twelve", None, "about twelve", "final_text"),
    # an answer before a closed thought with nothing after it (issue 14, item 7)
    ("C<think>the dog runs, so C</think>", OPTS, "C", "initial_text"),
    ("\\boxed{D}<think>thinking</think>  \n", OPTS, "D", "initial_box"),
    # a closed thought's prose is not an answer (lmms-eval strips it too)
    ("\\boxed{Let's analyze the problem step by step.}<think>so A</think>", OPTS, None, "none"),
    ("\\boxed{A}<think>x</think>\\boxed{E}", OPTS, "A", "initial_box"),  # E is no option: the first answer stands
    ("\\boxed{B}<think>cut off mid-thought", OPTS, "B", "initial_box"),
    ("I pick (B) reasoning without opening</think>", OPTS, None, "none"),  # lmms-eval: after </think>, nothing
    ("\\boxed{B} reasoning without opening</think>", OPTS, "B", "initial_box"),  # a box before it is an answer
])
def test_final_answer(output, options, expect, source):
    ans, where = final_answer(output, options)
    got = None if ans is None else (ans.choice if options else ans.text)
    assert (got, where) == (expect, source)


def test_r1_user_text_swaps_the_instruction():
    mc = format_question("What is it?", ["a dog", "a cat"])
    assert mc.endswith(MC_INSTRUCTION)
    r1 = r1_user_text(mc)
    assert r1 == "What is it?\nA. a dog\nB. a cat\n" + BOX_INSTRUCTION
    assert r1_user_text(r1) == r1
    assert r1_user_text("How many cars?") == "How many cars?\n" + BOX_INSTRUCTION
    assert r1_system_prompt("Be terse.").startswith("Be terse.\nFIRST: Output your initial answer")
    assert "<think>...</think>" in r1_system_prompt()


def test_span_token_indices():
    # tokens: "\\" "boxed" "{" "A" "}" → ends 1 6 7 8 9
    ends = [1, 6, 7, 8, 9]
    assert span_token_indices(ends, 7, 8) == [3]
    assert span_token_indices(ends, 6, 9) == [2, 3, 4]
    assert span_token_indices([1, 3, 3, 5], 2, 4) == [1, 3]  # a token adding no characters is skipped
    assert span_token_indices(ends, 20, 21) == []


def test_confidence_math():
    assert geometric_mean_prob([math.log(0.5), math.log(0.8)]) == pytest.approx(math.sqrt(0.4))
    assert geometric_mean_prob([]) is None
    lp = {"A": math.log(0.3), "B": math.log(0.1), "C": math.log(0.1)}
    assert letter_probability(lp, "A") == pytest.approx(0.6)
    assert letter_probability(lp, "D") is None


@pytest.mark.parametrize("text, letter", [
    ("B", "B"), ("b", "B"), ("(C)", "C"), ("  D.  ", "D"), ("The answer is (B).", "B"), ("answer: b", "B"),
    ("**B**", "B"), ("\\boxed{C}", "C"), ("\\boxed{a dog}", "A"), ("The answer is a cat.", "B"),
    ("A cat", "B"), ("B. a cat", "B"), ("Option C is correct", "C"), ("I think it is a fish", "D"),
    ("A. a dog\nB. a cat\nC. a bird\nD. a fish\nThe answer is C", "C"),  # options echoed back
    ("none of them", None), ("", None),
])
def test_parse_choice_real_world_shapes(text, letter):
    assert parse_choice(text, OPTS) == letter


def test_box_dataclass_span():
    b = Box("A", 7, 8, True)
    assert "\\boxed{A}"[b.start:b.end] == "A"


# ---- VideoAuto-R1's own confidence rule (lmms_eval/models/simple/early_exit.py in the release) -------------
_VOCAB = ["\\boxed", "{A", "{", "}", "A", " A", "<think>", "B", ",", " a", " cat", "x"]


def _encode(text: str) -> list[int]:
    """Greedy longest match over `_VOCAB`: a tokenizer in which "{A" is one token, as BPE merges can make it."""
    out, i = [], 0
    while i < len(text):
        best = max((t for t in _VOCAB if text.startswith(t, i)), key=len, default=None)
        out.append(_VOCAB.index(best) if best else 1000 + ord(text[i]))  # any other character: its own token
        i += len(best) if best else 1
    return out


@pytest.mark.parametrize("content, piece", [("A", "A"), (" (b) a cat", "b"), ("C. a bird", "C"), ("D)", "D"),
                                             ("[E]", "E"), ("a cat", "a cat"), ("B, a cat", "B, a cat"),
                                             ("Option B", "Option B"), ("\\text{B}", "\\text{B}")])
def test_r1_normalize_takes_a_leading_letter_only_in_the_release_shapes(content, piece):
    assert r1_normalize(content) == piece


def test_r1_first_box_needs_two_boxes_and_reads_two_nested_levels():
    assert r1_first_box("\\boxed{A}") is None
    assert r1_first_box("\\boxed{A}<think>\n</think>\\boxed{}") == "A"
    assert r1_first_box("\\boxed{\\frac{1}{\\sqrt{x}}} and \\boxed{B}") == "\\frac{1}{\\sqrt{x}}"


def test_r1_token_span_searches_tokens_then_falls_back_to_re_encoding():
    gen = _encode("\\boxed{B, a cat}<think>")
    assert r1_token_span(gen, "B, a cat", _encode, "") == (2, 6)
    # "{A" is one token: neither "A" nor " A" occurs in the ids, so the release re-encodes the text before the
    # letter ("\\boxed{" → 2 tokens) and scores token 2, which is "}"
    gen = _encode("\\boxed{A}<think>")
    assert [_VOCAB[i] for i in gen] == ["\\boxed", "{A", "}", "<think>"]
    assert r1_token_span(gen, "A", _encode, "\\boxed{A}<think>\n</think>\\boxed{}") == (2, 3)
    assert r1_token_span(gen, "zz", _encode, "\\boxed{A}") is None


def test_r1_confidence_is_the_release_value():
    lps = [math.log(p) for p in (0.5, 0.9, 0.8, 0.99)]
    gen = _encode("\\boxed{A}<think>")
    assert r1_confidence(gen, lps, "\\boxed{A}<think>", _encode) == pytest.approx(0.8)  # the "}" token
    gen = _encode("\\boxed{B, a cat}<think>")
    lps = [math.log(p) for p in (0.5, 0.5, 0.9, 0.8, 0.7, 0.6, 0.99, 0.99)]
    want = math.exp((math.log(0.9) + math.log(0.8) + math.log(0.7) + math.log(0.6)) / 4)
    assert r1_confidence(gen, lps, "\\boxed{B, a cat}<think>", _encode) == pytest.approx(want)
    assert r1_confidence(gen, lps, "no box at all", _encode) is None  # the release's -1: think
    assert r1_confidence(gen, lps, "\\boxed{ Let's analyze the problem step by step.}", _encode) is None
