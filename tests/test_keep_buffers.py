"""`keep_large_buffers` (videollm/serve/memory.py): a one-shot job keeps freed large blocks mapped for reuse."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from videollm.serve import memory

needs_glibc = pytest.mark.skipif(memory._libc() is None, reason="glibc's mallopt only (Linux with glibc)")

#: allocates and frees a 256 MB block, then prints whether tuning applied and the resident MB after the free
PROBE = """
import ctypes, sys
from videollm.serve.memory import keep_large_buffers
applied = keep_large_buffers()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
p = libc.malloc(256 << 20)
ctypes.memset(p, 1, 256 << 20)  # touch every page
libc.free(p)
rss = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS")) // 1024
print(applied, rss)
"""


def _probe(**env: str) -> tuple[bool, int]:
    clean = {k: v for k, v in os.environ.items()
             if k not in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", memory.KEEP_ENV)}
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, check=True,
                         env={**clean, **env})
    applied, rss = out.stdout.split()
    return applied == "True", int(rss)


@needs_glibc
def test_freed_large_blocks_stay_mapped_for_reuse():
    kept, rss_kept = _probe()
    default, rss_default = _probe(**{memory.KEEP_ENV: "0"})
    assert kept and not default
    # glibc's default unmaps the freed 256 MB block; kept, it stays resident for the next large allocation
    assert rss_kept > rss_default + 200


@needs_glibc
def test_glibcs_own_settings_win():
    applied, _ = _probe(MALLOC_MMAP_THRESHOLD_="131072")
    assert not applied
