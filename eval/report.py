"""Summaries, markdown tables and plots for one run or a comparison of several.

Scores are always recomputed from the raw outputs stored in the predictions, so a run can be re-scored
under older rules (`--rules legacy`) without running the model again, and the summary says which
extractor and metric produced each number.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .extract import extract_choice
from .metrics import summarize
from .runner import RUN_FILE, EvalError
from .sharding import PREDICTIONS, collect, ordered
from .store import RunWriteError, read_jsonl, write_atomic
from .tasks import RULE_ALIASES, get_task

logger = logging.getLogger(__name__)

LMMS_EVAL_REFERENCE = "EvolvingLMMs-Lab/lmms-eval @75571cfe (2026-08-06); current rules = v0.7.2+"
FINAL_ANSWER_RULE = ("answer candidates in order (last \\boxed{} after </think>, that text, a box inside the "
                     "thought, last box before <think>, that text, lmms-eval's tag-stripped text); the first one "
                     "the task's extractor reads a letter from")
DURATION_ORDER = ("short", "medium", "long")
REPORT_HINT = ("the predictions are intact; free some space and re-run the same command (or `videollm eval report "
               "RUN_DIR`) to write it again")


def load_run(run_dir: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The run's settings and its records (merged view of every prediction file, task order)."""
    d = Path(run_dir)
    meta = json.loads((d / RUN_FILE).read_text(encoding="utf-8")) if (d / RUN_FILE).exists() else {}
    if not (d / PREDICTIONS).exists() and not (d / "shards").is_dir():
        raise EvalError(f"{d}: no predictions.jsonl (is this an eval --output folder?)")
    order = [str(r["question_id"]) for r in read_jsonl(d / PREDICTIONS)] or None
    recs = collect(d)
    if order is not None:
        order += sorted(set(recs) - set(order))
    return meta, ordered(recs, order)


def rescore(records: list[dict[str, Any]], extractor: str) -> list[dict[str, Any]]:
    out = []
    for r in records:
        r = dict(r)
        if not r.get("error"):
            r["choice"] = extract_choice(r.get("prediction") or "", extractor)
            r["correct"] = r["choice"] == r.get("answer")
            r["extractor"] = extractor
        out.append(r)
    return out


def summarize_run(run_dir: str | Path, rules: str | None = None, extractor: str | None = None) -> dict[str, Any]:
    meta, records = load_run(run_dir)
    settings = meta.get("settings", {})
    task_name = settings.get("task") or (records[0]["task"] if records else None)
    if task_name is None:
        raise EvalError(f"{run_dir}: no records and no run.json: nothing to report")
    task = get_task(task_name)
    rules = rules or settings.get("rules") or "current"
    ruleset = task.ruleset(rules)
    extractor = extractor or settings.get("extractor") or ruleset.extractor
    records = rescore(records, extractor)
    s = summarize(records, ruleset.metric, task.breakdowns)
    expected = settings.get("n_questions")
    s.update({
        "task": task.name,
        "run_dir": str(run_dir),
        "rules": RULE_ALIASES.get(rules, rules),
        "extractor": extractor,
        "final_answer_rule": FINAL_ANSWER_RULE,
        "reference": LMMS_EVAL_REFERENCE,
        "lmms_eval_scale": "fraction (0-1)" if task.metric_scale == 1.0 else "percent",
        "n_expected": expected,
        "complete": expected is None or len(records) >= expected,
        "redone_incomplete": sum(1 for r in records if r.get("replaced_incomplete")),
        "settings": {k: settings.get(k) for k in ("model", "compressor", "compressor_options", "budget", "reasoning",
                                                   "reasoning_options", "sampling", "max_new_tokens", "quant",
                                                   "vision_quant", "limit", "data_dir")},
    })
    return s


def write_run_report(run_dir: str | Path, summary: dict[str, Any] | None = None, plots: bool = True) -> dict[str, Any]:
    """summary.json, report.md and (VideoMME) accuracy_by_duration.png in the run directory."""
    d = Path(run_dir)
    s = summary or summarize_run(d)
    write_atomic(d / "summary.json", json.dumps(s, indent=2, default=str), REPORT_HINT)
    write_atomic(d / "report.md", run_markdown(s), REPORT_HINT)
    if plots and s["breakdowns"].get("duration"):
        try:
            plot_duration([s], d / "accuracy_by_duration.png")
        except OSError as err:
            raise RunWriteError("the plot", d / "accuracy_by_duration.png", err, REPORT_HINT) from None
    if plots:
        try:
            plot_needle([s], d / NEEDLE_PLOT)
        except OSError as err:
            raise RunWriteError("the plot", d / NEEDLE_PLOT, err, REPORT_HINT) from None
    return s


