"""`tiny-random`: the LLaVA-OneVision classes at toy size with random weights and a locally made tokenizer.

It runs the whole pipeline offline in seconds, which is what the tests need. Its answers are meaningless.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any

import torch

from .._compat import require
from ..device import resolve_device, resolve_dtype
from .llava_onevision import LlavaOneVisionBackbone
from .presets import register_preset

NOTICE = "tiny-random has random weights: its answers are meaningless (it exists to test the pipeline offline)."

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>", "<think>", "</think>"]

# Handles both string and list ("type": "video"/"text") contents, like Qwen2-VL/LLaVA-OV templates.
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'video' %}<video>\n{% elif part['type'] == 'image' %}<image>\n"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = """The video shows a person walking a dog in the park. What is happening in this video?
Answer with the option's letter from the given choices directly. A. B. C. D. E. (A) (B) (C) (D)
The answer is B. Let's analyze the problem step by step. \\boxed{A} wait but alternatively
A red car drives along the street while people cross the road. How many objects appear? one two three
Describe the scene. Where is the cat? The cat sits on the table next to a cup of coffee.
0 1 2 3 4 5 6 7 8 9 10 seconds minutes frame frames video clip question answer option yes no
"""


@lru_cache(maxsize=1)
def build_tokenizer(vocab_size: int = 512) -> Any:
    """A byte-level BPE tokenizer trained in milliseconds on a built-in corpus: any text round-trips."""
    return train_byte_bpe([_CORPUS] * 4, SPECIAL_TOKENS, vocab_size, chat_template=CHATML_TEMPLATE, bos_token=None,
                          unk_token=None)


def train_byte_bpe(corpus: list[str], special_tokens: list[str], vocab_size: int, **tokenizer_kwargs: Any) -> Any:
    """A byte-level BPE trained on the texts of `corpus` with `special_tokens` (the first three are endoftext, im_start,
    im_end), wrapped as a transformers fast tokenizer with ChatML's end-of-turn as EOS. For offline tests."""
    tokenizers = require("tokenizers")
    transformers = require("transformers")
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special_tokens,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer=trainer)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                                pad_token="<|endoftext|>",
                                                additional_special_tokens=special_tokens[3:], **tokenizer_kwargs)


def _llava_config(tokenizer: Any, vision: Any, text: Any, tie_word_embeddings: bool) -> Any:
    """LLaVA-OneVision's video settings around the given towers, with <image>/<video> ids from `tokenizer`."""
    transformers = require("transformers")
    return transformers.LlavaOnevisionConfig(
        vision_config=vision, text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
        vision_feature_layer=-1, vision_feature_select_strategy="full", tie_word_embeddings=tie_word_embeddings,
    )


def tiny_config(tokenizer: Any, image_size: int = 112) -> Any:
    transformers = require("transformers")
    vision = transformers.SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                             num_attention_heads=2, image_size=image_size, patch_size=14)
    text = transformers.Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                    max_position_embeddings=4096, tie_word_embeddings=True)
    return _llava_config(tokenizer, vision, text, tie_word_embeddings=True)


@register_preset("tiny-random", max_context=4096)
def build_tiny_random(device: str | torch.device | None = "cpu", dtype: str | torch.dtype | None = "float32",
                      seed: int = 0, **_: Any) -> LlavaOneVisionBackbone:
    transformers = require("transformers")
    tokenizer = build_tokenizer()
    config = tiny_config(tokenizer)
    dev = resolve_device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.LlavaOnevisionForConditionalGeneration(config)
    model.to(dev, resolve_dtype(dtype, dev))
    return LlavaOneVisionBackbone(model, tokenizer, name="tiny-random", chat_template=CHATML_TEMPLATE, notice=NOTICE)


def llava_onevision_0_5b_config(tokenizer: Any) -> Any:
    """The published LLaVA-OneVision-Qwen2-0.5B architecture (SigLIP-so400m, 26 layers; Qwen2-0.5B).

    Token ids for <image>/<video> come from `tokenizer`, so the local tokenizer drives the real-size model.
    """
    transformers = require("transformers")
    vision = transformers.SiglipVisionConfig(hidden_size=1152, intermediate_size=4304, num_hidden_layers=26,
                                             num_attention_heads=16, image_size=384, patch_size=14)
    text = transformers.Qwen2Config(vocab_size=152000, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                                    num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                                    rope_theta=1_000_000.0, tie_word_embeddings=False)
    return _llava_config(tokenizer, vision, text, tie_word_embeddings=False)


@register_preset("llava-onevision-0.5b-random", max_context=32768)
def build_random_llava_onevision_0_5b(device: str | torch.device | None = "auto",
                                      dtype: str | torch.dtype | None = "auto", seed: int = 0,
                                      **_: Any) -> LlavaOneVisionBackbone:
    """Real-size LLaVA-OneVision-0.5B with random weights: for speed and memory benchmarks offline."""
    transformers = require("transformers")
    tokenizer = build_tokenizer()
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.device(dev):
            model = transformers.LlavaOnevisionForConditionalGeneration(llava_onevision_0_5b_config(tokenizer))
    model.to(dt)
    notice = "llava-onevision-0.5b-random: real architecture, random weights (for benchmarks; answers meaningless)."
    return LlavaOneVisionBackbone(model, tokenizer, name="llava-onevision-0.5b-random",
                                  chat_template=CHATML_TEMPLATE, notice=notice)
