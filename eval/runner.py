"""The resumable evaluation loop: questions in, one durable JSONL record per question out.

A run directory holds `run.json` (the settings; a resume with different ones is refused),
`predictions.jsonl` (merged, in the task's order; what `videollm calibrate` reads), `shards/` when several
processes ran, and the reports. Re-running with the same directory skips every question that already has
a record and does the rest; a record missing a field the scorer needs (`store.REQUIRED_FIELDS`) is not
trusted and its question is run again, the new record saying so (`replaced_incomplete`). A video that is
missing or cannot be decoded becomes an error record for each of its questions: counted and reported, never
a crash and never a silent gap. One process (one per shard) writes a run directory at a time (`lock.py`).
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from videollm.config import fingerprint_keys
from videollm.errors import VideoError, VideoLLMError

from .extract import DEFAULT_CHOICES, extract_choice, final_answer_text
from .lock import writer_lock
from .sharding import Shard, assign, barrier, collect, merge, output_path
from .store import JsonlWriter, write_atomic
from .tasks import Sample, Task

if TYPE_CHECKING:
    from videollm.types import Answer
    from videollm.video import Video

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"
#: settings that change predictions; a resume must match them (scoring rules may differ: scores are
#: recomputed from the raw outputs)
FINGERPRINT_KEYS = ("task", *fingerprint_keys())  # derived from PipelineConfig: a new field is covered


class EvalError(VideoLLMError):
    """A run that cannot go on as asked (settings differ from the run being resumed, a model that always fails)."""


@dataclass
class RunOptions:
    rules: str = "current"
    extractor: str | None = None  # overrides the rules' extractor
    retry_errors: bool = False
    progress: bool = True
    max_consecutive_failures: int = 20  # non-video errors in a row before the run is declared broken
    wait_for_lock: bool = False  # another process writes this run (shard): wait for it instead of refusing
    settings: dict[str, Any] = field(default_factory=dict)  # recorded in run.json


@dataclass
class RunResult:
    run_dir: Path
    done_now: int  # records written by this call (errors included)
    skipped: int
    errors_now: int
    records: list[dict[str, Any]] | None  # the merged predictions (None on ranks that did not merge)
    redone: int = 0  # questions run again because their record was incomplete or torn


def check_settings(run_dir: Path, settings: dict[str, Any], write: bool = True) -> None:
    """Refuse to mix predictions made under different settings; record this run's settings in run.json."""
    path = run_dir / RUN_FILE
    mine = {k: settings.get(k) for k in FINGERPRINT_KEYS if k in settings}
    old: dict[str, Any] = {}
    if path.exists():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, OSError) as err:
            raise EvalError(f"{path} is unreadable ({type(err).__name__}); move it away to start this run "
                            "afresh, or pick another --output") from None
        prev = old.get("fingerprint", {})
        diff = [k for k in mine if k in prev and _norm(prev[k]) != _norm(mine[k])]
        if diff:
            detail = "; ".join(f"{k}: {prev[k]!r} there, {mine[k]!r} now" for k in diff)
            raise EvalError(f"{run_dir} holds a run with other settings ({detail}). Resume with the same settings "
                            "or pick another --output")
        mine = {**prev, **mine}
    if write:  # limit, rules, question count may change between resumes; the fingerprint may not
        write_atomic(path, json.dumps({"fingerprint": mine, "settings": settings,
                                       "created": old.get("created", time.time()), "updated": time.time()},
                                      indent=2, default=str))


def _norm(v: Any) -> str:
    return json.dumps(v, sort_keys=True, default=str)