# --- markdown ---------------------------------------------------------------------------------------------
def _f(v: Any, digits: int = 1) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _label(s: dict[str, Any]) -> str:
    st = s.get("settings", {})
    parts = [str(st.get("compressor") or "?")]
    if st.get("budget"):
        parts.append(f"b{st['budget']}")
    if st.get("reasoning") and st["reasoning"] != "direct":
        parts.append(str(st["reasoning"]))
    return " ".join(parts)


def run_markdown(s: dict[str, Any]) -> str:
    st = s.get("settings", {})
    headline = {"m-avg": "M-avg", "accuracy": "accuracy", "micro": "micro accuracy"}[s["metric"]]
    n_text = str(s["n"]) if s["complete"] else f"{s['n']} of {s['n_expected']}"
    think = "–" if s["thinking_rate"] is None else f"{100 * s['thinking_rate']:.0f}%"
    lines = [f"# {s['task']}: {headline} {_f(s['score'])}", "",
             f"model `{st.get('model')}`, compressor `{st.get('compressor')}`, budget {st.get('budget')}, "
             f"reasoning `{st.get('reasoning')}`; rules {s['rules']} (extractor `{s['extractor']}`, "
             f"metric `{s['metric']}`)", "",
             "| questions | answered | errors | no letter found | accuracy | accuracy (answered only) | "
             "visual tokens | tokens/frame | generated tokens | thinking rate |",
             "|---|---|---|---|---|---|---|---|---|---|",
             f"| {n_text} | {s['answered']} | "
             f"{s['errors']} | {s['no_choice']} | {_f(s['accuracy'])} | {_f(s['accuracy_answered'])} | "
             f"{_f(s['visual_tokens_mean'])} | {_f(s['tokens_per_frame_mean'])} | {_f(s['generated_tokens_mean'])} | "
             f"{think} |"]
    if "m_avg" in s:
        lines += ["", f"MLVU: M-avg {_f(s['m_avg'])}, micro accuracy {_f(s['micro'])}."]
    if s["errors"]:
        vids = ", ".join(s["error_videos"][:10]) + (" …" if len(s["error_videos"]) > 10 else "")
        kinds = ", ".join(f"{k} ×{n}" for k, n in s["error_messages"].items())
        lines += ["", f"**{s['errors']} question(s) failed** and count as wrong ({kinds}); videos: {vids}."]
    if s.get("redone_incomplete"):
        lines += ["", f"{s['redone_incomplete']} question(s) were answered again on resume because their earlier "
                  "record was incomplete (torn, or missing fields the scorer needs)."]
    for fld, table in s["breakdowns"].items():
        if not table:
            continue
        keys = list(table)
        if fld == "duration":
            keys = [k for k in DURATION_ORDER if k in table] + [k for k in keys if k not in DURATION_ORDER]
        lines += ["", f"## by {fld.replace('_', ' ')}", "", "| " + fld + " | n | accuracy |", "|---|---|---|"]
        lines += [f"| {k} | {table[k]['n']} | {_f(table[k]['accuracy'])} |" for k in keys]
    return "\n".join(lines) + "\n"


