"""Log-likelihood of a continuation given a video and a prompt: lmms-eval's `loglikelihood` requests.

The video goes through the same sampler and compressor as a generated answer; the prompt is the
backbone's chat turn with the assistant's answer starting right after it, and each continuation token is
scored with one cached forward step (continuations are short: an option, a word).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import torch

from videollm.budget import fit_budget, plan_context
from videollm.config import PipelineConfig
from videollm.protocols import LanguageModel, VideoLanguageModel
from videollm.video import Video

if TYPE_CHECKING:
    from videollm.compressors.base import TokenCompressor


class ScoringPipeline(Protocol):
    """The slice of `VideoQAPipeline` scoring needs."""

    backbone: VideoLanguageModel
    config: PipelineConfig
    compressor: TokenCompressor


@torch.inference_mode()
def continuation_logprob(pipe: ScoringPipeline, video: Video, prompt: str, continuation: str,
                         query: str | None = None) -> tuple[float, bool]:
    """(sum of the continuation's token log-probabilities, whether greedy decoding would produce it)."""
    backbone = pipe.backbone
    ids = backbone.tokenizer(continuation, add_special_tokens=False)["input_ids"]
    if not ids:
        return 0.0, True
    cfg = pipe.config
    plan = plan_context(backbone, prompt, cfg.system_prompt, len(video), len(ids),
                        backbone.text_tokens_per_frame)
    visual = pipe.compressor(video, query=query or prompt, budget=fit_budget(plan, cfg.budget))
    inputs = backbone.build_inputs(prompt, visual, system=cfg.system_prompt)
    return score_ids(backbone, inputs.embeds, ids)


@torch.inference_mode()
def score_ids(backbone: LanguageModel, prompt_embeds: torch.Tensor, ids: Sequence[int]) -> tuple[float, bool]:
    """Summed log-probability of token `ids` following `prompt_embeds` (1, L, D), one cached step per token,
    and whether each is the argmax at its step."""
    logits, cache = backbone.lm_forward(prompt_embeds)
    total, greedy = 0.0, True
    for k, tok in enumerate(ids):
        logp = torch.log_softmax(logits[0].float(), dim=-1)
        total += float(logp[tok])
        greedy = greedy and int(logp.argmax()) == int(tok)
        if k + 1 < len(ids):
            logits, cache = backbone.lm_forward(backbone.embed_ids([int(tok)])[None].to(prompt_embeds.dtype), cache)
    return total, greedy
