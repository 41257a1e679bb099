"""`VideoQAPipeline`: video → frames → compressed visual tokens → LLM → `Answer`.

The CLI, demo and evaluator all go through this class and nothing else.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import replace
from collections.abc import Sequence
from typing import Any

import torch

from .backbones import Backbone, load_backbone
from .budget import fit_budget, plan_context
from .config import PipelineConfig
from .errors import InvalidRequestError
from .generation import GenerationConfig
from .prompting import format_question, normalize_options
from .reasoning import DEFAULT_MAX_THINK_TOKENS, MAX_ANSWER_TOKENS, run_mode
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
        if backbone.notice:  # also in every Answer.warnings; the CLI shows it once
            logger.info(backbone.notice)

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
        started = time.perf_counter()
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
        gen = generation or self.config.generation
        if budget is not None and budget >= self.backbone.max_context:
            raise InvalidRequestError(f"a budget of {budget} visual tokens cannot fit the model's context of "
                                      f"{self.backbone.max_context} tokens; lower --budget")
        notes: list[str] = []
        with timer.activate():
            with stage("decode"):
                vid = self.load(video, sampling)
            try:
                budget = self._fit_budget(budget, vid, user_text, mode, gen, notes)
                visual = self.compressor(vid, query=question, budget=budget)
            finally:
                if not isinstance(video, Video):
                    vid.close()
            outcome = run_mode(mode, self.backbone, user_text, visual, opts, gen,
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
            timings=timer.as_dict(wall=time.perf_counter() - started), model=self.backbone.name,
            warnings=([self.backbone.notice] if self.backbone.notice else []) + notes,
        )

    def ask_many(self, video: str | os.PathLike[str] | Video,
                 questions: Sequence[str | tuple[str, Sequence[str] | None]], **kwargs: Any) -> list[Answer]:
        """Answer several questions about one video, decoding and encoding its frames once.

        `questions` holds plain questions or (question, options) pairs; `kwargs` go to every call. The video
        is opened once and the per-frame tokens come from the feature cache from the second question on.
        """
        items: list[tuple[str, list[str] | None]] = []
        for q in questions:
            if isinstance(q, str):
                items.append((q, None))
            elif isinstance(q, (tuple, list)) and len(q) == 2 and isinstance(q[0], str):
                items.append((q[0], None if q[1] is None else list(q[1])))
            else:
                raise InvalidRequestError(f"each question must be a string or a (question, options) pair, got {q!r}")
        for q, opts in items:  # every question is checked before the video is touched
            format_question(q, opts)
        vid = self.load(video, kwargs.pop("sampling", None))
        try:
            return [self(vid, q, opts, **kwargs) for q, opts in items]
        finally:
            if not isinstance(video, Video):
                vid.close()

    def _fit_budget(self, budget: int | None, video: Video, user_text: str, mode: str, generation: GenerationConfig,
                    notes: list[str]) -> int | None:
        """Check a requested budget against the context, or choose one when none was given (before decoding)."""
        allowance = generation.max_new_tokens
        if mode != "direct":
            think = self.config.reasoning_options.get("max_think_tokens") or DEFAULT_MAX_THINK_TOKENS
            allowance += int(think) + min(generation.max_new_tokens, MAX_ANSWER_TOKENS)
        plan = plan_context(self.backbone, user_text, self.config.system_prompt, len(video), allowance,
                            self.backbone.text_tokens_per_frame)
        fitted = fit_budget(plan, budget)
        if budget is not None or len(video) * self.backbone.tokens_per_frame <= fitted:
            return budget
        notes.append(f"no budget given: {len(video)} frames reduced to {fitted} visual tokens to fit the model's "
                     f"context of {plan.max_context} tokens")
        return fitted


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, torch.Tensor):
            v = v.tolist()
        out[k] = v
    return out