def compare_markdown(summaries: Sequence[dict[str, Any]]) -> str:
    lines = ["| run | task | model | compressor | budget | reasoning | tokens/frame | score | metric | errors | "
             "gen. tokens | thinking rate |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        st = s.get("settings", {})
        think = "–" if s["thinking_rate"] is None else f"{100 * s['thinking_rate']:.0f}%"
        lines.append(f"| {Path(s['run_dir']).name} | {s['task']} | {st.get('model')} | {st.get('compressor')} | "
                     f"{st.get('budget')} | {st.get('reasoning')} | {_f(s['tokens_per_frame_mean'])} | "
                     f"{_f(s['score'])} | {s['metric']} ({s['extractor']}) | {s['errors']} | "
                     f"{_f(s['generated_tokens_mean'])} | {think} |")
    return "\n".join(lines) + "\n"


# --- plots ------------------------------------------------------------------------------------------------
def _pyplot() -> Any:
    from videollm._compat import require

    mpl = require("matplotlib", "eval", "report plots")
    mpl.use("Agg")
    import matplotlib.pyplot as plt

    return plt


NEEDLE_PLOT = "needle_heatmap.png"


def plot_needle(summaries: Sequence[dict[str, Any]], path: str | Path) -> Path | None:
    """Accuracy by length × depth, one heat map per needle run (V-NIAH's figure)."""
    runs = [s for s in summaries if s["breakdowns"].get("cell")]
    if not runs:
        return None
    from .tasks.needle import plot_heatmaps

    return plot_heatmaps(runs, [_label(s) for s in runs], path)


def plot_duration(summaries: Sequence[dict[str, Any]], path: str | Path) -> Path | None:
    """Grouped bars: accuracy per duration bucket, one colour per run."""
    runs = [s for s in summaries if s["breakdowns"].get("duration")]
    if not runs:
        return None
    plt = _pyplot()
    buckets = [b for b in DURATION_ORDER if any(b in s["breakdowns"]["duration"] for s in runs)]
    buckets += sorted({k for s in runs for k in s["breakdowns"]["duration"]} - set(buckets))
    width = 0.8 / len(runs)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(buckets) + 0.4 * len(runs)), 3.2))
    for i, s in enumerate(runs):
        table = s["breakdowns"]["duration"]
        xs = [j + (i - (len(runs) - 1) / 2) * width for j in range(len(buckets))]
        ax.bar(xs, [table.get(b, {}).get("accuracy", 0.0) for b in buckets], width, label=_label(s))
    counts = [max(s["breakdowns"]["duration"].get(b, {}).get("n", 0) for s in runs) for b in buckets]
    ax.set_xticks(range(len(buckets)), [f"{b}\n(n={n})" for b, n in zip(buckets, counts)])
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"{runs[0]['task']}: accuracy by video duration")
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_tokens(summaries: Sequence[dict[str, Any]], path: str | Path) -> Path | None:
    """Accuracy against mean visual tokens per frame, one line per (task, compressor, reasoning)."""
    pts = [s for s in summaries if s.get("tokens_per_frame_mean")]
    if not pts:
        return None
    plt = _pyplot()
    series: dict[str, list[tuple[float, float]]] = {}
    for s in pts:
        st = s.get("settings", {})
        key = f"{s['task']} · {st.get('compressor')}" + (f" · {st.get('reasoning')}" if st.get("reasoning") not in
                                                           (None, "direct") else "")
        series.setdefault(key, []).append((float(s["tokens_per_frame_mean"]), float(s["score"])))
    fig, ax = plt.subplots(figsize=(5.0, 3.4))
    for key, xy in sorted(series.items()):
        xy.sort()
        ax.plot([x for x, _ in xy], [y for _, y in xy], marker="o", label=key)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("visual tokens per frame (mean)")
    ax.set_ylabel("score")
    ax.set_title("accuracy vs. visual tokens per frame")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def compare(run_dirs: Sequence[str | Path], out_dir: str | Path, rules: str | None = None,
            extractor: str | None = None, plots: bool = True) -> tuple[list[dict[str, Any]], dict[str, Path]]:
    """`videollm eval report RUN_DIR...`: one summary per run, a comparison table and the plots."""
    summaries = [summarize_run(d, rules, extractor) for d in run_dirs]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"markdown": out / "comparison.md", "json": out / "comparison.json"}
    text = compare_markdown(summaries)
    for s in summaries:
        text += "\n" + run_markdown(s)
    write_atomic(files["markdown"], text)
    write_atomic(files["json"], json.dumps(summaries, indent=2, default=str))
    if plots:
        for name, fn in (("duration_plot", plot_duration), ("tokens_plot", plot_tokens)):
            fname = "accuracy_by_duration.png" if name == "duration_plot" else "accuracy_vs_tokens_per_frame.png"
            p = fn(summaries, out / fname)
            if p is not None:
                files[name] = p
        p = plot_needle(summaries, out / NEEDLE_PLOT)
        if p is not None:
            files["needle_plot"] = p
    return summaries, files
