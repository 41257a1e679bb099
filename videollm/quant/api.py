"""`quantize_(module, config)` and `quantize_backbone(backbone, llm=..., vision=...)`."""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ..backbones.protocols import SupportsQuantization, quant_role
from ..errors import InvalidRequestError
from . import backends
from .config import SCHEME_NAMES, WeightQuantConfig, config_for
from .linear import QuantLinear

logger = logging.getLogger(__name__)

_DTYPES = {"auto": torch.bfloat16, "bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}


def _linear_names(module: nn.Module, filter_fn: Callable[[nn.Module, str], bool] | None) -> list[str]:
    return [n for n, m in module.named_modules()
            if type(m) is nn.Linear and (filter_fn is None or filter_fn(m, n))]


def _set_child(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, attr, new)


def resolve_backend(config: WeightQuantConfig, module: nn.Module) -> str:
    if config.backend != "auto":
        return config.backend
    p = next(module.parameters(), None)
    if p is not None and backends.torchao_available_for(config, p.device, p.dtype):
        return "torchao"
    return "native"


def quantize_(module: nn.Module, config: WeightQuantConfig,
              filter_fn: Callable[[nn.Module, str], bool] | None = None) -> list[str]:
    """Quantize `module`'s `nn.Linear` layers in place (those `filter_fn(layer, name)` accepts).

    Returns the quantized layers' names. Quantize after moving the model to its device: CPU kernel
    layouts are prepared for the device the weights are on.
    """
    names = _linear_names(module, filter_fn)
    backend = resolve_backend(config, module)
    if backend == "torchao":
        return backends.quantize_torchao(module, config, names)
    if backend == "quanto":
        return backends.quantize_quanto(module, config, names)
    kernel = "dequant" if backend == "reference" else "auto"
    cdt = _DTYPES.get(config.compute_dtype, torch.bfloat16)
    for name in names:
        lin = module.get_submodule(name)
        _set_child(module, name, QuantLinear.from_linear(lin, config.scheme, config.group_size, kernel=kernel,
                                                         compute_dtype=cdt, zero_point=config.zero_point,
                                                         clip_search=config.clip_search))
    logger.info("quantized %d linear layers to %s (%s)", len(names), config.scheme, backend)
    return names


@dataclass
class BackboneQuantization:
    """What `quantize_backbone` did; kept on the backbone as `backbone.quantization`."""

    llm: str = "none"
    vision: str = "none"
    group_size: int | None = 128
    backend: str = "auto"
    symmetric: bool | None = None
    llm_layers: list[str] = field(default_factory=list)
    vision_layers: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["llm_layers"], d["vision_layers"] = len(self.llm_layers), len(self.vision_layers)
        return d


def backbone_parts(backbone: SupportsQuantization) -> tuple[nn.Module, nn.Module]:
    """(language model without embeddings/head, vision encoder) from `quantizable_modules()`."""
    mods = _quantizable(backbone)
    if "llm" not in mods or "vision" not in mods:
        raise InvalidRequestError(f"{getattr(backbone, 'name', type(backbone).__name__)} offers no 'llm' and "
                                  "'vision' modules to quantize")
    return mods["llm"], mods["vision"]


def _quantizable(owner: object) -> dict[str, nn.Module]:
    if not isinstance(owner, SupportsQuantization):
        raise InvalidRequestError(f"{getattr(owner, 'name', type(owner).__name__)} has no quantizable modules")
    return owner.quantizable_modules()


def check_scheme_names(llm: str = "none", vision: str = "none") -> None:
    """`--quant` / `--vision-quant` names, checked before any model loads."""
    for what, scheme in (("--quant", llm), ("--vision-quant", vision)):
        if scheme not in SCHEME_NAMES:
            raise InvalidRequestError(f"{what} {scheme!r} is not one of {', '.join(SCHEME_NAMES)}")


def quantize_backbone(backbone: SupportsQuantization, llm: str = "none", vision: str = "none",
                      group_size: int | None = 128, backend: str = "auto",
                      symmetric: bool | None = None) -> BackboneQuantization:
    """Quantize the linear layers of every module `backbone.quantizable_modules()` offers, in place: keys
    with the "llm" role take `llm`, the others `vision` (see `quant_role`). Works the same on a compressor
    that owns models (STORM's encoder, Tempo's small VLM) and on any backbone.

    `symmetric` applies to int4 (None = asymmetric with zero points, the default; see `WeightQuantConfig`).

    Embeddings, `lm_head`, the projector, the patch embedding and norms stay in float: they are a small
    share of the compute, and the LM head/embeddings (tied in Qwen2-0.5B) are the most error-sensitive.
    """
    check_scheme_names(llm, vision)
    mods = _quantizable(backbone)
    done = BackboneQuantization(llm=llm, vision=vision, group_size=group_size, backend=backend, symmetric=symmetric)
    configs = {"llm": config_for(llm, group_size, backend, symmetric),
               "vision": config_for(vision, group_size, backend, symmetric)}
    for key, module in mods.items():
        role = quant_role(key)
        cfg = configs[role]
        if cfg is None:
            continue
        names = quantize_(module, cfg)
        prefix = "" if key == role else key + "."
        (done.llm_layers if role == "llm" else done.vision_layers).extend(prefix + n for n in names)
    prev = getattr(backbone, "quantization", None)
    if isinstance(prev, BackboneQuantization):  # quantizing in two calls keeps both records
        done.llm = llm if llm != "none" else prev.llm
        done.vision = vision if vision != "none" else prev.vision
        done.llm_layers = done.llm_layers or prev.llm_layers
        done.vision_layers = done.vision_layers or prev.vision_layers
    backbone.quantization = done  # type: ignore[attr-defined]
    return done
