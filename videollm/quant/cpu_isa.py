"""Which CPU instruction-set level the C kernels are built for: detection, the `VIDEOLLM_CPU_ISA` switch and
each level's compiler flags. No torch import, so the CLI checks the switch before anything heavy loads."""
from __future__ import annotations

import os
import platform
from functools import lru_cache
from pathlib import Path

from ..errors import InvalidRequestError

#: instruction-set levels, best first; "scalar" builds for the compiler's baseline target (float path only)
LEVELS = ("avx512vnni", "avxvnni", "avx2", "neon", "scalar")
#: the environment variable that forces a (lower) level
ISA_ENV = "VIDEOLLM_CPU_ISA"
_X86_FLAGS = {
    "avx512vnni": ("-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni", "-mavx2", "-mfma", "-mf16c"),
    "avxvnni": ("-mavx2", "-mfma", "-mf16c", "-mavxvnni"),
    "avx2": ("-mavx2", "-mfma", "-mf16c"),
}
#: /proc/cpuinfo flags each x86 level needs
_X86_NEEDS = {
    "avx512vnni": {"avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx2", "fma", "f16c"},
    "avxvnni": {"avx_vnni", "avx2", "fma", "f16c"},
    "avx2": {"avx2", "fma", "f16c"},
}


def cpu_features() -> frozenset[str]:
    """The CPU's feature flags as Linux reports them (x86 `flags`, ARM `Features`); empty elsewhere."""
    return _cpuinfo_flags()


@lru_cache(maxsize=1)
def _cpuinfo_flags() -> frozenset[str]:
    """Read once: the decode step asks for the level on every op call."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def _is_arm() -> bool:
    return platform.machine().lower() in ("aarch64", "arm64")


def runnable_levels() -> tuple[str, ...]:
    """The levels this CPU executes, best first (always ending with "scalar")."""
    if _is_arm():
        return ("neon", "scalar")  # Advanced SIMD is part of every AArch64 CPU
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return ("scalar",)
    feats = cpu_features()
    return tuple(lv for lv, need in _X86_NEEDS.items() if need <= feats) + ("scalar",)


def level_flags(level: str, features: frozenset[str] | None = None) -> tuple[str, ...]:
    """Compiler flags of a level (NEON adds the dot-product extension where the CPU reports it)."""
    if level in _X86_FLAGS:
        return _X86_FLAGS[level]
    if level == "neon":
        feats = cpu_features() if features is None else features
        return ("-march=armv8.2-a+dotprod",) if "asimddp" in feats else ()
    return ()


def requested_level() -> str:
    """The best runnable level, or the one `VIDEOLLM_CPU_ISA` names; a level this CPU cannot run, or an
    unknown name, is a user error (found before any model loads: the CLI checks it first)."""
    return _level_for(os.environ.get(ISA_ENV, "").strip().lower())


@lru_cache(maxsize=16)
def _level_for(want: str) -> str:
    """Cached per value of the switch: the decode step asks on every op call."""
    runnable = runnable_levels()
    if not want:
        return runnable[0]
    if want not in LEVELS:
        raise InvalidRequestError(f"{ISA_ENV}={want!r} is not a level; choose one of {', '.join(LEVELS)}")
    if want not in runnable:
        raise InvalidRequestError(f"{ISA_ENV}={want}: this CPU cannot run that level; it runs "
                                  f"{', '.join(runnable)}")
    return want


__all__ = ["ISA_ENV", "LEVELS", "cpu_features", "level_flags", "requested_level", "runnable_levels"]
