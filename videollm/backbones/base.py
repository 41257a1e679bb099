"""The backbone seam: a video LLM driven as separate stages.

vision tower → per-frame features → projector → tokens in the LLM's embedding space → LLM. Compressors
call `encode_frames` / `project` (or `frame_tokens`) themselves, so they decide which frames ever reach
the vision tower; the pipeline then splices the kept tokens into the prompt with `build_inputs`.
"""
from __future__ import annotations

import re
from abc import ABC, abstractmethod
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import InvalidRequestError
from ..protocols import Tokenizer
from ..types import PromptIds, PromptInputs, VisualTokens

# Private-use markers the chat template is rendered around: user text is never part of the template's
# own text, so it cannot add, remove or move special tokens (`<video>`, `<|im_end|>`) by containing them.
_USER_MARK = "\ue000videollm:user\ue001"
_SYSTEM_MARK = "\ue000videollm:system\ue001"
_MARKS = re.compile(f"({re.escape(_USER_MARK)}|{re.escape(_SYSTEM_MARK)})")


class Backbone(ABC):
    """Defaults implementing the backbone Protocols (`videollm.protocols`, the contract): a subclass that fills
    in the abstract members is a `VideoLanguageModel`; the optional capabilities (`SupportsSequenceLogits`,
    `SupportsQuantization`, ...) it offers by defining their methods. Subclasses set `tokenizer`, `device`,
    `dtype`, `name`."""

    name: str = "backbone"
    tokenizer: Tokenizer
    device: torch.device
    dtype: torch.dtype
    #: chat template to use when the tokenizer's own cannot render a video entry
    chat_template: str | None = None
    #: honest note shown to users (e.g. random weights)
    notice: str | None = None
    #: text tokens the backbone adds per frame around the visual ones (timestamps, labels), for budgeting
    text_tokens_per_frame: int = 0
    #: `AnswerStyle`: an LLM that can reason, needs no repetition guard, and answers in full
    reasons: bool = True
    repetition_guard: int = 0
    one_sentence_answers: bool = False

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

    def text_ids(self, text: str, user: bool = False) -> list[int]:
        """Token ids of `text`. User text never yields special tokens: "<|im_end|>" in a question is text."""
        if user:
            return self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def prompt_ids(self, user_text: str, system: str | None = None, assistant_prefix: str = "") -> PromptIds:
        """Render the chat template around markers and tokenize it piece by piece.

        The template's own text (roles, turn tokens, the one video placeholder) is tokenized with special
        tokens; the user's and system text with special tokens split into plain text. The placeholder is
        found in the template's text, by position, never by searching ids that user text could forge."""
        rendered = self.render_prompt(_USER_MARK, _SYSTEM_MARK if system else None) + assistant_prefix
        if rendered.count(_USER_MARK) != 1 or (system and rendered.count(_SYSTEM_MARK) != 1):
            raise RuntimeError("the chat template must place the user (and system) text exactly once")
        parts = _MARKS.split(rendered)
        n_video = sum(p.count(self.video_token) for p in parts if p not in (_USER_MARK, _SYSTEM_MARK))
        if n_video != 1:
            raise RuntimeError(f"the chat template must hold exactly one {self.video_token}, found {n_video}")
        ids: tuple[list[int], list[int]] = ([], [])
        texts = ["", ""]
        side = 0
        fixed = -1
        for part in parts:
            if part == _USER_MARK and side == 0:
                fixed = len(ids[0])  # the question comes before the video: only what precedes it is shared
            if part in (_USER_MARK, _SYSTEM_MARK):
                text = user_text if part == _USER_MARK else (system or "")
                ids[side].extend(self.text_ids(text, user=True))
                texts[side] += text
            elif side == 0 and self.video_token in part:
                head, _, tail = part.partition(self.video_token)
                ids[0].extend(self.text_ids(head))
                texts[0] += head
                side = 1
                ids[1].extend(self.text_ids(tail))
                texts[1] += tail
            else:
                ids[side].extend(self.text_ids(part))
                texts[side] += part
        return PromptIds(ids[0], ids[1], texts[0], texts[1], fixed_before=fixed)

    def build_inputs(self, user_text: str, visual: VisualTokens, system: str | None = None,
                     assistant_prefix: str = "") -> PromptInputs:
        """Splice the visual tokens into the rendered prompt at the video placeholder."""
        p = self.prompt_ids(user_text, system, assistant_prefix)
        parts = [self.embed_ids(p.before), visual.embeds.to(self.device, self.dtype)]
        suffix = self.visual_suffix()
        if suffix is not None:
            parts.append(suffix.to(self.device, self.dtype))
        parts.append(self.embed_ids(p.after))
        embeds = torch.cat(parts, dim=0).unsqueeze(0)
        if embeds.shape[1] > self.max_context:
            raise InvalidRequestError(
                f"prompt of {embeds.shape[1]} tokens ({visual.num_tokens} visual) exceeds the model's context of "
                f"{self.max_context}; lower --budget or the number of frames")
        prompt = p.before_text + self.video_token + p.after_text
        shared = embeds.shape[1] - len(p.after) if p.fixed_before == len(p.before) else p.fixed_before
        return PromptInputs(embeds, len(p.before) + len(p.after), visual.num_tokens, prompt, prefix_len=shared)

    # ---- language model ----------------------------------------------------------------------------
    @abstractmethod
    def lm_forward(self, inputs_embeds: torch.Tensor, cache: Any = None) -> tuple[torch.Tensor, Any]:
        """Run the LLM on (1, L, D) embeddings after `cache`; return last-position logits (1, V) and the cache."""

    @torch.inference_mode()
    def batch_last_logits(self, prompts: list[torch.Tensor]) -> torch.Tensor:
        """Last-position logits (B, V) of several prompts, each (L_i, D) embeddings, without a cache.

        Tempo's relevance pass scores many segment prompts at once. This default runs `lm_forward` once per
        prompt (works for any backbone); backbones override it with one left-padded batched forward.
        """
        return torch.cat([self.lm_forward(p[None])[0] for p in prompts])

    def torch_modules(self) -> list[torch.nn.Module]:
        """Every torch module the backbone holds (for `SupportsSequenceLogits`: a trainer freezes them all).
        Backbones with training hooks define `sequence_logits` (logits at every position, with autograd)."""
        return [m for m in vars(self).values() if isinstance(m, torch.nn.Module)]

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "hidden_size": self.hidden_size, "frame_grid": list(self.frame_grid),
                "max_context": self.max_context, "device": str(self.device), "dtype": str(self.dtype)}


