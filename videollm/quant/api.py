"""`quantize_(module, config)`, `quantize_head(model, ...)` and `quantize_backbone(backbone, llm=..., vision=...)`."""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ..device import DTYPES
from ..errors import InvalidRequestError
from ..protocols import SupportsQuantization, quant_role
from . import backends
from .config import HEAD_AUTO, HEAD_CHOICES, SCHEME_NAMES, WeightQuantConfig, config_for
from .embedding import QuantEmbedding
from .linear import QuantLinear

logger = logging.getLogger(__name__)


def _compute_dtype(name: str) -> torch.dtype:
    """A library backend's compute dtype: 'auto' is bfloat16, the dtype those kernels are written for."""
    return getattr(torch, DTYPES.get(name, "bfloat16"))



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
    cdt = _compute_dtype(config.compute_dtype)
    for name in names:
        lin = module.get_submodule(name)
        _set_child(module, name, QuantLinear.from_linear(lin, config.scheme, config.group_size, kernel=kernel,
                                                         compute_dtype=cdt, zero_point=config.zero_point,
                                                         clip_search=config.clip_search))
    logger.info("quantized %d linear layers to %s (%s)", len(names), config.scheme, backend)
    return names


@dataclass
class BackboneQuantization:
    """What `quantize_backbone` did. Returned, never written onto the model: the model cache keeps it in the
    model's `LoadReport` (`videollm.models.load_report(model).quantization`)."""

    llm: str = "none"
    vision: str = "none"
    head: str = "none"
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


def resolve_head(head: str, llm: str) -> str:
    if head not in HEAD_CHOICES:
        raise InvalidRequestError(f"head quantization {head!r} is not one of {', '.join(HEAD_CHOICES)}")
    return HEAD_AUTO[llm] if head == "auto" else head


def quantize_head(model: nn.Module, scheme: str, group_size: int | None = 128, backend: str = "auto",
                  symmetric: bool | None = None) -> list[str]:
    """Quantize a causal LM's output head and input embeddings (`get_output/input_embeddings`) in place.

    The head becomes a `QuantLinear` (decode runs its packed kernel); the embedding a `QuantEmbedding`
    that dequantizes looked-up rows from the head's packed table when the two are tied, or from its own
    packed copy when not. Returns the names replaced. Native engine only: with torchao/quanto engines
    the head stays float (their layers cannot serve row lookups).
    """
    cfg = config_for(scheme, group_size, backend, symmetric)
    if cfg is None:
        return []
    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    if type(head) is not nn.Linear or type(emb) is not nn.Embedding:
        return []  # already quantized, or a layout we do not know
    if resolve_backend(cfg, model) not in ("native", "reference"):
        logger.info("LM head left in float: the %s engine cannot serve embedding lookups", cfg.backend)
        return []
    tied = head.weight.data_ptr() == emb.weight.data_ptr()
    kernel = "dequant" if cfg.backend == "reference" else "auto"
    qhead = QuantLinear.from_linear(head, cfg.scheme, cfg.group_size, kernel=kernel, zero_point=cfg.zero_point,
                                    compute_dtype=_compute_dtype(cfg.compute_dtype))
    head_name = next(n for n, m in model.named_modules() if m is head)
    emb_name = next(n for n, m in model.named_modules() if m is emb)
    qemb = (QuantEmbedding(qhead, tied=True, dtype=emb.weight.dtype, padding_idx=emb.padding_idx) if tied
            else QuantEmbedding.from_embedding(emb, cfg.scheme, cfg.group_size, zero_point=cfg.zero_point))
    _set_child(model, head_name, qhead)
    _set_child(model, emb_name, qemb)
    logger.info("quantized the LM head%s to %s", " and its tied embeddings" if tied else " and the embeddings",
                cfg.scheme)
    return [head_name, emb_name]


def quantize_backbone(backbone: SupportsQuantization, llm: str = "none", vision: str = "none",
                      group_size: int | None = 128, backend: str = "auto", symmetric: bool | None = None,
                      head: str = "auto", previous: BackboneQuantization | None = None) -> BackboneQuantization:
    """Quantize the linear layers of every module `backbone.quantizable_modules()` offers, in place: keys
    with the "llm" role take `llm`, the others `vision` (see `quant_role`). Works the same on a compressor
    that owns models (STORM's encoder, Tempo's small VLM) and on any backbone. Where the backbone offers its
    causal LM (`causal_lm()`), the LM head and input embeddings are quantized too.

    `symmetric` applies to int4 (None = asymmetric with zero points, the default; see `WeightQuantConfig`).
    `head`: "auto" (default) quantizes the LM head and embeddings whenever the LLM is quantized (int8 → int8,
    int4 and below → int4, see `HEAD_AUTO`), "none" keeps them float, or a scheme name. In Qwen2-0.5B the
    tied head is a quarter of the weights and, in float, took more decode time than all other layers.
    The projector, the patch embedding and norms stay in float. `previous`, the record of an earlier call on
    the same model (quantizing the LLM and the tower in two calls), is merged into the one returned.
    """
    check_scheme_names(llm, vision)
    head = resolve_head(head, llm)
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
    causal_lm = getattr(backbone, "causal_lm", None)
    if head != "none" and configs["llm"] is not None and callable(causal_lm):
        if quantize_head(causal_lm(), head, group_size, backend, symmetric):
            done.head = head
    prev = previous
    if prev is not None:  # quantizing in two calls keeps both records
        done.llm = llm if llm != "none" else prev.llm
        done.vision = vision if vision != "none" else prev.vision
        done.head = done.head if done.head != "none" else prev.head
        done.llm_layers = done.llm_layers or prev.llm_layers
        done.vision_layers = done.vision_layers or prev.vision_layers
    return done
