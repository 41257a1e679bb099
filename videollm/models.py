"""A process-wide cache of loaded models, so each is loaded (and quantized) once and shared.

The pipeline gets its backbone here; a compressor that needs a second model (Tempo's small VLM, LongVU's
DINOv2) asks `get_model(name, ...)` and gets the instance already loaded by anyone in the process (the
pipeline, the demo, eval) or loads it once. A key is the name plus device, dtype, quantization and any loader
options, so a float and an int4 copy of one model are two entries.

    get_model("tiny-random", device="cpu", quant="int8")        # a backbone, by preset / hub id / path
    get_model("dinov2:vit_small_patch14_dinov2", pretrained=False)  # a family, by its "prefix:" loader
    get_model_like("tiny-random", backbone)                      # loaded as `backbone` was (Tempo's SVLM)

Quantization happens here and nowhere else on the way to an answer: the loader loads, then quantizes
(`--quant` / `--vision-quant`, with the small-model agreement check) and applies `--cpu-int8`. What it did is a
`LoadReport` kept next to the model (`load_report(model)`), never attributes written onto the model. A model
built elsewhere that owns quantizable modules (a compressor's trained encoder) goes through the same path with
`prepare_model`.

`MODEL_LOADERS` maps a name (or a "prefix:" for families) to a loader `(name, device, dtype, **options)`;
names it does not hold load as backbones (`load_backbone`).

The quantization group and LM head scheme, when not given (`group_size` / `head` left out or None), are the
model's own (`SupportsQuantPreference`: videollm-mini's Q4_1 source grid is group 32), else 128 and "auto". The
key holds what was asked; once loaded, the entry is also kept under the resolved values, so asking for them
explicitly shares it.
"""
from __future__ import annotations

import json
import logging
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .registry import Registry

if TYPE_CHECKING:
    from .quant.api import BackboneQuantization

logger = logging.getLogger(__name__)

Loader = Callable[..., Any]
#: name or "prefix:" → loader(name, device=..., dtype=..., **options); lazy "module:function" entries, so the
#: cache imports a family's code only when one of its models is asked for
MODEL_LOADERS: Registry[Loader] = Registry("model loader")
MODEL_LOADERS.register("dinov2:", "videollm.encoders:load_dinov2")  # LongVU's frame dedup encoder, via timm

#: options the cache's loader consumes itself (they change the model, so they are part of the key)
LOAD_OPTIONS = ("group_size", "head", "cpu_int8")


@dataclass
class LoadReport:
    """What loading did to a model: asked for (name, device, dtype, quantization, CPU int8) and done (the
    quantization record, the int8 layers, warnings every answer carries). Kept by the cache, read by the
    pipeline (`pipe.load_report`), the feature cache's key and whoever loads a second model like this one."""

    name: str
    device: str = "auto"
    dtype: str = "auto"
    quant: str = "none"  # as asked: "none", "int8" (LLM and tower), or "LLM+VISION"
    #: input columns per scale and the LM head's scheme; None until loading resolves them from the model's own
    #: preference (`SupportsQuantPreference`); then what quantization used
    group_size: int | None = None
    head: str | None = None
    cpu_int8: str = "none"  # as asked
    quantization: BackboneQuantization | None = None  # what `quantize_backbone` did
    cpu_int8_layers: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # what loading could not do as asked
    seconds: float = 0.0

    @property
    def cpu_int8_applied(self) -> str:
        return self.cpu_int8 if self.cpu_int8_layers else "none"

    def feature_tag(self) -> tuple[str, str]:
        """What makes one instance's outputs differ from a float copy's (part of the feature-cache key)."""
        return repr(self.quantization), self.cpu_int8_applied

    def settings(self) -> dict[str, Any]:
        """`get_model` arguments that load another model the same way (device, dtype, quantization, int8)."""
        out: dict[str, Any] = {"device": self.device, "dtype": self.dtype, "quant": self.quant}
        if self.quant != "none":
            out["group_size"], out["head"] = self.group_size, self.head
        if self.cpu_int8 != "none":
            out["cpu_int8"] = self.cpu_int8
        return out


@dataclass
class _Entry:
    model: object  # a backbone, a timm encoder, any loaded model
    report: LoadReport


_CACHE: dict[str, _Entry] = {}
_LOCK = threading.RLock()
_LOADS: dict[str, int] = {}  # key → how many times a loader ran (tests and `load_count`)
#: reports of models prepared outside the cache (a compressor's own modules), for as long as the model lives
_PREPARED: weakref.WeakKeyDictionary[Any, LoadReport] = weakref.WeakKeyDictionary()


def model_key(name: str, device: str = "auto", dtype: str = "auto", quant: str = "none", **options: Any) -> str:
    return json.dumps([name, str(device), str(dtype), str(quant), options], sort_keys=True, default=str)