def record_for(sample: Sample, answer: Answer, extractor: str, choices: Sequence[str] = DEFAULT_CHOICES
               ) -> dict[str, Any]:
    text = answer.text or ""
    choice = extract_choice(text, extractor, choices)
    tpf = answer.tokens_per_frame or {}
    initial = answer.initial_choice
    if not initial and answer.initial_answer:  # a stand-in pipeline may not name the letter itself
        initial = extract_choice(answer.initial_answer, extractor, choices) or None
    return {
        **_base(sample),
        "prediction": text,
        "final_answer": final_answer_text(text),
        "choice": choice,
        "correct": choice == sample.answer,
        "extractor": extractor,
        "initial_choice": initial,
        "confidence": answer.confidence,
        "thinking_fired": bool(answer.thinking_fired),
        "generated_tokens": answer.generated_tokens,
        "visual_tokens": answer.visual_tokens,
        "tokens_per_frame": (sum(tpf.values()) / len(tpf)) if tpf else 0.0,
        "sampled_frames": answer.sampled_frames,
        "kept_frames": list(answer.kept_frames),
        "reasoning": answer.reasoning,
        "initial_answer": answer.initial_answer,
        "thought": answer.thought,
        "finish_reason": answer.finish_reason,
        "timings": answer.timings,
        "error": None,
    }


def error_record(sample: Sample, err: BaseException, kind: str | None = None) -> dict[str, Any]:
    return {
        **_base(sample),
        "prediction": None, "final_answer": None, "choice": "", "correct": False, "extractor": None,
        "initial_choice": None, "confidence": None, "thinking_fired": False, "generated_tokens": 0,
        "visual_tokens": 0, "tokens_per_frame": 0.0, "sampled_frames": 0, "kept_frames": [], "reasoning": None,
        "initial_answer": None, "thought": None, "finish_reason": "error", "timings": {},
        "error": f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"[:500],
        "error_kind": kind or ("video" if isinstance(err, VideoError) else "model"),
    }


def _base(sample: Sample) -> dict[str, Any]:
    fields = {k: v for k, v in sample.fields.items() if k != "subtitle_path"}
    return {"question_id": sample.question_id, "task": sample.task, "video": sample.video,
            "video_path": sample.video_path, "answer": sample.answer, **fields}


def _groups(samples: Sequence[Sample]) -> list[list[Sample]]:
    """Consecutive questions on the same video, so each video is opened once."""
    out: list[list[Sample]] = []
    for s in samples:
        if out and out[-1][0].video_path == s.video_path:
            out[-1].append(s)
        else:
            out.append([s])
    return out


class Answerer(Protocol):
    """What the runner asks of a pipeline (`VideoQAPipeline` is one): open a video once, answer each of its
    questions with the benchmark's own prompt."""

    def load(self, video: str) -> Video: ...

    def __call__(self, video: Video, question: str, options: list[str] | None = None, *,
                 prompt: str | None = None) -> Answer: ...


def run(task: Task, samples: Sequence[Sample], pipe: Answerer, run_dir: str | Path, shard: Shard | None = None,
        options: RunOptions | None = None, on_record: Callable[[dict[str, Any]], None] | None = None) -> RunResult:
    """Answer this rank's share of `samples` not answered yet, appending each record durably; then merge.

    `pipe` is a `VideoQAPipeline` or any other `Answerer`.
    """
    opts = options or RunOptions()
    shard = shard or Shard()
    run_dir = Path(run_dir)
    with writer_lock(run_dir, shard, wait=opts.wait_for_lock):  # a no-op when this process holds it already
        return _run_locked(task, samples, pipe, run_dir, shard, opts, on_record)


