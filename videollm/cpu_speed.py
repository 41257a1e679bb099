"""CPU speed-ups applied after a model loads: int8 dynamic-activation quantization of `nn.Linear` layers.

On an x86 CPU without native bf16 (no AVX512-BF16/AMX: this project's Xeon), bf16 matmuls run ~3× slower
than fp32, so `--dtype auto` stays fp32 on the CPU. What does pay is torch's own int8 CPU kernels (fbgemm,
AVX-512 VNNI): `torch.ao.quantization.quantize_dynamic` swaps each `nn.Linear` for one that quantizes its
activations per call and multiplies int8×int8. This is not weight-only `--vision-quant` (which saves memory
and keeps float arithmetic); it changes outputs slightly (cosine of visual tokens ≈ 0.99+, see
`bench/RESULTS.md`, section throughput) and is CPU-only, so it is opt-in: `--cpu-int8 vision`, or `--fast-cpu`
for the choices measured best here.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import InvalidRequestError

if TYPE_CHECKING:
    from .protocols import VideoLanguageModel

logger = logging.getLogger(__name__)

#: which parts get int8 dynamic quantization: the vision tower, the LLM's decoder layers, or both
CPU_INT8_CHOICES = ("none", "vision", "llm", "all")
#: what `--fast-cpu` selects (measured best with identical answer tokens on the real-size 0.5B; RESULTS.md)
FAST_CPU_INT8 = "vision"


def check_cpu_int8(choice: str, device: str = "auto", dtype: str = "auto", quant: str = "none",
                   vision_quant: str = "none") -> None:
    """Refuse combinations that cannot work, before any model loads (one clear line each)."""
    if choice not in CPU_INT8_CHOICES:
        raise InvalidRequestError(f"unknown cpu int8 choice {choice!r}; choose from {', '.join(CPU_INT8_CHOICES)}")
    if choice == "none":
        return
    if str(device).startswith(("cuda", "mps")):
        raise InvalidRequestError(f"--cpu-int8 uses the CPU's int8 kernels and cannot run on device {device!r}; "
                                  "drop it (or use --device cpu)")
    if dtype not in ("auto", "float32", "fp32"):
        raise InvalidRequestError(f"--cpu-int8 quantizes float32 layers; it cannot be combined with --dtype {dtype}")
    if choice in ("vision", "all") and vision_quant != "none":
        raise InvalidRequestError(f"--cpu-int8 {choice} and --vision-quant {vision_quant} both replace the tower's "
                                  "linear layers; choose one")
    if choice in ("llm", "all") and quant != "none":
        raise InvalidRequestError(f"--cpu-int8 {choice} and --quant {quant} both replace the LLM's linear layers; "
                                  "choose one")


@dataclass
class CpuInt8:
    """What `apply_cpu_int8` did: the layers now int8 (module names), and why a part was left float."""

    choice: str = "none"
    layers: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def applied(self) -> str:
        """The choice in effect ("none" when no layer changed): part of the feature-cache key."""
        return self.choice if self.layers else "none"


def apply_cpu_int8(backbone: VideoLanguageModel, choice: str) -> CpuInt8:
    """Quantize, in place, the `nn.Linear` layers of the parts `choice` names; say which (`CpuInt8.layers`).

    The parts come from `backbone.quantizable_modules()` ("vision", "llm"); the LM head, the projector,
    embeddings and norms stay float. A backbone on a non-CPU device is left as it is, with a warning (the
    `auto` device resolved to a GPU); an explicit GPU device is refused earlier by `check_cpu_int8`.
    """
    result = CpuInt8(choice)
    if choice == "none":
        return result
    import torch

    device = getattr(backbone, "device", torch.device("cpu"))
    if torch.device(device).type != "cpu":
        logger.warning("--cpu-int8 ignored: the model runs on %s (it applies to CPU runs only)", device)
        return result
    mods_fn = getattr(backbone, "quantizable_modules", None)
    if not callable(mods_fn):
        raise InvalidRequestError(f"model {getattr(backbone, 'name', backbone)!r} offers no layers for --cpu-int8")
    mods = mods_fn()
    wanted = {"vision": ("vision",), "llm": ("llm",), "all": ("vision", "llm")}[choice]
    missing = [w for w in wanted if w not in mods]
    if missing:
        raise InvalidRequestError(f"model {getattr(backbone, 'name', backbone)!r} has no {'/'.join(missing)} part "
                                  f"for --cpu-int8 {choice}")
    _set_engine()
    done = result.layers
    for part in wanted:
        module = mods[part]
        before = {n for n, m in module.named_modules() if type(m) is torch.nn.Linear}
        share = _linear_share(module)
        if share < MIN_LINEAR_SHARE:  # e.g. videollm-mini's convolutional EfficientNet: int8 would only add error
            name = getattr(backbone, "name", type(backbone).__name__)
            msg = (f"--cpu-int8 left the {part} part of {name} in float: its linear layers hold only "
                   f"{100 * share:.0f}% of its linear + convolution weights, so int8 would change its outputs "
                   "without making it faster")
            logger.info(msg)  # the user sees it once, as an Answer warning (CLI: one `warning:` line)
            result.warnings.append(msg)
            continue
        if any(p.dtype != torch.float32 for p in module.parameters()):
            raise InvalidRequestError(f"--cpu-int8 needs float32 {part} weights (load with --dtype float32)")
        with warnings.catch_warnings():  # torch's notice that quantized tensor creation is deprecated
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.ao.quantization.quantize_dynamic(module, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
        done += [f"{part}.{n}" for n in sorted(before)]
    logger.info("cpu int8: %d linear layers of %s use int8 dynamic quantization", len(done), choice)
    return result


#: a part is int8-quantized only where nn.Linear holds at least this share of its weights (a transformer: ~1.0)
MIN_LINEAR_SHARE = 0.5


def _linear_share(module: Any) -> float:
    """The share of a module's matmul weights (linear + convolution) held by `nn.Linear`: where int8 saves time."""
    import torch

    def weights(kinds: tuple[type, ...]) -> int:
        return sum(m.weight.numel() for m in module.modules() if isinstance(m, kinds) and m.weight is not None)

    linear = weights((torch.nn.Linear,))
    total = linear + weights((torch.nn.modules.conv._ConvNd,))  # embeddings/norms cost no matmul FLOPs
    return linear / total if total else 0.0


def _set_engine() -> None:
    import torch

    engines = torch.backends.quantized.supported_engines
    for name in ("x86", "fbgemm", "onednn", "qnnpack"):
        if name in engines:
            if torch.backends.quantized.engine != name:
                torch.backends.quantized.engine = name
            return
    raise InvalidRequestError(f"this torch build has no CPU int8 engine (supported: {engines})")


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where unreadable)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def native_bf16() -> bool:
    """Whether the CPU multiplies bf16 natively (AVX512-BF16 or AMX); without it bf16 is slower than fp32."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def describe_cpu() -> dict[str, Any]:
    """What bench/ records next to CPU timings."""
    import torch

    flags = cpu_flags()
    return {"capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
            "avx512_vnni": "avx512_vnni" in flags, "native_bf16": native_bf16(),
            "int8_engine": torch.backends.quantized.engine}
