"""Does a quantization change a small model's answers? First-token agreement with the float model.

Small LLMs (videollm-mini's 135M SmolLM2) have little slack: int4 can flip the next token on many prompts,
and the user sees a garbled answer with no word of why. Before quantizing, the float model's next token
is taken on a few fixed prompts (`report.PROMPTS`, ~1 s on a 135M model); after, the same prompts are
run again. When agreement falls below `MIN_AGREEMENT`, a one-line warning names the agreement and a safer
scheme; the model cache keeps it in the model's load report, and every answer carries it.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..protocols import LanguageModel

if TYPE_CHECKING:
    from .api import BackboneQuantization

logger = logging.getLogger(__name__)
#: fraction of probe prompts whose next token must match the float model's
MIN_AGREEMENT = 0.875
#: models up to this many LLM parameters are checked (larger ones quantize with slack; the check would cost)
SMALL_MODEL_PARAMS = 1_000_000_000


@dataclass
class Agreement:
    same: int
    total: int

    @property
    def fraction(self) -> float:
        return self.same / self.total if self.total else 1.0


@torch.inference_mode()
def next_tokens(backbone: LanguageModel, prompts: Sequence[str]) -> list[int]:
    """The greedy next token after each prompt (text only, no video)."""
    out = []
    for p in prompts:
        logits, _ = backbone.lm_forward(backbone.embed_text(p).unsqueeze(0))
        out.append(int(logits[0].argmax()))
    return out


def agreement(reference: Sequence[int], now: Sequence[int]) -> Agreement:
    return Agreement(sum(a == b for a, b in zip(reference, now)), len(reference))


def warning_line(name: str, scheme: str, found: Agreement) -> str | None:
    """The one line to show, or None when the quantized model agrees well enough."""
    if found.fraction >= MIN_AGREEMENT:
        return None
    safer = "int8" if scheme != "int8" else "none"
    return (f"--quant {scheme} changes {name}'s answers: its next token matches the float model on only "
            f"{found.same} of {found.total} probe prompts; use --quant {safer} for answers as the float model gives")


def is_small(backbone: object) -> bool:
    llm = getattr(backbone, "llm", None)
    params = getattr(llm, "parameters", None)
    if not callable(params):
        return False
    return sum(p.numel() for p in params()) <= SMALL_MODEL_PARAMS


@dataclass
class Checked:
    """What `quantize_checked` did: the quantization record, and the warning line (None when the quantized
    model agrees with the float one, or was not checked)."""

    quantization: BackboneQuantization
    warning: str | None = None


def quantize_checked(backbone: LanguageModel, llm: str, vision: str = "none", group_size: int | None = 128,
                     head: str = "auto") -> Checked:
    """`quantize_backbone` (`head`: the LM head's scheme, see there), and for a small LLM the one-line warning
    when its answers change (the model cache's loader puts it in the load report, which every answer's
    warnings carry)."""
    from .api import quantize_backbone
    from .report import PROMPTS

    check = llm != "none" and is_small(backbone)
    ref = next_tokens(backbone, PROMPTS) if check else []
    done = quantize_backbone(backbone, llm=llm, vision=vision, group_size=group_size,  # type: ignore[arg-type]
                             head=head)
    if not check:
        return Checked(done)
    found = agreement(ref, next_tokens(backbone, PROMPTS))
    line = warning_line(str(getattr(backbone, "name", "the model")), llm, found)
    if line:
        logger.warning(line)
    return Checked(done, line)
