"""Random-weight Qwen-VL presets: `tiny-random-qwen2.5-vl`, `tiny-random-qwen3-vl` (toy size, for tests) and
`qwen2.5-vl-3b-random` (the published Qwen2.5-VL-3B architecture, for benchmarks).

They use the real transformers classes with a locally trained byte-level tokenizer holding Qwen's special
tokens, a Qwen-style chat template and the checkpoints' own video processor classes, so everything runs
offline. `save_checkpoint` writes one as `save_pretrained` does (config, weights, tokenizer with its chat
template, processor configs): a directory videollm then loads like any hub checkpoint. Answers are noise.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from .._compat import require
from ..device import resolve_device, resolve_dtype
from .presets import register_preset
from .qwen_vl import QwenVLBackbone
from .tiny import _CORPUS, train_byte_bpe

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|video_pad|>", "<|image_pad|>", "<think>", "</think>"]

#: Qwen2-VL / Qwen2.5-VL's template (a default system turn); Qwen3-VL's has none
_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' and DEFAULT_SYSTEM %}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QWEN25_TEMPLATE = _TEMPLATE.replace("DEFAULT_SYSTEM", "true")
QWEN3_TEMPLATE = _TEMPLATE.replace("DEFAULT_SYSTEM", "false")
NOTICE = "{name} has random weights: its answers are meaningless (it exists to test the pipeline offline)."


@lru_cache(maxsize=2)
def build_tokenizer(template: str = QWEN25_TEMPLATE, vocab_size: int = 512) -> Any:
    return train_byte_bpe([_CORPUS] * 4, SPECIAL_TOKENS, vocab_size, chat_template=template, bos_token=None,
                          unk_token=None)


def _token_ids(tok: Any) -> dict[str, int]:
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    return {"image_token_id": ids["<|image_pad|>"], "video_token_id": ids["<|video_pad|>"],
            "vision_start_token_id": ids["<|vision_start|>"], "vision_end_token_id": ids["<|vision_end|>"]}


def tiny_qwen25_config(tok: Any) -> Any:
    transformers = require("transformers")
    text = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
                tie_word_embeddings=True, initializer_range=0.2)
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=14,
                  window_size=56, fullatt_block_indexes=[1], tokens_per_second=2, spatial_merge_size=2,
                  temporal_patch_size=2)
    return transformers.Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True,
                                         initializer_range=0.2, **_token_ids(tok))


def tiny_qwen3_config(tok: Any) -> Any:
    transformers = require("transformers")
    text = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=8192,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3],
                                 "mrope_interleaved": True}, tie_word_embeddings=True, initializer_range=0.2)
    vision = dict(depth=3, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=16,
                  num_position_embeddings=64, deepstack_visual_indexes=[0, 1, 2], spatial_merge_size=2,
                  temporal_patch_size=2)
    return transformers.Qwen3VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True,
                                      initializer_range=0.2, **_token_ids(tok))


def qwen25_vl_3b_config(tok: Any) -> Any:
    """The published Qwen2.5-VL-3B-Instruct architecture (HUB config.json), vocabulary from `tok`."""
    transformers = require("transformers")
    text = dict(vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                num_attention_heads=16, num_key_value_heads=2, max_position_embeddings=128000,
                rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [16, 24, 24]},
                tie_word_embeddings=True)
    vision = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048,
                  patch_size=14, window_size=112, fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2,
                  spatial_merge_size=2, temporal_patch_size=2)
    return transformers.Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True,
                                         **_token_ids(tok))


def video_processor(family: str, min_tokens: int = 4, max_tokens: int = 64) -> Any:
    """The checkpoint's own video processor class, with token bounds per frame pair (Qwen3-VL: per video)."""
    require("transformers")
    if family == "qwen3_vl":
        from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

        f = 32
        return Qwen3VLVideoProcessor(size={"shortest_edge": min_tokens * f * f, "longest_edge": max_tokens * f * f * 4},
                                     cap_pixels_per_frame=False)
    from transformers import Qwen2VLVideoProcessor

    f = 28
    return Qwen2VLVideoProcessor(size={"shortest_edge": min_tokens * f * f, "longest_edge": max_tokens * f * f},
                                 cap_pixels_per_frame=False)


