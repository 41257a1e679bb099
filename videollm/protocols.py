"""What each part of the pipeline may ask of a backbone, as small typed capabilities (vLLM's style).

A caller names the capability it uses instead of taking `Any` and reaching into `backbone.model...`:
compressors need a `VisionTower` (plus `PromptBuilder`/`LanguageModel` for query-aware ones), the decode
loop needs a `LanguageModel`, the answering modes a `VideoLanguageModel` (all three), quantization a
`SupportsQuantization`, and multiple-choice answering may use `SupportsChoiceScoring` when offered.
Everything is `runtime_checkable`, so `isinstance(backbone, SupportsChoiceScoring)` is how an optional
capability is discovered. Protocols only: importing this module loads no model.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch
    from torch import nn

    from .backbones.base import PromptInputs
    from .question import Question
    from .types import OptionSupport, VisualTokens

#: rewrites the prefill's last-position logits (1, V) with the prompt's KV cache at hand
FirstStep = Callable[["torch.Tensor", Any], "torch.Tensor"]


@runtime_checkable
class Tokenizer(Protocol):
    """The slice of a Hugging Face tokenizer the library uses."""

    def __call__(self, text: str, add_special_tokens: bool = ...) -> Any: ...

    def decode(self, ids: Any, skip_special_tokens: bool = ...) -> str: ...


@runtime_checkable
class LanguageModel(Protocol):
    """A causal LLM driven on embeddings: what `generation.generate` needs."""

    tokenizer: Any
    device: torch.device
    dtype: torch.dtype

    @property
    def eos_token_ids(self) -> set[int]: ...

    @property
    def max_context(self) -> int: ...

    def embed_ids(self, ids: torch.Tensor | list[int] | list[list[int]]) -> torch.Tensor: ...

    def embed_text(self, text: str) -> torch.Tensor: ...

    def lm_forward(self, inputs_embeds: torch.Tensor, cache: Any = None) -> tuple[torch.Tensor, Any]:
        """(1, L, D) embeddings after `cache` → last-position logits (1, V) and the updated cache."""
        ...


@runtime_checkable
class VisionTower(Protocol):
    """Frames → pre-projector features → LLM-space tokens on a fixed per-frame grid."""

    device: torch.device
    dtype: torch.dtype

    @property
    def hidden_size(self) -> int: ...

    @property
    def frame_grid(self) -> tuple[int, int]: ...

    @property
    def tokens_per_frame(self) -> int: ...

    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 (n, H, W, 3) → features (n, h, w, Dv) before the projector."""
        ...

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """features (n, h, w, Dv) → tokens (n, rows, cols, D) in the LLM's input space."""
        ...

    def frame_tokens(self, frames: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class PromptBuilder(Protocol):
    """Chat templating and placeholder expansion: the visual tokens are spliced in here."""

    def render_prompt(self, user_text: str, system: str | None = None) -> str: ...

    def build_inputs(self, user_text: str, visual: VisualTokens, system: str | None = None,
                     assistant_prefix: str = "") -> PromptInputs: ...


@runtime_checkable
class VideoLanguageModel(LanguageModel, VisionTower, PromptBuilder, Protocol):
    """A whole backbone: what the pipeline and the answering modes hold."""

    name: str
    notice: str | None


@runtime_checkable
class SupportsChoiceScoring(Protocol):
    """Optional: the backbone scores multiple-choice options itself (for LLMs too small to map an option
    to its letter). The options come as data in `question.options` (texts without letters, in letter order)."""

    def choice_scorer(self, inputs: PromptInputs, question: Question, visual: VisualTokens) -> FirstStep | None: ...


@runtime_checkable
class SupportsOptionSupport(Protocol):
    """Optional: the backbone can tell which options its kept frames show (videollm-mini: the classifier's
    classes, matched to the options through WordNet). The reasoning modes then let the frames decide the
    letter when exactly one option is shown, and warn when none is (`answer.evidence`)."""

    def option_support(self, options: list[str], visual: VisualTokens) -> OptionSupport: ...

    def evidence_thought(self, question: Question, visual: VisualTokens) -> str: ...


@runtime_checkable
class SupportsStaticDecode(Protocol):
    """Optional: the transformers decoder (taking `inputs_embeds`, `position_ids` and a cache) and the LM head,
    for the static-cache compiled decode loop (`answer.static_decode`)."""

    def text_decoder(self) -> tuple[nn.Module, nn.Module]: ...


@runtime_checkable
class SupportsQuantization(Protocol):
    """Optional: the modules whose `nn.Linear` layers weight quantization may replace.

    Keys name a role: `"llm"` (and keys ending in `.llm`) take `--quant`, every other key `--vision-quant`.
    Embeddings, LM heads and norms should stay out: they are few FLOPs and the most error-sensitive.
    """

    def quantizable_modules(self) -> dict[str, nn.Module]: ...


@runtime_checkable
class HasCausalLM(Protocol):
    """Optional: the transformers causal LM whose `get_output_embeddings()` / `get_input_embeddings()` are the
    LM head and embeddings, quantized with `--quant` too. Backbones that read the embedding table's weights
    directly (videollm-mini's word vectors) leave it out and keep the head in float."""

    def causal_lm(self) -> "torch.nn.Module": ...


@runtime_checkable
class SupportsDedupFeatures(Protocol):
    """Optional: the backbone carries its own frame-similarity encoder (LongVU's DINOv2), which LongVU's frame
    dedup then uses instead of a separately loaded one."""

    def dedup_features(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 frames (n, H, W, 3) → per-frame features (n, ...), compared flattened."""
        ...


@runtime_checkable
class SupportsLowResTokens(Protocol):
    """Optional: the backbone makes its own low-resolution copy of a frame's tokens (LongVU's 8×8 from the
    connector's output before the projector), so LongVU's query stage need not resize projected tokens."""

    @property
    def reduced_frame_grid(self) -> tuple[int, int]: ...

    @property
    def gate_tokens_per_frame(self) -> tuple[int, int]:
        """(full, low-res) tokens per frame that LongVU's released gates divide by (e.g. 144, 64)."""
        ...

    def frame_tokens_multires(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 frames → (n, rows·cols + r·c, D): the full grid's tokens, then the low-res grid's."""
        ...


def quant_role(key: str) -> str:
    """The quantization role ("llm" or "vision") of a `quantizable_modules()` key."""
    return "llm" if key == "llm" or key.endswith(".llm") else "vision"


__all__ = ["FirstStep", "LanguageModel", "PromptBuilder", "SupportsChoiceScoring", "SupportsDedupFeatures",
           "SupportsLowResTokens", "SupportsQuantization", "SupportsStaticDecode", "Tokenizer", "VideoLanguageModel",
           "VisionTower", "quant_role"]
