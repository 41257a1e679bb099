"""`VideoQAPipeline`: video → frames → compressed visual tokens → LLM → `Answer`.

The CLI, demo and evaluator all go through this class and nothing else.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch

from .answer.choice import check_answer_format
from .answer.reasoning import DEFAULT_MAX_THINK_TOKENS, MAX_ANSWER_TOKENS, auto_notes, run_mode
from .backbones import load_backbone
from .budget import fit_budget, plan_context
from .config import PipelineConfig
from .errors import InvalidRequestError
from .protocols import SupportsQuantization, VideoLanguageModel, reasoning_preset
from .question import format_question, normalize_options
from .runtime.generation import GenerationConfig
from .timing import StageTimer, stage
from .types import Answer
from .video import SamplingConfig, Video
from .video.sources import VideoInput, open_source

if TYPE_CHECKING:
    from videollm.compressors.base import TokenCompressor

logger = logging.getLogger(__name__)


class VideoQAPipeline:
    def __init__(self, backbone: VideoLanguageModel, config: PipelineConfig | None = None,
                 compressor: TokenCompressor | None = None):
        from videollm.compressors import create_compressor

        self.backbone = backbone
        self.config = cfg = config or PipelineConfig(model=backbone.name)
        if compressor is None:
            typed = dataclasses.is_dataclass(cfg.compressor_options)
            options = {} if typed else dict(cfg.compressor_options)
            weights = cfg.compressor_weights or options.pop("weights", None)  # `--compressor-option weights=DIR`
            compressor = create_compressor(cfg.compressor, backbone, config=cfg.compressor_options if typed else None,
                                           weights=weights, **options)
            if isinstance(compressor, SupportsQuantization) and (cfg.quant != "none" or cfg.vision_quant != "none"):
                from .quant import quantize_backbone  # modules the compressor owns, through the same seam

                quantize_backbone(compressor, llm=cfg.quant, vision=cfg.vision_quant, group_size=cfg.quant_group_size)
        self.compressor = compressor
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
        """Check `cfg` (no model needed), then get the backbone it names from the process-wide model cache
        (loaded and quantized once, shared with the demo, eval and compressors), and attach the compressor."""
        from .models import get_model

        cfg.validate()

        def load() -> VideoLanguageModel:
            backbone = load_backbone(cfg.model, device=cfg.device, dtype=cfg.dtype)
            if cfg.quant != "none" or cfg.vision_quant != "none":
                from .quant.agreement import quantize_checked  # small LLMs: one warning if answers change

                quantize_checked(backbone, cfg.quant, cfg.vision_quant, cfg.quant_group_size)
            if cfg.cpu_int8 != "none":
                from .cpu_speed import apply_cpu_int8

                apply_cpu_int8(backbone, cfg.cpu_int8)
            return backbone

        quant = "none" if cfg.quant == cfg.vision_quant == "none" else f"{cfg.quant}+{cfg.vision_quant}"
        options: dict[str, Any] = {"group_size": cfg.quant_group_size} if quant != "none" else {}
        if cfg.cpu_int8 != "none":  # an int8 copy is another cache entry than the float one
            options["cpu_int8"] = cfg.cpu_int8
        backbone = get_model(cfg.model, device=cfg.device, dtype=cfg.dtype, quant=quant, loader=load, **options)
        return cls(backbone, cfg)

    def load(self, video: VideoInput, sampling: SamplingConfig | None = None, *, fps: float | None = None,
             timestamps: Sequence[float] | None = None) -> Video:
        """Any accepted video input (a path, bytes, a binary file object, frames in memory with `fps=` or
        `timestamps=`, a `Video`; see `videollm.video.sources`) → a sampled `Video`."""
        return open_source(video, sampling or self.config.sampling, backend=self.config.video_backend,
                           strict=self.config.strict_video, fps=fps, timestamps=timestamps)

    @torch.inference_mode()
    def __call__(self, video: VideoInput, question: str, options: list[str] | None = None, *,
                 budget: int | None = None, reasoning: str | None = None, sampling: SamplingConfig | None = None,
                 generation: GenerationConfig | None = None, prompt: str | None = None,
                 answer_format: str | None = None, fps: float | None = None,
                 timestamps: Sequence[float] | None = None) -> Answer:
        """Answer `question` about `video`: a path, the file's bytes, a binary file object, frames in memory
        ((T, H, W, 3) uint8 array or tensor, or a list of PIL images, timed by `fps=` or `timestamps=`), or a
        `Video`. `prompt`, when given, is the exact user turn (a benchmark's own wording, options included);
        `options` then only tell which letters are valid answers. `answer_format="choice"` makes a
        multiple-choice answer always one of the option letters."""
        started = time.perf_counter()
        if prompt is not None:
            if not prompt.strip():
                raise InvalidRequestError("the prompt is empty")
            user_text = prompt
        else:
            user_text = format_question(question, options)  # validate before any decoding
        opts = normalize_options(options)
        gen = generation or self.config.generation
        gen.validate()
        fmt = answer_format or _fields(self.config.reasoning_options).get("answer_format") or self.config.answer_format
        check_answer_format(fmt, opts)
        timer = StageTimer()
        budget = self.config.budget if budget is None else budget
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 1):
            raise InvalidRequestError(f"budget must be a whole number >= 1, got {budget!r}")
        mode = reasoning or self.config.reasoning
        if budget is not None and budget >= self.backbone.max_context:
            raise InvalidRequestError(f"a budget of {budget} visual tokens cannot fit the model's context of "
                                      f"{self.backbone.max_context} tokens; lower --budget")
        notes: list[str] = []
        with timer.activate():
            with stage("decode"):
                vid = self.load(video, sampling, fps=fps, timestamps=timestamps)
            try:
                from videollm.compressors.base import prepare_video

                prepare_video(self.backbone, vid)  # backbones whose grid depends on the frame size (Qwen-VL)
                budget = self._fit_budget(budget, vid, user_text, mode, gen, notes)
                query = user_text if getattr(self.compressor, "wants_options", False) else question
                visual = self.compressor(vid, query=query, budget=budget)
            finally:
                if not isinstance(video, Video):
                    vid.close()
            warnings = [self.backbone.notice] if self.backbone.notice else []
            warnings += list(getattr(self.backbone, "setup_warnings", ()))  # what loading could not do as asked
            warnings += [str(w) for w in visual.stats.get("warnings", [])]  # what the compressor had to do instead
            short = vid.shortfall()
            if short is not None:  # answer from what decoded, and say so
                warnings.append(short.message())
                logger.info(short.message(vid.source))
                visual.stats["decode"] = {"planned_frames": short.planned, "decoded_frames": short.decoded,
                                          "video_ends_at": round(short.ends_at, 3)}
            reasoning_opts = {**_fields(self.config.reasoning_options), "answer_format": fmt}
            trained = reasoning_preset(self.backbone)  # VideoAuto-R1 checkpoints
            if "threshold" not in reasoning_opts and "confidence_threshold" in trained:
                reasoning_opts["threshold"] = float(trained["confidence_threshold"])
            outcome = run_mode(mode, self.backbone, user_text, visual, opts, gen,
                               system=self.config.system_prompt, **reasoning_opts)
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
            warnings=warnings + notes + auto_notes(outcome) + [str(w) for w in outcome.extra.get("warnings", [])],
        )

    def ask_many(self, video: VideoInput,
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
        vid = self.load(video, kwargs.pop("sampling", None), fps=kwargs.pop("fps", None),
                        timestamps=kwargs.pop("timestamps", None))
        try:
            return [self(vid, q, opts, **kwargs) for q, opts in items]
        finally:
            if not isinstance(video, Video):
                vid.close()

    @torch.inference_mode()
    def prefetch(self, video: Video, question: str, options: list[str] | None = None, *, budget: int | None = None,
                 reasoning: str | None = None, generation: GenerationConfig | None = None) -> None:
        """Decode `video` and run the vision tower for this question ahead of time, so the call with the same
        arguments that follows finds its per-frame tokens in the feature cache (the server runs this for the next
        request while the current one generates). Nothing is returned; errors are the call's own."""
        user_text = format_question(question, options)
        gen = generation or self.config.generation
        budget = self.config.budget if budget is None else budget
        budget = self._fit_budget(budget, video, user_text, reasoning or self.config.reasoning, gen, [])
        query = user_text if getattr(self.compressor, "wants_options", False) else question
        self.compressor(video, query=query, budget=budget)

    def _fit_budget(self, budget: int | None, video: Video, user_text: str, mode: str, generation: GenerationConfig,
                    notes: list[str]) -> int | None:
        """Check a requested budget against the context, or choose one when none was given (before decoding)."""
        allowance = generation.max_new_tokens
        if mode != "direct":
            think = _fields(self.config.reasoning_options).get("max_think_tokens") or DEFAULT_MAX_THINK_TOKENS
            allowance += int(think) + min(generation.max_new_tokens, MAX_ANSWER_TOKENS)
        plan = plan_context(self.backbone, user_text, self.config.system_prompt, len(video), allowance,
                            self.backbone.text_tokens_per_frame)
        fitted = fit_budget(plan, budget)
        if budget is not None or len(video) * self.backbone.tokens_per_frame <= fitted:
            return budget
        notes.append(f"no budget given: {len(video)} frames reduced to {fitted} visual tokens to fit the model's "
                     f"context of {plan.max_context} tokens")
        return fitted


def _fields(options: Any) -> dict[str, Any]:
    """A config dataclass or a dict of its fields, as keyword arguments."""
    return dataclasses.asdict(options) if dataclasses.is_dataclass(options) else dict(options)


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, torch.Tensor):
            v = v.tolist()
        out[k] = v
    return out
