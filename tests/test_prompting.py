import pytest

from videollm.answer.prompting import parse_choice
from videollm.errors import InvalidRequestError
from videollm.question import MC_INSTRUCTION, format_question, normalize_options

OPTS = ["A. a dog", "B. a cat", "C. a red car", "D. nothing"]


@pytest.mark.parametrize("text,expected", [
    ("B", "B"), ("B.", "B"), ("(B)", "B"), ("b", "B"), (" B ", "B"), ("B. a cat", "B"), ("B) a cat", "B"),
    ("The answer is (C).", "C"), ("The answer is C", "C"), ("Answer: D", "D"), ("answer: d", "D"),
    ("Final answer: **A**", "A"), ("I think the correct answer is B, a cat.", "B"),
    ("\\boxed{C}", "C"), ("\\boxed{A} <think>hmm</think> \\boxed{C}", "C"), ("\\boxed{(B)}", "B"),
    ("a red car", "C"), ("It shows a cat sitting.", "B"), ("Option B", "B"), ("The best option is (A)", "A"),
    ("\n\nC\n", "C"),
])
def test_parse_choice_real_world_shapes(text, expected):
    assert parse_choice(text, OPTS) == expected


@pytest.mark.parametrize("text", ["", "I don't know", "E", "none of them", "a dog and a cat"])
def test_parse_choice_refuses_to_guess(text):
    assert parse_choice(text, OPTS) is None


def test_parse_choice_without_options_is_none():
    assert parse_choice("B", None) is None


def test_normalize_options_labels_and_keeps_existing_labels():
    assert normalize_options(["dog", "B. cat", "(C) car"]) == ["A. dog", "B. cat", "C. car"]
    assert normalize_options(None) is None


def test_format_question_multiple_choice():
    text = format_question("What animal?", ["dog", "cat"])
    assert text == "What animal?\nA. dog\nB. cat\n" + MC_INSTRUCTION


@pytest.mark.parametrize("q", ["", "   ", "\n\t"])
def test_empty_question_rejected(q):
    with pytest.raises(InvalidRequestError, match="empty"):
        format_question(q)


def test_absurd_question_and_options_rejected():
    with pytest.raises(InvalidRequestError):
        format_question("x" * 100_000)
    with pytest.raises(InvalidRequestError):
        format_question("q", [str(i) for i in range(30)])
    with pytest.raises(InvalidRequestError, match="empty"):
        format_question("q", ["a", " "])
