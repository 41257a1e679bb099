"""Reuse the KV cache of a prompt's question-independent prefix across questions about one video.

The chat template puts the video before the question (`<|im_start|>user\\n<video>\\n{question}...`), so with a
query-independent compressor (uniform, pool, storm) every question about a video shares the prompt up to and
including the visual tokens: system turn, user-turn start, visual tokens. Its KV is computed once (in the
first question's own full prefill) and each later question prefills only its suffix.

Exactness: an entry is reused only when the new prefix's embeddings are bitwise equal to the stored ones,
on the same backbone instance, dtype and device, so whatever decides the prefix (model, system prompt,
compressor output, a query-aware compressor's per-question selection) is part of the key by construction;
a query-aware compressor (LongVU, Tempo) whose tokens change with the question simply misses. Each use gets
its own copy of the stored cache, so nothing a question appends can reach the next one.

Bounded: one prefix per backbone (the last one), held weakly by the backbone (dropped with it).
`VIDEOLLM_PREFIX_CACHE=0` turns reuse off (read on every call, for A/B runs).
"""
from __future__ import annotations

import copy
import logging
import os
import weakref
from dataclasses import dataclass
from typing import Any

import torch

from ..protocols import LanguageModel

logger = logging.getLogger(__name__)

ENV = "VIDEOLLM_PREFIX_CACHE"


def enabled() -> bool:
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "", "false", "off", "no")


@dataclass
class _Entry:
    embeds: torch.Tensor  # (1, P, D): the prefix this KV belongs to
    cache: Any  # holds exactly P tokens; never handed out itself, only copies


@dataclass
class PrefixStats:
    hits: int = 0
    misses: int = 0
    reused_tokens: int = 0


def clone_cache(cache: Any, length: int | None = None) -> Any:
    """An independent copy of a transformers cache, cut to its first `length` tokens when given."""
    out = copy.deepcopy(cache)
    if length is not None:
        extra = int(out.get_seq_length()) - int(length)
        if extra < 0:
            raise ValueError(f"cache holds {out.get_seq_length()} tokens, fewer than the {length} asked for")
        if extra:
            out.crop(-extra)  # transformers 5: a negative value removes that many tokens from the end
    return out


class PrefixCache:
    """One prompt prefix's KV per backbone; see the module docstring."""

    def __init__(self) -> None:
        self._entries: weakref.WeakKeyDictionary[LanguageModel, _Entry] = weakref.WeakKeyDictionary()
        self.stats = PrefixStats()

    def clear(self) -> None:
        self._entries = weakref.WeakKeyDictionary()

    def lookup(self, backbone: LanguageModel, prefix: torch.Tensor) -> Any | None:
        """A private copy of the cache holding `prefix` (1, P, D), or None (a miss)."""
        entry = self._get(backbone)
        if entry is None or not _same(entry.embeds, prefix):
            self.stats.misses += 1
            return None
        self.stats.hits += 1
        self.stats.reused_tokens += int(prefix.shape[1])
        return clone_cache(entry.cache)

    def store(self, backbone: LanguageModel, prefix: torch.Tensor, cache: Any) -> None:
        """Keep a copy of `cache` cut to the prefix (the caller goes on using `cache` itself)."""
        try:
            self._entries[backbone] = _Entry(prefix.detach().clone(), clone_cache(cache, int(prefix.shape[1])))
        except TypeError:  # not weakly referenceable: no reuse rather than a leak
            logger.debug("prefix cache: %s cannot be weakly referenced; not caching", type(backbone).__name__)
        except (ValueError, AttributeError, NotImplementedError) as err:  # a cache type that cannot crop
            logger.debug("prefix cache: cannot keep this cache (%s)", err)

    def _get(self, backbone: LanguageModel) -> _Entry | None:
        try:
            return self._entries.get(backbone)
        except TypeError:
            return None


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and bool(torch.equal(a, b))


_DEFAULT = PrefixCache()


def default_prefix_cache() -> PrefixCache:
    return _DEFAULT


__all__ = ["ENV", "PrefixCache", "PrefixStats", "clone_cache", "default_prefix_cache", "enabled"]
