"""Quantized checkpoints as safetensors: quantize once, load fast.

A checkpoint directory holds `quantized.safetensors` (float tensors as they are; each `QuantLinear` as its
portable `qweight`/`scale`/`zero`/`bias`), `videollm_quant.json` (which layers are quantized and how), and the
model's `config.json` + tokenizer files. Loading builds the model skeleton without initialising weights,
swaps the listed layers for empty `QuantLinear`s (and quantized embeddings for `QuantEmbedding`s, tied ones
pointing at the head's packed rows) and loads the state dict; CPU kernel layouts are derived
on load. Only our native layers are saved: torchao/quanto-quantized models go through those libraries' own
serialization.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._compat import require
from ..errors import InvalidRequestError, ModelLoadError
from .api import _set_child
from .backends import library_scheme
from .embedding import QuantEmbedding
from .linear import QuantLinear

logger = logging.getLogger(__name__)

WEIGHTS = "quantized.safetensors"
MANIFEST = "videollm_quant.json"
FORMAT_VERSION = 1


def _spec(m: QuantLinear) -> dict[str, Any]:
    return {"scheme": m.scheme, "group_size": m.group, "in_features": m.in_features,
            "out_features": m.out_features, "bias": m.bias is not None, "zero_point": m.zero is not None}


def quantized_embeddings(module: nn.Module) -> dict[str, dict[str, Any]]:
    """Quantized embeddings: tied ones name the head whose packed rows they read; untied ones hold a table."""
    out = {}
    for name, m in module.named_modules():
        if isinstance(m, QuantEmbedding):
            entry: dict[str, Any] = {"dtype": str(m.dtype).replace("torch.", ""), "padding_idx": m.padding_idx}
            if m.tied:
                entry["tied_to"] = next(n for n, x in module.named_modules() if x is m.table)
            else:
                entry["table"] = _spec(m.table)
            out[name] = entry
    return out


def quantized_layers(module: nn.Module) -> dict[str, dict[str, Any]]:
    layers = {}
    embeddings = {f"{n}.source" for n, m in module.named_modules() if isinstance(m, QuantEmbedding)}
    for name, m in module.named_modules():
        if name in embeddings:
            continue
        if isinstance(m, QuantLinear):
            layers[name] = {"scheme": m.scheme, "group_size": m.group, "in_features": m.in_features,
                            "out_features": m.out_features, "bias": m.bias is not None,
                            "zero_point": m.zero is not None}
        elif library_scheme(m) is not None:
            raise InvalidRequestError(f"layer {name} was quantized by {library_scheme(m)[1]}; only the native "
                                      "backend's layers can be saved here (quantize with backend='native')")
    return layers


def _dedup(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """safetensors refuses shared storage (tied embeddings): keep the first name, alias the rest."""
    out, aliases, owner = {}, {}, {}
    for k, t in state.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype) if t.numel() else None
        if key is not None and key in owner:
            aliases[k] = owner[key]
            continue
        if key is not None:
            owner[key] = k
        out[k] = t.detach().contiguous().cpu()
    return out, aliases


def save_module(module: nn.Module, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Save a (partly) quantized module's state and manifest into directory `path`."""
    st = require("safetensors.torch", purpose="saving quantized checkpoints")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    layers = quantized_layers(module)
    tensors, aliases = _dedup(module.state_dict())
    st.save_file(tensors, str(path / WEIGHTS), metadata={"format": "videollm-quant", "version": str(FORMAT_VERSION)})
    manifest = {"format_version": FORMAT_VERSION, "layers": layers, "embeddings": quantized_embeddings(module),
                "aliases": aliases, **(extra or {})}
    (path / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return path


def _empty_layer(spec: dict[str, Any], device: torch.device, **options: Any) -> QuantLinear:
    """An unfilled `QuantLinear` of the shape and scheme a manifest entry records (`_spec`; files from before
    zero points: symmetric)."""
    return QuantLinear(spec["in_features"], spec["out_features"], spec["scheme"], spec["group_size"],
                       bias=spec["bias"], device=device, zero_point=spec.get("zero_point", False), **options)


# ---- only what quantization produced (the quantized-weights cache, `weights_cache`) --------------------------
def _layer_spec(m: QuantLinear) -> dict[str, Any]:
    return {**_spec(m), "kernel": m.requested_kernel, "compute_dtype": str(m.compute_dtype).replace("torch.", ""),
            "checked_kernel": m.kernel}


def quantized_state(module: nn.Module, seen: set[int] | None = None
                    ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """What quantization produced in `module`, and nothing else: each `QuantLinear`'s portable state and each
    quantized embedding (its own packed table when untied), with the manifest part that rebuilds them
    (`build_quantized`). The float parameters the model loads itself stay out. Modules whose ids are in `seen`
    (recorded under another root sharing them) are skipped; the ones recorded here are added to it."""
    quantized_layers(module)  # refuses layers a library quantized: they have no portable state
    seen = set() if seen is None else seen
    layers: dict[str, Any] = {}
    embeddings: dict[str, Any] = {}
    tensors: dict[str, torch.Tensor] = {}

    def keep(prefix: str, m: QuantLinear) -> None:
        seen.add(id(m))
        tensors.update({k: t.detach().contiguous().cpu() for k, t in m.state_dict(prefix=prefix + ".").items()})

    for name, m in module.named_modules():
        if id(m) in seen:
            continue
        if isinstance(m, QuantEmbedding):
            seen.add(id(m))
            entry: dict[str, Any] = {"dtype": str(m.dtype).replace("torch.", ""), "padding_idx": m.padding_idx}
            if m.tied:
                head = next((n for n, x in module.named_modules() if x is m.table), None)
                if head is None:
                    raise InvalidRequestError(f"{name} is tied to a head outside the module saved")
                entry["tied_to"] = head
            else:
                entry["table"] = _layer_spec(m.table)
                keep(name + ".source", m.table)
            embeddings[name] = entry
        elif isinstance(m, QuantLinear):
            layers[name] = _layer_spec(m)
            keep(name, m)
    return {"layers": layers, "embeddings": embeddings}, tensors


def _filled_layer(spec: dict[str, Any], tensors: dict[str, torch.Tensor], prefix: str,
                  device: torch.device) -> QuantLinear:
    compute_dtype = getattr(torch, spec.get("compute_dtype", "bfloat16"))
    q = _empty_layer(spec, device, kernel=spec.get("kernel", "auto"), compute_dtype=compute_dtype)
    q.checked_kernel = spec.get("checked_kernel")  # the kernel chosen (self-checked) when these were saved
    state = {}
    for k, want in q.state_dict().items():  # the empty layer's own names: qweight, scale (, zero) (, bias)
        t = tensors[f"{prefix}.{k}"]
        if tuple(t.shape) != tuple(want.shape) or t.dtype != want.dtype:
            raise ValueError(f"{prefix}.{k}: {tuple(t.shape)} {t.dtype}, expected {tuple(want.shape)} {want.dtype}")
        state[k] = t
    q.load_state_dict(state, strict=True)  # derives the kernel layout, as quantizing does
    return q


def build_quantized(module: nn.Module, part: dict[str, Any], tensors: dict[str, torch.Tensor]
                    ) -> dict[str, nn.Module]:
    """The quantized layers `quantized_state` recorded, rebuilt and loaded but not yet in `module` (name → new
    module), so an entry that does not fit (a layer missing, another shape, a tensor absent) raises before
    `module` is touched. Each one must replace an `nn.Linear` / `nn.Embedding` of the same shape."""
    dev = next(module.parameters()).device
    new: dict[str, nn.Module] = {}
    for name, spec in part["layers"].items():
        old = module.get_submodule(name)
        if not isinstance(old, nn.Linear) or (old.in_features, old.out_features) != (spec["in_features"],
                                                                                       spec["out_features"]):
            raise ValueError(f"{name} is not a {spec['out_features']}x{spec['in_features']} linear layer here")
        new[name] = _filled_layer(spec, tensors, name, dev)
    for name, spec in part["embeddings"].items():
        old = module.get_submodule(name)
        if not isinstance(old, nn.Embedding):
            raise ValueError(f"{name} is not an embedding here")
        dtype = getattr(torch, spec["dtype"])
        if "tied_to" in spec:
            head = new.get(spec["tied_to"])
            if not isinstance(head, QuantLinear):
                raise ValueError(f"{name} is tied to {spec['tied_to']}, which is not among the quantized layers")
            emb = QuantEmbedding(head, tied=True, dtype=dtype, padding_idx=spec["padding_idx"])
        else:
            emb = QuantEmbedding(_filled_layer(spec["table"], tensors, name + ".source", dev), tied=False, dtype=dtype,
                                 padding_idx=spec["padding_idx"])
        if (emb.num_embeddings, emb.embedding_dim) != (old.num_embeddings, old.embedding_dim):
            raise ValueError(f"{name}: {emb.num_embeddings}x{emb.embedding_dim} does not fit this embedding")
        new[name] = emb
    return new


def swap_in(module: nn.Module, new: dict[str, nn.Module]) -> None:
    """Put `build_quantized`'s layers into `module`."""
    for name, m in new.items():
        _set_child(module, name, m)


def read_manifest(path: str | Path) -> dict[str, Any]:
    f = Path(path) / MANIFEST
    if not f.is_file():
        raise ModelLoadError(str(path), FileNotFoundError(f"{f} not found (not a videollm quantized checkpoint)"))
    manifest = json.loads(f.read_text())
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ModelLoadError(str(path), ValueError(f"unsupported format version {manifest.get('format_version')}"))
    return manifest


def load_into(module: nn.Module, path: str | Path) -> nn.Module:
    """Swap `module`'s layers listed in the checkpoint for `QuantLinear`s and load its weights (strict)."""
    st = require("safetensors.torch", purpose="loading quantized checkpoints")
    manifest = read_manifest(path)
    dev = next(module.parameters()).device
    for name, spec in manifest["layers"].items():
        _set_child(module, name, _empty_layer(spec, dev))
    embeddings = manifest.get("embeddings", {})
    for name, spec in embeddings.items():
        dtype = getattr(torch, spec["dtype"])
        if "tied_to" in spec:
            emb = QuantEmbedding(module.get_submodule(spec["tied_to"]), tied=True, dtype=dtype,
                                 padding_idx=spec["padding_idx"])
        else:
            emb = QuantEmbedding(_empty_layer(spec["table"], dev, kernel="dequant"), tied=False, dtype=dtype,
                                 padding_idx=spec["padding_idx"])
        _set_child(module, name, emb)
    state = st.load_file(str(Path(path) / WEIGHTS), device=str(dev))
    for alias, owner in manifest.get("aliases", {}).items():
        state[alias] = state[owner]
    module.load_state_dict(state, strict=True)
    if hasattr(module, "tie_weights") and not embeddings:  # quantized embeddings are tied by construction
        module.tie_weights()
    return module


def empty_model(build: Any, config: Any) -> nn.Module:
    """Build a transformers model without spending time on random initialisation (weights are loaded next)."""
    from transformers.initialization import no_init_weights

    with no_init_weights():
        return build(config)


def save_quantized_causal_lm(model: nn.Module, tokenizer: Any, path: str | Path) -> Path:
    path = Path(path)
    save_module(model, path, {"kind": "causal_lm", "dtype": str(next(model.parameters()).dtype).replace("torch.", "")})
    model.config.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def load_quantized_causal_lm(path: str | Path) -> tuple[nn.Module, Any]:
    transformers = require("transformers", purpose="loading quantized checkpoints")
    path = Path(path)
    manifest = read_manifest(path)
    config = transformers.AutoConfig.from_pretrained(path)
    model = empty_model(transformers.AutoModelForCausalLM.from_config, config)
    model.to(getattr(torch, manifest.get("dtype", "float32")))
    load_into(model, path)
    return model.eval(), transformers.AutoTokenizer.from_pretrained(path)
