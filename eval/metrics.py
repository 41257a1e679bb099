"""Scores and breakdowns from prediction records: pure functions over plain dicts.

Conventions (the same for every task, stated in the summary so nobody has to guess):
- a question whose video is missing or fails to decode counts as answered wrongly, and the number of
  such questions is reported next to the score (`accuracy_answered` leaves them out);
- accuracies are percentages; lmms-eval logs LVBench as a fraction, the summary records that scale;
- MLVU's headline `m-avg` is lmms-eval's (>= v0.3.2): the unweighted mean over the 7 task types, a type
  with no questions (e.g. under --limit) counting as 0; `micro` is the pooled accuracy used before.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from .tasks.mlvu import TASK_TYPES as MLVU_TASK_TYPES

#: metric name -> where it comes from, recorded in the summary
METRIC_VERSIONS = {
    "accuracy": "micro accuracy over all questions (lmms-eval videomme_perception_score / lvbench_score)",
    "m-avg": "mean of the 7 per-task accuracies (lmms-eval mlvu_dev since v0.3.2, commit 13d139ac, 2025-02-27)",
    "micro": "pooled accuracy over all questions (lmms-eval mlvu before v0.3.2)",
}


def _pct(num: float, den: float) -> float:
    return 100.0 * num / den if den else 0.0


def _mean(values: Iterable[float | None]) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def breakdown(records: Sequence[dict[str, Any]], field: str) -> dict[str, dict[str, float]]:
    """Accuracy per value of `field`; a list-valued field (LVBench's question_type) counts toward each value."""
    acc: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in records:
        values = r.get(field)
        for v in values if isinstance(values, list) else [values]:
            if v is None or v == "":
                continue
            acc[str(v)][0] += 1
            acc[str(v)][1] += int(bool(r.get("correct")))
    return {k: {"n": n, "correct": c, "accuracy": _pct(c, n)} for k, (n, c) in sorted(acc.items())}


def mlvu_m_avg(records: Sequence[dict[str, Any]], task_types: Sequence[str] = MLVU_TASK_TYPES) -> float:
    per = breakdown(records, "task_type")
    return sum(per.get(t, {"accuracy": 0.0})["accuracy"] for t in task_types) / len(task_types)


def compute_metric(name: str, records: Sequence[dict[str, Any]]) -> float:
    if name in ("accuracy", "micro"):
        return _pct(sum(bool(r.get("correct")) for r in records), len(records))
    if name == "m-avg":
        return mlvu_m_avg(records)
    raise ValueError(f"unknown metric {name!r}")


def summarize(records: Sequence[dict[str, Any]], metric: str, breakdown_fields: Iterable[str]) -> dict[str, Any]:
    """Headline score, both accuracies, error counts, breakdowns and the token/reasoning statistics."""
    n = len(records)
    failed = [r for r in records if r.get("error")]
    ok = [r for r in records if not r.get("error")]
    correct = sum(bool(r.get("correct")) for r in records)
    out: dict[str, Any] = {
        "metric": metric,
        "metric_version": METRIC_VERSIONS.get(metric, metric),
        "score": compute_metric(metric, records) if n else 0.0,
        "n": n,
        "answered": len(ok),
        "errors": len(failed),
        "correct": correct,
        "accuracy": _pct(correct, n),
        "accuracy_answered": _pct(correct, len(ok)),
        "no_choice": sum(1 for r in ok if not r.get("choice")),
        "error_videos": sorted({str(r.get("video")) for r in failed}),
        "error_messages": _error_counts(failed),
        "breakdowns": {f: breakdown(records, f) for f in breakdown_fields},
        "visual_tokens_mean": _mean(r.get("visual_tokens") for r in ok),
        "tokens_per_frame_mean": _mean(r.get("tokens_per_frame") for r in ok),
        "generated_tokens_mean": _mean(r.get("generated_tokens") for r in ok),
        "thinking_rate": _mean(float(bool(r.get("thinking_fired"))) for r in ok) if ok else None,
        "confidence_mean": _mean(r.get("confidence") for r in ok),
        "seconds_mean": _mean(_wall(r.get("timings") or {}) for r in ok),
    }
    if metric in ("m-avg", "micro"):  # MLVU: report both, whichever is the headline
        out["m_avg"] = mlvu_m_avg(records)
        out["micro"] = compute_metric("micro", records)
    return out


def _error_counts(failed: Sequence[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for r in failed:
        counts[str(r["error"]).split(":", 1)[0]] += 1  # the exception type
    return dict(sorted(counts.items()))


def _wall(timings: dict[str, float]) -> float | None:
    """A prediction's wall time; records written before 0.2 only have the stages' sum as `total`."""
    return timings.get("wall", timings.get("total"))
