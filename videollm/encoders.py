"""Auxiliary image encoders that compressors run beside the backbone's own vision tower.

LongVU uses DINOv2 to find redundant frames before the (more expensive) main tower runs, because
DINOv2's self-supervised features track visual sameness better than language-aligned ones. We load it
through timm so any DINOv2 size works by name, and tests can build a tiny random one from timm kwargs.
"""
from __future__ import annotations

import logging
import os
from typing import Any

import torch

from ._compat import require
from .backbones.base import pad_square, resize_normalize
from .errors import InvalidRequestError, VideoLLMError

logger = logging.getLogger(__name__)

DEFAULT_DINOV2 = "vit_small_patch14_dinov2"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class EncoderLoadError(VideoLLMError):
    """An auxiliary encoder's weights could not be loaded (offline, unknown name)."""


class DinoV2Encoder:
    """uint8 frames (n, H, W, 3) → DINOv2 patch features (n, h, w, D), prefix (CLS/register) tokens dropped.

    `pad_to_square` follows LongVU's preprocessing (pad with the mean colour, then resize), so a letterboxed
    and a cropped copy of a scene do not look alike only because of their shape.
    """

    def __init__(self, model_name: str = DEFAULT_DINOV2, pretrained: bool = True, image_size: int | None = 378,
                 pad_to_square: bool = True, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 seed: int = 0, **timm_kwargs: Any):
        timm = require("timm", extra="vision", purpose="DINOv2 frame features")
        kwargs = dict(timm_kwargs)
        if image_size is not None:
            kwargs["img_size"] = int(image_size)
        if pretrained:  # local weights first; an unreachable hub fails at once, never in a retry loop
            kwargs["pretrained_cfg_overlay"] = {"file": find_pretrained(model_name)}
        try:
            with torch.random.fork_rng(devices=[]):  # random weights (tests) are the same on every build
                torch.manual_seed(seed)
                model = timm.create_model(model_name, pretrained=pretrained, num_classes=0, **kwargs)
        except RuntimeError as err:  # timm: "Unknown model (...)"
            raise InvalidRequestError(f"unknown timm image model {model_name!r}: {err}") from err
        except OSError as err:
            raise EncoderLoadError(
                f"could not load pretrained {model_name!r} through timm ({str(err).splitlines()[0][:200]}); "
                "without a model hub, pass pretrained=False (random weights: frame dedup becomes meaningless), "
                "e.g. --compressor-option dino_pretrained=false") from err
        self.model = model.eval().to(device=device, dtype=dtype)
        self.model_name = model_name
        self.pretrained = pretrained
        self.device, self.dtype = torch.device(device), dtype
        self.pad_to_square = pad_to_square
        cfg = getattr(model, "pretrained_cfg", None) or {}
        self.mean = tuple(cfg.get("mean", IMAGENET_MEAN))
        self.std = tuple(cfg.get("std", IMAGENET_STD))
        size = model.patch_embed.img_size
        self.image_size = (int(size[0]), int(size[1]))
        self.grid = tuple(int(g) for g in model.patch_embed.grid_size)
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 1))
        self.dim = int(model.num_features)

    @torch.inference_mode()
    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        x = resize_normalize(frames, self.image_size, self.mean, self.std, self.device, self.dtype,
                             pad_to_square=self.pad_to_square)
        tokens = self.model.forward_features(x)[:, self.num_prefix_tokens:]
        h, w = self.grid
        return tokens.reshape(tokens.shape[0], h, w, tokens.shape[-1])


def load_dinov2(model_name: str = DEFAULT_DINOV2, device: str = "auto", dtype: str = "auto",
                **options: Any) -> DinoV2Encoder:
    """The model cache's loader for "dinov2:NAME" (`videollm.models.get_model`): device and dtype by name, the
    rest are `DinoV2Encoder`'s options. Loaded once per settings and shared by every LongVU compressor."""
    from .device import resolve_device, resolve_dtype

    dev = resolve_device(device)
    return DinoV2Encoder(model_name, device=dev, dtype=resolve_dtype(dtype, dev), **options)


_UNLOADABLE: dict[str, str] = {}  # model name → why its weights cannot be had (asked once per process)


def find_pretrained(model_name: str) -> str:
    """A local file with `model_name`'s pretrained weights: from the Hugging Face cache, or downloaded once
    when the hub answers within seconds. Raises `EncoderLoadError` at once otherwise (remembered for the
    process), so an offline machine never spends tens of seconds in hub retries."""
    if model_name in _UNLOADABLE:
        raise EncoderLoadError(_UNLOADABLE[model_name])
    try:
        path = _locate(model_name)
    except EncoderLoadError as err:
        _UNLOADABLE[model_name] = str(err)
        raise
    return path


def _locate(model_name: str) -> str:
    import huggingface_hub
    from huggingface_hub import constants

    timm = require("timm", extra="vision", purpose="DINOv2 frame features")
    hint = ("without a model hub, DINOv2 dedup runs on the backbone's own vision features; for random DINOv2 "
            "weights pass pretrained=False (--compressor-option dino_pretrained=false)")
    if not timm.is_model(model_name.split(".")[0]):
        raise InvalidRequestError(f"unknown timm image model {model_name!r}")
    cfg = timm.models.get_pretrained_cfg(model_name)
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not repo:
        raise EncoderLoadError(f"{model_name!r} has no pretrained weights on the hub; {hint}")
    for fname in ("model.safetensors", "pytorch_model.bin"):
        hit = huggingface_hub.try_to_load_from_cache(repo, fname)
        if isinstance(hit, str):
            return hit
    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "") in ("1", "true", "True", "YES", "yes"):
        raise EncoderLoadError(f"pretrained {model_name!r} ({repo}) is not in the local cache and the hub is "
                               f"offline (HF_HUB_OFFLINE); {hint}")
    if not hub_reachable(constants.ENDPOINT):
        raise EncoderLoadError(f"pretrained {model_name!r} ({repo}) is not in the local cache and "
                               f"{constants.ENDPOINT} cannot be reached; {hint}")
    try:
        return huggingface_hub.hf_hub_download(repo, "model.safetensors", etag_timeout=5)
    except Exception as err:  # noqa: BLE001 - the hub client raises many kinds; one line is what users need
        raise EncoderLoadError(f"could not download {repo}: {str(err).splitlines()[0][:200]}; {hint}") from err


def hub_reachable(endpoint: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the hub's host opens within `timeout` seconds."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(endpoint)
    try:
        with socket.create_connection((url.hostname or "", url.port or (443 if url.scheme == "https" else 80)),
                                      timeout=timeout):
            return True
    except OSError:
        return False


__all__ = ["DEFAULT_DINOV2", "DinoV2Encoder", "EncoderLoadError", "find_pretrained", "hub_reachable", "load_dinov2",
           "pad_square"]
