"""Qwen-VL family: token-for-token parity with transformers' processor + model + generate, on tiny random
checkpoints written as `save_pretrained` writes them; compressors, positions, decode step, CLI."""
from __future__ import annotations

import json

import pytest
import torch

from videollm._compat import require

FAMILIES = ["qwen2_5_vl", "qwen3_vl"]
PRESET = {"qwen2_5_vl": "tiny-random-qwen2.5-vl", "qwen3_vl": "tiny-random-qwen3-vl"}
QUESTION = "What is happening in this video?"


@pytest.fixture(scope="module", params=FAMILIES)
def checkpoint(request, tmp_path_factory):
    from videollm.backbones.qwen_vl_tiny import save_checkpoint

    return request.param, save_checkpoint(tmp_path_factory.mktemp(request.param), request.param)


def _frames(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 255, (n, 90, 120, 3), dtype=torch.uint8, generator=g)


def _reference(directory, frames: torch.Tensor, fps: float, max_new_tokens: int):
    """transformers alone: processor (with the frames' real times) → model → greedy generate."""
    transformers = require("transformers")
    from transformers.video_utils import VideoMetadata

    proc = transformers.AutoProcessor.from_pretrained(directory)
    model = transformers.AutoModelForImageTextToText.from_pretrained(directory, dtype=torch.float32).eval()
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": QUESTION}]}]
    text = proc.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    n = frames.shape[0]
    meta = [VideoMetadata(total_num_frames=n, fps=fps, frames_indices=list(range(n)))]
    enc = proc(text=[text], videos=[frames.numpy()], video_metadata=meta, do_sample_frames=False, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
    return model, enc, out[0, enc["input_ids"].shape[1]:].tolist()


@pytest.mark.parametrize("num_frames, fps", [(6, 2.0), (5, 2.0), (6, 0.1), (32, 2.0)])
def test_uniform_all_frames_equals_transformers(checkpoint, num_frames, fps):
    """A directory videollm did not write loads with `--model DIR`; prompt ids (via embeddings), visual
    embeddings, 3-D positions and greedy answer ids equal transformers' processor + generate (odd frame
    counts: the last frame is repeated, as the reference processor pads)."""
    from videollm.backbones import load_backbone
    from videollm.compressors import create_compressor
    from videollm.runtime.generation import GenerationConfig, generate
    from videollm.video import Video

    family, directory = checkpoint
    backbone = load_backbone(str(directory), device="cpu", dtype="float32")
    assert type(backbone).__name__ == "QwenVLBackbone" and backbone.model_type == family
    # fps 0.1, and 32 frames (16 groups, the tower in two chunks of 16 frames): temporal positions run past
    # the text's, so transformers' rope_deltas is not the decode offset
    frames = _frames(num_frames)
    video = Video.from_frames(frames, fps=fps)
    visual = create_compressor("uniform", backbone)(video, query=QUESTION, budget=None)
    inputs = backbone.build_inputs(QUESTION, visual)
    ours = generate(backbone, inputs.embeds, GenerationConfig(max_new_tokens=10)).token_ids

    model, enc, ref = _reference(directory, frames, fps, 10)
    ids = enc["input_ids"]
    embeds = model.get_input_embeddings()(ids)
    feats = model.model.get_video_features(enc["pixel_values_videos"], enc["video_grid_thw"]).pooler_output
    embeds[0, ids[0] == model.config.video_token_id] = torch.cat(list(feats))
    assert inputs.embeds.shape == embeds.shape
    assert torch.equal(inputs.embeds, embeds.detach())
    assert visual.num_tokens == int((ids[0] == model.config.video_token_id).sum())
    extra = {"second_per_grid_ts": enc["second_per_grid_ts"]} if "second_per_grid_ts" in enc else {}
    positions, delta = model.model.get_rope_index(ids, enc["mm_token_type_ids"], None, enc["video_grid_thw"],
                                                  attention_mask=enc["attention_mask"], **extra)
    plan = backbone._find_plan(inputs.embeds)
    assert torch.equal(plan.positions, positions[:, 0])
    # decoding goes on from the last prompt position + 1 (what `generate` does); the same as rope_deltas
    # unless the temporal positions run past the text's (fps 0.1)
    assert plan.delta == int(positions[:, 0, -1].max()) + 1 - ids.shape[1]
    past_text = int(positions.max()) > int(positions[:, 0, -1].max())  # Qwen3-VL: never, time is in text
    assert past_text == (family == "qwen2_5_vl" and (fps < 1 or num_frames > 8))
    assert (plan.delta == int(delta)) != past_text
    assert len(set(ref)) > 1, "a degenerate reference would prove nothing"
    assert ours == ref


def test_qwen25_time_positions_follow_real_timestamps():
    """Qwen2.5-VL: group k's temporal position is ⌊(its first frame's time − the first frame's time) ·
    tokens_per_second⌋, so frames 1 s apart sit 2 temporal positions apart per frame at tokens_per_second 2."""
    from videollm.backbones import load_backbone
    from videollm.compressors import create_compressor
    from videollm.video import Video

    bb = load_backbone("tiny-random-qwen2.5-vl")
    for fps, step in ((2.0, 2), (1.0, 4)):  # a group spans 2 frames: 1 s at 2 fps, 2 s at 1 fps
        video = Video.from_frames(_frames(6), fps=fps)
        visual = create_compressor("uniform", bb)(video, budget=None)
        plan = bb._find_plan(bb.build_inputs("Q?", visual).embeds)
        t = plan.positions[0][torch.nonzero(plan.positions[1] != plan.positions[0]).flatten()]
        starts = sorted(set(t.tolist()))
        assert [b - a for a, b in zip(starts, starts[1:])] == [step, step]


def test_pooled_token_positions_are_cell_centres():
    from videollm.backbones.qwen_vl import token_positions
    from videollm.types import VisualTokens

    # a frame pooled to a 2×2 grid from 4×4: cells centred at rows/cols 0.5 and 2.5, rounded down
    vt = VisualTokens(torch.zeros(4, 8), torch.tensor([2, 2, 2, 2]), torch.full((4,), -1), torch.zeros(4), 4)
    pos = token_positions(vt, (4, 4))
    assert pos[:, 0].tolist() == [2, 2, 2, 2]
    assert pos[:, 1].tolist() == [0.5, 0.5, 2.5, 2.5] and pos[:, 2].tolist() == [0.5, 2.5, 0.5, 2.5]
    vt.positions = torch.tensor([[0.0, 5, 6]] * 4)  # a compressor's own positions win
    assert token_positions(vt, (4, 4))[:, 1].tolist() == [5, 5, 5, 5]


@pytest.mark.parametrize("family", FAMILIES)
def test_lean_decode_step_matches_transformers_with_rope_offset(family):
    """After a 3-D positioned prefill, one decode step at position cache length + rope_deltas: the lean step
    and transformers' forward (with those positions) agree."""
    from transformers.cache_utils import DynamicCache

    from videollm.backbones import load_backbone
    from videollm.runtime import decode_step

    bb = load_backbone(PRESET[family])
    lm = bb.model.model.language_model
    assert decode_step.LeanStep.build(lm) is not None
    x = torch.randn(1, 7, bb.hidden_size)
    pos = torch.tensor([[0, 1, 2, 2, 3, 9, 10]] * 3)
    pos[1, 3], pos[2, 4] = 4, 5
    step = torch.randn(1, 1, bb.hidden_size)
    offset = 10 + 1 - 7
    outs = []
    for lean in (True, False):
        cache = DynamicCache(config=lm.config)
        with torch.inference_mode():
            lm(inputs_embeds=x, position_ids=pos[:, None], cache=cache, use_cache=True)
            if lean:
                h, _ = decode_step.forward_last(lm, step, cache, position_offset=offset)
            else:
                p = torch.full((3, 1, 1), 7 + offset)
                h = lm(inputs_embeds=step, position_ids=p, cache=cache, use_cache=True).last_hidden_state[:, -1:]
        outs.append(h)
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("compressor", ["uniform", "pool", "longvu", "storm", "tempo"])
def test_every_compressor_holds_its_budget(family, compressor, short_video):
    from videollm.pipeline import VideoQAPipeline
    from videollm.video import SamplingConfig

    pipe = VideoQAPipeline.from_pretrained(PRESET[family], compressor=compressor, budget=40, device="cpu",
                                           dtype="float32", sampling=SamplingConfig(num_frames=8))
    ans = pipe(short_video, "What is shown?", generation=None)
    assert 0 < ans.visual_tokens <= 40
    assert ans.text is not None and ans.generated_tokens >= 1


@pytest.mark.parametrize("family", FAMILIES)
def test_ask_many_and_prefix_reuse_give_the_same_answers(family, short_video, monkeypatch):
    """ask_many (features encoded once, the prompt prefix's KV reused with its rope offset) answers as
    separate calls with no prefix reuse do."""
    from videollm.pipeline import VideoQAPipeline
    from videollm.runtime import prefix_cache
    from videollm.runtime.generation import GenerationConfig
    from videollm.video import SamplingConfig

    pipe = VideoQAPipeline.from_pretrained(PRESET[family], device="cpu", dtype="float32",
                                           sampling=SamplingConfig(num_frames=6))
    gen = GenerationConfig(max_new_tokens=6)
    questions = ["What is shown?", "Where is the cat in this video?"]
    many = pipe.ask_many(short_video, questions, generation=gen)
    assert prefix_cache.default_prefix_cache()._get(pipe.backbone) is not None  # the prefix was stored
    monkeypatch.setenv(prefix_cache.ENV, "0")
    alone = [pipe(short_video, q, generation=gen) for q in questions]
    assert [a.text for a in many] == [a.text for a in alone]


@pytest.mark.parametrize("family", FAMILIES)
def test_cli_model_directory(family, tmp_path, short_video, capsys):
    """`--model DIR` on a checkpoint directory videollm did not write."""
    from videollm.backbones.qwen_vl_tiny import save_checkpoint
    from videollm.cli import main

    directory = save_checkpoint(tmp_path / "ckpt", family)
    rc = main(["ask", str(short_video), "What is shown?", "--model", str(directory), "--frames", "4",
               "--max-new-tokens", "3", "--compressor", "pool", "--budget", "16", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert 0 < out["visual_tokens"] <= 16 and out["model"] == str(directory)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", ["direct", "think", "auto"])
@pytest.mark.parametrize("quant", ["none", "int4"])
def test_cli_every_mode_with_and_without_int4(family, mode, quant, short_video, capsys):
    from videollm.cli import main

    args = ["ask", str(short_video), "What is shown?", "--model", PRESET[family], "--frames", "6",
            "--max-new-tokens", "4", "--reasoning", mode, "--options", "a dog", "a cat", "--json"]
    if quant != "none":
        args += ["--quant", quant, "--vision-quant", "int8"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == PRESET[family] and out["visual_tokens"] > 0


def test_videoauto_r1_presets_pick_their_released_threshold(short_video, monkeypatch):
    """The VideoAuto-R1 presets carry the release's thresholds (0.97 Qwen2.5-VL, 0.98 Qwen3-VL); `--reasoning
    auto` uses the backbone's unless the user sets one; backbones without one keep the default."""
    import videollm.pipeline as pipeline_module
    from videollm.backbones import PRESETS, list_models
    from videollm.backbones.qwen_vl import VIDEOAUTO_R1
    from videollm.backbones.qwen_vl_tiny import build_tiny_qwen25
    from videollm.config import PipelineConfig
    from videollm.runtime.generation import GenerationConfig
    from videollm.video import SamplingConfig

    names = [n for n in list_models() if "videoauto-r1" in n]
    assert {PRESETS.get(n).model_id for n in names} == set(VIDEOAUTO_R1)
    assert VIDEOAUTO_R1["IVUL-KAUST/VideoAuto-R1-Qwen2.5-VL-7B"] == 0.97
    assert VIDEOAUTO_R1["IVUL-KAUST/VideoAuto-R1-Qwen3-VL-8B"] == 0.98
    seen: list[object] = []
    real = pipeline_module.run_mode

    def spy(mode, backbone, question, visual, generation, config, **kwargs):
        seen.append(config.threshold_for(backbone))  # the typed config, resolved against the backbone
        return real(mode, backbone, question, visual, generation, config, **kwargs)

    monkeypatch.setattr(pipeline_module, "run_mode", spy)
    bb = build_tiny_qwen25()
    gen = GenerationConfig(max_new_tokens=4)
    cfg = PipelineConfig(model="x", sampling=SamplingConfig(num_frames=4), reasoning="auto")
    pipeline_module.VideoQAPipeline(bb, cfg)(short_video, "What?", generation=gen)
    bb.reasoning_preset = {"format": "videoauto-r1", "confidence_threshold": 0.98}
    pipeline_module.VideoQAPipeline(bb, cfg)(short_video, "What?", generation=gen)
    cfg = PipelineConfig(model="x", sampling=SamplingConfig(num_frames=4), reasoning="auto",
                         reasoning_options={"threshold": 0.5})
    pipeline_module.VideoQAPipeline(bb, cfg)(short_video, "What?", generation=gen)
    assert seen == [0.97, 0.98, 0.5]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("question_first", [False, True])
def test_prefix_then_suffix_prefill_equals_one_prefill(family, question_first):
    """The prefix cache's split prefill (stored prefix KV, then the rest) gives the one-pass logits, also when
    temporal positions run past the text's (a slow video) and when the visual tokens are in the suffix."""
    from videollm.backbones import load_backbone
    from videollm.compressors import create_compressor
    from videollm.video import Video

    bb = load_backbone(PRESET[family])
    if question_first:
        bb.chat_template = bb.chat_template.replace(
            "{% for part in message['content'] %}", "{% for part in message['content'] | reverse %}")
    visual = create_compressor("uniform", bb)(Video.from_frames(_frames(6), fps=0.1), budget=None)
    inputs = bb.build_inputs("Where is the cat?", visual)
    assert 0 < inputs.prefix_len < inputs.embeds.shape[1]
    whole, _ = bb.lm_forward(inputs.embeds)
    _, cache = bb.lm_forward(inputs.embeds[:, : inputs.prefix_len])
    split, _ = bb.lm_forward(inputs.embeds[:, inputs.prefix_len:], cache)
    torch.testing.assert_close(split, whole, rtol=1e-4, atol=1e-4)


def test_directory_without_processor_is_one_error_line(tmp_path, short_video, capsys):
    """A qwen2_5_vl directory missing its processor files fails with one `error:` line, exit 2."""
    from videollm.backbones.qwen_vl_tiny import save_checkpoint
    from videollm.cli import main

    directory = save_checkpoint(tmp_path / "ckpt", "qwen2_5_vl")
    for name in ("preprocessor_config.json", "video_preprocessor_config.json", "processor_config.json"):
        (directory / name).unlink(missing_ok=True)
    rc = main(["ask", str(short_video), "What?", "--model", str(directory), "--frames", "4"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("error:") == 1 and "Traceback" not in err
