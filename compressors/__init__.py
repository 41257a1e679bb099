"""Token compressors: cut a video's visual tokens to a budget before the LLM. Chosen by name.

Each class registers where it is defined (`@COMPRESSORS.register("name")`); the registry imports those
modules on the first lookup, so `import videollm.compressors` loads no model code. A lazy
`COMPRESSORS.register("name", "module:Class")` works too, and third-party packages add theirs through the
`videollm.compressors` entry-point group.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from videollm.registry import Registry

if TYPE_CHECKING:
    from videollm.protocols import VideoLanguageModel

    from .base import CompressorConfig, TokenCompressor

#: built-ins register with `@COMPRESSORS.register(name)` on their class, in the modules listed here
COMPRESSORS: Registry[Any] = Registry("compressor", entry_point_group="videollm.compressors",
                                      modules=("videollm.compressors.baselines", "videollm.compressors.longvu",
                                               "videollm.compressors.tempo",
                                               "videollm.compressors.storm"))


def create_compressor(name: str, backbone: VideoLanguageModel | None, config: CompressorConfig | None = None,
                      weights: str | os.PathLike[str] | None = None, **options: Any) -> TokenCompressor:
    """`create_compressor("pool", backbone, tokens_per_frame=16)`, like timm's `create_model`.

    `config` is the compressor's config dataclass (options override its fields); `weights` is a directory
    written by `WeightedCompressor.save_pretrained`, for compressors that own trained modules.
    """
    from .base import WeightedCompressor

    cls = COMPRESSORS.get(name)
    if weights is None:
        return cls(backbone, config, **options)
    if not (issubclass(cls, WeightedCompressor) or callable(getattr(cls, "from_pretrained", None))):
        from videollm.errors import InvalidRequestError

        raise InvalidRequestError(f"compressor {name!r} has no weights to load")
    return cls.from_pretrained(weights, backbone, config=config, **options)


def list_compressors() -> list[str]:
    return COMPRESSORS.names()


__all__ = ["COMPRESSORS", "create_compressor", "list_compressors"]
