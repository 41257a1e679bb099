"""What every benchmark task provides: its samples (read from the public files) and its scoring rules."""
from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from videollm.errors import VideoLLMError
from videollm.registry import Registry

if TYPE_CHECKING:
    from videollm.video import Video

logger = logging.getLogger(__name__)

VIDEO_EXTS = (".mp4", ".MP4", ".mkv", ".webm", ".avi", ".mov")


class DatasetError(VideoLLMError):
    """The benchmark's annotations are missing or not in the published layout."""


#: benchmark tasks by name; each class registers itself with `@register_task`
TASKS: Registry[type["Task"]] = Registry(
    "task",
    error=DatasetError,
    modules=(
        "videollm.eval.tasks.videomme",
        "videollm.eval.tasks.mlvu",
        "videollm.eval.tasks.lvbench",
        "videollm.eval.tasks.needle",
    ),
)


def register_task(cls: type["Task"]) -> type["Task"]:
    TASKS.register(cls.name, cls)
    return cls


@dataclass
class Sample:
    """One question. `prompt` is the exact user text lmms-eval builds; `question`/`options` are the parts."""

    question_id: str
    task: str
    video: str  # video id or file name as the annotations give it
    video_path: str  # where we looked for it under --data-dir (may not exist: recorded as an error)
    question: str
    options: list[str]  # "A. text" each (empty when the question text already carries them)
    answer: str  # ground-truth letter
    prompt: str
    fields: dict[str, Any] = field(default_factory=dict)  # breakdown fields: duration, domain, task_type, ...


#: `current` = lmms-eval v0.7.2+ (2026 extractor); `legacy` = v0.7.1 and before, back to MLVU's 2025 M-avg switch;
#: `v0.3.1` = before that switch (MLVU scored by micro accuracy with the regex extractor)
RULE_ALIASES = {"current": "v0.7.2", "legacy": "v0.7.1"}


@dataclass(frozen=True)
class RuleSet:
    """How outputs are parsed and aggregated, named after the lmms-eval release that used them."""

    extractor: str
    metric: str


class Task:
    """Base class: subclasses set the names and implement `load`."""

    name: str = ""
    #: rule sets by the lmms-eval release that used them (see RULE_ALIASES for `current` / `legacy`)
    rules: ClassVar[dict[str, RuleSet]] = {}
    #: breakdowns reported (sample field -> title); a list-valued field counts toward each of its values
    breakdowns: ClassVar[dict[str, str]] = {}
    #: lmms-eval's generation budget for this task (its YAML's max_new_tokens)
    max_new_tokens: int = 16
    metric_scale: float = 100.0  # lmms-eval's own scale for the headline number (LVBench reports a fraction)

    def load(self, data_dir: str | Path) -> list[Sample]:
        raise NotImplementedError

    def prompt_for(self, sample: Sample, video: Video) -> str:
        """The user text for `sample` once its video is open (only subtitle prompts need the video)."""
        return sample.prompt

    def ruleset(self, name: str) -> RuleSet:
        key = RULE_ALIASES.get(name, name)
        if key not in self.rules:
            raise DatasetError(f"unknown rules {name!r} for {self.name}; choose from "
                               f"{', '.join([*RULE_ALIASES, *self.rules])}")
        return self.rules[key]


# --- helpers shared by the task modules -------------------------------------------------------------------
def find_annotation(data_dir: Path, candidates: Iterable[str], what: str, layout_hint: str) -> Path:
    """The first existing candidate (relative paths or glob patterns), or a DatasetError naming them."""
    if not data_dir.exists():
        raise DatasetError(f"--data-dir {data_dir} does not exist")
    tried = []
    for pattern in candidates:
        tried.append(pattern)
        hits = sorted(data_dir.glob(pattern)) if any(c in pattern for c in "*?[") else [data_dir / pattern]
        hits = [h for h in hits if h.is_file()]
        if hits:
            return hits[0]
    raise DatasetError(f"{what} annotations not found under {data_dir} (looked for {', '.join(tried)}). "
                       f"Expected layout: {layout_hint}")


