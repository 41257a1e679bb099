"""Baselines every method is compared against: keep all tokens of uniformly sampled frames, or pool them."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from videollm.errors import InvalidRequestError
from videollm.types import VisualTokens
from videollm.video import Video

from . import COMPRESSORS
from .base import CompressorConfig, TokenCompressor, frames_within, pack, pool_grid, spread


@COMPRESSORS.register("uniform")
class UniformCompressor(TokenCompressor):
    """All native tokens of the sampled frames; under a budget, fewer frames spread evenly (never pooled)."""

    name = "uniform"

    def compress(self, video: Video, query: str | None, budget: int | None) -> VisualTokens:
        per_frame = self.backbone.tokens_per_frame
        n_keep = frames_within(budget, len(video), per_frame)
        positions = spread(n_keep, len(video))
        tokens, frames, patches = [], [], []
        for pos, tok in self.iter_frame_tokens(video, positions):
            flat = tok.flatten(1, 2)
            if budget is not None and per_frame > budget:  # even one frame is over budget: pool it down
                flat = pool_grid(tok, budget).flatten(1, 2)
            for p, t in zip(pos.tolist(), flat):
                tokens.append(t)
                frames.append(p)
                patches.append(torch.arange(t.shape[0]) if t.shape[0] == per_frame else torch.full((t.shape[0],), -1))
        return pack(tokens, frames, video.timestamps, len(video), patches,
                    {"frames_dropped_for_budget": len(video) - len(positions)})


@dataclass
class PoolConfig(CompressorConfig):
    tokens_per_frame: int | None = None  # None: as many as the budget allows, up to the native count

    def validate(self) -> None:
        super().validate()
        if self.tokens_per_frame is not None and self.tokens_per_frame < 1:
            raise InvalidRequestError(f"pool: tokens_per_frame must be >= 1 (or unset), got {self.tokens_per_frame}")


@COMPRESSORS.register("pool")
class PoolCompressor(TokenCompressor):
    """Spatial average pooling of every sampled frame to the same tokens-per-frame target."""

    name = "pool"
    config_class = PoolConfig
    config: PoolConfig

    def compress(self, video: Video, query: str | None, budget: int | None) -> VisualTokens:
        native = self.backbone.tokens_per_frame
        target = native if self.config.tokens_per_frame is None else self.config.tokens_per_frame
        n = len(video)
        positions = spread(n, n)
        if budget is not None:
            if budget < n:  # fewer tokens than frames: one token each for `budget` frames
                positions, target = spread(budget, n), 1
            else:
                target = min(target, budget // n)
        tokens, frames = [], []
        for pos, tok in self.iter_frame_tokens(video, positions):
            pooled = pool_grid(tok, target).flatten(1, 2)
            for p, t in zip(pos.tolist(), pooled):
                tokens.append(t)
                frames.append(p)
        return pack(tokens, frames, video.timestamps, n, None, {"tokens_per_frame_target": target})
