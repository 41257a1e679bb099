"""Calibrating `auto`'s confidence threshold on an eval run: accuracy and thinking rate against τ.

The threshold is backbone-specific (VideoAuto-R1 uses 0.97 for its Qwen2.5-VL-7B and 0.98 for Qwen3-VL-8B),
so it is chosen from data. Run the evaluator once in `think` mode: each record then holds the initial answer,
its confidence and the reviewed answer, so any τ can be replayed exactly, with
prediction(τ) = initial_choice if confidence ≥ τ else choice. Records of an `auto` run that did not think
only know their initial answer; where a τ would have made them think, the sweep uses that answer and marks
the row inexact.
"""
from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from videollm.errors import VideoLLMError

logger = logging.getLogger(__name__)

DEFAULT_THRESHOLDS = (0.0, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.999, 1.0)


class CalibrationError(VideoLLMError):
    """The predictions cannot be calibrated (missing file, no usable records)."""


@dataclass
class SweepRow:
    threshold: float
    accuracy: float  # over scored records (no error, ground truth known)
    thinking_rate: float  # share of scored records whose confidence is below τ (or missing)
    correct: int
    scored: int
    inexact: int  # records whose reviewed answer τ asks for was never generated (auto runs)


@dataclass
class SweepReport:
    rows: list[SweepRow]
    records: int  # lines read
    errors: int  # records with an error, left out
    unscored: int  # records without a ground-truth answer, left out
    no_confidence: int  # scored records without a confidence (deferral, no box): they always think
    direct_accuracy: float  # initial answers only (never think)
    think_accuracy: float  # reviewed answers where there are any (always think)
    best: SweepRow | None  # highest accuracy, then the lowest thinking rate

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _letter(value: Any) -> str | None:
    if value is None:
        return None
    s = str(value).strip().upper()
    return s or None


def load_predictions(path: str | Path) -> list[dict[str, Any]]:
    """Records of RUN_DIR/predictions.jsonl (or a .jsonl path); a torn last line (killed run) is skipped."""
    p = Path(path)
    if p.is_dir():
        p = p / "predictions.jsonl"
    if not p.is_file():
        raise CalibrationError(f"no predictions file at {p}")
    lines = p.read_text(encoding="utf-8", errors="replace").splitlines()
    records: list[dict[str, Any]] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            if n == len(lines):
                logger.warning("skipping a torn last line in %s", p)
                continue
            raise CalibrationError(f"{p}:{n} is not JSON ({err.msg})") from err
        if isinstance(rec, dict):
            records.append(rec)
    return records


def prediction_at(record: dict[str, Any], threshold: float) -> tuple[str | None, bool, bool]:
    """(predicted letter, thinks, exact) of one record replayed at `threshold`."""
    conf = record.get("confidence")
    initial = _letter(record.get("initial_choice"))
    final = _letter(record.get("choice"))
    thinks = conf is None or float(conf) < threshold
    if not thinks:
        return initial, False, True
    if record.get("thinking_fired", True) is False:
        return final if final is not None else initial, True, False
    return final, True, True


def sweep(records: Iterable[dict[str, Any]], thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> SweepReport:
    recs = list(records)
    errors = [r for r in recs if r.get("error")]
    usable = [r for r in recs if not r.get("error")]
    scored = [r for r in usable if _letter(r.get("answer")) is not None]
    rows: list[SweepRow] = []
    for t in sorted({float(x) for x in thresholds}):
        correct = thinking = inexact = 0
        for r in scored:
            pred, thinks, exact = prediction_at(r, t)
            correct += pred is not None and pred == _letter(r.get("answer"))
            thinking += thinks
            inexact += not exact
        n = max(len(scored), 1)
        rows.append(SweepRow(t, correct / n, thinking / n, correct, len(scored), inexact))
    n = max(len(scored), 1)
    direct = sum(_letter(r.get("initial_choice")) == _letter(r.get("answer")) for r in scored) / n
    think = sum((_letter(r.get("choice")) if r.get("thinking_fired") else _letter(r.get("initial_choice")))
                == _letter(r.get("answer")) for r in scored) / n
    best = max(rows, key=lambda row: (round(row.accuracy, 12), -row.thinking_rate), default=None) if scored else None
    return SweepReport(rows=rows, records=len(recs), errors=len(errors), unscored=len(usable) - len(scored),
                       no_confidence=sum(r.get("confidence") is None for r in scored), direct_accuracy=direct,
                       think_accuracy=think, best=best)


def format_report(report: SweepReport) -> str:
    lines = [f"{'threshold':>9}  {'accuracy':>8}  {'thinking':>8}  {'correct':>9}  note",
             "-" * 52]
    for row in report.rows:
        note = f"{row.inexact} inexact" if row.inexact else ""
        if report.best is not None and row is report.best:
            note = (note + " best").strip()
        lines.append(f"{row.threshold:>9.3f}  {row.accuracy:>8.1%}  {row.thinking_rate:>8.1%}  "
                     f"{row.correct:>4}/{row.scored:<4}  {note}")
    lines.append("")
    lines.append(f"{report.records} records; {report.errors} with errors and {report.unscored} without ground truth "
                 f"left out; {report.no_confidence} without confidence (always think)")
    lines.append(f"never think (initial answers): {report.direct_accuracy:.1%}; "
                 f"always think (reviewed answers): {report.think_accuracy:.1%}")
    if any(r.inexact for r in report.rows):
        lines.append("inexact rows: an auto run never produced the reviewed answer there; run eval with "
                     "--reasoning think for an exact sweep")
    return "\n".join(lines)


# ---- CLI ----------------------------------------------------------------------------------------------
def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate", help="accuracy and thinking rate against the auto confidence threshold",
                       description="Replay an eval run (best made with --reasoning think) at several confidence "
                                   "thresholds and report accuracy and thinking rate for each.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="eval run folder holding predictions.jsonl (or the file)")
    p.add_argument("--thresholds", type=float, nargs="+", default=list(DEFAULT_THRESHOLDS), metavar="T")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_calibrate)


def cmd_calibrate(args: argparse.Namespace) -> int:
    bad = [t for t in args.thresholds if not 0.0 <= t <= 1.0]
    if bad:
        raise CalibrationError(f"thresholds must be in [0, 1], got {bad}")
    records = load_predictions(args.run_dir)
    report = sweep(records, args.thresholds)
    if report.best is None:
        raise CalibrationError(f"no scorable records in {args.run_dir} ({report.records} read, "
                               f"{report.errors} with errors, {report.unscored} without ground truth)")
    if args.json:
        print(json.dumps(report.to_dict()))
    else:
        print(format_report(report))
    return 0
