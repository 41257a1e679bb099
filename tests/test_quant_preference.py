"""A model's own quantization defaults (`SupportsQuantPreference`): used when no group size is given, beaten
by an explicit one, recorded in the load report, and part of the model cache's key."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from videollm.cli import main
from videollm.config import PipelineConfig
from videollm.models import clear_models, get_model, get_model_like, load_count, load_report, prepare_model
from videollm.pipeline import VideoQAPipeline
from videollm.protocols import (
    DEFAULT_QUANT_PREFERENCE,
    QuantPreference,
    SupportsQuantPreference,
    quant_preference,
)
from videollm.quant.linear import QuantLinear

PREFERRED = QuantPreference(group_size=16, head="int8")
NAME = "pref-tiny"


def with_preference(backbone: object, preference: QuantPreference = PREFERRED) -> object:
    """A copy of `backbone` whose class states `preference` (a subclass: Protocol checks are per class)."""
    cls = type("PreferringBackbone", (type(backbone),), {"quant_preference": lambda self, llm: preference})
    out = copy.deepcopy(backbone)
    out.__class__ = cls
    return out


def llm_groups(backbone) -> set[int]:
    return {m.group for m in backbone.quantizable_modules()["llm"].modules() if isinstance(m, QuantLinear)}


def head_scheme(backbone) -> str | None:
    head = backbone.causal_lm().get_output_embeddings()
    return head.scheme if isinstance(head, QuantLinear) else None


@pytest.fixture
def fresh():
    clear_models(NAME)
    yield
    clear_models(NAME)


def test_preference_is_found_through_the_protocol(tiny_backbone):
    pref = with_preference(tiny_backbone)
    assert isinstance(pref, SupportsQuantPreference) and not isinstance(tiny_backbone, SupportsQuantPreference)
    assert quant_preference(pref, "int4") == PREFERRED
    assert quant_preference(tiny_backbone, "int4") == DEFAULT_QUANT_PREFERENCE == QuantPreference(128, "auto")


def test_default_load_uses_the_models_group_and_head(tiny_backbone, fresh):
    model = get_model(NAME, device="cpu", quant="int4", loader=lambda: with_preference(tiny_backbone))
    assert llm_groups(model) == {16} and head_scheme(model) == "int8"
    report = load_report(model)
    assert (report.group_size, report.head) == (16, "int8")
    assert (report.quantization.group_size, report.quantization.head) == (16, "int8")
    assert report.settings() == {"device": "cpu", "dtype": "auto", "quant": "int4", "group_size": 16, "head": "int8"}
    # asking for what the default resolved to is the same entry; loading it like itself too
    assert get_model(NAME, device="cpu", quant="int4", group_size=16) is model
    assert get_model(NAME, device="cpu", quant="int4", group_size=16, head="int8") is model
    assert get_model_like(NAME, model) is model
    assert load_count(NAME, device="cpu", quant="int4") == 1


def test_explicit_group_size_wins_and_is_another_entry(tiny_backbone, fresh):
    load = lambda: with_preference(tiny_backbone)  # noqa: E731
    default = get_model(NAME, device="cpu", quant="int4", loader=load)
    explicit = get_model(NAME, device="cpu", quant="int4", group_size=32, loader=load)
    per_row = get_model(NAME, device="cpu", quant="int4", group_size=0, loader=load)
    assert explicit is not default and per_row is not default and per_row is not explicit
    assert llm_groups(explicit) == {32} and head_scheme(explicit) == "int8"  # the head is still the model's
    assert llm_groups(per_row) == {64, 128}  # one group = the whole row (K is 64 or 128)
    assert load_report(explicit).group_size == 32 and load_report(per_row).group_size == 0
    assert load_report(default).feature_tag() != load_report(explicit).feature_tag()  # feature cache keeps both
    explicit_head = get_model(NAME, device="cpu", quant="int4", head="int4", loader=load)
    assert explicit_head is not default and head_scheme(explicit_head) == "int4" and llm_groups(explicit_head) == {16}


def test_model_without_a_preference_keeps_group_128_and_auto_head(tiny_backbone, fresh):
    model = get_model(NAME, device="cpu", quant="int4", loader=lambda: copy.deepcopy(tiny_backbone))
    report = load_report(model)
    assert (report.group_size, report.head, report.quantization.head) == (128, "auto", "int4")
    assert llm_groups(model) == {64, 128}  # group 128, narrower layers one group per row


def test_prepare_model_resolves_the_preference_too(tiny_backbone):
    model = with_preference(tiny_backbone)
    report = prepare_model(model, NAME, quant="int4")
    assert (report.group_size, report.head) == (16, "int8") and llm_groups(model) == {16}


def test_pipeline_config_defaults_to_the_models_group():
    cfg = PipelineConfig(model="tiny-random", quant="int4")
    assert cfg.validate().quant_group_size is None
    assert "group_size" not in VideoQAPipeline.model_settings(cfg)
    assert VideoQAPipeline.model_settings(cfg.replace(quant_group_size=0))["group_size"] == 0
    assert VideoQAPipeline.model_settings(cfg.replace(quant_group_size=128))["group_size"] == 128


@pytest.mark.parametrize("argv,group", [((), 16), (("--quant-group-size", "32"), 32), (("--quant-group-size", "128"),
                                                                                        128)])
def test_cli_default_is_the_models_group(short_video, capfd, monkeypatch, tiny_backbone, argv, group):
    import videollm.backbones as backbones

    loaded = []

    def load(*a, **k):
        loaded.append(with_preference(tiny_backbone))
        return loaded[-1]

    monkeypatch.setattr(backbones, "load_backbone", load)
    clear_models("tiny-random")
    try:
        rc = main(["ask", str(short_video), "what?", "--model", "tiny-random", "--frames", "2", "--max-new-tokens",
                   "2", "--quant", "int4", "--json", *argv])
        out, err = capfd.readouterr()
        report = load_report(loaded[0])
    finally:
        clear_models("tiny-random")
    assert rc == 0, err
    assert json.loads(out)["text"] is not None
    expect = {group} if group < 128 else {64, 128}
    assert llm_groups(loaded[0]) == expect and report.group_size == group and head_scheme(loaded[0]) == "int8"


def test_cli_help_says_the_default_is_the_models(capfd):
    with pytest.raises(SystemExit):
        main(["ask", "--help"])
    out = " ".join(capfd.readouterr().out.split())
    assert "--quant-group-size" in out and "the model's own" in out


@torch.inference_mode()
def test_quantize_command_uses_the_preference(monkeypatch, capfd, tiny_backbone):
    import videollm.backbones as backbones

    loaded = []

    def load(*a, **k):
        loaded.append(with_preference(tiny_backbone))
        return loaded[-1]

    monkeypatch.setattr(backbones, "load_backbone", load)
    rc = main(["quantize", "--model", "tiny-random", "--quant", "int4", "--no-eval", "--json"])
    out, err = capfd.readouterr()
    assert rc == 0, err
    assert json.loads(out)["group_size"] == 16 and llm_groups(loaded[0]) == {16}


def test_group_32_asymmetric_int4_recovers_q4_1_codes():
    """videollm-mini's reason for group 32: on Q4_1 blocks (value = d·q + m over 32 columns, codes 0 and 15
    used), min/max int4 over the same 32 columns gives back every code; only the bfloat16 scale/zero differ."""
    from videollm.quant.paretoq import quantize_int4_asym

    g = torch.Generator().manual_seed(0)
    n, k = 64, 256
    q = torch.randint(0, 16, (n, k), generator=g)
    q[:, ::32], q[:, 1::32] = 0, 15  # each block spans the whole grid, as llama.cpp's Q4_1 blocks do
    d = (torch.rand(n, k // 32, 1, generator=g) * 0.01 + 1e-3).half().float()
    m = (-8 * d * (1 + 0.2 * torch.rand(n, k // 32, 1, generator=g))).half().float()
    w = (q.view(n, k // 32, 32) * d + m).half().float().view(n, k)
    codes, scale, zero = quantize_int4_asym(w, 32)
    assert torch.equal(codes.long(), q)
    err = (((codes.float() - 8).view(n, -1, 32) * scale[..., None] + zero[..., None]) - w.view(n, -1, 32)).abs() / d
    assert err.max() < 0.08 and err.mean() < 0.02  # bfloat16 scale and zero: a few percent of the step
    codes128, _, _ = quantize_int4_asym(w, 128)
    assert not torch.equal(codes128.long(), q)  # four blocks under one grid: codes move


def test_eval_fingerprint_keeps_float_runs_resumable_and_tells_quantized_defaults_apart():
    """Float runs recorded group 128 before the default became the model's: with nothing quantized the group
    changes nothing and is still recorded as 128; a quantized run records the model's default as None."""
    float_cfg = PipelineConfig(model="tiny-random")
    assert float_cfg.fingerprint()["quant_group_size"] == 128
    assert float_cfg.replace(quant_group_size=64).fingerprint() == float_cfg.fingerprint()
    q = float_cfg.replace(quant="int4")
    assert q.fingerprint()["quant_group_size"] is None
    assert q.replace(quant_group_size=128).fingerprint() != q.fingerprint()


def test_releasing_the_default_entry_forgets_it_under_its_resolved_key_too(tiny_backbone, fresh):
    from videollm.models import cached_models, is_cached, release_model

    get_model(NAME, device="cpu", quant="int4", loader=lambda: with_preference(tiny_backbone))
    assert is_cached(NAME, device="cpu", quant="int4", group_size=16)
    assert cached_models().count(NAME) == 1  # one model, however many keys find it
    assert release_model(NAME, device="cpu", quant="int4", group_size=None)
    assert not is_cached(NAME, device="cpu", quant="int4", group_size=16) and NAME not in cached_models()
