"""`VideoQAPipeline`: video → frames → compressed visual tokens → LLM → `Answer`.

The CLI, demo and evaluator all go through this class and nothing else.
"""
from __future__ import annotations

import logging
import os
from dataclasses import replace
from typing import Any

import torch

from .backbones import Backbone, load_backbone
from .config import PipelineConfig
from .errors import InvalidRequestError
from .generation import GenerationConfig
from .prompting import format_question, normalize_options
from .reasoning import run_mode
from .timing import StageTimer, stage
from .types import Answer
from .video import SamplingConfig, Video, load_video

logger = logging.getLogger(__name__)


class VideoQAPipeline:
    def __init__(self, backbone: Backbone, config: PipelineConfig | None = None, compressor: Any = None):
        from videollm.compressors import create_compressor

        self.backbone = backbone
        self.config = config or PipelineConfig(model=backbone.name)
        self.compressor = compressor or create_compressor(self.config.compressor, backbone,
                                                          **self.config.compressor_options)
        if backbone.notice:
            logger.warning(backbone.notice)

    @classmethod
    def from_pretrained(cls, model: str | None = None, compressor: str = "uniform", budget: int | None = None,
                        device: str = "auto", dtype: str = "auto", config: PipelineConfig | None = None,
                        **overrides: Any) -> "VideoQAPipeline":
        """`VideoQAPipeline.from_pretrained("tiny-random", compressor="pool", budget=256)`."""
        cfg = config or PipelineConfig()
        changes: dict[str, Any] = {"compressor": compressor, "budget": budget, "device": device, "dtype": dtype}
        if model is not None:
            changes["model"] = model
        return cls.from_config(replace(cfg, **changes, **overrides))

    @classmethod
    def from_config(cls, cfg: PipelineConfig) -> "VideoQAPipeline":
        """Load the backbone named in `cfg`, quantize it if asked, and attach the compressor."""
        backbone = load_backbone(cfg.model, device=cfg.device, dtype=cfg.dtype)
        if cfg.quant != "none" or cfg.vision_quant != "none":
            from .quant import quantize_backbone

            quantize_backbone(backbone, llm=cfg.quant, vision=cfg.vision_quant, group_size=cfg.quant_group_size)
        return cls(backbone, cfg)

    def load(self, video: str | os.PathLike[str] | Video, sampling: SamplingConfig | None = None) -> Video:
        if isinstance(video, Video):
            return video
        return load_video(video, sampling or self.config.sampling, backend=self.config.video_backend)

    @torch.inference_mode()
    def __call__(self, video: str | os.PathLike[str] | Video, question: str, options: list[str] | None = None, *,
                 budget: int | None = None, reasoning: str | None = None, sampling: SamplingConfig | None = None,
                 generation: GenerationConfig | None = None, prompt: str | None = None) -> Answer:
        """Answer `question` about `video`. `prompt`, when given, is the exact user turn (a benchmark's own
        wording, options included); `options` then only tell which letters are valid answers."""
        if prompt is not None:
            if not prompt.strip():
                raise InvalidRequestError("the prompt is empty")
            user_text = prompt
        else:
            user_text = format_question(question, options)  # validate before any decoding
        opts = normalize_options(options)
        timer = StageTimer()
        budget = self.config.budget if budget is None else budget
        mode = reasoning or self.config.reasoning
        if budget is not None and budget >= self.backbone.max_context:
            raise InvalidRequestError(f"a budget of {budget} visual tokens cannot fit the model's context of "
                                      f"{self.backbone.max_context} tokens; lower --budget")
        with timer.activate():
            with stage("decode"):
                vid = self.load(video, sampling)
            try:
                query = user_text if getattr(self.compressor, "wants_options", False) else question
                visual = self.compressor(vid, query=query, budget=budget)
            finally:
                if not isinstance(video, Video):
                    vid.close()
            outcome = run_mode(mode, self.backbone, user_text, visual, opts, generation or self.config.generation,
                               system=self.config.system_prompt, **self.config.reasoning_options)
        ts = visual.timestamps
        kept = visual.kept_frames
        return Answer(
            text=outcome.text, choice=outcome.choice, question=question, options=opts,
            kept_frames=kept, kept_timestamps=[round(float(ts[i]), 3) for i in kept],
            visual_tokens=visual.num_tokens, sampled_frames=visual.num_sampled_frames,
            tokens_per_frame=visual.tokens_per_frame, generated_tokens=outcome.generated_tokens,
            reasoning=outcome.mode, thought=outcome.thought, initial_answer=outcome.initial_answer,
            initial_choice=outcome.initial_choice,
            confidence=outcome.confidence, thinking_fired=outcome.thinking_fired,
            finish_reason=outcome.finish_reason, compressor_stats=_jsonable(visual.stats),
            timings=timer.as_dict(), model=self.backbone.name,
            warnings=[self.backbone.notice] if self.backbone.notice else [],
        )


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, torch.Tensor):
            v = v.tolist()
        out[k] = v
    return out