def get_model(name: str, device: str = "auto", dtype: str = "auto", quant: str = "none",
              loader: Callable[[], Any] | None = None, **options: Any) -> Any:
    """The one loaded instance of `name` for these settings, loading (and quantizing) it on first use.

    `quant` is "none", one scheme for the LLM and the vision encoder ("int8"), or "LLM+VISION" ("int4+int8");
    `group_size`, `head` and `cpu_int8` options set the quantization group, the LM head's scheme and CPU int8
    parts (group and head left out or None: the model's preference). `loader`, when given, builds the float
    model (no arguments) the first time; otherwise `MODEL_LOADERS` or `load_backbone` does.
    """
    options = _asked(options)
    key = model_key(name, device, dtype, quant, **options)
    with _LOCK:
        entry = _CACHE.get(key)
        if entry is not None:
            return entry.model
        started = time.perf_counter()
        build_options = {k: v for k, v in options.items() if k not in LOAD_OPTIONS}
        model = (loader() if loader is not None
                 else _build(name, device, dtype, defer_cast=str(quant) != "none", **build_options))
        report = LoadReport(name=name, device=str(device), dtype=str(dtype), quant=str(quant),
                            group_size=options.get("group_size"), head=options.get("head"),
                            cpu_int8=str(options.get("cpu_int8", "none")))
        _finish(model, report)
        report.seconds = round(time.perf_counter() - started, 3)
        _CACHE[key] = _Entry(model, report)
        _LOADS[key] = _LOADS.get(key, 0) + 1
        if str(quant) != "none":  # asked for again with the group (and head) it resolved to: the same entry
            for resolved in ({**options, "group_size": report.group_size},
                             {**options, "group_size": report.group_size, "head": report.head}):
                _CACHE.setdefault(model_key(name, device, dtype, quant, **resolved), _CACHE[key])
        logger.info("model cache: loaded %s (device=%s dtype=%s quant=%s)", name, device, dtype, quant)
        return model


def _asked(options: dict[str, Any]) -> dict[str, Any]:
    """Loader options with an unset group size or head (None: the model's preference) left out of the key."""
    return {k: v for k, v in options.items() if not (k in ("group_size", "head") and v is None)}


def get_model_like(name: str, reference: Any, **options: Any) -> Any:
    """The cache's instance of `name` loaded the way `reference` was (device, dtype, quantization, CPU int8):
    a second model that must match the backbone, such as Tempo's small VLM. A `reference` the cache did not
    load lends its device and dtype only."""
    report = load_report(reference)
    if report is not None:
        settings = report.settings()
    else:
        settings = {"device": str(getattr(reference, "device", "auto")),
                    "dtype": str(getattr(reference, "dtype", "auto")).replace("torch.", "")}
    return get_model(name, **{**settings, **options})


def prepare_model(model: object, name: str | None = None, quant: str = "none", group_size: int | None = None,
                  cpu_int8: str = "none", head: str | None = None) -> LoadReport:
    """Quantize a model built outside the cache (a compressor's own trained modules, a benchmark's variant)
    through the loader's path, and keep its report for as long as the model lives (`load_report(model)`).
    `group_size` / `head` None: the model's preference (`SupportsQuantPreference`), else 128 and "auto"."""
    report = LoadReport(name=name or str(getattr(model, "name", type(model).__name__)), quant=quant,
                        group_size=group_size, head=head, cpu_int8=cpu_int8)
    _finish(model, report)
    with _LOCK:
        _PREPARED[model] = report
    return report


def load_report(model: object) -> LoadReport | None:
    """What loading did to `model`, if the cache loaded or prepared it; None for a model built elsewhere."""
    with _LOCK:
        for entry in _CACHE.values():
            if entry.model is model:
                return entry.report
        try:
            return _PREPARED.get(model)
        except TypeError:  # not weak-referenceable: never prepared
            return None


def register_model(name: str, model: object, device: str = "auto", dtype: str = "auto", quant: str = "none",
                   **options: Any) -> Any:
    """Put an already-loaded model in the cache (a backbone built by hand), so others asking get it."""
    options = _asked(options)
    report = LoadReport(name=name, device=str(device), dtype=str(dtype), quant=str(quant),
                        group_size=options.get("group_size"), head=options.get("head"))
    with _LOCK:
        _CACHE[model_key(name, device, dtype, quant, **options)] = _Entry(model, report)
    return model


def is_cached(name: str, device: str = "auto", dtype: str = "auto", quant: str = "none", **options: Any) -> bool:
    with _LOCK:
        return model_key(name, device, dtype, quant, **_asked(options)) in _CACHE


