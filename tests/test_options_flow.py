"""Options travel one way (#28): typed configs built and checked once, one budget check with one message, and a
`Question` whose options reach scorers as data."""
from __future__ import annotations

import re

import pytest

from videollm.answer.reasoning import ReasoningConfig
from videollm.budget import check_budget
from videollm.config import PipelineConfig
from videollm.errors import InvalidRequestError, VideoLLMError
from videollm.question import Question, make_question
from videollm.video import SamplingConfig

BUDGET_MESSAGE = r"^budget must be a whole number of visual tokens from 1 to \d+"


def test_reasoning_config_is_built_once_and_reaches_the_mode_as_that_object(tiny_backbone, short_video,
                                                                            monkeypatch):
    from videollm import pipeline as pipeline_module

    cfg = PipelineConfig(model="tiny-random", sampling=SamplingConfig(num_frames=2),
                         reasoning_options={"max_think_tokens": 8}).validate()
    built = cfg.reasoning_config()
    assert isinstance(built, ReasoningConfig) and built.max_think_tokens == 8
    assert cfg.reasoning_config() is built  # not rebuilt from the dict on every call
    assert cfg.reasoning_options == {"max_think_tokens": 8}  # what the user gave stays as given
    seen: list[ReasoningConfig] = []
    real = pipeline_module.run_mode
    monkeypatch.setattr(pipeline_module, "run_mode",
                        lambda mode, bb, q, visual, gen, config, **kw: seen.append(config) or real(
                            mode, bb, q, visual, gen, config, **kw))
    pipeline_module.VideoQAPipeline(tiny_backbone, cfg)(short_video, "What?")
    assert seen == [built] and seen[0] is built
    cfg.reasoning_options["max_think_tokens"] = 9  # a changed dict is built again
    assert cfg.reasoning_config().max_think_tokens == 9


def test_a_checked_config_changed_afterwards_is_checked_again():
    cfg = ReasoningConfig.build({"threshold": 0.5})
    assert ReasoningConfig.build(cfg) is cfg
    cfg.threshold = 1.5
    with pytest.raises(InvalidRequestError, match=r"--confidence-threshold\) must be a number in \[0, 1\], got 1.5"):
        ReasoningConfig.build(cfg)
    with pytest.raises(InvalidRequestError, match="threshold"):
        ReasoningConfig.build({"threshold": float("nan")})


def test_replacing_the_compressor_after_validation_takes_the_new_compressors_defaults():
    cfg = PipelineConfig(model="tiny-random").validate()
    pooled = cfg.replace(compressor="pool").validate()
    assert type(pooled.compressor_config()).__name__ == "PoolConfig"


@pytest.mark.parametrize("bad", [0, -3, 1.5, "12", True, 2_000_000])
def test_the_budget_has_one_check_with_one_message_everywhere(bad, tiny_pipeline, short_video):
    from videollm.compressors import create_compressor
    from videollm.demo.app import parse_budget

    refusals = []
    for attempt in (lambda: check_budget(bad),
                    lambda: PipelineConfig(model="tiny-random", budget=bad).validate(),
                    lambda: tiny_pipeline(short_video, "What?", budget=bad),
                    lambda: create_compressor("uniform", tiny_pipeline.backbone)(
                        tiny_pipeline.load(short_video), query="q", budget=bad)):
        with pytest.raises(InvalidRequestError) as err:
            attempt()
        refusals.append(str(err.value))
    assert all(re.match(BUDGET_MESSAGE, r) and r.endswith(f"got {bad!r}") for r in refusals), refusals
    if not isinstance(bad, (bool, str)):  # the demo's text box: the same check, quoting what was typed
        with pytest.raises(InvalidRequestError, match=BUDGET_MESSAGE):
            parse_budget(str(bad))


def test_a_budget_past_the_loaded_backbones_context_is_refused_before_decoding(tiny_backbone, short_video,
                                                                                monkeypatch):
    """A backbone built in code has no declared context for `validate()`: the call checks it against the model."""
    from videollm.pipeline import VideoQAPipeline

    pipe = VideoQAPipeline(tiny_backbone, PipelineConfig(model="my-own", budget=tiny_backbone.max_context))
    monkeypatch.setattr(pipe, "load", lambda *a, **k: pytest.fail("decoded before the budget was checked"))
    with pytest.raises(InvalidRequestError, match=BUDGET_MESSAGE + r", less than the model's context"):
        pipe(short_video, "What?")


def test_question_keeps_options_as_data_even_when_they_look_like_prompt_lines():
    q = make_question("Which one?", ["a cat\nB. not an option", "D. a dog", "(c) a bird"])
    assert q.options == ("a cat\nB. not an option", "D. a dog", "a bird")  # only a label for its own letter goes
    assert q.letters == ("A", "B", "C") and q.lettered[2] == "C. a bird"
    assert q.text == "Which one?" and "A. a cat" in q.user_text
    assert make_question(q) is q
    bench = make_question("Which one?", ["x", "y"], prompt="Pick (A) x or (B) y.")
    assert bench.user_text == "Pick (A) x or (B) y." and bench.options == ("x", "y") and bench.text == "Which one?"
    for bad in ("one string", ["ok", ""], ["x"] * 30):
        with pytest.raises(VideoLLMError):
            make_question("q", bad)


def test_option_scorers_get_the_question_not_the_prompt(tiny_backbone, short_video, monkeypatch):
    """A backbone with `choice_scorer` receives the built `Question`: the options as data, the question's text,
    whatever wording the prompt used."""
    from videollm.pipeline import VideoQAPipeline

    got: list[Question] = []
    # a subclass, not the shared class: isinstance checks against a runtime Protocol are cached per class, so
    # a method set on the fixture's class and removed again would leave it "SupportsChoiceScoring" for later tests
    scoring = type("Scoring", (type(tiny_backbone),),
                   {"choice_scorer": lambda self, inputs, question, visual: got.append(question) or None})
    monkeypatch.setattr(tiny_backbone, "__class__", scoring)
    pipe = VideoQAPipeline(tiny_backbone, PipelineConfig(model="tiny-random", sampling=SamplingConfig(num_frames=2)))
    options = ["a red\nball", "a blue cube"]
    pipe(short_video, "What is shown?", options, prompt="Look closely. Options: (A) a red ball, (B) a blue cube")
    assert len(got) == 1
    assert got[0].options == tuple(options) and got[0].text == "What is shown?"
    assert got[0].user_text.startswith("Look closely.")
