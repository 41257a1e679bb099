"""The backbone contract: what each part of the pipeline may ask of a backbone, as small typed capabilities
(vLLM's style). These Protocols are the only definition of a backbone; `backbones.base.Backbone` is a set of
defaults that implements them.

A caller names the capability it uses instead of taking `Any` and reaching into `backbone.model...`:
compressors need a `VisionTower` (plus `PromptBuilder`/`LanguageModel` for query-aware ones), the decode
loop needs a `LanguageModel`, the answering modes a `VideoLanguageModel` (all of the core ones), quantization a
`SupportsQuantization`, and multiple-choice answering may use `SupportsChoiceScoring` when offered.
Everything is `runtime_checkable`, so `isinstance(backbone, SupportsChoiceScoring)` is how an optional
capability is discovered (`temporal_patch(backbone)` and `require` wrap the common cases). Protocols only:
importing this module loads no model.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

from .errors import InvalidRequestError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from .question import Question
    from .types import OptionSupport, PromptIds, PromptInputs, VisualTokens

#: rewrites the prefill's last-position logits (1, V) with the prompt's KV cache at hand
FirstStep = Callable[["torch.Tensor", Any], "torch.Tensor"]
C = TypeVar("C")


@runtime_checkable
class Tokenizer(Protocol):
    """The slice of a Hugging Face tokenizer the library uses (calling it returns a mapping with "input_ids")."""

    eos_token_id: int | None
    unk_token_id: int | None
    all_special_ids: list[int]

    def __call__(self, text: str, add_special_tokens: bool = ..., **kwargs: Any) -> Any: ...

    def decode(self, ids: Any, skip_special_tokens: bool = ...) -> str: ...

    def convert_tokens_to_ids(self, tokens: str) -> int | None: ...

    def apply_chat_template(self, conversation: list[dict[str, Any]], **kwargs: Any) -> Any: ...


@runtime_checkable
class LanguageModel(Protocol):
    """A causal LLM driven on embeddings: what `generation.generate` needs."""

    tokenizer: Tokenizer
    device: torch.device
    dtype: torch.dtype

    @property
    def eos_token_ids(self) -> set[int]: ...

    @property
    def max_context(self) -> int: ...

    def embed_ids(self, ids: torch.Tensor | list[int] | list[list[int]]) -> torch.Tensor: ...

    def embed_text(self, text: str) -> torch.Tensor:
        """Token embeddings (L, D) of plain text, in the LLM's input space (LongVU's query, Tempo's stamps)."""
        ...

    def lm_forward(self, inputs_embeds: torch.Tensor, cache: Any = None) -> tuple[torch.Tensor, Any]:
        """(1, L, D) embeddings after `cache` → last-position logits (1, V) and the updated cache."""
        ...


