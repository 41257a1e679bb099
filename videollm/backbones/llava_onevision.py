"""LLaVA-OneVision (SigLIP tower → 2-layer MLP projector → Qwen2) driven stage by stage.

Its 1-D positions let any number of compressed tokens be spliced into the prompt. Video frames follow the
model's own video path: 384² input, all 729 patch features of the last layer, projector, 2×2 bilinear
pooling to a 14×14 grid (196 tokens per frame), and one learned newline after the whole video.
"""
from __future__ import annotations

import logging
import math
import os
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from .._compat import require
from ..device import resolve_device, resolve_dtype
from ..runtime.decode_step import forward_last
from .base import Backbone, left_pad, resize_normalize
from .presets import register_preset

if TYPE_CHECKING:
    from transformers import LlavaOnevisionForConditionalGeneration

    from ..protocols import Tokenizer

logger = logging.getLogger(__name__)

DEFAULT_MODEL_ID = "llava-hf/llava-onevision-qwen2-0.5b-ov-hf"


class LlavaOneVisionBackbone(Backbone):
    def __init__(self, model: LlavaOnevisionForConditionalGeneration, tokenizer: Tokenizer, name: str,
                 image_mean: tuple[float, ...] = (0.5, 0.5, 0.5),
                 image_std: tuple[float, ...] = (0.5, 0.5, 0.5), chat_template: str | None = None,
                 notice: str | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.image_mean, self.image_std = tuple(image_mean), tuple(image_std)
        self.chat_template = chat_template
        self.notice = notice
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        cfg = model.config
        self._vcfg = cfg.vision_config
        self._patch_grid = self._vcfg.image_size // self._vcfg.patch_size
        self._layer = cfg.vision_feature_layer
        self._strategy = cfg.vision_feature_select_strategy
        self._video_token_id = cfg.video_token_index

    # -- construction ---------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, model_id: str = DEFAULT_MODEL_ID, device: str | torch.device | None = "auto",
                        dtype: str | torch.dtype | None = "auto", **kwargs: Any) -> "LlavaOneVisionBackbone":
        transformers = require("transformers", purpose="LLaVA-OneVision")
        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        model = transformers.LlavaOnevisionForConditionalGeneration.from_pretrained(model_id, dtype=dt, **kwargs)
        model.to(dev)
        hub = {k: v for k, v in kwargs.items() if k == "local_files_only"}
        tokenizer = transformers.AutoTokenizer.from_pretrained(model_id, **hub)
        mean, std, template = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), None
        try:
            processor = transformers.AutoProcessor.from_pretrained(model_id, **hub)
            ip = getattr(processor, "video_processor", None) or processor.image_processor
            mean, std = tuple(ip.image_mean), tuple(ip.image_std)
            template = getattr(processor, "chat_template", None)
        except (OSError, ValueError, AttributeError) as err:
            logger.warning(
                "no processor for %s (%s); using SigLIP defaults and the tokenizer's template", model_id, err
            )
        return cls(model, tokenizer, name=model_id, image_mean=mean, image_std=std, chat_template=template)

    # -- sizes ----------------------------------------------------------------------------------------
    @property
    def hidden_size(self) -> int:
        return int(self.model.config.text_config.hidden_size)

    @property
    def frame_grid(self) -> tuple[int, int]:
        g = math.ceil(self._patch_grid / 2)
        return g, g

    @property
    def max_context(self) -> int:
        return int(self.model.config.text_config.max_position_embeddings)

    @property
    def video_token(self) -> str:
        return self.tokenizer.convert_ids_to_tokens(self._video_token_id)

    # -- vision ---------------------------------------------------------------------------------------
    @torch.inference_mode()
    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        size = (self._vcfg.image_size, self._vcfg.image_size)
        pixels = resize_normalize(frames, size, self.image_mean, self.image_std, self.device, self.dtype)
        layers = self._layer if isinstance(self._layer, list) else [self._layer]
        hidden = self._tower_layers(pixels, layers)
        if hidden is None:
            out = self.model.model.vision_tower(pixels, output_hidden_states=True, return_dict=True)
            hidden = {i: out.hidden_states[i] for i in layers}
        feats = torch.cat([hidden[i] for i in layers], dim=-1)
        if self._strategy == "default":
            feats = feats[:, 1:]
        g = self._patch_grid
        return feats.reshape(feats.shape[0], g, g, feats.shape[-1])

    def _tower_layers(self, pixels: torch.Tensor, layers: list[int]) -> dict[int, torch.Tensor] | None:
        """Only the encoder layers the projector reads, nothing after them.

        The tower's own forward also runs the post-layernorm and the attention-pooling head (`vision_use_head`)
        and, with `output_hidden_states=True`, keeps every layer's output alive; LLaVA-OneVision reads one
        hidden state. Same arithmetic as the full forward (a test checks bit equality); None when the tower is
        not the SigLIP layout this expects, and the caller then runs the full forward.
        """
        tower = self.model.model.vision_tower
        vm = getattr(tower, "vision_model", tower)
        emb, enc = getattr(vm, "embeddings", None), getattr(vm, "encoder", None)
        blocks = getattr(enc, "layers", None)
        if emb is None or blocks is None or os.environ.get("VIDEOLLM_TOWER_TRIM", "1") in ("0", ""):
            return None
        n = len(blocks)
        want = {i: i % (n + 1) for i in layers}  # hidden_states[k]: k=0 embeddings, k=i after block i
        x = emb(pixels)
        out = {i: x for i, k in want.items() if k == 0}
        for k, block in enumerate(blocks[: max(want.values())], start=1):
            x = block(x, None)
            x = x[0] if isinstance(x, tuple) else x
            out.update({i: x for i, kk in want.items() if kk == k})
        return out

    @torch.inference_mode()
    def project(self, features: torch.Tensor) -> torch.Tensor:
        n, h, w, _ = features.shape
        x = self.model.model.multi_modal_projector(features.reshape(n, h * w, -1))
        x = x.reshape(n, h, w, -1).permute(0, 3, 1, 2)
        x = F.interpolate(x, size=(math.ceil(h / 2), math.ceil(w / 2)), mode="bilinear")  # the model's video pooling
        return x.permute(0, 2, 3, 1).contiguous()

    def quantizable_modules(self) -> dict[str, torch.nn.Module]:
        """The language model (without embeddings and LM head) and the SigLIP tower (`SupportsQuantization`)."""
        return {"llm": self.model.model.language_model, "vision": self.model.model.vision_tower}

    def causal_lm(self) -> torch.nn.Module:
        """The module owning the LM head and input embeddings, which `--quant` also quantizes (tied ones
        share one packed table)."""
        return self.model

    def text_decoder(self) -> tuple[torch.nn.Module, torch.nn.Module]:
        """Qwen2 decoder and LM head (`SupportsStaticDecode`: the compiled decode loop)."""
        return self.model.model.language_model, self.model.lm_head

    def visual_suffix(self) -> torch.Tensor | None:
        return self.model.model.image_newline.detach()[None, :]

    def projector_slot(self) -> tuple[torch.nn.Module, str]:
        """Where `project` finds its projector (`SupportsProjectorSwap`: STORM's trained copy goes there)."""
        return self.model.model, "multi_modal_projector"

    # -- language -------------------------------------------------------------------------------------
    def input_embeddings(self) -> torch.nn.Embedding:
        return self.model.get_input_embeddings()

    @torch.inference_mode()
    def lm_forward(self, inputs_embeds: torch.Tensor, cache: Any = None) -> tuple[torch.Tensor, Any]:
        hidden, cache = forward_last(self.model.model.language_model, inputs_embeds.to(self.dtype), cache)
        return self.model.lm_head(hidden).float()[:, -1], cache


    @torch.inference_mode()
    def batch_last_logits(self, prompts: list[torch.Tensor]) -> torch.Tensor:
        """One left-padded forward over several prompts (Tempo's batched relevance pass)."""
        embeds, mask, positions = left_pad([p.to(self.device, self.dtype) for p in prompts])
        out = self.model.model.language_model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                                              use_cache=False, return_dict=True)
        return self.model.lm_head(out.last_hidden_state[:, -1]).float()

    def sequence_logits(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        out = self.model.model.language_model(inputs_embeds=inputs_embeds.to(self.dtype), use_cache=False,
                                              return_dict=True)
        return self.model.lm_head(out.last_hidden_state).float()


for _name, _model_id in {"llava-onevision-0.5b": DEFAULT_MODEL_ID,
                         "llava-onevision-7b": "llava-hf/llava-onevision-qwen2-7b-ov-hf"}.items():
    register_preset(_name, _model_id)(LlavaOneVisionBackbone.from_pretrained)
