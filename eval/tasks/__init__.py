"""Benchmark tasks by name: each reads its public files from a local folder and knows its scoring rules."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from videollm.errors import InvalidRequestError

from .base import RULE_ALIASES, TASKS, DatasetError, RuleSet, Sample, Task, register_task


def get_task(name: str) -> Task:
    return TASKS.get(name)()


def load_samples(task: Task, data_dir: str | Path, limit: int | None = None) -> list[Sample]:
    """The task's questions in file order (lmms-eval's `--limit` takes the first N), ids made unique."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InvalidRequestError(f"--limit must be a whole number >= 1 (the first N questions), got {limit!r}")
    samples = task.load(data_dir)
    seen: Counter[str] = Counter()
    for s in samples:
        seen[s.question_id] += 1
        if seen[s.question_id] > 1:  # a release with repeated ids must not make two questions one
            s.question_id = f"{s.question_id}#{seen[s.question_id]}"
    return samples[:limit] if limit is not None else samples


__all__ = [
    "RULE_ALIASES",
    "TASKS",
    "DatasetError",
    "RuleSet",
    "Sample",
    "Task",
    "get_task",
    "load_samples",
    "register_task",
]
