"""A toy-size, random-weight checkpoint in the exact layout of Vision-CAIR/LongVU_Qwen2_7B (or the Llama-3.2
one), for offline tests, and the `tiny-random-longvu` preset built from it.

`save_tiny_random_longvu(dir)` writes `config.json` with the released fields (`model_type` `cambrian_qwen` /
`cambrian_llama`, `mm_projector_type: sva`, `query_num_list`, `image_token_len`, `lowres_token`, ...), one
safetensors file whose keys follow the released `CambrianQwenForCausalLM` (LLM under `model.` + `lm_head`,
connector under `model.mm_projector*`, `model.vision_sampler_0.*`, `model.vision_query`,
`model.image_newline`), the tokenizer, and the two towers under `vision_towers/` (the release loads them
from the hub instead). Sizes keep the release's ratios: tower maps 8×8 → 6×6 (27 → 24), 3×3 SVA queries
with 2×2 windows (12×12 with 2×2), low-res 2×2 (8×8).
"""
from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from .._compat import require
from .presets import register_preset

NOTICE = "tiny-random-longvu has random weights: its answers are meaningless (it exists to test the pipeline)."
QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>"]
LLAMA_SPECIAL = ["<|end_of_text|>", "<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>",
                 "<image>"]
#: Llama-3's chat layout (the released Llama tokenizer's template, without its date lines)
LLAMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
_CORPUS = ("You are a helpful assistant. What happens in the video? Is there a dog? What moves? A. B. C. D. "
           "The answer is A. system user assistant 0 1 2 3 4 5 6 7 8 9 .\n")


def build_tokenizer(family: str = "cambrian_qwen", vocab_size: int = 400) -> Any:
    from .longvu import CHATML_TEMPLATE
    from .tiny import train_byte_bpe

    if family == "cambrian_llama":
        tok = train_byte_bpe([_CORPUS] * 8, LLAMA_SPECIAL, vocab_size, chat_template=LLAMA_TEMPLATE)
        tok.eos_token, tok.bos_token, tok.pad_token = "<|eot_id|>", "<|begin_of_text|>", "<|end_of_text|>"
        return tok
    return train_byte_bpe([_CORPUS] * 8, QWEN_SPECIAL, vocab_size, chat_template=CHATML_TEMPLATE, bos_token=None,
                          unk_token=None)


def _randomize(module: torch.nn.Module, std: float = 0.3) -> None:
    """Every parameter random (LayerNorm scales around 1), so no weight can be read from the wrong key unseen."""
    for name, p in module.named_parameters():
        if p.ndim == 1 and name.endswith("weight"):
            torch.nn.init.normal_(p, mean=1.0, std=0.1)
        else:
            torch.nn.init.normal_(p, std=std)


def save_tiny_random_longvu(root: str | Path, family: str = "cambrian_qwen", seed: int = 0) -> Path:
    """Write a tiny random LongVU checkpoint in `root`; returns it."""
    transformers = require("transformers")
    from safetensors.torch import save_file

    from .longvu import TOWER_DIRS
    from .longvu_connector import LongVUConnector

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(family)
    siglip_cfg = transformers.SiglipVisionConfig(hidden_size=24, intermediate_size=48, num_hidden_layers=2,
                                                 num_attention_heads=2, image_size=112, patch_size=14)
    dino_cfg = transformers.Dinov2Config(hidden_size=40, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2,
                                         image_size=112, patch_size=14)
    dim, side_tokens, queries, final, lowres, depth = 32, 36, 9, 9, 2, 2
    llm_kwargs = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096)
    if family == "cambrian_llama":
        llm_cfg = transformers.LlamaConfig(**llm_kwargs, tie_word_embeddings=True,
                                           bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
        llm_cls, arch = transformers.LlamaForCausalLM, "CambrianLlamaForCausalLM"
    else:
        llm_cfg = transformers.Qwen2Config(**llm_kwargs, tie_word_embeddings=False, eos_token_id=tok.eos_token_id)
        llm_cls, arch = transformers.Qwen2ForCausalLM, "CambrianQwenForCausalLM"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        siglip = transformers.SiglipVisionModel(siglip_cfg)
        dino = transformers.Dinov2Model(dino_cfg)
        llm = llm_cls(llm_cfg)
        connector = LongVUConnector([24, 40], dim, 64, [side_tokens, side_tokens], queries, final, depth, lowres)
        _randomize(connector)
    state = {k: v.clone() for k, v in llm.state_dict().items()}  # tied head: a stored copy, as the 3B's .bin has
    state.update({f"model.{k}": v for k, v in connector.state_dict().items()})
    save_file({k: v.contiguous() for k, v in state.items()}, str(root / "model.safetensors"))
    cfg = llm_cfg.to_dict()
    cfg.update(model_type=family, architectures=[arch], mm_projector_type="sva", vision_hidden_size=dim,
               mm_vision_tower_aux_list=["siglip/CLIP-ViT-SO400M-14-384", "facebook/dinov2-giant-res378"],
               mm_vision_tower_aux_token_len_list=[side_tokens, side_tokens], image_token_len=final,
               query_num_list=[queries], num_query_group=1, connector_only=True, connector_depth=depth,
               highres=True, lowres_token=lowres, dino_threshold=0.83, drop_threshold=0.7, frame_pos=False,
               image_aspect_ratio="pad", mm_vision_select_layer=-2, mm_vision_select_feature="patch",
               mm_use_im_start_end=False, use_mm_proj=True)
    (root / "config.json").write_text(json.dumps(cfg, indent=1))
    tok.save_pretrained(str(root))
    siglip.save_pretrained(str(root / TOWER_DIRS["siglip"]))
    dino.save_pretrained(str(root / TOWER_DIRS["dino"]))
    return root


_TINY_DIR: Path | None = None


@register_preset("tiny-random-longvu")
def build_tiny_random_longvu(device: str | torch.device | None = "cpu", dtype: str | torch.dtype | None = "float32",
                             **_: Any) -> Any:
    """The tiny checkpoint, written once per process to a temporary directory and loaded like a real one."""
    global _TINY_DIR
    from .longvu import load_longvu

    if _TINY_DIR is None or not (_TINY_DIR / "config.json").is_file():
        _TINY_DIR = Path(tempfile.mkdtemp(prefix="videollm-tiny-longvu-"))
        # one directory per process, not one left in /tmp per run
        atexit.register(shutil.rmtree, str(_TINY_DIR), ignore_errors=True)
        hf_logging = require("transformers").utils.logging
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # "Writing model shards" bars for a file the user never asked for
        try:
            save_tiny_random_longvu(_TINY_DIR)
        finally:
            if bars:
                hf_logging.enable_progress_bar()
    dev = "cpu" if device in (None, "auto") else device
    dt = "float32" if dtype in (None, "auto") else dtype
    backbone = load_longvu(str(_TINY_DIR), device=dev, dtype=dt, notice=NOTICE)
    backbone.name = "tiny-random-longvu"  # the preset, not the temporary path (summaries, JSON, cache keys)
    return backbone


__all__ = ["build_tokenizer", "build_tiny_random_longvu", "save_tiny_random_longvu"]