def _run_locked(task: Task, samples: Sequence[Sample], pipe: Answerer, run_dir: Path, shard: Shard, opts: RunOptions,
                on_record: Callable[[dict[str, Any]], None] | None) -> RunResult:
    extractor = opts.extractor or task.ruleset(opts.rules).extractor
    if shard.is_main:
        check_settings(run_dir, opts.settings)
    barrier(shard)
    if not shard.is_main:
        check_settings(run_dir, opts.settings, write=not (run_dir / RUN_FILE).exists())

    mine = assign(samples, shard)
    incomplete: set[str] = set()
    done = collect(run_dir, incomplete)
    todo = [s for s in mine if s.question_id not in done or (opts.retry_errors and done[s.question_id].get("error"))]
    skipped = len(mine) - len(todo)
    if skipped:
        logger.info("resuming %s: %d of %d questions already done", run_dir, skipped, len(mine))
    redo = incomplete & {s.question_id for s in todo}
    if redo:
        logger.warning("%s: %d question(s) have only an incomplete or torn record; they will be run again",
                       run_dir, len(redo))

    bar = _progress(len(mine), skipped, f"{task.name}" + (f" [{shard.rank}/{shard.world}]" if shard.world > 1 else ""),
                    opts.progress, shard.rank)
    try:
        n_done, n_err = _answer_all(task, todo, pipe, output_path(run_dir, shard), extractor, opts, redo, on_record,
                                    bar)
    finally:
        if bar is not None:
            bar.close()

    order = [s.question_id for s in samples]
    records: list[dict[str, Any]] | None = None
    if shard.distributed:
        barrier(shard)
        if shard.is_main:
            records = merge(run_dir, order)
    else:
        records = merge(run_dir, order)  # every rank merges; the last one to finish leaves the complete file
    return RunResult(run_dir, n_done, skipped, n_err, records, redone=len(redo))


def _answer_all(task: Task, todo: Sequence[Sample], pipe: Answerer, out: Path, extractor: str, opts: RunOptions,
                redo: set[str], on_record: Callable[[dict[str, Any]], None] | None, bar: Any) -> tuple[int, int]:
    """Answer `todo` in video groups, appending each record durably; returns (records written, errors)."""
    n_done = n_err = consecutive = 0
    with JsonlWriter(out) as writer:

        def append(rec: dict[str, Any]) -> None:
            if rec["question_id"] in redo:
                rec["replaced_incomplete"] = True
            writer.append(rec)

        for group in _groups(todo):
            video = None
            try:
                video = pipe.load(group[0].video_path)
            except Exception as err:  # noqa: BLE001 - missing, unreadable, empty: each of its questions is an error
                logger.warning("%s: %s (%d question(s) recorded as errors)", group[0].video, err, len(group))
                for s in group:
                    append(rec := error_record(s, err, kind="video"))
                    n_done += 1
                    n_err += 1
                    _emit(on_record, rec, bar)
                continue
            try:
                for s in group:
                    try:
                        ans = pipe(video, s.question, s.options or list(DEFAULT_CHOICES),
                                   prompt=task.prompt_for(s, video))
                        rec = record_for(s, ans, extractor)
                        consecutive = 0
                    except VideoError as err:  # decoding failed part-way (truncated, corrupt packets)
                        rec = error_record(s, err)
                    except Exception as err:
                        consecutive += 1
                        logger.warning("%s: %s: %s", s.question_id, type(err).__name__, err)
                        rec = error_record(s, err)
                        if consecutive >= opts.max_consecutive_failures:
                            append(rec)
                            raise EvalError(f"{consecutive} questions in a row failed (last: {rec['error']}); "
                                            "stopping. Fix the cause, then re-run with --retry-errors") from err
                    append(rec)
                    n_done += 1
                    n_err += bool(rec["error"])
                    _emit(on_record, rec, bar)
            finally:
                close = getattr(video, "close", None)
                if close is not None:
                    close()
    return n_done, n_err


def _emit(cb: Callable[[dict[str, Any]], None] | None, rec: dict[str, Any], bar: Any) -> None:
    if bar is not None:
        bar.update(1)
        if rec.get("error"):
            bar.set_postfix_str(f"errors: {rec['error'][:40]}", refresh=False)
    if cb is not None:
        cb(rec)


def _progress(total: int, initial: int, desc: str, enabled: bool, position: int) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="q", position=position, dynamic_ncols=True,
                smoothing=0.1)
