"""The backbone seam: a video LLM driven as separate stages.

vision tower → per-frame features → projector → tokens in the LLM's embedding space → LLM. Compressors
call `encode_frames` / `project` (or `frame_tokens`) themselves, so they decide which frames ever reach
the vision tower; the pipeline then splices the kept tokens into the prompt with `build_inputs`.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import InvalidRequestError
from ..types import VisualTokens


@dataclass
class PromptInputs:
    embeds: torch.Tensor  # (1, L, D)
    num_text_tokens: int
    num_visual_tokens: int
    prompt_text: str


class Backbone(ABC):
    """Base class for backbones. Subclasses set `tokenizer`, `device`, `dtype`, `name`."""

    name: str = "backbone"
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype
    #: chat template to use when the tokenizer's own cannot render a video entry
    chat_template: str | None = None
    #: honest note shown to users (e.g. random weights)
    notice: str | None = None

    # ---- sizes -------------------------------------------------------------------------------------
    @property
    @abstractmethod
    def hidden_size(self) -> int: ...

    @property
    @abstractmethod
    def frame_grid(self) -> tuple[int, int]:
        """Native (rows, cols) of visual tokens per frame after the backbone's own pooling."""

    @property
    @abstractmethod
    def max_context(self) -> int: ...

    @property
    def tokens_per_frame(self) -> int:
        h, w = self.frame_grid
        return h * w

    # ---- vision ------------------------------------------------------------------------------------
    @abstractmethod
    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 frames (n, H, W, 3) → vision-tower features (n, h, w, Dv) before the projector."""

    @abstractmethod
    def project(self, features: torch.Tensor) -> torch.Tensor:
        """Vision features (n, h, w, Dv) → LLM-space tokens (n, rows, cols, D) on the native grid."""

    @torch.inference_mode()
    def frame_tokens(self, frames: torch.Tensor) -> torch.Tensor:
        return self.project(self.encode_frames(frames))

    def visual_suffix(self) -> torch.Tensor | None:
        """Learned tokens that close the visual block (LLaVA-OV's image_newline); not counted as visual."""
        return None

    # ---- text --------------------------------------------------------------------------------------
    @abstractmethod
    def input_embeddings(self) -> torch.nn.Embedding: ...

    def embed_ids(self, ids: torch.Tensor | list[int]) -> torch.Tensor:
        ids_t = torch.as_tensor(ids, dtype=torch.long, device=self.device)
        return self.input_embeddings()(ids_t)

    def embed_text(self, text: str) -> torch.Tensor:
        """Token embeddings (L, D) of plain text, in the LLM's input space (LongVU's query)."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self.embed_ids(ids)

    @property
    def video_token(self) -> str:
        return "<video>"

    @property
    def eos_token_ids(self) -> set[int]:
        ids = {self.tokenizer.eos_token_id}
        for tok in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<end_of_turn>"):
            tid = self.tokenizer.convert_tokens_to_ids(tok)
            if isinstance(tid, int) and tid != self.tokenizer.unk_token_id:
                ids.add(tid)
        return {i for i in ids if i is not None}

    def render_prompt(self, user_text: str, system: str | None = None) -> str:
        """The chat-formatted prompt with exactly one video placeholder, ready for generation."""
        messages: list[dict[str, Any]] = []
        if system:
            messages.append({"role": "system", "content": [{"type": "text", "text": system}]})
        messages.append({"role": "user", "content": [{"type": "video"}, {"type": "text", "text": user_text}]})
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, chat_template=self.chat_template
        )

    def build_inputs(self, user_text: str, visual: VisualTokens, system: str | None = None,
                     assistant_prefix: str = "") -> PromptInputs:
        """Splice the visual tokens into the rendered prompt at the video placeholder."""
        prompt = self.render_prompt(user_text, system) + assistant_prefix
        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        vid = self.tokenizer.convert_tokens_to_ids(self.video_token)
        where = [i for i, t in enumerate(ids) if t == vid]
        if len(where) != 1:
            raise RuntimeError(f"prompt must hold exactly one {self.video_token} token, found {len(where)}")
        k = where[0]
        parts = [self.embed_ids(ids[:k]), visual.embeds.to(self.device, self.dtype)]
        suffix = self.visual_suffix()
        if suffix is not None:
            parts.append(suffix.to(self.device, self.dtype))
        parts.append(self.embed_ids(ids[k + 1:]))
        embeds = torch.cat(parts, dim=0).unsqueeze(0)
        if embeds.shape[1] > self.max_context:
            raise InvalidRequestError(
                f"prompt of {embeds.shape[1]} tokens ({visual.num_tokens} visual) exceeds the model's context of "
                f"{self.max_context}; lower --budget or the number of frames")
        return PromptInputs(embeds, len(ids) - 1, visual.num_tokens, prompt)

    def choice_scorer(self, inputs: PromptInputs, user_text: str, visual: VisualTokens) -> Any:
        """Optional: a `generation.FirstStep` that scores a multiple-choice prompt's options itself (for
        backbones too small to map an option to its letter). None = answer by plain generation."""
        return None

    # ---- language model ----------------------------------------------------------------------------
    @abstractmethod
    def lm_forward(self, inputs_embeds: torch.Tensor, cache: Any = None) -> tuple[torch.Tensor, Any]:
        """Run the LLM on (1, L, D) embeddings after `cache`; return last-position logits (1, V) and the cache."""

    def sequence_logits(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        """Training hook: logits (1, L, V) at every position, differentiable w.r.t. `inputs_embeds` (no cache).

        `lm_forward` returns only the last position under inference mode; a trainer (STORM's) needs the
        loss over all answer tokens and gradients into the visual tokens."""
        raise InvalidRequestError(f"backbone {self.name} cannot be used for training (no sequence_logits)")

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "hidden_size": self.hidden_size, "frame_grid": list(self.frame_grid),
                "max_context": self.max_context, "device": str(self.device), "dtype": str(self.dtype)}


def resize_normalize(frames: torch.Tensor, size: tuple[int, int], mean: tuple[float, ...], std: tuple[float, ...],
                     device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """uint8 (n, H, W, 3) → normalised float (n, 3, h, w); batched on the target device (faster than PIL)."""
    x = frames.to(device).permute(0, 3, 1, 2).float()
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)
    x = x.clamp_(0, 255).div_(255.0)
    m = torch.tensor(mean, device=device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=device).view(1, -1, 1, 1)
    return ((x - m) / s).to(dtype)
