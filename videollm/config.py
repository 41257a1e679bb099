"""One dataclass config tree for the whole pipeline, and the one way it is checked.

`PipelineConfig` nests `SamplingConfig` and `GenerationConfig`; the compressor's and the reasoning mode's
options are typed through their own dataclasses (`compressor_config()`, `reasoning_config()`).
`validate()` checks every name and value that needs no model (model, compressor, mode, quant schemes,
dtype, option names and types, budget) and raises `InvalidRequestError`/`UnknownNameError`, so a typo
costs milliseconds, never a model load. `fingerprint()` is what an eval run must match to resume.
"""
from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, TypeVar

from .device import DTYPE_NAMES
from .errors import InvalidRequestError, UnknownNameError
from .hub import DEFAULT_MODEL  # noqa: F401 - re-exported: the default lives where it is resolved
from .runtime.generation import GenerationConfig
from .video.sampling import SamplingConfig

#: fields that do not change predictions (where and how fast a run goes), left out of the fingerprint
RUNTIME_FIELDS = ("device", "video_backend")

D = TypeVar("D")


@dataclass
class PipelineConfig:
    model: str = DEFAULT_MODEL  # preset name, hub id or local path
    compressor: str = "uniform"
    #: the compressor's options: its `config_class` instance, or a dict of that dataclass's fields
    compressor_options: Any = field(default_factory=dict)
    budget: int | None = None  # max visual tokens handed to the LLM
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    reasoning: str = "direct"
    #: the mode's options: a `ReasoningConfig`, or a dict of its fields
    reasoning_options: Any = field(default_factory=dict)
    answer_format: str = "free"  # "free" (generate, lmms-eval parity) | "choice" (always an option letter)
    quant: str = "none"  # LLM weights: none | int8 | int4 | int2 | ternary
    vision_quant: str = "none"  # vision encoder weights, same choices
    quant_group_size: int = 128  # input columns per scale; 0 = one scale per output row
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

    # ---- typed views of the per-component options ---------------------------------------------------
    def compressor_config(self) -> Any:
        """The compressor's own config dataclass, option names and values checked."""
        from videollm.compressors import COMPRESSORS

        cls = COMPRESSORS.get(self.compressor)
        if dataclasses.is_dataclass(self.compressor_options):
            if not isinstance(self.compressor_options, cls.config_class):
                raise InvalidRequestError(f"compressor {self.compressor!r} takes a {cls.config_class.__name__}, "
                                          f"not a {type(self.compressor_options).__name__}")
            return cls.make_config(self.compressor_options)
        return cls.make_config(None, **self.compressor_options)

    def reasoning_config(self) -> Any:
        from .answer.reasoning import ReasoningOptions

        opts = self.reasoning_options
        if isinstance(opts, ReasoningOptions):
            opts.validate()
            return opts
        return ReasoningOptions.from_kwargs(**opts)

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
            raise InvalidRequestError(f"quant group size must be a whole number >= 0 (0 = one scale per row), got {g}")
        check_device(self.device)
        if self.dtype not in DTYPE_NAMES:
            raise InvalidRequestError(f"unknown dtype {self.dtype!r}; choose from {', '.join(DTYPE_NAMES)}")
        from .cpu_speed import check_cpu_int8

        check_cpu_int8(self.cpu_int8, self.device, self.dtype, self.quant, self.vision_quant)
        if self.video_backend != "auto":
            from .video.decoders import DECODERS

            DECODERS.get(self.video_backend)
        check_budget(self.budget)
        from .backbones import declared_max_context

        ctx = declared_max_context(self.model)
        if self.budget is not None and ctx is not None and self.budget >= ctx:
            raise InvalidRequestError(f"a budget of {self.budget} visual tokens cannot fit {self.model}'s context "
                                      f"of {ctx} tokens; lower --budget")
        self.sampling.validate()
        validate_generation(self.generation)
        self.reasoning_config()
        if self.compressor_weights is not None:
            from videollm.compressors.base import WeightedCompressor

            name, _ = WeightedCompressor.read_pretrained_config(self.compressor_weights)
            if name != self.compressor:
                raise InvalidRequestError(f"{self.compressor_weights} holds a {name!r} compressor, "
                                          f"not {self.compressor!r}")
        self.compressor_config()
        return self

    def fingerprint(self) -> dict[str, Any]:
        """The settings that change predictions (all but `RUNTIME_FIELDS`), JSON-ready: a resumed eval
        run must match them. Derived from the dataclass fields, so a new field is covered by default."""
        d = self.to_dict()
        for k in RUNTIME_FIELDS:
            d.pop(k, None)
        d["compressor_options"] = non_defaults(self.compressor_config())  # canonical: typed, defaults dropped
        d["reasoning_options"] = _jsonable(non_defaults(self.reasoning_config()))
        d["max_new_tokens"] = self.generation.max_new_tokens  # the key runs recorded before the config tree
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


def non_defaults(cfg: Any) -> dict[str, Any]:
    """The fields of dataclass `cfg` that differ from their defaults: `{}` and an explicit default agree."""
    default = type(cfg)()
    return {f.name: getattr(cfg, f.name) for f in fields(cfg) if getattr(cfg, f.name) != getattr(default, f.name)}


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


def check_budget(budget: int | None) -> None:
    from videollm.compressors.base import MAX_BUDGET

    if budget is None:
        return
    if isinstance(budget, bool) or not isinstance(budget, int) or not 1 <= budget <= MAX_BUDGET:
        raise InvalidRequestError(f"budget must be an integer between 1 and {MAX_BUDGET} visual tokens, got {budget}")


def validate_generation(g: GenerationConfig) -> None:
    if int(g.max_new_tokens) < 1:
        raise InvalidRequestError(f"max new tokens must be >= 1, got {g.max_new_tokens}")
    if float(g.temperature) < 0 or not 0 < float(g.top_p) <= 1:
        raise InvalidRequestError(f"temperature must be >= 0 and top_p in (0, 1], got {g.temperature}, {g.top_p}")
    if float(g.repetition_penalty) <= 0:
        raise InvalidRequestError(f"repetition penalty must be > 0, got {g.repetition_penalty}")


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}
