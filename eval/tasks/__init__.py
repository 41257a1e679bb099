"""Benchmark tasks by name: each reads its public files from a local folder and knows its scoring rules."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from .base import RULE_ALIASES, DatasetError, RuleSet, Sample, Task
from .lvbench import LVBench
from .mlvu import MLVU
from .needle import NeedleTask
from .videomme import VideoMME, VideoMMESubtitles

TASKS: dict[str, type[Task]] = {t.name: t for t in (VideoMME, VideoMMESubtitles, MLVU, LVBench, NeedleTask)}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise DatasetError(f"unknown task {name!r}; choose from {', '.join(TASKS)}")
    return TASKS[name]()


def load_samples(task: Task, data_dir: str | Path, limit: int | None = None) -> list[Sample]:
    """The task's questions in file order (lmms-eval's `--limit` takes the first N), ids made unique."""
    samples = task.load(data_dir)
    seen: Counter[str] = Counter()
    for s in samples:
        seen[s.question_id] += 1
        if seen[s.question_id] > 1:  # a release with repeated ids must not make two questions one
            s.question_id = f"{s.question_id}#{seen[s.question_id]}"
    return samples[:limit] if limit is not None and limit >= 0 else samples


__all__ = ["RULE_ALIASES", "TASKS", "DatasetError", "RuleSet", "Sample", "Task", "get_task", "load_samples"]
