"""Backbones by name: presets (`tiny-random`, `llava-onevision-0.5b`) or any hub id / local path.

A hub id or path is dispatched on its config's `model_type` (never on substrings of the id).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..errors import ModelLoadError, VideoLLMError
from ..registry import Registry
from .base import Backbone, PromptInputs

logger = logging.getLogger(__name__)

#: preset name -> (builder "module:attr", default model id or None)
PRESETS: dict[str, tuple[str, str | None]] = {
    "tiny-random": ("videollm.backbones.tiny:build_tiny_random", None),
    "llava-onevision-0.5b-random": ("videollm.backbones.tiny:build_random_llava_onevision_0_5b", None),
    "llava-onevision-0.5b": ("videollm.backbones.llava_onevision:LlavaOneVisionBackbone.from_pretrained",
                             "llava-hf/llava-onevision-qwen2-0.5b-ov-hf"),
    "llava-onevision-7b": ("videollm.backbones.llava_onevision:LlavaOneVisionBackbone.from_pretrained",
                           "llava-hf/llava-onevision-qwen2-7b-ov-hf"),
    "videollm-mini": ("videollm.backbones.mini:build_mini", None),
    "tempo-6b": ("videollm.backbones.tempo6b:load_tempo", "Vision-CAIR/Tempo-6B"),
}

#: transformers `model_type` -> backbone class
FAMILIES: Registry[Any] = Registry("backbone family", entry_point_group="videollm.backbones")
FAMILIES.register("llava_onevision", "videollm.backbones.llava_onevision:LlavaOneVisionBackbone")
FAMILIES.register("tempo_qwen", "videollm.backbones.tempo6b:TempoBackbone")
#: model types transformers does not know (their config.json is read directly)
_CUSTOM_TYPES = {"tempo_qwen"}


def _resolve(target: str) -> Any:
    import importlib

    module, _, attr = target.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def load_backbone(model: str, device: str = "auto", dtype: str = "auto", **kwargs: Any) -> Backbone:
    """Build a backbone from a preset name, a hub id or a local directory."""
    if model in PRESETS:
        builder, model_id = PRESETS[model]
        fn = _resolve(builder)
        args = (model_id,) if model_id else ()
        try:
            return fn(*args, device=device, dtype=dtype, **kwargs)
        except OSError as err:
            raise ModelLoadError(model_id or model, err) from err
    if (Path(model) / "videollm_quant.json").is_file():  # saved by `videollm quantize`
        from ..quant.io import load_quantized

        return load_quantized(model, device=device)
    from .._compat import require

    local = Path(model).expanduser() / "config.json"
    if local.is_file():  # a checkpoint of a model type transformers does not register (Tempo's tempo_qwen)
        import json

        model_type = json.loads(local.read_text()).get("model_type")
        if model_type in _CUSTOM_TYPES:
            return FAMILIES.get(model_type).from_pretrained(model, device=device, dtype=dtype, **kwargs)
    transformers = require("transformers")
    try:
        cfg = transformers.AutoConfig.from_pretrained(model)
    except (OSError, ValueError) as err:
        raise ModelLoadError(model, err) from err
    if cfg.model_type not in FAMILIES:
        raise VideoLLMError(f"model type {cfg.model_type!r} of {model} is not supported; supported: "
                            f"{', '.join(FAMILIES.names())}; presets: {', '.join(list_models())}")
    return FAMILIES.get(cfg.model_type).from_pretrained(model, device=device, dtype=dtype, **kwargs)


def list_models() -> list[str]:
    return sorted(PRESETS)


__all__ = ["Backbone", "FAMILIES", "ModelLoadError", "PRESETS", "PromptInputs", "list_models", "load_backbone"]
