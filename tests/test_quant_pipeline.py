"""Quantized tiny-random backbones end to end: API, CLI, error bounds, save/load, QAT, optional engines."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from videollm.backbones.llava_onevision import LlavaOneVisionBackbone
from videollm.backbones.quantized import load_quantized, save_quantized
from videollm.quant import QuantLinear, quantize_backbone
from videollm.quant import io as qio
from videollm.quant.report import backbone_logits_fn, module_bytes, quantize_backbone_with_report

SCHEMES = ["int8", "int4", "int3", "int2", "ternary", "int1"]


def clone(backbone: LlavaOneVisionBackbone) -> LlavaOneVisionBackbone:
    return LlavaOneVisionBackbone(copy.deepcopy(backbone.model), backbone.tokenizer, name=backbone.name,
                                  chat_template=backbone.chat_template, notice=backbone.notice)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_quantized_pipeline_answers_through_api(tiny_backbone, short_video, scheme):
    from videollm.config import PipelineConfig
    from videollm.pipeline import VideoQAPipeline
    from videollm.runtime.generation import GenerationConfig
    from videollm.video import SamplingConfig

    bb = clone(tiny_backbone)
    before = module_bytes(bb.model)
    done = quantize_backbone(bb, llm=scheme, vision=scheme, group_size=32)
    assert len(done.llm_layers) == 14 and len(done.vision_layers) == 14  # 2 layers × 6 + the pooling head's MLP
    assert isinstance(bb.model.model.language_model.layers[0].mlp.down_proj, QuantLinear)
    assert isinstance(bb.model.lm_head, QuantLinear)  # the head is quantized by default (int8 or int4)
    assert bb.model.lm_head.scheme == ("int8" if scheme == "int8" else "int4") and done.head == bb.model.lm_head.scheme
    assert module_bytes(bb.model) < before
    cfg = PipelineConfig(model="tiny-random", sampling=SamplingConfig(num_frames=4),
                         generation=GenerationConfig(max_new_tokens=4))
    ans = VideoQAPipeline(bb, cfg)(short_video, "What is shown?", ["A. a", "B. b"])
    assert ans.generated_tokens >= 1 and ans.visual_tokens > 0


@pytest.mark.parametrize("scheme", SCHEMES)
def test_quantized_pipeline_answers_through_cli(short_video, capsys, scheme):
    from videollm.cli import main

    rc = main(["ask", str(short_video), "What is shown?", "--model", "tiny-random", "--quant", scheme,
               "--vision-quant", scheme, "--quant-group-size", "32", "--frames", "4", "--max-new-tokens", "3",
               "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["generated_tokens"] >= 1


def test_error_bounds_int8_and_int4(tiny_backbone, one_thread):
    r8 = quantize_backbone_with_report(clone(tiny_backbone), llm="int8", group_size=32)
    assert r8.positions > 100
    assert r8.top1_agreement >= 0.9  # int8 keeps the float model's top-1 token on most positions
    r4 = quantize_backbone_with_report(clone(tiny_backbone), llm="int4", group_size=32)
    assert r4.mean_kl < 0.01  # stated bound: int4 mean next-token KL below 0.01 nats on tiny-random
    r2 = quantize_backbone_with_report(clone(tiny_backbone), llm="int2", group_size=32)
    assert r8.mean_kl < r4.mean_kl < r2.mean_kl  # error grows as bits shrink
    assert r8.llm_bytes_after > r4.llm_bytes_after > r2.llm_bytes_after
    assert {row["scheme"] for row in r4.layers if row["name"].startswith("language_model.")} == {"int4"}


def test_save_load_gives_identical_logits(tiny_backbone, tmp_path):
    bb = clone(tiny_backbone)
    done = quantize_backbone(bb, llm="int4", vision="ternary", group_size=32)
    assert not hasattr(bb, "quantization")  # the record is returned, not written onto the model
    save_quantized(bb, tmp_path / "q", done)
    assert qio.read_manifest(tmp_path / "q")["quantization"]["vision"] == "ternary"
    loaded = load_quantized(tmp_path / "q")
    assert isinstance(loaded.model.model.vision_tower.encoder.layers[0].mlp.fc1, QuantLinear)
    down = loaded.model.model.language_model.layers[0].mlp.down_proj
    assert down.zero is not None  # int4 defaults to asymmetric; zero points survive the file
    assert torch.equal(down.zero, bb.model.model.language_model.layers[0].mlp.down_proj.zero)
    ids = torch.tensor([[3, 17, 42, 99, 7, 250]])
    assert torch.equal(backbone_logits_fn(bb)(ids), backbone_logits_fn(loaded)(ids))
    frames = torch.randint(0, 255, (2, 64, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(bb.encode_frames(frames), loaded.encode_frames(frames))
    assert (tmp_path / "q" / "quantized.safetensors").stat().st_size < module_bytes(tiny_backbone.model)


def test_quantize_cli_saves_and_reports(tmp_path, capsys):
    from videollm.cli import main

    rc = main(["quantize", "--model", "tiny-random", "--quant", "int8", "--vision-quant", "int4",
               "--quant-group-size", "32", "-o", str(tmp_path / "m"), "--json"])
    assert rc == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["llm_bytes_after"] < rep["llm_bytes_before"] and rep["top1_agreement"] >= 0.9
    assert qio.read_manifest(tmp_path / "m")["quantization"]["vision"] == "int4"


def test_bad_scheme_is_a_user_error(tiny_backbone):
    from videollm.errors import InvalidRequestError

    with pytest.raises(InvalidRequestError):
        quantize_backbone(clone(tiny_backbone), llm="int5")
    with pytest.raises(InvalidRequestError):
        quantize_backbone(clone(tiny_backbone), llm="int4", head="int5")


@pytest.fixture()
def one_thread():
    """Tiny autograd ops run ~15× faster without intra-op threads on a 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_qat_step_lowers_distillation_loss(tiny_backbone, one_thread):
    from videollm.quant import WeightQuantConfig
    from videollm.quant.qat import (
        QATConfig,
        TextLM,
        convert_qat,
        distillation_loss,
        generate_distillation_data,
        prepare_qat,
        train_qat,
    )

    model = copy.deepcopy(tiny_backbone.model)
    lm = model.model.language_model
    teacher = TextLM(model.get_input_embeddings(), copy.deepcopy(lm), model.lm_head)
    student = TextLM(model.get_input_embeddings(), lm, model.lm_head)
    for p in student.parameters():
        p.requires_grad_(False)
    names = prepare_qat(lm, WeightQuantConfig("int2", group_size=32))
    assert len(names) == 14
    data = generate_distillation_data(teacher, model.lm_head.out_features, num_sequences=8, length=12, seed=0)
    assert data.shape == (8, 12)
    with torch.no_grad():
        before = float(distillation_loss(student(data), teacher(data)))
    from accelerate import Accelerator

    losses = train_qat(student, teacher, data, QATConfig(steps=12, lr=2e-3, batch_size=8), Accelerator(cpu=True))
    with torch.no_grad():
        after = float(distillation_loss(student(data), teacher(data)))
    assert after < before and losses[-1] < losses[0]
    convert_qat(lm)
    assert isinstance(lm.layers[0].self_attn.q_proj, QuantLinear)
    with torch.no_grad():
        packed = float(distillation_loss(student(data), teacher(data)))
    assert packed == pytest.approx(after, rel=0.05, abs=1e-4)  # packing keeps what QAT learned


def test_quanto_backend_int8(tiny_backbone):
    pytest.importorskip("optimum.quanto")
    bb = clone(tiny_backbone)
    rep = quantize_backbone_with_report(bb, llm="int8", group_size=32, backend="quanto")
    assert rep.top1_agreement >= 0.9 and rep.llm_bytes_after < rep.llm_bytes_before
    assert any(row["engine"] == "quanto" for row in rep.layers)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_torchao_backend_on_cuda():
    pytest.importorskip("torchao")
    from videollm.backbones.tiny import build_tiny_random

    for scheme in ("int8", "int4"):
        bb = build_tiny_random(device="cuda", dtype="bfloat16")
        rep = quantize_backbone_with_report(bb, llm=scheme, group_size=32)
        assert any(row["engine"].startswith("torchao") for row in rep.layers)
        assert rep.top1_agreement >= 0.8
    bb = build_tiny_random(device="cuda", dtype="bfloat16")  # tinygemm has zero points: symmetric stays native
    rep = quantize_backbone_with_report(bb, llm="int4", group_size=32, symmetric=True)
    assert {row["engine"] for row in rep.layers if row["name"].startswith("language_model.layers")} == {
        "native:dequant"
    }
    assert rep.top1_agreement >= 0.8
