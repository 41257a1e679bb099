"""`VideoQAPipeline`: video → frames → compressed visual tokens → LLM → `Answer`.

The CLI, demo and evaluator all go through this class and nothing else.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch

from .answer.choice import check_answer_format
from .answer.reasoning import MAX_ANSWER_TOKENS, MODES, ReasoningConfig, ReasoningOutcome, auto_notes, run_mode
from .budget import check_budget, fit_budget, plan_context
from .config import PipelineConfig
from .errors import InvalidRequestError
from .models import LoadReport, get_model, join_quant, load_report, prepare_model
from .protocols import SupportsQuantization, VideoLanguageModel
from .question import Question, make_question
from .runtime.generation import GenerationConfig
from .timing import StageTimer, stage
from .types import Answer, VisualTokens
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
        if compressor is None:  # the typed config `validate()` built (`weights=DIR` is a STORM option)
            compressor = create_compressor(cfg.compressor, backbone, config=cfg.compressor_config(),
                                           weights=cfg.compressor_weights)
            if isinstance(compressor, SupportsQuantization) and (cfg.quant != "none" or cfg.vision_quant != "none"):
                # modules the compressor owns are quantized by the model cache's loader path, report kept there
                prepare_model(compressor, compressor.name, join_quant(cfg.quant, cfg.vision_quant),
                              cfg.quant_group_size)
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
        (loaded and quantized once, by the cache's loader, shared with the demo, eval and compressors), and
        attach the compressor."""
        cfg.validate()
        return cls(get_model(cfg.model, **cls.model_settings(cfg)), cfg)

    @staticmethod
    def model_settings(cfg: PipelineConfig) -> dict[str, Any]:
        """The model cache's settings for `cfg`'s backbone: one entry per device, dtype, quantization and CPU
        int8 (an int8 copy is another entry than the float one)."""
        quant = join_quant(cfg.quant, cfg.vision_quant)
        settings: dict[str, Any] = {"device": cfg.device, "dtype": cfg.dtype, "quant": quant}
        if quant != "none" and cfg.quant_group_size is not None:  # None: the model's preference
            settings["group_size"] = cfg.quant_group_size
        if cfg.cpu_int8 != "none":
            settings["cpu_int8"] = cfg.cpu_int8
        return settings

    @property
    def load_report(self) -> LoadReport:
        """What loading did to the backbone (quantization, CPU int8, warnings), as the model cache keeps it; an
        empty report for a backbone built by hand."""
        return load_report(self.backbone) or LoadReport(name=self.backbone.name)

    def load(self, video: VideoInput, sampling: SamplingConfig | None = None, *, fps: float | None = None,
             timestamps: Sequence[float] | None = None) -> Video:
        """Any accepted video input (a path, bytes, a binary file object, frames in memory with `fps=` or
        `timestamps=`, a `Video`; see `videollm.video.sources`) → a sampled `Video`."""
        return open_source(video, sampling or self.config.sampling, backend=self.config.video_backend,
                           strict=self.config.strict_video, fps=fps, timestamps=timestamps)

    @torch.inference_mode()
    def __call__(self, video: VideoInput, question: str | Question, options: list[str] | None = None, *,
                 budget: int | None = None, reasoning: str | None = None, sampling: SamplingConfig | None = None,
                 generation: GenerationConfig | None = None, prompt: str | None = None,
                 answer_format: str | None = None, fps: float | None = None,
                 timestamps: Sequence[float] | None = None) -> Answer:
        """Answer `question` about `video`: a path, the file's bytes, a binary file object, frames in memory
        ((T, H, W, 3) uint8 array or tensor, or a list of PIL images, timed by `fps=` or `timestamps=`), or a
        `Video`. `prompt`, when given, is the exact user turn (a benchmark's own wording, options included);
        `options` then only tell which letters are valid answers. `answer_format="choice"` makes a
        multiple-choice answer always one of the option letters. `question` may be a built `Question`.

        Four stages: `prepare` (every check, before any decoding), `encode` (frames → visual tokens),
        `answer` (the reasoning mode) and `assemble` (the `Answer`)."""
        started = time.perf_counter()
        req = self.prepare(question, options, budget=budget, reasoning=reasoning, generation=generation,
                           prompt=prompt, answer_format=answer_format)
        timer = StageTimer()
        with timer.activate():
            encoded = self.encode(req, video, sampling, fps=fps, timestamps=timestamps)
            outcome = self.answer(req, encoded.visual)
        return self.assemble(req, encoded, outcome, timer.as_dict(wall=time.perf_counter() - started))

    # ---- the stages of a call --------------------------------------------------------------------------
    def prepare(self, question: str | Question, options: list[str] | None = None, *, budget: int | None = None,
                reasoning: str | None = None, generation: GenerationConfig | None = None,
                prompt: str | None = None, answer_format: str | None = None) -> Request:
        """Stage 1: the call's request, every part built and checked once, before any decoding: the `Question`,
        the budget (`check_budget`), the generation settings, the mode and its `ReasoningConfig`."""
        q = make_question(question, options, prompt)
        gen = generation or self.config.generation
        gen.validate()
        cfg = self.config
        fmt = cfg.answer_format_for(answer_format)
        check_answer_format(fmt, q.options)
        # the one budget check (`check_budget`), against this backbone's context: the config's budget was checked
        # against the model's declared context, which a hub id or a backbone built in code may not have
        budget = check_budget(cfg.budget if budget is None else budget, self.backbone.max_context)
        mode = reasoning or cfg.reasoning
        if reasoning is not None:
            MODES.get(mode)  # an unknown name is refused here, not after the video is encoded
        rcfg = cfg.reasoning_config()
        if rcfg.answer_format != fmt:
            rcfg = ReasoningConfig.build(replace(rcfg, answer_format=fmt))
        return Request(question=q, budget=budget, mode=mode, generation=gen,
                       reasoning=rcfg)

    def encode(self, req: Request, video: VideoInput, sampling: SamplingConfig | None = None, *,
               fps: float | None = None, timestamps: Sequence[float] | None = None) -> Encoded:
        """Stage 2: decode the frames, fit the budget to the context, compress to visual tokens; with the
        warnings the user should see (a backbone's notice, what loading or the compressor could not do as asked,
        a video that ended early)."""
        notes: list[str] = []
        with stage("decode"):
            vid = self.load(video, sampling, fps=fps, timestamps=timestamps)
        try:
            from videollm.compressors.base import prepare_video

            prepare_video(self.backbone, vid)  # backbones whose grid depends on the frame size (Qwen-VL)
            budget = self._fit_budget(req, vid, notes)
            visual = self.compressor(vid, query=self._query(req.question), budget=budget)
        finally:
            if not isinstance(video, Video):
                vid.close()
        warnings = [self.backbone.notice] if self.backbone.notice else []
        warnings += self.load_report.warnings  # what loading could not do as asked
        warnings += [str(w) for w in visual.stats.get("warnings", [])]  # what the compressor had to do instead
        short = vid.shortfall()
        if short is not None:  # answer from what decoded, and say so
            warnings.append(short.message())
            logger.info(short.message(vid.source))
            visual.stats["decode"] = {"planned_frames": short.planned, "decoded_frames": short.decoded,
                                      "video_ends_at": round(short.ends_at, 3)}
        return Encoded(visual=visual, warnings=warnings + notes)

    def answer(self, req: Request, visual: VisualTokens) -> ReasoningOutcome:
        """Stage 3: the reasoning mode on the visual tokens."""
        return run_mode(req.mode, self.backbone, req.question, visual, req.generation, req.reasoning,
                        system=self.config.system_prompt)

    def assemble(self, req: Request, encoded: Encoded, outcome: ReasoningOutcome, timings: dict[str, float]
                 ) -> Answer:
        """Stage 4: the `Answer`, with the kept frames' times and every warning."""
        visual = encoded.visual
        ts = visual.timestamps
        kept = visual.kept_frames
        q = req.question
        return Answer(
            text=outcome.text, choice=outcome.choice, question=q.text, options=q.lettered,
            kept_frames=kept, kept_timestamps=[round(float(ts[i]), 3) for i in kept],
            visual_tokens=visual.num_tokens, sampled_frames=visual.num_sampled_frames,
            tokens_per_frame=visual.tokens_per_frame, generated_tokens=outcome.generated_tokens,
            reasoning=outcome.mode, thought=outcome.thought, initial_answer=outcome.initial_answer,
            initial_choice=outcome.initial_choice,
            confidence=outcome.confidence, thinking_fired=outcome.thinking_fired,
            finish_reason=outcome.finish_reason, compressor_stats=_jsonable(visual.stats),
            timings=timings, model=self.backbone.name,
            warnings=encoded.warnings + auto_notes(outcome) + [str(w) for w in outcome.extra.get("warnings", [])],
        )

    def _query(self, question: Question) -> str:
        """What the compressor reads: the question, or the whole user turn for one that reads the options too."""
        wants_options = getattr(self.compressor, "wants_options", False)  # False for a plain callable
        return question.user_text if wants_options else question.text

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
        built = [make_question(q, opts) for q, opts in items]  # every question is checked before the video
        vid = self.load(video, kwargs.pop("sampling", None), fps=kwargs.pop("fps", None),
                        timestamps=kwargs.pop("timestamps", None))
        try:
            return [self(vid, q, **kwargs) for q in built]
        finally:
            if not isinstance(video, Video):
                vid.close()

    @torch.inference_mode()
    def prefetch(self, video: Video, question: str, options: list[str] | None = None, *, budget: int | None = None,
                 reasoning: str | None = None, generation: GenerationConfig | None = None) -> None:
        """Decode `video` and run the vision tower for this question ahead of time, so the call with the same
        arguments that follows finds its per-frame tokens in the feature cache (the server runs this for the next
        request while the current one generates). Nothing is returned; errors are the call's own."""
        req = self.prepare(question, options, budget=budget, reasoning=reasoning, generation=generation)
        budget = self._fit_budget(req, video, [])
        self.compressor(video, query=self._query(req.question), budget=budget)

    def _fit_budget(self, req: Request, video: Video, notes: list[str]) -> int | None:
        """Check the request's budget against the context, or choose one when none was given (before decoding)."""
        budget, generation = req.budget, req.generation
        allowance = generation.max_new_tokens
        if req.mode != "direct":
            allowance += req.reasoning.think_allowance() + min(generation.max_new_tokens, MAX_ANSWER_TOKENS)
        plan = plan_context(self.backbone, req.question.user_text, self.config.system_prompt, len(video), allowance,
                            self.backbone.text_tokens_per_frame)
        fitted = fit_budget(plan, budget)
        if budget is not None or len(video) * self.backbone.tokens_per_frame <= fitted:
            return budget
        notes.append(f"no budget given: {len(video)} frames reduced to {fitted} visual tokens to fit the model's "
                     f"context of {plan.max_context} tokens")
        return fitted


@dataclass(frozen=True)
class Request:
    """One call's request as `VideoQAPipeline.prepare` built and checked it: what the later stages trust."""

    question: Question
    budget: int | None
    mode: str
    generation: GenerationConfig
    reasoning: ReasoningConfig


@dataclass
class Encoded:
    """What `encode` hands on: the visual tokens and the warnings gathered so far."""

    visual: VisualTokens
    warnings: list[str] = field(default_factory=list)


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, torch.Tensor):
            v = v.tolist()
        out[k] = v
    return out
