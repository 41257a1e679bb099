"""A toy-size, random-weight checkpoint in the exact layout of Vision-CAIR/Tempo-6B, for offline tests.

`save_tiny_random_tempo(dir)` writes two directories: the base SVLM (a tiny Qwen3-VL config + tokenizer, tied
embeddings like Qwen3-VL-2B) and the Tempo checkpoint (`config.json` with `model_type: tempo_qwen`,
`mm_vision_tower_aux_list`, `mm_projector_type`, one safetensors file whose keys follow the released
`TempoQwenForCausalLM`, and the LLM tokenizer). `load_tempo` then reads it like the real one.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .._compat import require

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|video_pad|>",
           "<|image_pad|>", "<video>"]
_CORPUS = ("Yes No yes no Query: Describe this content. seconds <12.0 seconds> system user assistant "
           "You are a helpful assistant. Is there a dog? What moves? A. B. C. D. 0 1 2 3 4 5 6 7 8 9 .\n")


def build_tokenizer(vocab_size: int = 400) -> Any:
    """A byte-level BPE with the Qwen-VL special tokens; any text round-trips."""
    from .tiny import train_byte_bpe

    return train_byte_bpe([_CORPUS] * 8, SPECIAL, vocab_size)


def save_tiny_random_tempo(root: str | Path, seed: int = 0, num_memory: int = 16,
                           projector: str = "mlp2x_gelu") -> Path:
    """Write a tiny random Tempo checkpoint under `root`; returns the checkpoint directory."""
    transformers = require("transformers")
    from safetensors.torch import save_file

    from .tempo6b import PROJECTOR_PREFIX, SVLM_PREFIX, TempoSVLM, build_projector

    root = Path(root)
    svlm_dir, ckpt_dir = root / "svlm", root / "tempo"
    svlm_dir.mkdir(parents=True, exist_ok=True)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL}
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=48, patch_size=16,
                  spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=256,
                  deepstack_visual_indexes=[0, 1])
    text = dict(vocab_size=len(tok), hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, head_dim=12, max_position_embeddings=4096, tie_word_embeddings=True,
                rope_parameters={"rope_type": "default", "rope_theta": 5_000_000.0, "mrope_section": [2, 2, 2],
                                 "mrope_interleaved": True})
    svlm_cfg = transformers.Qwen3VLConfig(vision_config=vision, text_config=text, tie_word_embeddings=True,
                                          image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                                          vision_start_token_id=ids["<|vision_start|>"],
                                          vision_end_token_id=ids["<|vision_end|>"])
    llm_cfg = transformers.Qwen3Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                       max_position_embeddings=4096, tie_word_embeddings=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        svlm = TempoSVLM(svlm_cfg, num_memory)
        torch.nn.init.normal_(svlm.compression_tokens, std=0.5)
        llm = transformers.Qwen3ForCausalLM(llm_cfg)
        proj = build_projector(projector, 48, 64)
    state: dict[str, torch.Tensor] = {}
    for k, v in llm.state_dict().items():
        state[k] = v
    for k, v in svlm.state_dict().items():
        state[SVLM_PREFIX + k] = v
    for k, v in proj.state_dict().items():
        state[PROJECTOR_PREFIX + k] = v
    save_file({k: v.contiguous() for k, v in state.items()}, str(ckpt_dir / "model.safetensors"))
    cfg = llm_cfg.to_dict()
    cfg.update(model_type="tempo_qwen", architectures=["TempoQwenForCausalLM"], mm_projector_type=projector,
               mm_hidden_size=48, mm_vision_tower_aux_list=[str(svlm_dir)])
    (ckpt_dir / "config.json").write_text(json.dumps(cfg, indent=1))
    tok.save_pretrained(str(ckpt_dir))
    svlm_cfg.save_pretrained(str(svlm_dir))
    tok.save_pretrained(str(svlm_dir))
    return ckpt_dir


__all__ = ["build_tokenizer", "save_tiny_random_tempo"]
