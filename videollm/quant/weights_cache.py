"""Quantize once, reuse: quantized layers kept on disk per model, float weights and settings.

`--quant int4` on videollm-mini spends ~3 s of every process quantizing 210 layers and running the agreement
check's probe prompts (`agreement.quantize_checked`), for the same result each time. A model that can say what
its float weights are (`SupportsWeightsFingerprint`) gets that result saved once under
`$VIDEOLLM_CACHE/quantized/<key>/` (as llama.cpp users keep a quantized GGUF) and loaded on the next process:
the layers are swapped for `QuantLinear`s filled from the file, the quantization record and the agreement
warning restored, and neither quantization nor the probe forwards run. Only what quantization produced is
stored (`io.quantized_state`), never the float parameters the model loads itself.

The key holds the model's name and fingerprint, both schemes, the resolved group and head, the device and dtype
the weights sit in, the file format, videollm's version and the CPU kernel level and build in use (the agreement
check's result can depend on them): an entry is trusted only for exactly these. So each layer's kernel, chosen
after its self-check against the reference when the entry was saved, is prepared again without repeating the
check (`QuantLinear.checked_kernel`). `VIDEOLLM_QUANT_CACHE=0` turns it off.
An entry that cannot be read is removed and the model quantized as on a miss.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from torch import nn

from .._compat import cache_root, switched_off
from ..errors import InvalidRequestError
from ..protocols import (
    HasCausalLM,
    LanguageModel,
    SupportsDeferredCast,
    SupportsQuantization,
    SupportsWeightsFingerprint,
)
from . import cpu_kernels, io
from .agreement import Checked, quantize_checked
from .api import BackboneQuantization, check_scheme_names, resolve_head

logger = logging.getLogger(__name__)

ENV = "VIDEOLLM_QUANT_CACHE"
WEIGHTS = "layers.safetensors"
MANIFEST = "entry.json"
#: the `quantizable_modules()` keys are kept under this prefix, the causal LM (head, embeddings) as "causal_lm"
_MODULES = "modules."


def enabled() -> bool:
    """Off with `VIDEOLLM_QUANT_CACHE=0` (or false/no/off)."""
    return not switched_off(ENV)


def cache_dir() -> Path:
    return cache_root() / "quantized"


def _roots(backbone: SupportsQuantization) -> list[tuple[str, nn.Module]]:
    """The modules quantization changes, the causal LM first (its head and embeddings; a module shared with a
    later root is recorded once, under the first)."""
    roots = [("causal_lm", backbone.causal_lm())] if isinstance(backbone, HasCausalLM) else []
    return roots + [(_MODULES + k, m) for k, m in backbone.quantizable_modules().items()]


def entry_key(name: str, fingerprint: str, llm: str, vision: str, group_size: int | None, head: str,
              device: str, dtype: str) -> str:
    from .. import __version__

    parts = [name, fingerprint, llm, vision, group_size, head, device, dtype, io.FORMAT_VERSION, __version__,
             cpu_kernels.isa(), cpu_kernels.build_id()]
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:24]


def quantize_cached(backbone: LanguageModel, name: str, llm: str, vision: str = "none",
                    group_size: int | None = 128, head: str = "auto") -> Checked:
    """`agreement.quantize_checked`, or its saved result for the same float weights and settings. Models without
    a fingerprint, or with the cache off, quantize as always. A `SupportsDeferredCast` model is cast before
    quantizing (the agreement check runs it in float) and after a hit (what the entry did not replace), so on a
    hit the replaced layers' float weights are never cast."""
    fingerprint = backbone.weights_fingerprint() if isinstance(backbone, SupportsWeightsFingerprint) else None
    if not fingerprint or not enabled() or not isinstance(backbone, SupportsQuantization):
        _finish_cast(backbone)
        return quantize_checked(backbone, llm, vision, group_size, head=head)
    check_scheme_names(llm, vision)
    roots = _roots(backbone)
    first = next((p for _, m in roots for p in m.parameters()), None)
    device, dtype = (str(first.device), str(first.dtype)) if first is not None else ("none", "none")
    where = cache_dir() / entry_key(name, fingerprint, llm, vision, group_size, resolve_head(head, llm), device,
                                    dtype)
    if where.is_dir():
        hit = _load(roots, where)
        if hit is not None:
            _finish_cast(backbone)
            return hit
    _finish_cast(backbone)
    checked = quantize_checked(backbone, llm, vision, group_size, head=head)
    _save(roots, where, checked)
    return checked


