"""torchao and optimum-quanto as alternative engines for int8/int4, used where their kernels run.

torchao's int4 needs CUDA (tinygemm, bf16) and is asymmetric (min/max scale + float zero point, the same
scheme as our default int4); its eager int8 is slow on CPU; optimum-quanto's int8/int4
are fast on CPU in bfloat16 (they call the same ATen kernels as our `QuantLinear`). Both swap weights in
place; our report and `io` read them through `layer_info`/`tensor_bytes`.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from .._compat import require
from ..errors import InvalidRequestError
from .config import WeightQuantConfig

logger = logging.getLogger(__name__)

LIBRARY_SCHEMES = ("int8", "int4")


def torchao_available_for(config: WeightQuantConfig, device: torch.device, dtype: torch.dtype) -> bool:
    """torchao is the engine of choice on CUDA: int8 any float dtype, int4 bfloat16 only (tinygemm)."""
    if device.type != "cuda" or config.scheme not in LIBRARY_SCHEMES:
        return False
    if config.scheme == "int4" and (dtype != torch.bfloat16 or config.symmetric or not config.group_size):
        return False  # tinygemm int4 has zero points and groups: symmetric or per-row int4 stays on our layer
    try:
        import torchao  # noqa: F401
    except ImportError:
        return False
    return True


def quantize_torchao(module: nn.Module, config: WeightQuantConfig, names: list[str]) -> list[str]:
    if config.scheme not in LIBRARY_SCHEMES:
        raise InvalidRequestError(f"the torchao backend does int8/int4, not {config.scheme}; use backend 'native'")
    if config.scheme == "int4" and not any(p.is_cuda for p in module.parameters()):
        raise InvalidRequestError("torchao's int4 kernels need CUDA and bfloat16; on CPU use backend 'native' "
                                  "or 'quanto'")
    if config.scheme == "int4" and config.symmetric:
        raise InvalidRequestError("torchao's int4 (tinygemm) is asymmetric; for symmetric int4 use backend 'native'")
    require("torchao", "quant", "torchao quantization")
    from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig, PerRow, quantize_

    wanted = set(names)
    if config.scheme == "int8":
        ao_cfg = Int8WeightOnlyConfig(granularity=PerRow())

        def ok(m: nn.Linear) -> bool:
            return True
    else:
        if not config.group_size:
            raise InvalidRequestError("torchao's int4 needs a group size (32, 64, 128 or 256); one scale per row "
                                      "(group size 0) is the native backend's")
        g = config.group_size
        # tinygemm qparams: min/max scale + float zero point, value = (q - 8)·scale + zero, as our default int4
        ao_cfg = Int4WeightOnlyConfig(group_size=g, int4_packing_format="tile_packed_to_4d",
                                      int4_choose_qparams_algorithm="tinygemm")

        def ok(m: nn.Linear) -> bool:
            return m.in_features % g == 0 and m.weight.dtype == torch.bfloat16
    done = [n for n, m in module.named_modules() if n in wanted and isinstance(m, nn.Linear) and ok(m)]
    chosen = set(done)
    quantize_(module, ao_cfg, filter_fn=lambda m, fqn: fqn in chosen)
    skipped = sorted(wanted - chosen)
    if skipped:
        logger.info("torchao %s left %d layers in float (shape or dtype): %s", config.scheme, len(skipped), skipped[:4])
    return done


def quantize_quanto(module: nn.Module, config: WeightQuantConfig, names: list[str]) -> list[str]:
    if config.scheme not in LIBRARY_SCHEMES:
        raise InvalidRequestError(f"the quanto backend here does int8/int4, not {config.scheme}; use 'native'")
    if config.scheme == "int4" and config.symmetric:
        raise InvalidRequestError("quanto's qint4 is asymmetric (scale + shift); for symmetric int4 use 'native'")
    quanto = require("optimum.quanto", "quant", "optimum-quanto quantization")
    qtype = quanto.qint8 if config.scheme == "int8" else quanto.qint4
    quanto.quantize(module, weights=qtype, include=names)
    quanto.freeze(module)
    return names


def library_scheme(module: nn.Module) -> tuple[str, str] | None:
    """(scheme, engine) of a layer quantized by torchao or quanto, else None."""
    cls = type(module).__name__
    if cls == "QLinear" and hasattr(module, "weight_qtype"):
        name = str(getattr(module.weight_qtype, "name", module.weight_qtype))
        return name.replace("q", "", 1), "quanto"
    w = getattr(module, "weight", None)
    if isinstance(w, torch.Tensor) and type(w) not in (torch.Tensor, nn.Parameter):
        tname = type(w).__name__
        if "Int8" in tname:
            return "int8", f"torchao:{tname}"
        if "Int4" in tname:
            return "int4", f"torchao:{tname}"
    if isinstance(w, nn.Parameter) and type(w.data) is not torch.Tensor:
        tname = type(w.data).__name__
        if "Int8" in tname or "Int4" in tname:
            return ("int8" if "Int8" in tname else "int4"), f"torchao:{tname}"
    return None


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes a (possibly subclassed, e.g. torchao/quanto) tensor really holds."""
    if isinstance(t, nn.Parameter):
        t = t.data
    if type(t) is not torch.Tensor and hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, n)) for n in names if getattr(t, n, None) is not None)
    return t.numel() * t.element_size()
