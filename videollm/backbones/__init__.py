"""Backbones by name: presets (`tiny-random`, `llava-onevision-0.5b`) or any hub id / local path.

A hub id or path is dispatched on its config's `model_type` (never on substrings of the id).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..errors import ModelLoadError, VideoLLMError
from .base import Backbone, PromptInputs
from .presets import (
    _CUSTOM_TYPES,
    CAPABILITIES,
    FAMILIES,
    PRESETS,
    Preset,
    check_model_name,
    declared_max_context,
    default_model_id,
    list_models,
    register_preset,
    require_capability,
)

logger = logging.getLogger(__name__)


def load_backbone(model: str, device: str = "auto", dtype: str = "auto", defer_cast: bool = False,
                  **kwargs: Any) -> Backbone:
    """Build a backbone from a preset name, a hub id or a local directory. `defer_cast`: the model is about to
    be quantized, so a preset that can (`Preset.defers_cast`) leaves the weights quantization replaces in their
    stored dtype; the caller then calls its `finish_cast()` (`models.get_model` does)."""
    if model in PRESETS:
        preset = PRESETS.get(model)
        args = (preset.model_id,) if preset.model_id else ()
        if defer_cast and preset.defers_cast:
            kwargs["defer_cast"] = True
        if preset.model_id:
            kwargs.update(_hub_kwargs(preset.model_id, model))
        try:
            return preset.build(*args, device=device, dtype=dtype, **kwargs)
        except OSError as err:
            raise ModelLoadError(preset.model_id or model, err) from err
    if (Path(model) / "videollm_quant.json").is_file():  # saved by `videollm quantize`
        from .quantized import load_quantized

        return load_quantized(model, device=device)
    from .._compat import require

    local = Path(model).expanduser() / "config.json"
    if local.is_file():  # a checkpoint of a model type transformers does not register (Tempo's tempo_qwen)
        import json

        model_type = json.loads(local.read_text()).get("model_type")
        if model_type in _CUSTOM_TYPES:
            return FAMILIES.get(model_type).from_pretrained(model, device=device, dtype=dtype, **kwargs)
    transformers = require("transformers")
    kwargs.update(_hub_kwargs(model))
    try:
        cfg = transformers.AutoConfig.from_pretrained(model, **kwargs)
    except (OSError, ValueError) as err:
        raise ModelLoadError(model, err) from err
    if cfg.model_type not in FAMILIES:
        raise VideoLLMError(f"model type {cfg.model_type!r} of {model} is not supported; supported: "
                            f"{', '.join(FAMILIES.names())}; presets: {', '.join(list_models())}")
    return FAMILIES.get(cfg.model_type).from_pretrained(model, device=device, dtype=dtype, **kwargs)


def _hub_kwargs(model_id: str, name: str | None = None) -> dict[str, Any]:
    """Fail fast when a hub model cannot be had; load from the cache alone when the hub is unreachable."""
    if Path(model_id).is_dir():
        return {}
    from ..hub import require_available

    return {"local_files_only": True} if require_available(model_id, name).local_files_only else {}


__all__ = [
    "Backbone",
    "CAPABILITIES",
    "FAMILIES",
    "Preset",
    "declared_max_context",
    "require_capability",
    "check_model_name",
    "register_preset",
    "ModelLoadError",
    "PRESETS",
    "PromptInputs",
    "list_models",
    "default_model_id",
    "load_backbone",
]
