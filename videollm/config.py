"""One dataclass config tree for the whole pipeline, and the one way it is checked.

`PipelineConfig` nests `SamplingConfig` and `GenerationConfig`; the compressor's and the reasoning mode's
options are typed through their own dataclasses (`compressor_config()`, `reasoning_config()`).
`validate()` checks every name and value that needs no model (model, compressor, mode, quant schemes,
dtype, option names and types, budget) and raises `InvalidRequestError`/`UnknownNameError`, so a typo
costs milliseconds, never a model load. `fingerprint()` is what an eval run must match to resume.
"""
from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, TypeVar

from .budget import check_budget
from .device import DTYPE_NAMES
from .errors import InvalidRequestError, UnknownNameError
from .hub import DEFAULT_MODEL  # noqa: F401 - re-exported: the default lives where it is resolved
from .options import non_defaults
from .runtime.generation import GenerationConfig
from .video.sampling import SamplingConfig

if TYPE_CHECKING:
    from videollm.compressors.base import CompressorConfig

    from .answer.reasoning import ReasoningConfig

#: fields that do not change predictions (where and how fast a run goes), left out of the fingerprint
RUNTIME_FIELDS = ("device", "video_backend")

D = TypeVar("D")


@dataclass
class PipelineConfig:
    model: str = DEFAULT_MODEL  # preset name, hub id or local path
    compressor: str = "uniform"
    #: the compressor's options: its `config_class` instance, or a dict of that dataclass's fields (typed once by
    #: `compressor_config()`)
    compressor_options: CompressorConfig | dict[str, Any] = field(default_factory=dict)
    budget: int | None = None  # max visual tokens handed to the LLM
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    reasoning: str = "direct"
    #: the mode's options: a `ReasoningConfig`, or a dict of its fields (typed once by `reasoning_config()`)
    reasoning_options: ReasoningConfig | dict[str, Any] = field(default_factory=dict)
    answer_format: str = "free"  # "free" (generate, lmms-eval parity) | "choice" (always an option letter)
    quant: str = "none"  # LLM weights: none | int8 | int4 | int2 | ternary
    vision_quant: str = "none"  # vision encoder weights, same choices
    #: input columns per scale; 0 = one scale per output row; None = the model's preference
    #: (`SupportsQuantPreference`: videollm-mini's is 32, its weights' Q4_1 grid), else 128
    quant_group_size: int | None = None
    #: CPU int8 dynamic-activation quantization after loading: none | vision | llm | all (`cpu_speed.py`)
    cpu_int8: str = "none"
    device: str = "auto"
    dtype: str = "auto"
    video_backend: str = "auto"  # preferred decoder; the other one takes over when it fails
    strict_video: bool = False  # a truncated/damaged video is an error instead of a warned partial answer
    system_prompt: str | None = None
    compressor_weights: str | None = None  # a `save_pretrained` directory for compressors with weights

    def replace(self, **changes: Any) -> "PipelineConfig":
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    # ---- the per-component options, typed --------------------------------------------------------------
    # What the user gave stays in `compressor_options` / `reasoning_options` (a dict from the CLI, JSON or YAML,
    # or a config object), so `replace(compressor=...)` and `to_dict()` mean what they did; the typed config is
    # built and checked once from it and kept beside it until those fields change.
    def compressor_config(self) -> CompressorConfig:
        """The compressor's own config dataclass, built and checked once (`TokenCompressor.build_config`)."""
        from videollm.compressors import COMPRESSORS

        cls = COMPRESSORS.get(self.compressor)
        opts = self.compressor_options
        if dataclasses.is_dataclass(opts) and not isinstance(opts, cls.config_class):
            raise InvalidRequestError(f"compressor {self.compressor!r} takes a {cls.config_class.__name__}, "
                                      f"not a {type(opts).__name__}")
        return self._built("compressor", opts, lambda: cls.build_config(opts))

    def reasoning_config(self) -> ReasoningConfig:
        """The reasoning modes' `ReasoningConfig`, built and checked once (`ReasoningConfig.build`)."""
        from .answer.reasoning import ReasoningConfig

        opts = self.reasoning_options
        return self._built("reasoning", opts, lambda: ReasoningConfig.build(opts))

    def _built(self, name: str, given: object, build: Callable[[], D]) -> D:
        """`build()`'s config, kept until `given` (the user's options) or the compressor changes: a dict is not
        turned into a config again on every call."""
        key = (self.compressor, copy.deepcopy(given)) if isinstance(given, dict) else None
        slot = f"_built_{name}"
        cached = self.__dict__.get(slot)
        if key is not None and cached is not None and cached[0] == key:
            return cached[1]
        built = build()  # a config object already checked with its current values passes through as it is
        if key is not None:
            self.__dict__[slot] = (key, built)
        return built

    def answer_format_for(self, requested: str | None = None) -> str:
        """The answer format a call uses: the call's, else the reasoning options' "choice", else the config's."""
        if requested:
            return requested
        given = self.reasoning_config().answer_format
        return given if given != "free" else self.answer_format

    # ---- validation ---------------------------------------------------------------------------------
    def validate(self) -> "PipelineConfig":
        """Every check that needs no model; raises a `VideoLLMError` subclass. Returns self."""
        from videollm.compressors import COMPRESSORS

        from .answer.reasoning import MODES
        from .backbones import check_model_name
        from .quant.api import check_scheme_names

        check_model_name(self.model)
        if self.compressor not in COMPRESSORS:
            raise UnknownNameError(
                f"unknown compressor {self.compressor!r}; available: {', '.join(COMPRESSORS.names())}"
            )
        if self.reasoning not in MODES:
            raise UnknownNameError(f"unknown reasoning mode {self.reasoning!r}; available: {', '.join(MODES.names())}")
        check_scheme_names(self.quant, self.vision_quant)
        g = self.quant_group_size
        if g is not None and (isinstance(g, bool) or not isinstance(g, int) or g < 0):
            raise InvalidRequestError(f"quant group size (--quant-group-size) must be a whole number >= 0 "
                                      f"(0 = one scale per row), got {g}")
        check_device(self.device)
        if self.dtype not in DTYPE_NAMES:
            raise InvalidRequestError(f"unknown dtype {self.dtype!r}; choose from {', '.join(DTYPE_NAMES)}")
        from .cpu_speed import check_cpu_int8

        check_cpu_int8(self.cpu_int8, self.device, self.dtype, self.quant, self.vision_quant)
        if self.video_backend != "auto":
            from .video.decoders import DECODERS

            DECODERS.get(self.video_backend)
        from .backbones import declared_max_context

        check_budget(self.budget, declared_max_context(self.model))
        self.sampling.validate()
        self.generation.validate()
        self._build_options()
        return self

    def _build_options(self) -> None:
        """Build the typed compressor and reasoning configs from what the user gave (dicts from the CLI, JSON
        or YAML, or config objects) and check each once; what runs after reads those typed objects only
        (`compressor_config()`, `reasoning_config()`)."""
        if self.compressor_weights is not None:
            from videollm.compressors.base import WeightedCompressor

            name, _ = WeightedCompressor.read_pretrained_config(self.compressor_weights)
            if name != self.compressor:
                raise InvalidRequestError(f"{self.compressor_weights} holds a {name!r} compressor, "
                                          f"not {self.compressor!r}")
        self.reasoning_config()
        self.compressor_config()

    def fingerprint(self) -> dict[str, Any]:
        """The settings that change predictions (all but `RUNTIME_FIELDS`), JSON-ready: a resumed eval
        run must match them. Derived from the dataclass fields, so a new field is covered by default."""
        d = self.to_dict()
        for k in RUNTIME_FIELDS:
            d.pop(k, None)
        d["compressor_options"] = non_defaults(self.compressor_config())  # canonical: typed, defaults dropped
        d["reasoning_options"] = _jsonable(non_defaults(self.reasoning_config()))
        d["max_new_tokens"] = self.generation.max_new_tokens  # the key runs recorded before the config tree
        if self.quant == self.vision_quant == "none":  # no group to speak of: the value float runs always recorded
            d["quant_group_size"] = 128
        return d


