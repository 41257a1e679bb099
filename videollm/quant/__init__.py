"""Weight-only quantization of the backbone: int8, int4, and ParetoQ 3-bit / 2-bit / ternary / binary.

`quantize_backbone(backbone, llm="int4", vision="int8")` swaps the LLM's and vision tower's linear layers
for packed integer ones; `quantize_(module, Int4WeightConfig())` does the same for any module.
See docs/quant.md.
"""
from .api import BackboneQuantization, backbone_parts, quantize_, quantize_backbone, quantize_head
from .config import (
                     BACKENDS,
                     SCHEME_NAMES,
                     Int1WeightConfig,
                     Int2WeightConfig,
                     Int3WeightConfig,
                     Int4WeightConfig,
                     Int8WeightConfig,
                     TernaryWeightConfig,
                     WeightQuantConfig,
                     config_for,
)
from .linear import QuantLinear

__all__ = [
    "BACKENDS", "SCHEME_NAMES", "BackboneQuantization", "Int1WeightConfig", "Int2WeightConfig",
    "Int3WeightConfig", "Int4WeightConfig", "Int8WeightConfig",
    "QuantLinear", "TernaryWeightConfig", "WeightQuantConfig", "backbone_parts", "config_for", "quantize_",
    "quantize_backbone", "quantize_head",
]
