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

A one-shot job (`videollm ask`) wants the opposite: `keep_large_buffers()` serves large blocks from the heap and
keeps freed ones for reuse. With glibc's defaults every large activation buffer of the CPU vision tower is a
fresh mmap, and zeroing its pages cost more than the convolutions: videollm-mini's vision stage took 5.1 s CPU
for 32 frames, 2.1 s with the buffers kept (bench/RESULTS.md, "Large buffers kept"), at ~400 MB more peak RSS.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

from .._compat import switched_off

logger = logging.getLogger(__name__)

ENV = "VIDEOLLM_SERVE_ARENAS"
DEFAULT_ARENAS = 2
_M_ARENA_MAX = -8  # glibc's mallopt parameter numbers (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
KEEP_ENV = "VIDEOLLM_KEEP_BUFFERS"
#: blocks below this come from the heap, and this much free heap top stays mapped (glibc's own cap: 32 MiB
#: for the mmap threshold on 64-bit unless set explicitly, as here)
KEEP_BYTES = 1 << 30


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


def keep_large_buffers(limit: int = KEEP_BYTES) -> bool:
    """Serve blocks below `limit` from the heap and keep up to `limit` of freed heap mapped for reuse; True if
    applied (glibc only). For one-shot CPU jobs: a long-running server keeps `cap_arenas` and `trim_heap`.
    `VIDEOLLM_KEEP_BUFFERS=0`, or glibc's own `MALLOC_MMAP_THRESHOLD_` / `MALLOC_TRIM_THRESHOLD_` in the
    environment, leaves glibc's defaults."""
    if switched_off(KEEP_ENV):
        return False
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False
    libc = _libc()
    if libc is None:
        return False
    ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, limit)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, limit))
    if ok:
        logger.debug("large buffers kept for reuse (mmap and trim thresholds %d bytes)", limit)
    return ok
