"""Splitting a run across processes and merging their shards back, deterministically.

Each rank takes whole videos (so a video is decoded by one process), in round-robin order of their first
appearance, and writes its own shard file; nobody writes another rank's file. Merging reads every
prediction file in the run directory, keeps one record per question and orders them as the task lists
them, so the merged file is the same whatever the number of processes, their timing, or how many times
the run was interrupted. Merges are serialised by an advisory lock and are idempotent, so any rank may
merge at any time: the last one to finish leaves the complete file.

Ranks come from accelerate (`accelerate launch -m videollm eval ...`) when it started a process group,
else from the RANK / WORLD_SIZE environment variables (torchrun, SLURM wrappers, or by hand).
"""
from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .store import is_complete, scan_jsonl, write_jsonl_atomic

logger = logging.getLogger(__name__)

PREDICTIONS = "predictions.jsonl"
SHARD_DIR = "shards"


@dataclass(frozen=True)
class Shard:
    rank: int = 0
    world: int = 1
    distributed: bool = False  # a process group exists: ranks can wait for each other

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def detect_shard() -> Shard:
    """This process's rank. accelerate is asked only when a launcher set up a rendezvous (MASTER_ADDR)."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0)
    if world > 1 and os.environ.get("MASTER_ADDR"):
        try:
            from accelerate import PartialState
        except ImportError:
            logger.warning("accelerate is not installed; sharding by RANK/WORLD_SIZE without a process group")
        else:
            state = PartialState(cpu=not _has_cuda())
            return Shard(state.process_index, state.num_processes, distributed=state.num_processes > 1)
    if not 0 <= rank < max(world, 1):
        from videollm.errors import InvalidRequestError

        raise InvalidRequestError(f"RANK={rank} is outside WORLD_SIZE={world}")
    return Shard(rank, max(world, 1))


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def barrier(shard: Shard) -> None:
    if shard.distributed:
        from accelerate import PartialState

        PartialState().wait_for_everyone()


def assign(samples: Sequence[Any], shard: Shard) -> list[Any]:
    """This rank's questions: whole videos, dealt round-robin in order of first appearance."""
    if shard.world == 1:
        return list(samples)
    order: dict[str, int] = {}
    for s in samples:
        order.setdefault(s.video_path, len(order))
    return [s for s in samples if order[s.video_path] % shard.world == shard.rank]


def output_path(run_dir: Path, shard: Shard) -> Path:
    """Where this rank appends: the run's predictions.jsonl alone, or its own shard file."""
    if shard.world == 1:
        return run_dir / PREDICTIONS
    return run_dir / SHARD_DIR / f"rank{shard.rank:03d}-of-{shard.world:03d}.jsonl"


def prediction_files(run_dir: Path) -> list[Path]:
    files = [run_dir / PREDICTIONS] if (run_dir / PREDICTIONS).exists() else []
    return files + sorted((run_dir / SHARD_DIR).glob("*.jsonl"))


def collect(run_dir: Path, incomplete: set[str] | None = None) -> dict[str, dict[str, Any]]:
    """One complete record per question from every prediction file: a success beats an error, else the later one.

    Records missing a field the scorer needs, and torn lines, are left out; the ids of questions that have
    nothing better are added to `incomplete` when given.
    """
    best: dict[str, dict[str, Any]] = {}
    bad: set[str] = set()
    for path in prediction_files(run_dir):
        recs, damaged = scan_jsonl(path)
        bad.update(q for q in damaged if q is not None)
        for rec in recs:
            qid = str(rec["question_id"])
            if not is_complete(rec):
                bad.add(qid)
                continue
            old = best.get(qid)
            if old is None or not (rec.get("error") and not old.get("error")):
                best[qid] = rec
    if incomplete is not None:
        incomplete.update(bad - best.keys())
    return best


def ordered(records: dict[str, dict[str, Any]], order: Sequence[str] | None) -> list[dict[str, Any]]:
    """Records in the task's question order; ids the task no longer lists go last, sorted."""
    if order is None:
        return [records[k] for k in sorted(records)]
    rank = {qid: i for i, qid in enumerate(order)}
    return sorted(records.values(), key=lambda r: (rank.get(str(r["question_id"]), len(rank)), str(r["question_id"])))


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """An advisory lock on the run directory (released by the OS if the holder dies)."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir / ".merge.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        from .store import RunWriteError

        raise RunWriteError("the merge lock", run_dir / ".merge.lock", err) from None
    with open(fd, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def merge(run_dir: Path, order: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Rewrite predictions.jsonl as the deduplicated, ordered union of all files. Shards are kept."""
    with run_lock(run_dir):
        recs = ordered(collect(run_dir), order)
        write_jsonl_atomic(run_dir / PREDICTIONS, recs)
    return recs
