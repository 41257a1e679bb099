"""One dataclass config for the whole pipeline; presets are named instances of it."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from .generation import GenerationConfig
from .video.sampling import SamplingConfig

DEFAULT_MODEL = "llava-onevision-0.5b"


@dataclass
class PipelineConfig:
    model: str = DEFAULT_MODEL  # preset name, hub id or local path
    compressor: str = "uniform"
    compressor_options: dict[str, Any] = field(default_factory=dict)
    budget: int | None = None  # max visual tokens handed to the LLM
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    reasoning: str = "direct"
    reasoning_options: dict[str, Any] = field(default_factory=dict)  # e.g. threshold, max_think_tokens
    answer_format: str = "free"  # "free" (generate, lmms-eval parity) | "choice" (always an option letter)
    quant: str = "none"  # LLM weights: none | int8 | int4 | int2 | ternary
    vision_quant: str = "none"  # vision encoder weights, same choices
    quant_group_size: int = 128
    device: str = "auto"
    dtype: str = "auto"
    video_backend: str = "auto"
    system_prompt: str | None = None

    def replace(self, **changes: Any) -> "PipelineConfig":
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
