"""LLaVA-OneVision backbones saved already quantized (`videollm quantize`), loaded without re-quantizing.

The generic format (packed weights + manifest) is `quant.io`'s; this module knows which backbone a saved
directory rebuilds, so `quant` never imports a model family.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .._compat import require
from ..device import resolve_device
from ..errors import ModelLoadError
from ..quant.io import empty_model, load_into, read_manifest, save_module
from .llava_onevision import LlavaOneVisionBackbone

if TYPE_CHECKING:
    from ..quant.api import BackboneQuantization


def save_quantized(backbone: LlavaOneVisionBackbone, path: str | Path,
                   quantization: BackboneQuantization | None = None) -> Path:
    """Save a quantized LLaVA-OneVision backbone (weights, manifest, config, tokenizer) to a directory.

    `quantization` is what `quantize_backbone` returned (the manifest records it); the packed layers are saved
    whether or not it is given."""
    path = Path(path)
    q = quantization
    extra = {"kind": "llava_onevision", "name": backbone.name, "image_mean": list(backbone.image_mean),
             "image_std": list(backbone.image_std), "chat_template": backbone.chat_template,
             "notice": backbone.notice, "quantization": q.to_dict() if q is not None else None,
             "dtype": str(backbone.dtype).replace("torch.", "")}
    save_module(backbone.model, path, extra)
    backbone.model.config.save_pretrained(path)
    backbone.tokenizer.save_pretrained(path)
    return path


def load_quantized(path: str | Path, device: str = "cpu") -> LlavaOneVisionBackbone:
    """Load a backbone saved by `save_quantized`. Quantized layers stay packed; kernels are set up for `device`."""
    transformers = require("transformers", purpose="loading quantized checkpoints")
    path = Path(path)
    manifest = read_manifest(path)
    dtype = getattr(torch, manifest.get("dtype", "float32"))
    try:
        config = transformers.AutoConfig.from_pretrained(path)
        tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise ModelLoadError(str(path), err) from err
    model = empty_model(transformers.LlavaOnevisionForConditionalGeneration, config)
    model.to(resolve_device(device), dtype)
    load_into(model, path)
    return LlavaOneVisionBackbone(model.eval(), tokenizer, name=manifest.get("name", str(path)),
                                  image_mean=tuple(manifest["image_mean"]), image_std=tuple(manifest["image_std"]),
                                  chat_template=manifest.get("chat_template"), notice=manifest.get("notice"))
