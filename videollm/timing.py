"""Per-stage wall-clock timing that nested code records into without plumbing a timer through."""
from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_ACTIVE: ContextVar["StageTimer | None"] = ContextVar("videollm_timer", default=None)
_LISTENER: ContextVar[Callable[[str], None] | None] = ContextVar("videollm_stage_listener", default=None)


class StageTimer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def activate(self) -> Iterator["StageTimer"]:
        token = _ACTIVE.set(self)
        try:
            yield self
        finally:
            _ACTIVE.reset(token)

    def as_dict(self, wall: float | None = None) -> dict[str, float]:
        """Seconds per stage, their sum as `stages_total`, and `wall`: the caller's own wall-clock time of the
        whole call. They differ by the work no stage covers (prompt building, Python overhead)."""
        out = {k: round(v, 6) for k, v in self.seconds.items()}
        out["stages_total"] = round(sum(self.seconds.values()), 6)
        if wall is not None:
            out["wall"] = round(wall, 6)
        return out


@contextmanager
def stage_listener(fn: Callable[[str], None]) -> Iterator[None]:
    """Call `fn(name)` as each stage starts in this context (the demo shows the stage a request is in)."""
    token = _LISTENER.set(fn)
    try:
        yield
    finally:
        _LISTENER.reset(token)


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Add the time spent inside to `name` on the active timer (no-op without one). Synchronises CUDA."""
    listener = _LISTENER.get()
    if listener is not None:
        listener(name)
    timer = _ACTIVE.get()
    if timer is None:
        yield
        return
    _sync()
    start = time.perf_counter()
    try:
        yield
    finally:
        _sync()
        timer.seconds[name] += time.perf_counter() - start


def _sync() -> None:
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
