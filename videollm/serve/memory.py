"""Keep a long-running server's resident memory at its resting size (glibc malloc tuning; no-op elsewhere).

Why: under load the server's threads (event loop, prefetch, answer, torch's intra-op pool) each get a glibc
malloc arena, and the megabyte buffers of a request (base64 bodies, decoded frames, activations) land in the
arena heaps of whichever thread touched them. `malloc_trim(0)` gives back free pages inside the bins of every
arena but only shrinks the *top* of the main arena: the free top chunk of a thread arena stays resident (and
glibc's dynamic mmap threshold, raised by the first freed large block, routes later large blocks into those
heaps). Measured (bench/RESULTS.md, serve section): +19–21 % RSS after a 32-client pass with glibc's default
arenas, +1–3 % with at most 2, and no growth across passes. So `cap_arenas()` runs before the model loads
(before any worker thread allocates) and `trim_heap()` runs at the idle cache drop.

`MALLOC_ARENA_MAX` in the environment wins (glibc reads it itself); `VIDEOLLM_SERVE_ARENAS=0` leaves glibc's
default.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

logger = logging.getLogger(__name__)

ENV = "VIDEOLLM_SERVE_ARENAS"
DEFAULT_ARENAS = 2
_M_ARENA_MAX = -8  # glibc's mallopt parameter number (malloc.h)


def _libc() -> ctypes.CDLL | None:
    """glibc, or None on other platforms/C libraries (musl, macOS, Windows)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it (musl has no mallopt arenas)
        return libc
    except (OSError, AttributeError):
        return None


def arena_cap() -> int:
    """Arenas to allow: `VIDEOLLM_SERVE_ARENAS` (0 = glibc's default), else 2."""
    raw = os.environ.get(ENV, "").strip()
    try:
        return max(0, int(raw)) if raw else DEFAULT_ARENAS
    except ValueError:
        logger.warning("%s=%r is not an integer; using %d", ENV, raw, DEFAULT_ARENAS)
        return DEFAULT_ARENAS


def cap_arenas(n: int | None = None) -> bool:
    """Limit glibc to `n` malloc arenas (default `arena_cap()`); True if applied. Call before threads start."""
    n = arena_cap() if n is None else n
    if n <= 0 or "MALLOC_ARENA_MAX" in os.environ:
        return False
    libc = _libc()
    if libc is None:
        return False
    ok = bool(libc.mallopt(_M_ARENA_MAX, n))
    if ok:
        logger.debug("malloc arenas capped at %d", n)
    return ok


def trim_heap() -> bool:
    """Give freed heap pages back to the OS (`malloc_trim(0)`); True if glibc released any."""
    libc = _libc()
    if libc is None:
        return False
    return bool(libc.malloc_trim(0))
