"""Opt-in fast decode loop: a static KV cache and a compiled per-token step (CUDA graphs on a GPU).

At batch 1 a small LLM's eager decode step is Python-bound (~20 ms/token for the 0.5B on an H100, far above
its weight-bandwidth limit). With a `StaticCache` every step has the same shapes and tensor addresses, so
the step (one token's embedding → last-position logits) can be compiled once (`torch.compile`, mode
"reduce-overhead" = CUDA graphs on CUDA) and replayed. The prefill stays eager. The cache length is rounded
up to a bucket so prompts of nearby lengths reuse one compiled graph.

Used by `generate` when `GenerationConfig.static_decode` is set, for a fresh prompt (no cache to continue,
no first-step hook that edits the cache) on a backbone that offers `SupportsStaticDecode`; everything else
takes the eager loop. The result carries no continuable cache (think/auto phases continue eagerly).
"""
from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from typing import Any

import torch

from .._compat import cache_kwargs
from ..protocols import SupportsStaticDecode

logger = logging.getLogger(__name__)

#: static cache lengths are rounded up to a multiple of this, so one compiled step serves many prompts
BUCKET = 256

Step = Callable[[torch.Tensor, Any, torch.Tensor], torch.Tensor]


def _step_fn(decoder: torch.nn.Module, head: torch.nn.Module) -> Step:
    def step(embeds: torch.Tensor, cache: Any, positions: torch.Tensor) -> torch.Tensor:
        # positions given as a tensor: the decoder would otherwise derive them from the cache's length, a
        # Python int that changes every token (a recompile per token under torch.compile)
        out = decoder(inputs_embeds=embeds, position_ids=positions, **cache_kwargs(cache), return_dict=True)
        return head(out.last_hidden_state[:, -1]).float()

    return step


class StaticDecoder:
    """Prefill into a static cache, then one (compiled) step per token. One per backbone (`for_backbone`)."""

    def __init__(self, decoder: torch.nn.Module, head: torch.nn.Module, compile: bool = True):
        self.decoder, self.head = decoder, head
        self.eager_step = _step_fn(decoder, head)
        self.compiled = compile
        self.step: Step = self.eager_step
        if compile:
            mode = "reduce-overhead" if next(decoder.parameters()).device.type == "cuda" else None
            self.step = torch.compile(self.eager_step, mode=mode, dynamic=False)

    def new_cache(self, length: int, max_context: int | None = None) -> Any:
        """A static cache of at least `length` tokens (rounded up to `BUCKET`, at most `max_context`)."""
        from transformers import StaticCache

        size = -(-int(length) // BUCKET) * BUCKET
        if max_context:
            size = max(int(length), min(size, int(max_context)))
        return StaticCache(config=self.decoder.config, max_cache_len=size)

    def prefill(self, embeds: torch.Tensor, cache: Any) -> torch.Tensor:
        """Eager: prompts vary in length, compiling them would recompile per prompt."""
        p = next(self.decoder.parameters())
        positions = torch.arange(embeds.shape[1], device=p.device)[None]
        return self.eager_step(embeds.to(p.device, p.dtype), cache, positions)

    def next(self, embeds: torch.Tensor, cache: Any, position: int) -> torch.Tensor:
        p = next(self.decoder.parameters())
        return self.step(embeds.to(p.device, p.dtype), cache, torch.tensor([[position]], device=p.device))


#: per backbone (held weakly: a dropped model is not kept alive by its compiled step), per `compile` flag
_DECODERS: weakref.WeakKeyDictionary[SupportsStaticDecode, dict[bool, StaticDecoder]] = weakref.WeakKeyDictionary()


def for_backbone(backbone: SupportsStaticDecode, compile: bool = True) -> StaticDecoder:
    """The backbone's `StaticDecoder` (made once: compiling is the expensive part)."""
    decoder, head = backbone.text_decoder()
    try:
        made = _DECODERS.setdefault(backbone, {})
    except TypeError:  # not weakly referenceable: build it each time rather than keep the model alive forever
        made = {}
    dec = made.get(compile)
    if dec is None or dec.decoder is not decoder:
        dec = made[compile] = StaticDecoder(decoder, head, compile=compile)
    return dec


__all__ = ["BUCKET", "StaticDecoder", "for_backbone"]
