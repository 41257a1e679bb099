"""Answer extraction: lmms-eval's current and legacy rules on the output shapes models really produce."""
from __future__ import annotations

import pytest

from videollm.eval.extract import (
    boxed_contents,
    extract_choice,
    extract_mcq_v2026,
    extract_paren_v2024,
    extract_regex_v2024,
    final_answer_text,
    strip_reasoning_tags,
)


@pytest.mark.parametrize("text, expected", [
    ("B", "B"),
    ("(C)", "C"),
    ("C.", "C"),
    ("D) a red car", "D"),
    ("The correct answer is (B).", "B"),
    ("Answer: B", "B"),
    ("The answer is B. Cats and Dogs", "D"),  # upstream quirk: every letter after a phrase is a candidate
    ("A cat is on the table. The answer is C", "A"),  # a leading letter outranks the phrase
    ("b", ""),  # lowercase is not a letter to lmms-eval
    ("", ""),
    ("   ", ""),
    ("Based on the video, it is the second one", "B"),  # fallback: the only uppercase choice letter
    ("I think it's (A) or maybe (D)", "D"),  # same format: the later one wins
    ("答案是C", "C"),
    ("none of these", ""),
])
def test_mcq_v2026(text, expected):
    assert extract_mcq_v2026(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("B", "B"),
    ("Answer: B", "A"),  # first uppercase A-D anywhere: the "A" of "Answer"
    ("Best option: (C)", "B"),  # the "B" of "Best" (upstream lost the comma that would strip it)
    ("The best answer is D", "D"),
    ("The answer is (C).", "C"),
    ("this option has no letters at all and is quite long indeed, more than ten words", ""),
    ("b", ""),
])
def test_regex_v2024(text, expected):
    assert extract_regex_v2024(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("B", "B"),
    ("B) three", "B"),
    ("B.", "B."),  # returned verbatim upstream, so it never matches the answer
    (")", ""),
    ("(A) and (B)", "A"),
])
def test_paren_v2024(text, expected):
    assert extract_paren_v2024(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("\\boxed{A}<think>on reflection it is the other one</think>\\boxed{C}", "C"),
    ("\\boxed{A}<think>cut off mid-thought", "A"),  # no final answer: the first one stands
    ("<think>the frames show a dog</think> The answer is B", "The answer is B"),
    ("\\boxed{\\text{D}}", "\\text{D}"),
    ("plain C", "plain C"),
    ("\\boxed{Let's analyze the problem step by step.}<think>x</think>\\boxed{B}", "B"),
])
def test_final_answer_text(text, expected):
    assert final_answer_text(text) == expected


def test_only_the_final_answer_is_scored():
    out = "\\boxed{A}<think>the person puts the cup down twice, so B</think>\\boxed{B}"
    assert extract_choice(out, "mcq-v2026") == "B"
    assert extract_choice(out, "regex-v2024") == "B"
    assert extract_choice(out, "paren-v2024") == "B"
    assert extract_choice("\\boxed{\\text{D}}", "mcq-v2026") == "D"


def test_strip_reasoning_tags_like_lmms_eval():
    assert strip_reasoning_tags("<think>a</think>B<think>c</think>") == "B"
    assert strip_reasoning_tags("reasoning...</think> C") == "C"
    assert strip_reasoning_tags("<think>unclosed B") == "<think>unclosed B"


def test_boxed_nested():
    assert boxed_contents("x \\boxed{a{b}c} y \\boxed{D}") == ["a{b}c", "D"]
    assert boxed_contents("\\boxed{open") == []