def build_processor(family: str, tok: Any, min_tokens: int = 4, max_tokens: int = 64) -> Any:
    """transformers' processor for the family around `tok` (what `save_checkpoint` writes beside the weights)."""
    transformers = require("transformers")
    vp = video_processor(family, min_tokens, max_tokens)
    if family == "qwen3_vl":
        return transformers.Qwen3VLProcessor(image_processor=transformers.Qwen2VLImageProcessor(patch_size=16),
                                             tokenizer=tok, video_processor=vp, chat_template=tok.chat_template)
    return transformers.Qwen2_5_VLProcessor(image_processor=transformers.Qwen2VLImageProcessor(), tokenizer=tok,
                                            video_processor=vp, chat_template=tok.chat_template)


def build_model(family: str, device: str | torch.device | None = "cpu", dtype: str | torch.dtype | None = "float32",
                seed: int = 0, real_size: bool = False) -> tuple[Any, Any, Any]:
    """(model, tokenizer, processor) with random weights."""
    transformers = require("transformers")
    tok = build_tokenizer(QWEN3_TEMPLATE if family == "qwen3_vl" else QWEN25_TEMPLATE)
    if real_size:
        config, cls = qwen25_vl_3b_config(tok), transformers.Qwen2_5_VLForConditionalGeneration
    elif family == "qwen3_vl":
        config, cls = tiny_qwen3_config(tok), transformers.Qwen3VLForConditionalGeneration
    else:
        config, cls = tiny_qwen25_config(tok), transformers.Qwen2_5_VLForConditionalGeneration
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if real_size:
            with torch.device(dev):
                model = cls(config)
        else:
            model = cls(config)
    model.to(dev, dt)
    stop = [tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")]
    for c in (model.config, model.config.text_config, model.generation_config):
        eos = stop if c is model.generation_config else stop[0]
        c.eos_token_id, c.pad_token_id, c.bos_token_id = eos, stop[1], None
    processor = build_processor(family, tok, *((16, 768) if real_size else (4, 64)))
    return model.eval(), tok, processor


def save_checkpoint(directory: str | Path, family: str = "qwen2_5_vl", seed: int = 0) -> Path:
    """Write a tiny random checkpoint as `save_pretrained` does (for `--model DIR` and the parity tests)."""
    model, tok, processor = build_model(family, seed=seed)
    out = Path(directory)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _backbone(family: str, name: str, device: Any, dtype: Any, seed: int, real_size: bool = False) -> QwenVLBackbone:
    model, tok, processor = build_model(family, device, dtype, seed, real_size)
    return QwenVLBackbone(model, tok, processor.video_processor, name=name, chat_template=tok.chat_template,
                          notice=NOTICE.format(name=name))


@register_preset("tiny-random-qwen2.5-vl")
def build_tiny_qwen25(device: str | torch.device | None = "cpu", dtype: str | torch.dtype | None = "float32",
                      seed: int = 0, **_: Any) -> QwenVLBackbone:
    return _backbone("qwen2_5_vl", "tiny-random-qwen2.5-vl", device, dtype, seed)


@register_preset("tiny-random-qwen3-vl")
def build_tiny_qwen3(device: str | torch.device | None = "cpu", dtype: str | torch.dtype | None = "float32",
                     seed: int = 0, **_: Any) -> QwenVLBackbone:
    return _backbone("qwen3_vl", "tiny-random-qwen3-vl", device, dtype, seed)


@register_preset("qwen2.5-vl-3b-random")
def build_qwen25_3b_random(device: str | torch.device | None = "auto", dtype: str | torch.dtype | None = "auto",
                           seed: int = 0, **_: Any) -> QwenVLBackbone:
    """Real-size Qwen2.5-VL-3B with random weights: for speed and memory benchmarks offline."""
    return _backbone("qwen2_5_vl", "qwen2.5-vl-3b-random", device, dtype, seed, real_size=True)
