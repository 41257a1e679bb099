"""`answer_format="choice"`: multiple choice always yields an option letter (issue 14, item 8)."""
from __future__ import annotations

import importlib.util
import math
import string

import numpy as np
import pytest
import torch

from videollm.answer.choice import LetterConstraint, check_answer_format, letter_token_ids
from videollm.answer.reasoning import ReasoningConfig, run_mode
from videollm.backbones.mini import assets as mini_assets
from videollm.errors import InvalidRequestError
from videollm.question import make_question, option_letters
from videollm.runtime.generation import GenerationConfig
from videollm.video import Video

HAVE_MINI = all(importlib.util.find_spec(m) for m in
                (mini_assets.LLM_MODULE, mini_assets.ENCODER_MODULE, "gguf", "timm", "skvideo"))
OPTION_POOL = ["a dog", "a cat", "a red car", "two people", "the kitchen", "a bird"]


def clip(seed: int, n: int = 4) -> Video:
    return Video.from_frames(np.random.default_rng(seed).integers(0, 255, (n, 48, 48, 3), dtype=np.uint8), fps=1.0)


def letter_argmax(backbone, user_text: str, visual, letters: list[str]) -> str:
    """The reference: the option letter whose token has the highest first-step logit."""
    inputs = backbone.build_inputs(user_text, visual)
    logits, _ = backbone.lm_forward(inputs.embeds)
    token_letter = letter_token_ids(backbone.tokenizer, letters)
    ids = sorted(token_letter)
    return token_letter[ids[int(torch.argmax(logits[0, ids].float()))]]


@pytest.fixture(scope="module")
def backbones():
    from videollm.backbones.tiny import build_tiny_random

    return [build_tiny_random(seed=s) for s in (0, 1, 2)]


def test_direct_choice_is_always_the_argmax_letter(backbones):
    from videollm.compressors import create_compressor

    checked = 0
    for b, bb in enumerate(backbones):  # random weights, three seeds
        comp = create_compressor("uniform", bb)
        for n_opt in range(2, 7):
            options = OPTION_POOL[:n_opt]
            letters = option_letters(options)
            question = make_question(f"What is shown in clip {n_opt}?", options)
            user_text = question.user_text
            visual = comp(clip(10 * b + n_opt), query="what", budget=None)
            free = run_mode("direct", bb, question, visual, GenerationConfig(max_new_tokens=3))
            out = run_mode("direct", bb, question, visual, GenerationConfig(), ReasoningConfig(answer_format="choice"))
            assert out.choice in letters and out.text == out.choice and out.generated_tokens == 1
            assert out.choice == letter_argmax(bb, user_text, visual, letters)
            assert out.confidence is not None and 0 < out.confidence <= 1
            assert free.generated_tokens >= 1  # free generation is untouched by the option
            checked += 1
    assert checked == 15


def test_choice_through_the_pipeline_in_every_mode(tiny_backbone):
    from videollm.config import PipelineConfig
    from videollm.pipeline import VideoQAPipeline

    pipe = VideoQAPipeline(
        tiny_backbone, PipelineConfig(model="tiny-random", reasoning_options={"max_think_tokens": 4})
    )
    for mode in ("direct", "think", "auto"):
        for seed in range(3):
            ans = pipe(clip(seed), "What is it?", OPTION_POOL[:4], reasoning=mode, answer_format="choice",
                       generation=GenerationConfig(max_new_tokens=4))
            assert ans.choice in {"A", "B", "C", "D"} and ans.text == ans.choice, (mode, ans.text)
            if mode != "direct":
                assert ans.initial_choice in {"A", "B", "C", "D"}


def test_think_choice_boxes_both_answers(tiny_backbone):
    from videollm.compressors import create_compressor

    options = OPTION_POOL[:3]
    visual = create_compressor("uniform", tiny_backbone)(clip(5), query="q", budget=None)
    out = run_mode("think", tiny_backbone, make_question("q?", options), visual, GenerationConfig(max_new_tokens=4),
                   ReasoningConfig.build({"answer_format": "choice", "max_think_tokens": 3}))
    raw = out.extra["raw"]
    assert raw.startswith("\\boxed{") and "</think>\\boxed{" in raw or "\\boxed{" in raw.split("<think>")[-1]
    assert out.choice in {"A", "B", "C"} and out.initial_choice in {"A", "B", "C"}
    assert "\\boxed{" in out.extra["forced"]


