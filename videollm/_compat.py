"""Environment guards and lazy imports of heavy optional dependencies."""
from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from pathlib import Path
from types import ModuleType

logger = logging.getLogger(__name__)

_TORCHVISION_PATCHED = False


def switched_off(name: str) -> bool:
    """Whether environment variable `name` turns an on-by-default behaviour off: 0, false, no or off (any case)."""
    return os.environ.get(name, "").strip().lower() in ("0", "false", "no", "off")


def cache_root() -> Path:
    """videollm's cache root: `$VIDEOLLM_CACHE`, else `$XDG_CACHE_HOME/videollm`, else `~/.cache/videollm` (built
    kernels, mini's converted weights and quantized layers each keep a folder under it)."""
    if os.environ.get("VIDEOLLM_CACHE"):
        return Path(os.environ["VIDEOLLM_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "videollm"


def ensure_torchvision_importable() -> None:
    """Make `import torchvision` survive a CPU torch beside a CUDA torchvision wheel.

    PyPI's only torchvision for some torch releases is a CUDA build whose compiled ops fail to load on a
    CPU torch; its import then dies registering fake kernels for ops that do not exist. timm, open_clip
    and transformers' image classes all import torchvision. We try to load its ops; if that fails we
    declare the two op schemas it needs so its pure-Python parts (transforms, models) import. Where
    torchvision's ops load normally (CUDA machines) this is a no-op.
    """
    global _TORCHVISION_PATCHED
    if _TORCHVISION_PATCHED:
        return
    _TORCHVISION_PATCHED = True
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return
    import torch

    try:
        if torch._C._dispatch_has_kernel_for_dispatch_key("torchvision::nms", "CPU") or _has_op("nms"):
            return
    except RuntimeError:
        pass
    lib_dir = Path(spec.origin).parent
    for so in sorted(lib_dir.glob("_C*.so")):
        try:
            torch.ops.load_library(str(so))
            if _has_op("nms"):
                return
        except (OSError, RuntimeError) as err:
            logger.debug("torchvision ops did not load (%s); declaring schemas only", err)
    try:
        lib = torch.library.Library("torchvision", "DEF")  # noqa: F841 - must stay alive
        for op in ("nms", "qnms"):
            if not _has_op(op):
                lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        globals()["_TORCHVISION_LIB"] = lib
    except RuntimeError as err:  # already defined by someone else
        logger.debug("torchvision schema declaration skipped: %s", err)


def _has_op(name: str) -> bool:
    import torch

    try:
        getattr(torch.ops.torchvision, name)
        return True
    except (AttributeError, RuntimeError):
        return False


def require(module: str, extra: str | None = None, purpose: str = "") -> ModuleType:
    """Import an optional dependency, or fail with the pip command that fixes it."""
    if module in {"timm", "open_clip", "transformers", "torchvision"}:
        ensure_torchvision_importable()
    try:
        return importlib.import_module(module)
    except ImportError as err:
        package = PIP_NAMES.get(module.split(".")[0], module.split(".")[0])
        what = f" (needed for {purpose})" if purpose else ""
        group = f"; it is part of videollm's '{extra}' extra" if extra else ""
        raise ImportError(f"{package} is not installed{what}; install it with: pip install {package}{group}") from err


#: import name → the name pip installs it under, where they differ
PIP_NAMES = {"optimum": "optimum-quanto", "open_clip": "open_clip_torch", "mamba_ssm": "mamba-ssm", "av": "av",
             "skvideo": "scikit-video", "decord": "decord"}


def offline_env_defaults() -> None:
    """Quiet the hub/telemetry lookups that can only fail on an offline machine."""
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def cache_kwargs(cache: object) -> dict[str, object]:
    """The KV-cache keyword a transformers decoder takes: `cache` from transformers 5.x on, `past_key_values`
    before. Passing the old name to a new release prints a deprecation warning on every answer."""
    return {_cache_name(): cache, "use_cache": True}


def output_cache(out: object) -> object:
    """The KV cache of a decoder's output, under whichever name this transformers release uses."""
    return getattr(out, "cache") if _cache_name() == "cache" else getattr(out, "past_key_values")


_CACHE_NAME: list[str] = []


def _cache_name() -> str:
    if not _CACHE_NAME:
        import inspect

        params = inspect.signature(_llama_forward()).parameters
        _CACHE_NAME.append("cache" if "cache" in params else "past_key_values")
    return _CACHE_NAME[0]


def _llama_forward() -> object:
    ensure_torchvision_importable()
    from transformers.models.llama.modeling_llama import LlamaModel

    return LlamaModel.forward
