"""`VideoLLM`: lmms-eval's model interface (`lmms`) over `VideoQAPipeline`.

lmms-eval hands a model its requests in task order, already split across ranks; each request names its doc,
whose `doc_to_visual` gives the video path and whose `doc_to_text` (the request's context) is the exact user
text. The requests are answered grouped by video, so each video is decoded and its frames encoded once, and
its questions reuse the cached frame tokens and prompt prefix (`VideoQAPipeline`'s feature and prefix
caches), as `videollm eval` and `ask_many` do. Answers are the pipeline's text, unchanged: lmms-eval's task
scores them, with its own extraction. Imported only by lmms-eval (it needs the `lmms-eval` extra).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from lmms_eval.api.instance import GenerationResult, Instance, TokenCounts
from lmms_eval.api.model import lmms
from tqdm.auto import tqdm

from videollm.errors import VideoError
from videollm.eval.cli import REASONING_MAX_NEW_TOKENS

from .requests import VideoRequest, by_video, generation_for, options_in, question_of, video_path
from .scoring import continuation_logprob
from .settings import settings_from_model_args

if TYPE_CHECKING:
    from videollm.pipeline import VideoQAPipeline

logger = logging.getLogger(__name__)

Doc = Mapping[str, object]


class VideoLLM(lmms):
    """`--model videollm --model_args pretrained=...,compressor=...,budget=...,quant=...` (see `settings.py`)."""

    is_simple = True

    def __init__(self, batch_size: int | str | None = 1, max_batch_size: int | None = None,
                 device: str | None = None, **model_args: object) -> None:
        super().__init__()
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        local = 0
        if world > 1:  # `accelerate launch`: one process per GPU; the evaluator gathers through this accelerator
            from accelerate import Accelerator

            self.accelerator = Accelerator()
            self._rank, self._world_size = self.accelerator.process_index, self.accelerator.num_processes
            local = self.accelerator.local_process_index
        if "device" not in model_args:
            model_args["device"] = _device(device, world, local)
        settings = settings_from_model_args(model_args)
        self.settings = settings
        from videollm.pipeline import VideoQAPipeline

        self.pipe: VideoQAPipeline = VideoQAPipeline.from_config(settings.config)
        self._device = self.pipe.backbone.device
        if str(batch_size) not in ("1", "auto", "None"):
            logger.warning("videollm answers one question at a time (grouped by video); batch_size=%s is ignored",
                           batch_size)

    @property
    def device(self) -> torch.device:
        return self._device

    # ---- lmms-eval's request types ------------------------------------------------------------------------
    def generate_until(self, requests: list[Instance]) -> list[GenerationResult]:
        cfg = self.settings.config
        todo, kwargs = [], []
        for i, req in enumerate(requests):
            context, gen_kwargs, doc_to_visual, doc_id, task, split = req.args
            doc = self._doc(task, split, doc_id)
            todo.append(VideoRequest(i, video_path(doc_to_visual(doc), task), context, question_of(doc, context),
                                     options_in(context)))
            kwargs.append(gen_kwargs)
        out: list[GenerationResult | None] = [None] * len(requests)
        bar = tqdm(total=len(requests), disable=self.rank != 0, desc="videollm")
        for group in by_video(todo):
            try:
                video = self.pipe.load(group[0].video)
            except VideoError as err:  # lmms-eval scores an empty answer wrong; `videollm eval` does the same
                logger.warning("%s: %s (%d question(s) answered with nothing)", group[0].video, err, len(group))
                for r in group:
                    out[r.index] = GenerationResult("", TokenCounts(output_tokens=0))
                bar.update(len(group))
                continue
            try:
                for r in group:
                    gen = generation_for(cfg.generation, kwargs[r.index], self.settings.max_new_tokens,
                                         cfg.reasoning, REASONING_MAX_NEW_TOKENS)
                    try:
                        ans = self.pipe(video, r.question, r.options, prompt=r.prompt, generation=gen)
                    except VideoError as err:  # decoding failed part-way (truncated, corrupt packets)
                        logger.warning("%s: %s (answered with nothing)", r.video, err)
                        out[r.index] = GenerationResult("", TokenCounts(output_tokens=0))
                        bar.update(1)
                        continue
                    text = ans.text or ""
                    out[r.index] = GenerationResult(text, TokenCounts(output_tokens=ans.generated_tokens))
                    self.cache_hook.add_partial("generate_until", (r.prompt, kwargs[r.index]), text)
                    bar.update(1)
            finally:
                video.close()
        bar.close()
        return [o for o in out if o is not None]

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """Each continuation scored after the prompt and the video's visual tokens (one video open at a time)."""
        todo: list[tuple[int, str, str, str, str]] = []
        for i, req in enumerate(requests):
            context, target, doc_to_visual, doc_id, task, split = req.args
            doc = self._doc(task, split, doc_id)
            cont = target if isinstance(target, str) else str(target(doc))
            todo.append((i, video_path(doc_to_visual(doc), task), context, cont, question_of(doc, context)))
        out: list[tuple[float, bool]] = [(0.0, False)] * len(requests)
        order: dict[str, list[tuple[int, str, str, str, str]]] = {}
        for item in todo:
            order.setdefault(item[1], []).append(item)
        for path, items in order.items():
            video = self.pipe.load(path)
            try:
                for i, _, context, cont, question in items:
                    out[i] = continuation_logprob(self.pipe, video, context, cont, query=question)
                    self.cache_hook.add_partial("loglikelihood", (context, cont), out[i])
            finally:
                video.close()
        return out

    def generate_until_multi_round(self, requests: Sequence[Instance]) -> list[str]:
        raise NotImplementedError("videollm answers single-turn questions; multi-round tasks are not supported")

    def _doc(self, task: str, split: str, doc_id: int) -> Doc:
        return self.task_dict[task][split][doc_id]


def _device(requested: str | None, world: int, local: int) -> str:
    """lmms-eval's --device, else videollm's `auto`; with several processes each takes its own GPU."""
    if world > 1 and torch.cuda.is_available() and requested in (None, "auto", "cuda"):
        return f"cuda:{local % torch.cuda.device_count()}"
    return requested or "auto"