def resize_normalize(frames: torch.Tensor, size: tuple[int, int], mean: tuple[float, ...], std: tuple[float, ...],
                     device: torch.device, dtype: torch.dtype, pad_to_square: bool = False) -> torch.Tensor:
    """uint8 (n, H, W, 3) → normalised float (n, 3, h, w); batched on the target device (faster than PIL).
    `pad_to_square` first centres the frame on a square of the mean colour (LongVU's `expand2square`)."""
    x = frames.to(device).permute(0, 3, 1, 2).float()
    if pad_to_square:
        x = pad_square(x, tuple(m * 255.0 for m in mean))
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)
    x = x.clamp_(0, 255).div_(255.0)
    m = torch.tensor(mean, device=device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=device).view(1, -1, 1, 1)
    return ((x - m) / s).to(dtype)


def pad_square(x: torch.Tensor, fill: tuple[float, ...]) -> torch.Tensor:
    """Centre (n, C, H, W) on a square canvas of `fill` colour (LongVU's `expand2square`)."""
    n, c, h, w = x.shape
    if h == w:
        return x
    s = max(h, w)
    out = torch.tensor(fill, dtype=x.dtype, device=x.device).view(1, c, 1, 1).expand(n, c, s, s).clone()
    top, left = (s - h) // 2, (s - w) // 2
    out[:, :, top : top + h, left : left + w] = x
    return out


def left_pad(prompts: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack (L_i, D) prompts left-padded with zeros: embeddings (B, L, D), attention mask and position ids
    (B, L), so every prompt's last token sits at the last position and keeps its unpadded positions."""
    n = max(int(p.shape[0]) for p in prompts)
    d = prompts[0].shape[-1]
    embeds = prompts[0].new_zeros(len(prompts), n, d)
    mask = torch.zeros(len(prompts), n, dtype=torch.long, device=prompts[0].device)
    for i, p in enumerate(prompts):
        embeds[i, n - p.shape[0]:] = p
        mask[i, n - p.shape[0]:] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return embeds, mask, positions