@runtime_checkable
class SupportsBatchLogits(Protocol):
    """Last-position logits of several prompts at once (Tempo's relevance pass scores many segment prompts).
    `Backbone` runs `lm_forward` per prompt; backbones override it with one left-padded batched forward."""

    def batch_last_logits(self, prompts: list[torch.Tensor]) -> torch.Tensor:
        """[(L_i, D) embeddings] → last-position logits (B, V), without a cache."""
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

    def frame_tokens(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 (n, H, W, 3) → tokens (n, rows, cols, D): `project(encode_frames(frames))`."""
        ...


@runtime_checkable
class PromptBuilder(Protocol):
    """Chat templating and placeholder expansion: the visual tokens are spliced in here.

    `prompt_ids`, `text_ids` and `visual_suffix` are the pieces `build_inputs` is made of; a trainer (STORM's)
    assembles multi-turn conversations from them with the same template and the same splice."""

    #: chat template used when the tokenizer's own cannot render a video entry (None: the tokenizer's)
    chat_template: str | None

    @property
    def video_token(self) -> str:
        """The placeholder the rendered prompt holds exactly once, where the visual tokens go."""
        ...

    @property
    def text_tokens_per_frame(self) -> int:
        """Text tokens the backbone adds per frame around the visual ones (timestamps, labels), for budgeting."""
        ...

    def render_prompt(self, user_text: str, system: str | None = None) -> str: ...

    def text_ids(self, text: str, user: bool = False) -> list[int]:
        """Token ids of `text`; `user=True`: special tokens in it stay plain text."""
        ...

    def prompt_ids(self, user_text: str, system: str | None = None, assistant_prefix: str = "") -> PromptIds:
        """The rendered prompt's ids split at the video placeholder."""
        ...

    def visual_suffix(self) -> torch.Tensor | None:
        """Learned (k, D) tokens that close the visual block (LLaVA-OV's image_newline), or None."""
        ...

    def build_inputs(self, user_text: str, visual: VisualTokens, system: str | None = None,
                     assistant_prefix: str = "") -> PromptInputs: ...


@runtime_checkable
class VideoLanguageModel(LanguageModel, SupportsBatchLogits, VisionTower, PromptBuilder, Protocol):
    """A whole backbone: what the pipeline, the compressors and the answering modes hold."""

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

    def seen_summary(self, visual: VisualTokens) -> str:
        """What the kept frames showed, in a few words (the warning when no option is shown names it)."""
        ...


@runtime_checkable
class AnswerStyle(Protocol):
    """How the answering modes should take this backbone's answers. `Backbone`'s defaults suit any LLM that
    can reason; a tiny one (videollm-mini's 135M) says its thoughts loop (`reasons = False`: think/auto show
    the evidence instead), that it repeats itself (`repetition_guard`: no n-gram twice), and that its first
    sentence is the answer (`one_sentence_answers`)."""

    reasons: bool
    repetition_guard: int
    one_sentence_answers: bool


@runtime_checkable
class SupportsReasoningPreset(Protocol):
    """Optional: reasoning settings the checkpoint was trained with (VideoAuto-R1's confidence threshold and
    answer format), used where the user set none."""

    reasoning_preset: dict[str, Any]


@runtime_checkable
class SupportsStaticDecode(Protocol):
    """Optional: the transformers decoder (taking `inputs_embeds`, `position_ids` and a cache) and the LM head,
    for the static-cache compiled decode loop (`runtime.static_decode`)."""

    def text_decoder(self) -> tuple[nn.Module, nn.Module]: ...


@runtime_checkable
class SupportsQuantization(Protocol):
    """Optional: the modules whose `nn.Linear` layers weight quantization may replace.

    Keys name a role: `"llm"` (and keys ending in `.llm`) take `--quant`, every other key `--vision-quant`.
    Embeddings, LM heads and norms should stay out: they are few FLOPs and the most error-sensitive.
    """

    def quantizable_modules(self) -> dict[str, nn.Module]: ...


@dataclass(frozen=True)
class QuantPreference:
    """How a model's weights quantize best when the user names no group size: the group of its LLM's linear
    layers (input columns per scale; 0 = one scale per row) and the scheme of its LM head and embeddings
    (`"auto"`, `"none"` or a scheme name; see `quant.api.quantize_backbone`)."""

    group_size: int = 128
    head: str = "auto"


#: what a model that states no preference gets (`quant_preference`)
DEFAULT_QUANT_PREFERENCE = QuantPreference()


@runtime_checkable
class SupportsQuantPreference(Protocol):
    """Optional: the model's own quantization defaults for an LLM scheme (`--quant`), used where the user gave
    no `--quant-group-size`. A model whose weights come from an already quantized source (videollm-mini's Q4_1
    GGUF) quantizes best on that source's grid; an explicit group size always wins."""

    def quant_preference(self, llm: str) -> QuantPreference: ...


@runtime_checkable
class SupportsWeightsFingerprint(Protocol):
    """Optional: a stable identity of the float weights this instance loaded (files, sizes, modification times;
    None when unknown), so its quantized layers can be saved once and reused by later processes
    (`quant.weights_cache`). Two loads with equal fingerprints must hold the same float weights."""

    def weights_fingerprint(self) -> str | None: ...


@runtime_checkable
class SupportsDeferredCast(Protocol):
    """Optional: built for quantization (`load_backbone(..., defer_cast=True)`), with the float weights that
    quantization replaces still in their stored dtype (videollm-mini's float16 file), so a quantized load never
    casts them; `finish_cast()` casts whatever quantization left to the model's dtype (idempotent). Until then
    those layers must not run."""

    def finish_cast(self) -> None: ...


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


@runtime_checkable
class SupportsSequenceLogits(Protocol):
    """Optional training hook (STORM's trainer): logits at every position, differentiable w.r.t. the inputs.

    `lm_forward` returns only the last position under inference mode; a trainer needs the loss over all answer
    tokens and gradients into the visual tokens. `torch_modules` are what it freezes first."""

    def sequence_logits(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        """(1, L, D) embeddings → logits (1, L, V), no cache, autograd on."""
        ...

    def torch_modules(self) -> list[nn.Module]: ...


@runtime_checkable
class TrainableVideoLanguageModel(VideoLanguageModel, SupportsSequenceLogits, Protocol):
    """What a trainer (STORM's) holds: a whole backbone with the training hooks."""


@runtime_checkable
class SupportsProjectorSwap(Protocol):
    """Optional: where the projector `project` runs lives, so a trainer (STORM's `train_projector`) can run the
    backbone's own `project` with a trained copy in its place."""

    def projector_slot(self) -> tuple[nn.Module, str]:
        """(parent module, attribute name) of the projector module."""
        ...


@runtime_checkable
class SupportsTemporalPatch(Protocol):
    """Optional: the tower encodes frames in fixed temporal groups (Qwen-VL: pairs), one token set per group."""

    temporal_patch: int


@runtime_checkable
class SupportsVideoGeometry(Protocol):
    """Optional: the token grid depends on the video (Qwen-VL resizes by the frame count and size), so the
    backbone is told which video comes next before its frames are encoded."""

    def prepare_video(self, num_frames: int, height: int, width: int) -> None: ...


@runtime_checkable
class SegmentMemoryEncoder(Protocol):
    """Optional: a backbone with Tempo's trained SVLM: memory tokens and relevance for segments, in one pass."""

    def encode_segments(self, segments: list[torch.Tensor], query: str, times: list[list[float]] | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 segments [(T_i, H, W, 3)] (+ each frame's time) → (memory tokens in the LLM space (S, K, D),
        relevance (S,))."""
        ...


@runtime_checkable
class RelevancePrior(Protocol):
    """Optional SVLM capability: a logit added to its Yes-vs-No on a segment (videollm-mini's object match)."""

    def relevance_prior(self, query: str, visual: VisualTokens) -> float: ...


@dataclass(frozen=True)
class _DefaultAnswerStyle:
    reasons: bool = True
    repetition_guard: int = 0
    one_sentence_answers: bool = False


DEFAULT_ANSWER_STYLE: AnswerStyle = _DefaultAnswerStyle()


def answer_style(backbone: object) -> AnswerStyle:
    """The backbone's `AnswerStyle`, or the defaults for one that states none (a stand-in model)."""
    return backbone if isinstance(backbone, AnswerStyle) else DEFAULT_ANSWER_STYLE


def reasoning_preset(backbone: object) -> dict[str, Any]:
    """The checkpoint's trained reasoning settings (`SupportsReasoningPreset`), else none."""
    return dict(backbone.reasoning_preset or {}) if isinstance(backbone, SupportsReasoningPreset) else {}


def temporal_patch(backbone: object) -> int:
    """Frames per token set: `SupportsTemporalPatch.temporal_patch`, else 1."""
    return max(1, int(backbone.temporal_patch)) if isinstance(backbone, SupportsTemporalPatch) else 1


def quant_preference(model: object, llm: str) -> QuantPreference:
    """`model`'s quantization defaults for LLM scheme `llm` (`SupportsQuantPreference`), else group 128 and the
    head as `HEAD_AUTO` says."""
    return model.quant_preference(llm) if isinstance(model, SupportsQuantPreference) else DEFAULT_QUANT_PREFERENCE


def require(backbone: object, capability: type[C], what: str) -> C:
    """`backbone` as `capability`, or an `InvalidRequestError` saying that `what` needs it."""
    if not isinstance(backbone, capability):
        name = backbone.name if isinstance(backbone, VideoLanguageModel) else type(backbone).__name__
        raise InvalidRequestError(f"{what} needs a backbone with {capability.__name__}; {name} has none")
    return backbone


def quant_role(key: str) -> str:
    """The quantization role ("llm" or "vision") of a `quantizable_modules()` key."""
    return "llm" if key == "llm" or key.endswith(".llm") else "vision"


__all__ = ["AnswerStyle", "DEFAULT_ANSWER_STYLE", "DEFAULT_QUANT_PREFERENCE", "FirstStep", "HasCausalLM",
           "LanguageModel", "PromptBuilder", "QuantPreference", "RelevancePrior", "SegmentMemoryEncoder",
           "SupportsBatchLogits", "SupportsChoiceScoring", "SupportsDedupFeatures", "SupportsDeferredCast",
           "SupportsLowResTokens",
           "SupportsOptionSupport", "SupportsProjectorSwap", "SupportsQuantPreference", "SupportsQuantization",
           "SupportsReasoningPreset", "SupportsSequenceLogits", "SupportsStaticDecode", "SupportsTemporalPatch",
           "SupportsVideoGeometry", "SupportsWeightsFingerprint", "Tokenizer", "TrainableVideoLanguageModel",
           "VideoLanguageModel", "VisionTower",
           "answer_style", "quant_preference", "quant_role", "reasoning_preset", "require", "temporal_patch"]
