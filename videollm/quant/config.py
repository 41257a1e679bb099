"""One dataclass per weight scheme, in the style of torchao's `Int4WeightOnlyConfig`."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import InvalidRequestError
from ..registry import Registry

#: weight schemes by name, each a config dataclass registered where it is defined (torchao's style)
QUANT_SCHEMES: Registry[type["WeightQuantConfig"]] = Registry("quantization scheme")
#: what `--quant` / `--vision-quant` accept, widest first; "none" keeps float weights (checked against
#: QUANT_SCHEMES at the end of this module)
SCHEME_NAMES = ("none", "int8", "int4", "int3", "int2", "ternary", "int1")
BACKENDS = ("auto", "native", "reference", "torchao", "quanto")
#: head/embedding scheme for each LLM scheme under head="auto": below 4 bits the head stays int4 (ParetoQ
#: keeps it in full precision; int4 costs little error and is 4x smaller than bf16)
HEAD_AUTO = {"none": "none", "int8": "int8", "int4": "int4", "int3": "int4", "int2": "int4", "ternary": "int4",
             "int1": "int4"}
HEAD_CHOICES = ("auto",) + SCHEME_NAMES


@dataclass
class WeightQuantConfig:
    """Weight-only quantization of `nn.Linear` layers.

    group_size: input columns sharing one scale (None/0 = one per output row). int8 is always per row
      (what the int8 kernels take); int4/int3/int2/ternary/int1 default to 128 and fall back to per row when a layer
      is narrower. K not divisible by the group is zero-padded (e.g. SigLIP's 4304-wide MLP).
    backend: "auto" picks torchao on CUDA for int8/int4, else "native" (our packed `QuantLinear`, using
      PyTorch's int8/int4 CPU kernels where the shapes allow); "reference" forces dequantize-on-the-fly;
      "torchao"/"quanto" force those libraries (int8/int4 only).
    compute_dtype: activations' dtype inside the kernels; "auto" = bfloat16 (the CPU kernels are fast only
      there). The layer casts in and out, so a float32 model keeps float32 interfaces.
    symmetric: int4 only. None (default) = asymmetric for int4: per-group scale + zero point from the
      group's min/max (value = (code - 8)·scale + zero, the tinygemm kernels' convention), which halved
      the output KL on real SmolLM2-135M weights (bench/RESULTS.md, quant). True = symmetric absmax
      (ParetoQ/LSQ grid, the scheme QAT trains). the other schemes are always symmetric.
    clip_search: asymmetric int4 only: per group, shrink [min, max] to the least weight MSE (opt-in: it did
      not lower the output KL on SmolLM2-135M).
    """

    scheme: str = "int8"
    group_size: int | None = 128
    backend: str = "auto"
    compute_dtype: str = "auto"
    symmetric: bool | None = None
    clip_search: bool = False

    def __post_init__(self) -> None:
        if self.scheme not in QUANT_SCHEMES:
            raise InvalidRequestError(f"unknown quantization scheme {self.scheme!r}; choose from "
                                      f"{', '.join(QUANT_SCHEMES.names())}")
        if self.backend not in BACKENDS:
            raise InvalidRequestError(
                f"unknown quantization backend {self.backend!r}; choose from {', '.join(BACKENDS)}"
            )
        if self.group_size is not None and self.group_size < 0:
            raise InvalidRequestError(f"group size must be >= 0, got {self.group_size}")
        if self.scheme == "int8":
            self.group_size = None
        if self.symmetric is None:
            self.symmetric = self.scheme != "int4"
        if not self.symmetric and self.scheme != "int4":
            raise InvalidRequestError(f"asymmetric (zero-point) quantization is implemented for int4 only, "
                                      f"not {self.scheme}")
        if self.clip_search and self.symmetric:
            raise InvalidRequestError("clip_search applies to asymmetric int4 (symmetric=False) only")

    @property
    def zero_point(self) -> bool:
        return not self.symmetric

    @property
    def bits(self) -> float:
        return {"int8": 8.0, "int4": 4.0, "int3": 3.0, "int2": 2.0, "ternary": 1.6, "int1": 1.0}[self.scheme]


@QUANT_SCHEMES.register("int8")
@dataclass
class Int8WeightConfig(WeightQuantConfig):
    scheme: str = "int8"
    group_size: int | None = None


@QUANT_SCHEMES.register("int4")
@dataclass
class Int4WeightConfig(WeightQuantConfig):
    scheme: str = "int4"


@QUANT_SCHEMES.register("int2")
@dataclass
class Int2WeightConfig(WeightQuantConfig):
    """ParetoQ 2-bit (SEQ levels ±0.25, ±0.75 of alpha)."""

    scheme: str = "int2"


@QUANT_SCHEMES.register("int3")
@dataclass
class Int3WeightConfig(WeightQuantConfig):
    """ParetoQ 3-bit (LSQ, levels -4..3 of alpha), stored bit-sliced (a 2-bit and a 1-bit plane)."""

    scheme: str = "int3"


@QUANT_SCHEMES.register("int1")
@dataclass
class Int1WeightConfig(WeightQuantConfig):
    """ParetoQ binary (sign(w)·alpha, alpha = mean|w| per row/group), 8 weights per byte."""

    scheme: str = "int1"


@QUANT_SCHEMES.register("ternary")
@dataclass
class TernaryWeightConfig(WeightQuantConfig):
    """ParetoQ ternary / 1.58-bit (SEQ levels -2/3, 0, 2/3 of alpha), stored 5 weights per byte."""

    scheme: str = "ternary"


def config_for(scheme: str, group_size: int | None = 128, backend: str = "auto", symmetric: bool | None = None,
               clip_search: bool = False) -> WeightQuantConfig | None:
    """The config for a CLI scheme name; None for "none". `symmetric`/`clip_search` matter for int4 only."""
    if scheme == "none":
        return None
    if scheme != "int4":
        symmetric, clip_search = None, False
    return WeightQuantConfig(scheme=scheme, group_size=group_size, backend=backend, symmetric=symmetric,
                             clip_search=clip_search)


assert set(SCHEME_NAMES) - {"none"} == set(QUANT_SCHEMES.names()), "every scheme registers its config"
