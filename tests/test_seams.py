"""The seams STORM and Tempo plug into: capabilities, compressors with weights, the model cache, early errors."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from videollm.compressors import COMPRESSORS, create_compressor
from videollm.compressors.base import CompressorConfig, WeightedCompressor, pack
from videollm.errors import InvalidRequestError
from videollm.protocols import (
    LanguageModel,
    PromptBuilder,
    SupportsChoiceScoring,
    SupportsQuantization,
    VideoLanguageModel,
    VisionTower,
    quant_role,
)
from videollm.video import Video


# ---- capabilities ---------------------------------------------------------------------------------------
def test_backbone_capabilities_are_checkable(tiny_backbone):
    for cap in (LanguageModel, VisionTower, PromptBuilder, VideoLanguageModel, SupportsQuantization):
        assert isinstance(tiny_backbone, cap), cap
    assert not isinstance(tiny_backbone, SupportsChoiceScoring)  # optional: only videollm-mini offers it
    assert set(tiny_backbone.quantizable_modules()) == {"llm", "vision"}
    assert quant_role("llm") == "llm" and quant_role("svlm.llm") == "llm" and quant_role("encoder") == "vision"


def test_iter_frame_features_are_pre_projector(tiny_backbone):
    frames = torch.randint(0, 255, (5, 64, 64, 3), dtype=torch.uint8)
    comp = create_compressor("uniform", tiny_backbone, chunk_size=2)
    video = Video.from_frames(frames)
    chunks = list(comp.iter_frame_features(video, np.array([0, 2, 3, 4])))
    assert [c[0].tolist() for c in chunks] == [[0, 2], [3, 4]]
    feats = torch.cat([c[1] for c in chunks])
    h, w = tiny_backbone.frame_grid
    assert feats.ndim == 4 and feats.shape[1] > h  # the tower's patch grid, before the projector's pooling
    toks = torch.cat([t for _, t in comp.iter_frame_tokens(video, np.array([0, 2, 3, 4]))])
    assert torch.allclose(tiny_backbone.project(feats), toks, atol=1e-5)
    assert torch.equal(video.read(np.array([2, 4])).frames, frames[[2, 4]])


# ---- a compressor with weights ----------------------------------------------------------------------------
@dataclass
class ToyConfig(CompressorConfig):
    hidden: int = 8
    tokens_per_frame: int = 2

    def validate(self) -> None:
        super().validate()
        if self.hidden < 1:
            raise InvalidRequestError("toy: hidden must be >= 1")


class ToyTemporal(WeightedCompressor):
    """A STORM-shaped stand-in: features → a small trained module → project → pool; identity at init."""

    name = "toy-temporal"
    config_class = ToyConfig
    config: ToyConfig

    def __init__(self, backbone, config=None, **overrides):
        super().__init__(backbone, config, **overrides)
        dv = int(backbone.encode_frames(torch.zeros(1, 32, 32, 3, dtype=torch.uint8)).shape[-1])
        self.encoder = torch.nn.Sequential(torch.nn.Linear(dv, self.config.hidden), torch.nn.GELU(),
                                           torch.nn.Linear(self.config.hidden, dv))
        torch.nn.init.zeros_(self.encoder[2].weight)  # starts as an identity: an untrained encoder changes nothing
        torch.nn.init.zeros_(self.encoder[2].bias)

    def compress(self, video, query, budget):
        tokens, frames = [], []
        for pos, feats in self.iter_frame_features(video):
            x = feats.to(next((p.dtype for p in self.parameters()), torch.float32))
            x = (x + self.encoder(x)).to(self.backbone.dtype)
            pooled = torch.nn.functional.adaptive_avg_pool2d(self.backbone.project(x).permute(0, 3, 1, 2), (1, 2))
            for i, t in zip(pos.tolist(), pooled.flatten(2).transpose(1, 2)):
                tokens.append(t)
                frames.append(i)
        return pack(tokens, frames, video.timestamps, len(video))


@pytest.fixture
def toy_registered():
    COMPRESSORS.register("toy-temporal", ToyTemporal)
    yield
    COMPRESSORS.unregister("toy-temporal")


def test_weighted_compressor_saves_reloads_and_moves_dtype(tiny_backbone, tmp_path, toy_registered):
    comp = create_compressor("toy-temporal", tiny_backbone, hidden=6)
    assert isinstance(comp, torch.nn.Module) and "backbone" not in dict(comp.named_children())
    with torch.no_grad():
        for p in comp.parameters():
            p.copy_(torch.randn_like(p))
    video = Video.from_frames(torch.randint(0, 255, (3, 48, 48, 3), dtype=torch.uint8))
    out = comp(video, budget=6)
    comp.save_pretrained(tmp_path / "f32")
    again = create_compressor("toy-temporal", tiny_backbone, weights=tmp_path / "f32")
    assert again.config.hidden == 6 and set(again.state_dict()) == set(comp.state_dict())
    for k, v in comp.state_dict().items():
        assert torch.equal(again.state_dict()[k], v)
    assert torch.allclose(again(video, budget=6).embeds, out.embeds)

    comp.to(torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in comp.parameters())
    comp.save_pretrained(tmp_path / "bf16")
    half = ToyTemporal.from_pretrained(tmp_path / "bf16", tiny_backbone)
    assert all(p.dtype == torch.bfloat16 for p in half.parameters())
    for k, v in comp.state_dict().items():
        assert torch.equal(half.state_dict()[k], v)
    assert torch.allclose(half(video, budget=6).embeds.float(), out.embeds.float(), atol=0.1, rtol=0.05)
    with pytest.raises(InvalidRequestError, match="has no weights"):
        create_compressor("longvu", tiny_backbone, weights=tmp_path / "f32")

    class Other(ToyTemporal):
        name = "other"

    with pytest.raises(InvalidRequestError, match="holds a 'toy-temporal'"):
        Other.from_pretrained(tmp_path / "f32", tiny_backbone)
    with pytest.raises(InvalidRequestError, match="not a saved compressor"):
        ToyTemporal.from_pretrained(tmp_path, tiny_backbone)


def test_compressor_modules_are_quantized_through_the_pipeline(tiny_backbone, short_video, toy_registered):
    from videollm.config import PipelineConfig
    from videollm.models import load_report
    from videollm.pipeline import VideoQAPipeline
    from videollm.quant import QuantLinear
    from videollm.video import SamplingConfig

    cfg = PipelineConfig(model="tiny-random", compressor="toy-temporal", compressor_options={"hidden": 128},
                         vision_quant="int8", sampling=SamplingConfig(num_frames=3))
    pipe = VideoQAPipeline(tiny_backbone, cfg)
    assert isinstance(pipe.compressor.encoder[0], QuantLinear)  # the compressor's own encoder, via the seam
    report = load_report(pipe.compressor)  # what loading did is kept by the model cache, not on the compressor
    assert report is not None and report.quantization.vision_layers == ["encoder.0", "encoder.2"]
    assert not hasattr(pipe.compressor, "quantization")
    assert pipe(short_video, "What?").visual_tokens == 6


# ---- the model cache ----------------------------------------------------------------------------------------
class SecondModelUser(ToyTemporal):
    name = "second-user"

    def __init__(self, backbone, config=None, **overrides):
        from videollm.models import get_model

        super().__init__(backbone, config, **overrides)
        self.shared_model("svlm", "toy-svlm", device="cpu", quant="int8")  # not a submodule: shared, not saved
        assert get_model("toy-svlm", device="cpu", quant="int8") is self.svlm


def test_second_model_is_loaded_once_for_two_compressors(tiny_backbone):
    from videollm import models

    loads = []

    def loader(name, device, dtype, **options):
        loads.append((name, device, dtype))
        return torch.nn.Linear(4, 4)

    models.MODEL_LOADERS.register("toy-svlm", loader)
    try:
        a, b = SecondModelUser(tiny_backbone), SecondModelUser(tiny_backbone)
        assert a.svlm is b.svlm and len(loads) == 1
        assert models.load_count("toy-svlm", device="cpu", quant="int8") == 1
        assert "svlm" not in dict(a.named_children())
    finally:
        models.clear_models("toy-svlm")
        models.MODEL_LOADERS.unregister("toy-svlm")


def test_pipeline_backbone_is_shared_through_the_cache(monkeypatch):
    from videollm import backbones, models, pipeline
    from videollm.config import PipelineConfig

    calls = []
    real = backbones.load_backbone
    monkeypatch.setattr(backbones, "load_backbone", lambda *a, **k: calls.append(a) or real(*a, **k))
    models.clear_models("tiny-random")
    cfg = PipelineConfig(model="tiny-random", device="cpu", dtype="float32")
    p1 = pipeline.VideoQAPipeline.from_config(cfg)
    p2 = pipeline.VideoQAPipeline.from_config(cfg.replace(compressor="pool"))
    assert p1.backbone is p2.backbone and len(calls) == 1
    assert models.get_model("tiny-random", device="cpu", dtype="float32") is p1.backbone
    models.clear_models("tiny-random")


# ---- every user error before a model loads ------------------------------------------------------------------
@pytest.mark.parametrize("extra,needle", [
    (["--compressor-option", "nope=1"], "unknown uniform option(s) 'nope'"),
    (["--dtype", "bogus"], "unknown dtype 'bogus'"),
    (["--compressor", "pool", "--compressor-option", "tokens_per_frame=0"], "tokens_per_frame must be >= 1"),
    (["--compressor", "pool", "--compressor-option", "tokens_per_frame=x"], "tokens_per_frame='x'"),
    (["--compressor", "longvu", "--compressor-option", "dino_threshold=7"], "dino_threshold"),
    (["--compressor", "longvu", "--compressor-option", "preset=papper"], "unknown longvu preset"),
    (["--compressor", "nope"], "unknown compressor 'nope'"),
    (["--compressor-option", "novalue"], "not KEY=VALUE"),
    (["--reasoning", "ponder"], "unknown reasoning mode"),
    (["--reasoning", "auto", "--confidence-threshold", "2"], "threshold"),
    (["--model", "llava-onevsion"], "unknown model 'llava-onevsion'"),
    (["--budget", "0"], "budget"),
    (["--budget", "-5"], "budget"),
    (["--frames", "0"], "num_frames"),
    (["--max-new-tokens", "0"], "max_new_tokens"),
    (["--quant-group-size", "-1"], "group-size"),
    (["--compressor-weights", "/no/such/dir"], "not a saved compressor"),
    (["VIDEO=/definitely/missing.mp4"], "no such file"),
    (["VIDEO={txt}"], "not a video"),
])
def test_bad_input_is_refused_before_any_model_loads(extra, needle, short_video, tmp_path, capsys, monkeypatch):
    import time

    from videollm import backbones
    from videollm.cli import main

    loaded = []
    monkeypatch.setattr(backbones, "load_backbone", lambda *a, **k: loaded.append(a))
    txt = tmp_path / "notes.txt"
    txt.write_text("plain text")
    video = str(short_video)
    args = []
    for a in extra:
        if a.startswith("VIDEO="):
            video = a[6:].format(txt=txt)
        else:
            args.append(a)
    start = time.perf_counter()
    rc = main(["ask", video, "What happens?", "--model", "tiny-random", *args])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert rc == 2 and len(lines) == 1 and needle in lines[0], err
    assert "Traceback" not in err and not loaded
    assert time.perf_counter() - start < 5  # a typo costs no model load (generous: shared, busy CPU)


def test_fingerprint_is_derived_from_the_config():
    from dataclasses import fields

    from videollm.config import RUNTIME_FIELDS, PipelineConfig, fingerprint_keys

    base = PipelineConfig(model="tiny-random", compressor="pool")
    fp = base.fingerprint()
    assert set(fp) == set(fingerprint_keys())
    assert {f.name for f in fields(PipelineConfig)} - set(RUNTIME_FIELDS) <= set(fp)  # every field, by default
    assert base.replace(compressor_options={"tokens_per_frame": None}).fingerprint() == fp  # explicit default
    assert base.replace(compressor_options={"tokens_per_frame": 4}).fingerprint()["compressor_options"] == \
        {"tokens_per_frame": 4}
    assert base.replace(device="cpu").fingerprint() == fp  # where it runs does not change predictions
    assert base.replace(reasoning_options={"threshold": 0.5}).fingerprint() != fp


def test_config_tree_nests_typed_compressor_and_reasoning_configs(tiny_backbone, short_video):
    from videollm.answer.reasoning import ReasoningConfig
    from videollm.compressors.baselines import PoolConfig
    from videollm.compressors.longvu import LongVUConfig
    from videollm.config import PipelineConfig
    from videollm.pipeline import VideoQAPipeline
    from videollm.video import SamplingConfig

    typed = PipelineConfig(model="tiny-random", compressor="pool", compressor_options=PoolConfig(tokens_per_frame=4),
                           reasoning_options=ReasoningConfig(max_think_tokens=8), sampling=SamplingConfig(num_frames=3))
    as_dicts = typed.replace(compressor_options={"tokens_per_frame": 4}, reasoning_options={"max_think_tokens": 8})
    assert typed.validate().fingerprint() == as_dicts.validate().fingerprint()
    pipe = VideoQAPipeline(tiny_backbone, typed)
    assert pipe.compressor.config == PoolConfig(tokens_per_frame=4)
    assert pipe(short_video, "What?").visual_tokens == 12
    with pytest.raises(InvalidRequestError, match="takes a PoolConfig"):
        typed.replace(compressor_options=LongVUConfig()).validate()
    with pytest.raises(InvalidRequestError, match="tokens_per_frame must be >= 1"):
        typed.replace(compressor_options=PoolConfig(tokens_per_frame=0)).validate()


# ---- the Protocols are the only backbone contract (#28) ----------------------------------------------------
def test_backbone_base_class_is_defaults_implementing_the_protocols(tiny_backbone):
    from videollm.protocols import (
        AnswerStyle,
        HasCausalLM,
        SupportsBatchLogits,
        SupportsProjectorSwap,
        SupportsSequenceLogits,
        SupportsStaticDecode,
        TrainableVideoLanguageModel,
        answer_style,
        reasoning_preset,
    )

    for cap in (SupportsBatchLogits, AnswerStyle, SupportsSequenceLogits, SupportsProjectorSwap, HasCausalLM,
                SupportsStaticDecode, TrainableVideoLanguageModel):
        assert isinstance(tiny_backbone, cap), cap
    style = answer_style(tiny_backbone)
    assert style.reasons and style.repetition_guard == 0 and not style.one_sentence_answers
    assert reasoning_preset(tiny_backbone) == {}
    # the batched relevance pass (one left-padded forward) equals one `lm_forward` per prompt
    prompts = [tiny_backbone.embed_ids(list(range(5, 5 + n))) for n in (3, 7, 1)]
    batched = tiny_backbone.batch_last_logits(prompts)
    single = torch.cat([tiny_backbone.lm_forward(p[None])[0] for p in prompts])
    assert batched.shape == single.shape and torch.allclose(batched, single, atol=1e-4)
    # the training hook: every position's logits, the last one equal to lm_forward's
    with torch.enable_grad():
        seq = tiny_backbone.sequence_logits(prompts[1][None])
    assert seq.shape[:2] == (1, 7) and torch.allclose(seq[:, -1], single[1:2], atol=1e-4)
    parent, attr = tiny_backbone.projector_slot()
    assert isinstance(getattr(parent, attr), torch.nn.Module)


def test_a_stand_in_without_optional_capabilities_gets_defaults_or_a_one_line_refusal():
    from videollm.protocols import (
        DEFAULT_ANSWER_STYLE,
        SupportsSequenceLogits,
        answer_style,
        reasoning_preset,
        require,
        temporal_patch,
    )

    class StandIn:
        name = "stand-in"

    assert answer_style(StandIn()) is DEFAULT_ANSWER_STYLE and reasoning_preset(StandIn()) == {}
    assert temporal_patch(StandIn()) == 1
    with pytest.raises(InvalidRequestError, match="STORM training needs a backbone with SupportsSequenceLogits"):
        require(StandIn(), SupportsSequenceLogits, "STORM training")


#: attributes loading writes onto backbones today; the model cache's load report replaces them (#28 part 4)
_LOAD_STATE = {"quantization", "setup_warnings", "cpu_int8"}


def test_compressor_and_answer_code_check_capabilities_with_isinstance_not_getattr():
    """Compressors and the answering modes discover what a backbone offers through the runtime-checkable
    Protocols; a `getattr(backbone, "x", default)` would be a second, unwritten contract."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    files = sorted((root / "compressors").glob("*.py")) + sorted((root / "videollm" / "answer").glob("*.py"))
    found = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id in ("getattr", "hasattr") and len(node.args) >= 2):
                continue
            target = ast.unparse(node.args[0])
            attr = node.args[1].value if isinstance(node.args[1], ast.Constant) else None
            if any(w in target for w in ("backbone", "svlm")) or target == "bb":
                if attr not in _LOAD_STATE:
                    found.append(f"{path.relative_to(root)}:{node.lineno}: {ast.unparse(node)}")
    assert not found, "\n".join(found)


def test_no_backbone_or_pipeline_parameter_is_typed_any():
    """No `backbone: Any` / `pipe: Any` / `model: Any` at a seam: a Protocol or a concrete type instead."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    skip: set[str] = set()  # the model cache takes `object`: any loaded model, checked with isinstance inside
    found = []
    for folder in ("videollm", "compressors", "eval", "demo"):
        for path in sorted((root / folder).rglob("*.py")):
            rel = str(path.relative_to(root))
            if rel in skip:
                continue
            for node in ast.walk(ast.parse(path.read_text(), rel)):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    for arg in node.args.args + node.args.kwonlyargs:
                        if (arg.arg in ("backbone", "pipe", "model", "svlm") and arg.annotation is not None
                                and ast.unparse(arg.annotation) == "Any"):
                            found.append(f"{rel}:{node.lineno}: {node.name}({arg.arg}: Any)")
    assert not found, "\n".join(found)
