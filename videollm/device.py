"""Device and dtype names → torch objects, in one table so every loader and config agrees.

Torch is imported on use only: the config validates dtype names before anything heavy loads.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import InvalidRequestError

if TYPE_CHECKING:
    import torch

#: every dtype name a user may pass (`--dtype`, `PipelineConfig.dtype`) → torch's attribute name
DTYPES: dict[str, str] = {
    "float32": "float32", "fp32": "float32",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float16": "float16", "fp16": "float16",
}
#: the names a config accepts; "auto" is resolved per device
DTYPE_NAMES: tuple[str, ...] = ("auto", *DTYPES)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """'auto' picks CUDA when there is one: most users run on a GPU."""
    import torch

    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """'auto' is bfloat16 on CUDA and float32 on CPU, where bf16 matmuls are emulated and slower."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise InvalidRequestError(f"unknown dtype {dtype!r}; choose from {', '.join(sorted(DTYPES))} or 'auto'")
    return getattr(torch, DTYPES[dtype])
