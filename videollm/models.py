"""A process-wide cache of loaded models, so each is loaded (and quantized) once and shared.

The pipeline registers its backbone here; a compressor that needs a second model (Tempo's small VLM,
LongVU's DINOv2) asks `get_model(name, ...)` and gets the instance already loaded by anyone in the process
(the pipeline, the demo, eval) or loads it once. A key is the name plus device, dtype, quantization and
any loader options, so a float and an int4 copy of one model are two entries.

    get_model("tiny-random", device="cpu", quant="int8")        # a backbone, by preset / hub id / path
    get_model("dinov2:vit_small_patch14_dinov2", loader=build)   # anything else, built by `loader`

`MODEL_LOADERS` maps a name (or a "prefix:" for families) to a loader `(name, device, dtype, **options)`;
names it does not hold load as backbones (`load_backbone`), then quantize through `quantize_backbone`.
"""
from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from .registry import Registry

logger = logging.getLogger(__name__)

Loader = Callable[..., Any]
#: name or "prefix:" → loader(name, device=..., dtype=..., **options)
MODEL_LOADERS: Registry[Loader] = Registry("model loader")

_CACHE: dict[str, Any] = {}
_LOCK = threading.RLock()
_LOADS: dict[str, int] = {}  # key → how many times a loader ran (tests and `describe_cache`)


def model_key(name: str, device: str = "auto", dtype: str = "auto", quant: str = "none", **options: Any) -> str:
    return json.dumps([name, str(device), str(dtype), str(quant), options], sort_keys=True, default=str)


def get_model(name: str, device: str = "auto", dtype: str = "auto", quant: str = "none",
              loader: Callable[[], Any] | None = None, **options: Any) -> Any:
    """The one loaded instance of `name` for these settings, loading it on first use.

    `quant` is "none", one scheme for the LLM and the vision encoder ("int8"), or "LLM+VISION" ("int4+int8").
    `loader`, when given, builds the model (no arguments) the first time; otherwise `MODEL_LOADERS` or
    `load_backbone` does.
    """
    key = model_key(name, device, dtype, quant, **options)
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
        if loader is not None:
            model = loader()
        else:
            model = _default_load(name, device, dtype, quant, **options)
        _CACHE[key] = model
        _LOADS[key] = _LOADS.get(key, 0) + 1
        logger.info("model cache: loaded %s (device=%s dtype=%s quant=%s)", name, device, dtype, quant)
        return model


def register_model(name: str, model: Any, device: str = "auto", dtype: str = "auto", quant: str = "none",
                   **options: Any) -> Any:
    """Put an already-loaded model in the cache (the pipeline's backbone), so others asking get it."""
    with _LOCK:
        _CACHE[model_key(name, device, dtype, quant, **options)] = model
    return model


def cached_models() -> list[str]:
    with _LOCK:
        return [json.loads(k)[0] for k in _CACHE]


def load_count(name: str, device: str = "auto", dtype: str = "auto", quant: str = "none", **options: Any) -> int:
    """How many times the cache loaded this entry (1 once loaded; 0 if only registered or never asked)."""
    return _LOADS.get(model_key(name, device, dtype, quant, **options), 0)


def clear_models(name: str | None = None) -> None:
    """Forget cached models (all, or those named `name`) so their memory can be freed."""
    with _LOCK:
        for key in [k for k in _CACHE if name is None or json.loads(k)[0] == name]:
            del _CACHE[key]
            _LOADS.pop(key, None)


def split_quant(quant: str) -> tuple[str, str]:
    """"int4+int8" → ("int4", "int8"); "int8" → ("int8", "int8"); "none" → ("none", "none")."""
    llm, _, vision = quant.partition("+")
    return llm, vision or llm


def _default_load(name: str, device: str, dtype: str, quant: str, **options: Any) -> Any:
    prefix = name.split(":", 1)[0] + ":" if ":" in name else None
    if name in MODEL_LOADERS:
        model = MODEL_LOADERS.get(name)(name, device=device, dtype=dtype, **options)
    elif prefix is not None and prefix in MODEL_LOADERS:
        model = MODEL_LOADERS.get(prefix)(name.split(":", 1)[1], device=device, dtype=dtype, **options)
    else:
        from .backbones import load_backbone

        model = load_backbone(name, device=device, dtype=dtype, **options)
    llm, vision = split_quant(quant)
    if llm != "none" or vision != "none":
        from torch import nn

        from .protocols import SupportsQuantization
        from .quant import config_for, quantize_, quantize_backbone

        if isinstance(model, SupportsQuantization):
            quantize_backbone(model, llm=llm, vision=vision)
        elif isinstance(model, nn.Module) and (cfg := config_for(llm)) is not None:
            quantize_(model, cfg)  # a plain module: every linear layer, with the first scheme
    return model


__all__ = ["MODEL_LOADERS", "cached_models", "clear_models", "get_model", "load_count", "model_key",
           "register_model", "split_quant"]
