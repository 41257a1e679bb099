"""The model registries: presets by name and families by `model_type`, filled where each model is defined.

Kept apart from `load_backbone` so a family module registers itself without importing the loader that may
import it (no import cycle).
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..registry import Registry
from .base import Backbone


@dataclass(frozen=True)
class Preset:
    """A named model: `build(model_id, device=..., dtype=...)` (model_id None for self-contained ones).

    `max_context` and `lacks` are what the preset is known to be before any weights load, so a request it
    cannot serve (a budget past its context, training, saving) is refused in milliseconds: `lacks` maps a
    capability name (see `CAPABILITIES`) to the reason the model does not have it. `defers_cast`: its builder
    takes `defer_cast=True` (asked for when the model is about to be quantized) and returns a
    `SupportsDeferredCast` model whose quantizable float weights are still in their stored dtype."""

    build: Callable[..., Backbone]
    model_id: str | None = None
    max_context: int | None = None
    lacks: tuple[tuple[str, str], ...] = ()
    defers_cast: bool = False


#: capabilities a preset may declare it lacks: `training` (STORM's trainer: all-position logits with
#: gradients), `save_quantized` (`videollm quantize --output`)
CAPABILITIES = ("training", "save_quantized")


#: models by name; each registers where its builder is defined, with `@register_preset(name[, model_id])`
PRESETS: Registry[Preset] = Registry("model", modules=("videollm.backbones.tiny", "videollm.backbones.llava_onevision",
                                                       "videollm.backbones.mini.model", "videollm.backbones.tempo6b",
                                                       "videollm.backbones.longvu", "videollm.backbones.longvu_tiny",
                                                       "videollm.backbones.qwen_vl", "videollm.backbones.qwen_vl_tiny"))

#: transformers `model_type` -> backbone class
FAMILIES: Registry[Any] = Registry("backbone family", entry_point_group="videollm.backbones")
FAMILIES.register("llava_onevision", "videollm.backbones.llava_onevision:LlavaOneVisionBackbone")
FAMILIES.register("tempo_qwen", "videollm.backbones.tempo6b:TempoBackbone")
FAMILIES.register("cambrian_qwen", "videollm.backbones.longvu:LongVUBackbone")
FAMILIES.register("cambrian_llama", "videollm.backbones.longvu:LongVUBackbone")
for _qwen_type in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl"):
    FAMILIES.register(_qwen_type, "videollm.backbones.qwen_vl:QwenVLBackbone")
#: model types transformers does not know (their config.json is read directly)
_CUSTOM_TYPES = {"tempo_qwen", "cambrian_qwen", "cambrian_llama"}


def register_preset(
    name: str, model_id: str | None = None, *, max_context: int | None = None, lacks: dict[str, str] | None = None,
    defers_cast: bool = False,
) -> Callable[[Callable[..., Backbone]], Callable[..., Backbone]]:
    """Decorator: `@register_preset("tiny-random")` on a builder `(device=..., dtype=...) -> Backbone`, or
    `register_preset("llava-onevision-0.5b", "llava-hf/...")(Cls.from_pretrained)` for a hub checkpoint.
    `max_context` (the LLM's positions) and `lacks` ({capability: why not}) are checked before loading;
    `defers_cast` says the builder takes `defer_cast` (see `Preset`)."""
    unknown = set(lacks or {}) - set(CAPABILITIES)
    if unknown:
        raise ValueError(f"unknown capabilities {sorted(unknown)}; known: {CAPABILITIES}")

    def deco(fn: Callable[..., Backbone]) -> Callable[..., Backbone]:
        PRESETS.register(name, Preset(fn, model_id, max_context, tuple(sorted((lacks or {}).items())), defers_cast))
        return fn
    return deco


def declared_max_context(model: str) -> int | None:
    """The preset's context length as declared (no loading); None when only the loaded model can say."""
    return PRESETS.get(model).max_context if model in PRESETS else None


def require_capability(model: str, capability: str) -> None:
    """Refuse, before any weights load, what a preset declares it cannot do."""
    from ..errors import InvalidRequestError

    if model in PRESETS:
        why = dict(PRESETS.get(model).lacks).get(capability)
        if why:
            raise InvalidRequestError(f"{model}: {why}")


def default_model_id(name: str) -> str | None:
    """The hub id behind a preset name (None for presets that need no hub)."""
    return PRESETS.get(name).model_id if name in PRESETS else name


def list_models() -> list[str]:
    return PRESETS.names()


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def check_model_name(model: str) -> None:
    """A preset, an existing local path or a hub id ("org/name"); anything else is a typo, refused before
    any loading (no hub lookup for a name that cannot be one)."""
    if model in PRESETS or Path(model).expanduser().exists() or _HUB_ID.match(model or ""):
        return
    from ..errors import UnknownNameError

    raise UnknownNameError(f"unknown model {model!r}: not a preset ({', '.join(list_models())}), "
                           "an existing local directory, nor a hub id of the form org/name")