def read_table(path: Path) -> list[dict[str, Any]]:
    """Rows of a parquet, JSON (list) or JSON-lines file as plain dicts (lists stay lists). A file that is not
    what its name says is a `DatasetError` naming the file (and the line, for JSON lines)."""
    if path.suffix == ".parquet":
        from videollm._compat import require

        pq = require("pyarrow.parquet", "eval", "reading benchmark parquet files")
        import pyarrow

        try:
            return pq.read_table(path).to_pylist()
        except (pyarrow.ArrowException, OSError) as err:
            raise DatasetError(f"{path}: not a readable parquet file ({_first_line(err)})") from err
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DatasetError(f"{path}: cannot be read ({err.strerror or err})") from err
    if path.suffix == ".jsonl":
        rows = []
        for n, line in enumerate(raw.splitlines(), start=1):
            if not line.strip():
                continue
            rows.append(_json(line, path, n))
        bad = [n for n, r in enumerate(rows, start=1) if not isinstance(r, dict)]
        if bad:
            raise DatasetError(f"{path}: every line must be a JSON object; record {bad[0]} is not")
        return rows
    data = _json(raw, path, None)
    if isinstance(data, dict):  # some releases wrap the list
        for key in ("data", "questions", "annotations"):
            if isinstance(data.get(key), list):
                return data[key]
        raise DatasetError(f"{path}: expected a list of questions")
    if not isinstance(data, list):
        raise DatasetError(f"{path}: expected a list of questions, found a JSON {type(data).__name__}")
    return data


def _json(raw: bytes, path: Path, line: int | None) -> Any:
    where = f"{path}, line {line}" if line is not None else str(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        at = err.start if line is not None else raw[: err.start].count(b"\n") + 1
        pos = f"byte {err.start + 1}" if line is not None else f"line {at}"
        raise DatasetError(f"{where}: not UTF-8 (byte 0x{raw[err.start]:02x} at {pos})") from err
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        where = f"{path}, line {line}" if line is not None else f"{path}, line {err.lineno}"
        raise DatasetError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from err


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__


def require_columns(rows: list[dict[str, Any]], columns: Sequence[str], path: Path) -> None:
    if not rows:
        raise DatasetError(f"{path}: holds no questions")
    missing = [c for c in columns if c not in rows[0]]
    if missing:
        raise DatasetError(f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(rows[0])}")


def resolve_video(bases: Sequence[Path], name: str, exts: Sequence[str] = VIDEO_EXTS) -> Path:
    """Where the video is: `name` as given, or with a known extension, under the first base holding it.

    When nothing exists the first candidate is returned: the runner then records "no such file" for
    each of its questions instead of the whole run failing.
    """
    has_ext = Path(name).suffix.lower() in {e.lower() for e in exts}
    names = [name] if has_ext else [name + e for e in exts]
    first: Path | None = None
    for base in bases:
        for n in names:
            p = base / n
            first = first or p
            if p.exists():
                return p
    assert first is not None
    return first


def letter_of(answer: Any, options: Sequence[str]) -> str:
    """A ground truth given as a letter ("B", "(B)", "B.") or as the option text, as a letter."""
    s = str(answer).strip()
    if len(s) == 1 and s.isalpha():
        return s.upper()
    if len(s) in (2, 3) and s.strip("().:").isalpha() and len(s.strip("().:")) == 1:
        return s.strip("().:").upper()
    for i, opt in enumerate(options):
        if str(opt).strip() == s:
            return chr(ord("A") + i)
    raise DatasetError(f"cannot read the answer {answer!r} as an option letter")


def as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, str):
        s = value.strip()
        if s.startswith("["):
            try:
                return list(json.loads(s))
            except json.JSONDecodeError:
                pass
        return [value]
    return list(value)
