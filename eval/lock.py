"""One writer per run directory: an exclusive OS file lock per output file, naming its holder.

A single-process run locks `RUN_DIR/writer.lock`; rank r of w locks `RUN_DIR/shards/rankRRR-of-WWW.lock`, next
to the shard file it alone appends to. A run also refuses while a run with a different number of processes
holds any lock in the directory (their shares of the questions overlap). The locks are `flock`s: the kernel
drops them when the process ends, however it ends (SIGKILL, OOM, power loss of a node), so a lock file left
behind after a crash is no obstacle; the file only says who took it last. All checks and the taking of one's
own lock happen under a short gate lock, so two runs starting at the same instant cannot both pass.

Not covered: filesystems where `flock` is not shared between hosts (some network filesystems); there two
hosts can both take the "same" lock.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from videollm.errors import VideoLLMError

from .sharding import SHARD_DIR, Shard

logger = logging.getLogger(__name__)

LOCK_FILE = "writer.lock"
GATE_FILE = ".gate.lock"
_RANK_LOCK = re.compile(r"rank(\d+)-of-(\d+)\.lock$")

#: lock files this process holds (resolved path -> fd): taking one again in the same process is a no-op, so
#: the CLI can lock before loading a model and `run()` can lock for library callers
_held: dict[Path, int] = {}


class RunLockedError(VideoLLMError):
    """Another process is writing the run directory (or its share of it)."""


@dataclass
class Holder:
    pid: int
    host: str
    started: str
    rank: int = 0
    world: int = 1
    command: str = ""

    def describe(self) -> str:
        who = f"pid {self.pid} on {self.host}, started {self.started}"
        return who + (f", rank {self.rank} of {self.world}" if self.world > 1 else "")


def lock_path(run_dir: Path, shard: Shard) -> Path:
    if shard.world == 1:
        return run_dir / LOCK_FILE
    return run_dir / SHARD_DIR / f"rank{shard.rank:03d}-of-{shard.world:03d}.lock"


def read_holder(path: Path) -> Holder | None:
    """Who took the lock last (the live holder while it is held); None when the file says nothing usable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8") or "null")
        return Holder(**data) if isinstance(data, dict) else None
    except (OSError, ValueError, TypeError):
        return None


@contextmanager
def writer_lock(run_dir: str | Path, shard: Shard | None = None, wait: bool = False,
                poll_s: float = 0.5) -> Iterator[Path]:
    """Hold this process's writer lock on `run_dir` (its shard's, when sharded) for the block.

    Refuses with `RunLockedError` naming the holder, or with `wait=True` polls until the holder is gone.
    With a process group every rank learns whether all took their lock, so none is left waiting at a barrier.
    """
    shard = shard or Shard()
    run_dir = Path(run_dir)
    path = lock_path(run_dir, shard)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        from .store import RunWriteError

        raise RunWriteError(None, path.parent, err, "nothing was written") from None
    key = path.resolve()
    if key in _held:
        yield path
        return
    try:
        fd, problem = _acquire(run_dir, path, shard, wait, poll_s)
    except OSError as err:  # cannot even create the lock file (disk full, read-only, permissions)
        from .store import RunWriteError

        raise RunWriteError("the lock file", path, err, "nothing was written") from None
    problem = _agree(shard, problem)
    if problem:
        if fd is not None:
            _release(fd)
        raise RunLockedError(problem)
    assert fd is not None
    _held[key] = fd
    try:
        yield path
    finally:
        _held.pop(key, None)
        _release(fd)


def _acquire(run_dir: Path, path: Path, shard: Shard, wait: bool, poll_s: float) -> tuple[int | None, str | None]:
    announced = False
    while True:
        with _gate(run_dir):
            fd, holder, held = _try_lock(path)
            if fd is not None:
                other = _other_world_holder(run_dir, shard)
                if other is None:
                    _write_holder(fd, shard)
                    return fd, None
                _release(fd)
                fd, (holder, held) = None, other
        who = holder.describe() if holder else "holder unknown"
        if not wait:
            return None, (f"{run_dir} is being written by another run ({who}; lock {held}); wait for it to end, "
                          "re-run with --wait, or pick another --output")
        if not announced:
            logger.warning("%s is being written by another run (%s); waiting (--wait)", run_dir, who)
            announced = True
        time.sleep(poll_s)


@contextmanager
def _gate(run_dir: Path) -> Iterator[None]:
    fd = os.open(run_dir / GATE_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the only descriptor drops the flock


def _try_lock(path: Path) -> tuple[int | None, Holder | None, Path]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None, read_holder(path), path
    return fd, None, path


def _other_world_holder(run_dir: Path, shard: Shard) -> tuple[Holder | None, Path] | None:
    """A live lock of a run split another way (single vs sharded, or another WORLD_SIZE), if any."""
    candidates = [run_dir / LOCK_FILE] + sorted((run_dir / SHARD_DIR).glob("rank*-of-*.lock"))
    for p in candidates:
        m = _RANK_LOCK.search(p.name)
        world = int(m.group(2)) if m else 1
        if world == shard.world or not p.exists():
            continue
        fd = os.open(p, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return read_holder(p), p
        finally:
            os.close(fd)
    return None


def _write_holder(fd: int, shard: Shard) -> None:
    h = Holder(os.getpid(), socket.gethostname(), time.strftime("%Y-%m-%d %H:%M:%S %Z"), shard.rank, shard.world,
               " ".join(sys.argv)[:300])
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(asdict(h)) + "\n").encode("utf-8"), 0)
    except OSError as err:  # a full disk: the lock holds all the same, only its label is missing
        logger.debug("could not label the lock file: %s", err)


def _release(fd: int) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _agree(shard: Shard, problem: str | None) -> str | None:
    """With a process group: the first rank's problem for all ranks, so they stop together."""
    if not shard.distributed:
        return problem
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return problem
    problems: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(problems, problem)
    first = next((p for p in problems if p), None)
    return problem or first