def _checked_init(init: Any) -> Any:
    """`PipelineConfig(**fields)` refusing a name it does not have with a `VideoLLMError` (the dataclass's own
    `__init__` raises a bare TypeError), so `from_pretrained(..., bugdet=8)` names the typo and the fields."""
    import functools

    @functools.wraps(init)
    def checked(self: Any, *args: Any, **kwargs: Any) -> None:
        known = [f.name for f in fields(PipelineConfig)]
        unknown = sorted(set(kwargs) - set(known))
        if unknown:
            raise UnknownNameError(f"unknown config field(s) {', '.join(map(repr, unknown))}; known: "
                                   f"{', '.join(known)}")
        if len(args) > len(known):
            raise InvalidRequestError(f"PipelineConfig takes at most {len(known)} positional fields")
        init(self, *args, **kwargs)

    return checked


PipelineConfig.__init__ = _checked_init(PipelineConfig.__init__)  # type: ignore[method-assign]


def fingerprint_keys() -> tuple[str, ...]:
    """The keys `PipelineConfig.fingerprint()` holds (eval's resume check compares these)."""
    return (*(f.name for f in fields(PipelineConfig) if f.name not in RUNTIME_FIELDS), "max_new_tokens")


def check_device(device: str) -> None:
    """`auto`, `cpu`, `cuda[:N]` or `mps`, and only one this machine has: found here, not by a failing load."""
    import torch

    if not isinstance(device, str):
        raise InvalidRequestError(f"device must be a string such as 'cpu' or 'cuda', got {device!r}")
    if device == "auto":
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda", "mps"):
        raise InvalidRequestError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InvalidRequestError(f"device {device!r}: CUDA is not available on this machine (this torch "
                                      f"{'has no CUDA support' if torch.version.cuda is None else 'finds no GPU'}); "
                                      "use --device cpu or auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InvalidRequestError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA "
                                      "device(s)")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InvalidRequestError(f"device {device!r}: MPS is not available on this machine; use --device cpu")


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}
