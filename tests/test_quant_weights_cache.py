"""The quantized-weights cache: a model that fingerprints its float weights is quantized once, and later loads
(other processes, here: after `clear_models`) read the saved layers instead of quantizing again."""
from __future__ import annotations

import copy
import json
import logging

import pytest
import torch

from videollm.models import clear_models, get_model, load_report
from videollm.protocols import SupportsWeightsFingerprint
from videollm.quant import agreement, api, weights_cache
from videollm.quant.embedding import QuantEmbedding
from videollm.quant.linear import QuantLinear

NAME = "fp-tiny"


def fingerprinted(backbone: object, fingerprint: str | None = "weights-v1") -> object:
    """A copy of `backbone` whose class states `fingerprint` (a subclass: Protocol checks are per class)."""
    cls = type("FingerprintedBackbone", (type(backbone),), {"weights_fingerprint": lambda self: fingerprint})
    out = copy.deepcopy(backbone)
    out.__class__ = cls
    return out


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VIDEOLLM_CACHE", str(tmp_path))
    monkeypatch.delenv("VIDEOLLM_QUANT_CACHE", raising=False)
    clear_models(NAME)
    yield tmp_path / "quantized"
    clear_models(NAME)


def entries(root) -> list:
    return sorted(p for p in root.iterdir() if not p.name.startswith(".")) if root.is_dir() else []


def no_quantizing(monkeypatch) -> None:
    def refuse(*a, **k):
        raise AssertionError("quantized although the cache holds this model")

    monkeypatch.setattr(weights_cache, "quantize_checked", refuse)
    monkeypatch.setattr(agreement, "quantize_checked", refuse)
    monkeypatch.setattr(api, "quantize_backbone", refuse)
    monkeypatch.setattr(agreement, "next_tokens", refuse)  # nor the probe prompts
    monkeypatch.setattr(QuantLinear, "_try", refuse)  # nor the kernel self-checks: the saved choice is replayed


def logits(model) -> torch.Tensor:
    ids = model.embed_text("what is in the video?").unsqueeze(0)
    out, _ = model.lm_forward(ids)
    return out


def quantized(model) -> dict[str, str]:
    """Quantized modules by root and name, each once (roots share modules: the causal LM holds the LLM)."""
    found, seen = {}, set()
    for root, module in weights_cache._roots(model):
        for n, m in module.named_modules():
            if isinstance(m, (QuantLinear, QuantEmbedding)) and id(m) not in seen:
                seen.add(id(m))
                found[f"{root}/{n}"] = f"{type(m).__name__}:{getattr(m, 'kernel', '')}"
    return found


def load(tiny, fingerprint="weights-v1", **kw):
    return get_model(NAME, device="cpu", quant=kw.pop("quant", "int4"),
                     loader=lambda: fingerprinted(tiny, fingerprint), **kw)


def test_tiny_backbone_states_a_fingerprint(tiny_backbone):
    assert isinstance(fingerprinted(tiny_backbone), SupportsWeightsFingerprint)
    assert not isinstance(tiny_backbone, SupportsWeightsFingerprint)


def test_second_load_reads_the_cache_and_answers_the_same(tiny_backbone, cache, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="videollm.quant.weights_cache")
    first = load(tiny_backbone)
    assert len(entries(cache)) == 1 and "saved to cache" in caplog.text
    want, report = logits(first), load_report(first)
    layers = quantized(first)
    clear_models(NAME)
    no_quantizing(monkeypatch)
    caplog.clear()
    second = load(tiny_backbone)
    assert second is not first and "loaded from cache" in caplog.text
    assert torch.equal(logits(second), want)
    assert quantized(second) == layers and any("lm_head" in n for n in layers)  # the head and its tied table too
    again = load_report(second)
    assert again.quantization == report.quantization and again.quantization.llm_layers
    assert again.warnings == report.warnings and (again.group_size, again.head) == (report.group_size, report.head)


def test_agreement_warning_is_restored(tiny_backbone, cache, monkeypatch, caplog):
    monkeypatch.setattr(agreement, "is_small", lambda backbone: True)  # checked like a small LLM
    monkeypatch.setattr(agreement, "MIN_AGREEMENT", 1.01)  # and every quantization "changes answers"
    first = load(tiny_backbone)
    warned = load_report(first).warnings
    assert len(warned) == 1 and "probe prompts" in warned[0]
    clear_models(NAME)
    no_quantizing(monkeypatch)
    caplog.set_level(logging.WARNING)
    second = load(tiny_backbone)
    assert load_report(second).warnings == warned and warned[0] in caplog.text


@pytest.mark.parametrize("other", [{"fingerprint": "weights-v2"}, {"quant": "int8"}, {"group_size": 32},
                                   {"head": "none"}])