def _finish_cast(backbone: LanguageModel) -> None:
    if isinstance(backbone, SupportsDeferredCast):
        backbone.finish_cast()


def _load(roots: list[tuple[str, nn.Module]], where: Path) -> Checked | None:
    """The entry's layers swapped into the model and its record; None (entry removed, model untouched) when
    any part of it cannot be read or does not fit."""
    try:
        from .._compat import require

        st = require("safetensors.torch", purpose="the quantized-weights cache")
        manifest = json.loads((where / MANIFEST).read_text())
        if manifest.get("format_version") != io.FORMAT_VERSION:
            raise ValueError(f"format version {manifest.get('format_version')}")
        modules = dict(roots)
        tensors = st.load_file(str(where / WEIGHTS))
        built = {root: io.build_quantized(modules[root], part, _under(tensors, root))
                 for root, part in manifest["roots"].items()}
        record = BackboneQuantization(**manifest["quantization"])
        warning = manifest.get("warning")
        if warning is not None and not isinstance(warning, str):
            raise ValueError("warning is not a line of text")
    except Exception as err:  # noqa: BLE001 - whatever is wrong with the entry, quantizing again is the answer
        logger.info("quantized weights: cache entry %s unusable (%s: %s); removed, quantizing again", where,
                    type(err).__name__, err)
        shutil.rmtree(where, ignore_errors=True)
        return None
    for root, new in built.items():  # nothing above touched the model; from here nothing can fail halfway
        io.swap_in(modules[root], new)
    logger.info("quantized weights: loaded from cache %s", where)
    if warning:
        logger.warning(warning)
    return Checked(record, warning)


def _under(tensors: dict[str, Any], root: str) -> dict[str, Any]:
    """One root's tensors (saved as "<root>/<layer>.<buffer>") under their names in that root."""
    return {k[len(root) + 1:]: t for k, t in tensors.items() if k.startswith(root + "/")}


def _save(roots: list[tuple[str, nn.Module]], where: Path, checked: Checked) -> None:
    """Write the entry into a temporary directory, then rename it into place: a reader sees all of it or none."""
    try:
        from .._compat import require

        st = require("safetensors.torch", purpose="the quantized-weights cache")
        seen: set[int] = set()
        parts: dict[str, Any] = {}
        tensors = {}
        for root, module in roots:
            part, found = io.quantized_state(module, seen)
            if part["layers"] or part["embeddings"]:
                parts[root] = part
                tensors.update({f"{root}/{k}": t for k, t in found.items()})
    except (InvalidRequestError, ValueError, RuntimeError) as err:  # a library's layers: nothing portable to keep
        logger.info("quantized weights: not cached (%s)", err)
        return
    tmp: Path | None = None
    try:
        where.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{where.name}.", dir=where.parent))
        st.save_file(tensors, str(tmp / WEIGHTS), metadata={"format": "videollm-quant-cache"})
        manifest = {"format_version": io.FORMAT_VERSION, "roots": parts,
                    "quantization": asdict(checked.quantization), "warning": checked.warning}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        if where.exists():  # another process saved the same entry first
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.replace(tmp, where)
        logger.info("quantized weights: saved to cache %s", where)
    except OSError as err:  # a read-only or full disk: the model is quantized, only the saving failed
        logger.info("quantized weights: could not save to cache %s (%s)", where, err)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
