"""Helpers shared by the benchmark scripts: peak memory, environment line, markdown tables."""
from __future__ import annotations

import platform
import resource
import sys
from collections.abc import Sequence
from typing import Any

import torch


def peak_rss_mib() -> float:
    """Process high-water mark of resident memory (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cuda_peak_mib() -> float:
    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0


def environment() -> str:
    """One line naming the software, the device and, on CPU, the kernels' instruction-set level."""
    from videollm.quant import cpu_kernels

    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
    return (f"torch {torch.__version__}, Python {platform.python_version()}, {dev}, {platform.machine()}, "
            f"kernels {cpu_kernels.isa()}")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def fmt(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def command_line() -> str:
    return "python " + " ".join(sys.argv)
