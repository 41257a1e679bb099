"""videollm: question answering over long videos with small, quantized models.

Data flow: video → frames (`videollm.video`) → visual tokens (`videollm.backbones`) → compressed tokens
(`videollm.compressors`) → LLM answer (`videollm.answer.reasoning`) → `Answer`. `import videollm` stays light:
heavy modules load on first use.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

_LAZY = {
    "VideoQAPipeline": "videollm.pipeline",
    "PipelineConfig": "videollm.config",
    "SamplingConfig": "videollm.video.sampling",
    "GenerationConfig": "videollm.runtime.generation",
    "load_video": "videollm.video.loader",
    "Video": "videollm.video.loader",
    "load_backbone": "videollm.backbones",
    "Answer": "videollm.types",
    "VisualTokens": "videollm.types",
}

if TYPE_CHECKING:
    from .backbones import load_backbone
    from .config import PipelineConfig
    from .pipeline import VideoQAPipeline
    from .runtime.generation import GenerationConfig
    from .types import Answer, VisualTokens
    from .video import SamplingConfig, Video, load_video


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'videollm' has no attribute {name!r}")


__all__ = ["Answer", "GenerationConfig", "PipelineConfig", "SamplingConfig", "Video", "VideoQAPipeline",
           "VisualTokens", "load_backbone", "load_video"]