def cached_models() -> list[str]:
    with _LOCK:
        first = {id(e): k for k, e in reversed(_CACHE.items())}  # an entry kept under several keys is one model
        return [json.loads(k)[0] for k in first.values()][::-1]


def load_count(name: str, device: str = "auto", dtype: str = "auto", quant: str = "none", **options: Any) -> int:
    """How many times the cache loaded this entry (1 once loaded; 0 if only registered or never asked)."""
    return _LOADS.get(model_key(name, device, dtype, quant, **_asked(options)), 0)


def release_model(name: str, device: str = "auto", dtype: str = "auto", quant: str = "none", **options: Any) -> bool:
    """Forget one entry, under every key it is kept (the demo keeps two backbones at most); whether it was there."""
    key = model_key(name, device, dtype, quant, **_asked(options))
    with _LOCK:
        _LOADS.pop(key, None)
        entry = _CACHE.pop(key, None)
        for other in [k for k, e in _CACHE.items() if e is entry]:
            del _CACHE[other]
        return entry is not None


def clear_models(name: str | None = None) -> None:
    """Forget cached models (all, or those named `name`) so their memory can be freed."""
    with _LOCK:
        for key in [k for k in _CACHE if name is None or json.loads(k)[0] == name]:
            del _CACHE[key]
            _LOADS.pop(key, None)


def split_quant(quant: str) -> tuple[str, str]:
    """"int4+int8" → ("int4", "int8"); "int8" → ("int8", "int8"); "none" → ("none", "none")."""
    llm, _, vision = quant.partition("+")
    return llm, vision or llm


def join_quant(llm: str, vision: str) -> str:
    """The key form of a pair of schemes: "none" when both are, else "LLM+VISION"."""
    return "none" if llm == vision == "none" else f"{llm}+{vision}"


def _build(name: str, device: str, dtype: str, defer_cast: bool = False, **options: Any) -> Any:
    """The float model: a registered loader by name or "prefix:", else a backbone (`defer_cast`: it is about to
    be quantized; see `load_backbone`)."""
    prefix = name.split(":", 1)[0] + ":" if ":" in name else None
    if name in MODEL_LOADERS:
        return MODEL_LOADERS.get(name)(name, device=device, dtype=dtype, **options)
    if prefix is not None and prefix in MODEL_LOADERS:
        return MODEL_LOADERS.get(prefix)(name.split(":", 1)[1], device=device, dtype=dtype, **options)
    from .backbones import load_backbone

    return load_backbone(name, device=device, dtype=dtype, defer_cast=defer_cast, **options)


def _finish(model: object, report: LoadReport) -> None:
    """The one quantization path: the group size and head the user left unset taken from the model's
    preference, weight quantization (a language model's answers checked against its float self), then CPU
    int8; what was done goes into `report`."""
    from .protocols import quant_preference

    llm, vision = split_quant(report.quant)
    preferred = quant_preference(model, llm)
    report.group_size = preferred.group_size if report.group_size is None else report.group_size
    report.head = preferred.head if report.head is None else report.head
    if llm != "none" or vision != "none":
        from torch import nn

        from .protocols import LanguageModel, SupportsQuantization
        from .quant import config_for, quantize_, quantize_backbone

        if isinstance(model, LanguageModel):  # a backbone (refused with one line if it offers no modules)
            from .quant.weights_cache import quantize_cached  # small LLMs: one warning if answers change

            # quantize_checked, or its saved result for a model that fingerprints its float weights
            checked = quantize_cached(model, report.name, llm, vision, report.group_size, head=report.head)
            report.quantization = checked.quantization
            report.warnings += [checked.warning] if checked.warning else []
        elif isinstance(model, SupportsQuantization):  # a compressor's own modules, a second model's parts
            report.quantization = quantize_backbone(model, llm=llm, vision=vision, group_size=report.group_size,
                                                    head=report.head)
        elif isinstance(model, nn.Module) and (cfg := config_for(llm, report.group_size)) is not None:
            quantize_(model, cfg)  # a plain module: every linear layer, with the first scheme
    from .protocols import SupportsDeferredCast

    if isinstance(model, SupportsDeferredCast):  # built for quantization: what it did not replace is cast now
        model.finish_cast()
    if report.cpu_int8 != "none":
        from .cpu_speed import apply_cpu_int8

        done = apply_cpu_int8(model, report.cpu_int8)
        report.cpu_int8_layers, report.warnings = done.layers, report.warnings + done.warnings


__all__ = ["LOAD_OPTIONS", "MODEL_LOADERS", "LoadReport", "cached_models", "clear_models", "get_model",
           "get_model_like", "is_cached", "join_quant", "load_count", "load_report", "model_key", "prepare_model",
           "register_model", "release_model", "split_quant"]
