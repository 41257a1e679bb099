"""`videollm eval ...` (run a benchmark, resumable and shardable) and `videollm eval report RUN_DIR...`."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .sharding import Shard
    from .tasks import Sample, Task

logger = logging.getLogger(__name__)

#: generation budget for reasoning modes when --max-new-tokens is not given. lmms-eval's 16 tokens (its
#: task YAMLs) would cut every thought short; VideoAuto-R1's harness allows 4096, its demo 2048.
REASONING_MAX_NEW_TOKENS = 1024
RULE_CHOICES = ["current", "legacy", "v0.7.2", "v0.7.1", "v0.3.1"]


def register(sub: argparse._SubParsersAction) -> None:
    from videollm.cli import add_model_args

    from .extract import EXTRACTORS
    from .tasks import TASKS

    p = sub.add_parser("eval", help="batch evaluation on VideoMME, MLVU, LVBench (resumable, shardable)",
                       description="Run a benchmark: `videollm eval --task videomme --data-dir DIR --output RUN_DIR "
                       "...`; compare runs: `videollm eval report RUN_DIR...`. Several processes: "
                       "`accelerate launch -m videollm eval ...`.")
    g = p.add_argument_group("benchmark")
    g.add_argument("--task", choices=sorted(TASKS), help="benchmark task")
    g.add_argument("--data-dir", help="folder with the benchmark's annotations and videos (see docs/eval.md)")
    g.add_argument("--output", help="run folder; re-running with the same folder resumes")
    g.add_argument("--limit", type=int, default=None, help="only the first N questions, N >= 1 (lmms-eval's --limit)")
    g.add_argument("--rules", default="current", choices=RULE_CHOICES,
                   help="answer extraction + metric by lmms-eval release: current (v0.7.2+), legacy (v0.7.1), "
                   "v0.3.1 (MLVU micro accuracy)")
    g.add_argument("--extractor", default=None, choices=sorted(EXTRACTORS), help="override the rules' extractor")
    g.add_argument("--retry-errors", action="store_true", help="on resume, run again the questions that failed")
    g.add_argument("--wait", action="store_true",
                   help="if another process is writing --output (or this rank's shard), wait for it to end "
                   "instead of refusing")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    add_model_args(p)
    p.set_defaults(max_new_tokens=None, func=cmd_eval)
    for action in p._actions:  # say what the eval default is
        if action.dest == "max_new_tokens":
            action.help = (f"generation budget (default: the task's, 16 as in lmms-eval, for direct answers; "
                           f"{REASONING_MAX_NEW_TOKENS} for think/auto)")

    esub = p.add_subparsers(dest="eval_command", metavar="{report}")
    r = esub.add_parser("report", help="summaries, comparison table and plots for one or more run folders")
    r.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    r.add_argument("--out", default=None, help="where to write comparison.md/.json and plots "
                   "(default: the run folder for one run, ./eval-report for several)")
    r.add_argument("--rules", default=None, choices=RULE_CHOICES, help="re-score under these rules")
    r.add_argument("--extractor", default=None, choices=sorted(EXTRACTORS), help="re-score with this extractor")
    r.add_argument("--no-plots", action="store_true")
    r.add_argument("--json", action="store_true", help="print the summaries as JSON")
    r.set_defaults(func=cmd_report)


def cmd_eval(args: argparse.Namespace) -> int:
    from videollm.cli import pipeline_config
    from videollm.errors import InvalidRequestError

    from .lock import writer_lock
    from .sharding import detect_shard
    from .tasks import get_task, load_samples

    missing = [f"--{n.replace('_', '-')}" for n in ("task", "data_dir", "output") if not getattr(args, n)]
    if missing:
        raise InvalidRequestError(f"videollm eval needs {', '.join(missing)} (or use `videollm eval report RUN_DIR`)")
    task = get_task(args.task)
    task.ruleset(args.rules)  # validate before loading anything
    samples = load_samples(task, args.data_dir, args.limit)  # fails fast on missing annotations
    shard = detect_shard()
    if args.max_new_tokens is None:
        args.max_new_tokens = task.max_new_tokens if args.reasoning == "direct" else REASONING_MAX_NEW_TOKENS
    if shard.world > 1 and args.device == "auto":
        args.device = _rank_device()
    cfg = pipeline_config(args)
    settings: dict[str, Any] = {
        "task": task.name, **cfg.fingerprint(), "rules": args.rules,
        "extractor": args.extractor, "limit": args.limit, "data_dir": str(Path(args.data_dir).resolve()),
        "n_questions": len(samples), "world_size": shard.world, "prompt": "lmms-eval default profile",
    }
    # one writer per run (per shard): refuse or wait before loading a model; held until the report is written
    with writer_lock(Path(args.output), shard, wait=args.wait):
        return _eval_locked(args, task, samples, shard, settings)


def _eval_locked(args: argparse.Namespace, task: Task, samples: list[Sample], shard: Shard, settings: dict[str, Any]
                 ) -> int:
    from videollm.cli import build_pipeline

    from .report import write_run_report
    from .runner import RunOptions, check_settings, run

    check_settings(Path(args.output), settings, write=False)  # refuse a mismatched resume before loading a model
    pipe = build_pipeline(args)
    opts = RunOptions(rules=args.rules, extractor=args.extractor, retry_errors=args.retry_errors,
                      progress=not args.no_progress and (shard.is_main or sys.stderr.isatty()), settings=settings,
                      wait_for_lock=args.wait)
    result = run(task, samples, pipe, args.output, shard=shard, options=opts)
    if result.records is None or not shard.is_main and shard.distributed:
        return 0
    summary = write_run_report(args.output, plots=not args.no_plots)
    if result.redone:
        print(f"{result.redone} question(s) had an incomplete or torn record and were answered again",
              file=sys.stderr)
    if not summary["complete"]:
        print(f"[rank {shard.rank}] shard done ({result.done_now} answered now); waiting for the other ranks "
              f"to finish: {summary['n']} of {summary['n_expected']} questions merged so far", file=sys.stderr)
        return 0
    _print_summary(summary)
    return 0


def _rank_device() -> str:
    import torch

    if not torch.cuda.is_available():
        return "auto"
    local = int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")) or 0)
    return f"cuda:{local % torch.cuda.device_count()}"


def _print_summary(s: dict[str, Any]) -> None:
    extra = f" (M-avg {s['m_avg']:.1f}, micro {s['micro']:.1f})" if "m_avg" in s else ""
    print(f"{s['task']}: {s['metric']} {s['score']:.2f}{extra} over {s['n']} questions; "
          f"{s['errors']} error(s); extractor {s['extractor']}; report: {Path(s['run_dir']) / 'report.md'}")
    if s["errors"]:
        print(f"failed videos: {', '.join(s['error_videos'][:10])}" + (" …" if len(s["error_videos"]) > 10 else ""))


def cmd_report(args: argparse.Namespace) -> int:
    import json

    from .report import compare, summarize_run, write_run_report

    if len(args.run_dirs) == 1 and args.out is None:
        from .report import run_markdown

        s = summarize_run(args.run_dirs[0], args.rules, args.extractor)
        if args.rules is None and args.extractor is None:  # re-scoring under other rules leaves the run's files alone
            write_run_report(args.run_dirs[0], s, plots=not args.no_plots)
        print(json.dumps(s, indent=2, default=str) if args.json else run_markdown(s))
        return 0
    summaries, files = compare(args.run_dirs, args.out or "eval-report", args.rules, args.extractor,
                               plots=not args.no_plots)
    if args.json:
        print(json.dumps(summaries, indent=2, default=str))
    else:
        print(files["markdown"].read_text())
        print("wrote " + ", ".join(str(p) for p in files.values()), file=sys.stderr)
    logging.getLogger(__name__).debug("report files: %s", files)
    return 0