def test_other_weights_or_settings_are_a_miss(tiny_backbone, cache, other):
    load(tiny_backbone)
    clear_models(NAME)
    load(tiny_backbone, **other)
    assert len(entries(cache)) == 2


def test_corrupt_entry_is_removed_and_quantized_again(tiny_backbone, cache, monkeypatch, caplog):
    want = logits(load(tiny_backbone))
    clear_models(NAME)
    (entry,) = entries(cache)
    weights = entry / weights_cache.WEIGHTS
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a half-written file
    caplog.set_level(logging.INFO, logger="videollm.quant.weights_cache")
    model = load(tiny_backbone)
    assert "unusable" in caplog.text and "quantizing again" in caplog.text
    assert torch.equal(logits(model), want)
    assert entries(cache) == [entry] and (entry / weights_cache.MANIFEST).is_file()  # saved anew


def test_entry_for_other_shapes_leaves_the_model_untouched(tiny_backbone, cache, caplog):
    load(tiny_backbone)
    clear_models(NAME)
    (entry,) = entries(cache)
    manifest = json.loads((entry / weights_cache.MANIFEST).read_text())
    part = next(iter(manifest["roots"].values()))
    name = sorted(part["layers"])[-1]
    part["layers"][name]["out_features"] += 1  # does not fit this model's layer
    (entry / weights_cache.MANIFEST).write_text(json.dumps(manifest))
    caplog.set_level(logging.INFO, logger="videollm.quant.weights_cache")
    model = load(tiny_backbone)
    assert "unusable" in caplog.text
    assert load_report(model).quantization.llm_layers  # quantized as on a miss, no half-swapped layers
    assert torch.isfinite(logits(model)).all()


def test_cache_off_never_writes(tiny_backbone, cache, monkeypatch):
    monkeypatch.setenv("VIDEOLLM_QUANT_CACHE", "0")
    load(tiny_backbone)
    assert not cache.exists()


def test_model_without_fingerprint_is_not_cached(tiny_backbone, cache):
    get_model(NAME, device="cpu", quant="int4", loader=lambda: copy.deepcopy(tiny_backbone))
    clear_models(NAME)
    load(tiny_backbone, fingerprint=None)
    assert not cache.exists()


def test_entry_holds_only_quantized_layers(tiny_backbone, cache):
    from safetensors import safe_open

    model = load(tiny_backbone)
    (entry,) = entries(cache)
    with safe_open(str(entry / weights_cache.WEIGHTS), "pt") as f:
        keys = list(f.keys())
    layers = [n for n, kind in quantized(model).items() if kind.startswith("QuantLinear")]
    assert {k.rsplit(".", 1)[1] for k in keys} <= {"qweight", "scale", "zero", "bias"}
    assert {k.rsplit(".", 1)[0] for k in keys} == set(layers)  # each quantized layer once, nothing else
    floats = {f"{root}/{n}" for root, m in weights_cache._roots(model) for n, _ in m.named_parameters()}
    assert floats and not floats & set(keys)  # norms, the projector, float embeddings: the model loads them itself


def test_mini_fingerprint_follows_its_converted_weights(tmp_path):
    import os

    from videollm.backbones.mini import assets

    try:
        assets.encoder_weights_path()
    except assets.MissingWeightsError:
        pytest.skip("videollm-mini's encoder weights package is not installed")
    (tmp_path / "model.safetensors").write_bytes(b"0" * 64)
    first = assets.weights_fingerprint(tmp_path)
    assert assets.weights_fingerprint(tmp_path) == first  # stable
    os.utime(tmp_path / "model.safetensors", ns=(1, 1))  # converted again
    assert assets.weights_fingerprint(tmp_path) != first
    (tmp_path / "model.safetensors").write_bytes(b"0" * 65)
    assert assets.weights_fingerprint(tmp_path) != first


@pytest.mark.parametrize(("recorded", "replayed"), [("int4_cpu", True), ("lut", True), ("int8_cpu", False),
                                                    ("bogus", False)])
def test_recorded_kernel_is_replayed_only_where_it_fits(recorded, replayed):
    """A recorded kernel the layer can take is prepared as recorded; one it cannot (int8's kernel for int4 codes,
    an unknown name) is not prepared blindly: the layer selects and self-checks as when quantizing. Either way
    it computes what the reference does."""
    ref = QuantLinear.from_linear(torch.nn.Linear(96, 40), "int4", 32, zero_point=True)
    q = QuantLinear(96, 40, "int4", 32, bias=True, zero_point=True)
    q.checked_kernel = recorded
    q.load_state_dict(ref.state_dict())
    assert q.kernel == (recorded if replayed else ref.kernel) and q.checked_kernel is None  # taken once
    x = torch.randn(1, 96)
    want = ref.forward_reference(x)
    assert torch.allclose(q(x), want, rtol=3e-2, atol=3e-2 * float(want.abs().max()))
