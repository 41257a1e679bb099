"""Token compressors: cut a video's visual tokens to a budget before the LLM. Chosen by name."""
from __future__ import annotations

from typing import Any

from videollm.registry import Registry

COMPRESSORS: Registry[Any] = Registry("compressor", entry_point_group="videollm.compressors")
COMPRESSORS.register("uniform", "videollm.compressors.baselines:UniformCompressor")
COMPRESSORS.register("pool", "videollm.compressors.baselines:PoolCompressor")
COMPRESSORS.register("longvu", "videollm.compressors.longvu:LongVUCompressor")
COMPRESSORS.register("storm", "videollm.compressors.storm:StormCompressor")


def create_compressor(name: str, backbone: Any, **options: Any) -> Any:
    """`create_compressor("pool", backbone, tokens_per_frame=16)`: like timm's `create_model`."""
    return COMPRESSORS.get(name)(backbone, **options)


def list_compressors() -> list[str]:
    return COMPRESSORS.names()


__all__ = ["COMPRESSORS", "create_compressor", "list_compressors"]