def test_free_stays_the_default(tiny_pipeline):
    from videollm.answer.reasoning import ReasoningOptions
    from videollm.config import PipelineConfig

    assert PipelineConfig().answer_format == "free" and ReasoningOptions().answer_format == "free"
    free = tiny_pipeline(clip(0), "What is it?", OPTION_POOL[:4])
    chosen = tiny_pipeline(clip(0), "What is it?", OPTION_POOL[:4], answer_format="choice")
    assert chosen.choice in {"A", "B", "C", "D"}
    assert free.generated_tokens > 1 or free.finish_reason == "eos"  # not cut to one letter


def test_user_errors_come_before_any_decoding(tiny_pipeline, tmp_path):
    missing = tmp_path / "no-such-video.mp4"  # never opened: the checks come first
    with pytest.raises(InvalidRequestError, match="needs the options"):
        tiny_pipeline(missing, "What is it?", answer_format="choice")
    with pytest.raises(InvalidRequestError, match="answer format"):
        tiny_pipeline(missing, "What is it?", ["a", "b"], answer_format="letters")
    with pytest.raises(InvalidRequestError):
        check_answer_format("choice", None)
    with pytest.raises(InvalidRequestError, match="unknown reasoning option|answer format"):
        run_mode("direct", None, make_question("q", ["x"]), None, GenerationConfig(),
                 ReasoningConfig.build({"answer_format": "nope"}))


def test_letter_constraint_masks_everything_else_even_nan(tiny_backbone):
    tok = tiny_backbone.tokenizer
    c = LetterConstraint(tok, ["A", "B", "C"])
    vocab = len(tok)
    logits = torch.randn(1, vocab)
    out = c(logits, None)
    allowed = torch.isfinite(out[0])
    assert set(torch.nonzero(allowed).flatten().tolist()) == set(c.token_letter)
    assert c.token_letter[int(torch.argmax(out[0]))] in "ABC"
    broken = c(torch.full((1, vocab), float("nan")), None)  # a broken model still yields a letter
    assert int(torch.argmax(broken[0])) in c.token_letter
    inner = LetterConstraint(tok, ["A", "B", "C"], inner=lambda lg, cache: lg * 0 + torch.arange(vocab).float())
    assert c.token_letter[int(torch.argmax(inner(logits, None)[0]))] == \
        c.token_letter[max(c.token_letter)]  # the inner scores decide, the mask only restricts


def test_cli_choice_flag(capsys):
    from videollm.cli import main

    rc = main(["ask", "--sample", "carphone", "What is shown?", "--options", "a phone", "a car", "a dog",
               "--model", "tiny-random", "--frames", "2", "--choice"])
    assert rc == 0
    assert capsys.readouterr().out.strip() in {"A", "B", "C"}
    rc = main(["ask", "--sample", "carphone", "What is shown?", "--model", "tiny-random", "--choice"])
    assert rc == 2 and "needs the options" in capsys.readouterr().err


@pytest.mark.skipif(not HAVE_MINI, reason="videollm-mini weights packages are not installed")
def test_mini_keeps_its_option_scorer_and_yields_a_letter():
    from videollm.backbones import load_backbone
    from videollm.compressors import create_compressor

    mini = load_backbone("videollm-mini", device="cpu")
    visual = create_compressor("uniform", mini)(clip(3, n=2), query="q", budget=None)
    for options in (OPTION_POOL[:2], OPTION_POOL[:5]):
        question = make_question("Which object is shown?", options)
        free = run_mode("direct", mini, question, visual, GenerationConfig(max_new_tokens=2))
        out = run_mode("direct", mini, question, visual, GenerationConfig(), ReasoningConfig(answer_format="choice"))
        letters = option_letters(options)
        assert out.choice in letters
        # the scorer already answers with a letter: the constraint agrees with it
        if free.choice is not None:
            assert out.choice == free.choice
    # a prompt the scorer does not recognise (no lettered options): the plain letter mask still answers
    bare = run_mode("direct", mini, make_question("", ["dog", "cat"], prompt="Which object is shown? dog or cat"),
                    visual, GenerationConfig(), ReasoningConfig(answer_format="choice"))
    assert bare.choice in ("A", "B") and bare.text == bare.choice
    assert math.isfinite(bare.confidence)


def test_letter_tokens_for_many_options(tiny_backbone):
    letters = list(string.ascii_uppercase[:26])
    found = letter_token_ids(tiny_backbone.tokenizer, letters)
    assert set(found.values()) == set(letters)
