"""Prediction files: append-only JSONL that survives being killed at any instant or a full disk.

Each record is one line, written whole, flushed and fsync'd before the next question starts, so after a
crash the file holds every finished question plus at most one torn last line. Readers skip a torn line;
the writer cuts it off before appending so the next record starts on a line of its own. A write that fails
(disk full, quota, I/O error) is undone on the spot: the file is truncated back to the end of the last
complete record and a `RunWriteError` says what could not be written and that the run can resume.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO

from videollm.errors import VideoLLMError

logger = logging.getLogger(__name__)

#: what the scorer reads from every record; a record without one of them (a write cut short by hand, a tool
#: that wrote only ids) is not trusted on resume and its question is run again
REQUIRED_FIELDS = ("question_id", "task", "video", "answer", "prediction", "error")
RESUME_HINT = "nothing already recorded was lost; free some space (or fix the cause) and re-run the same command " \
              "to resume"
_QID = re.compile(rb'^\s*\{\s*"question_id"\s*:\s*("(?:[^"\\]|\\.)*"|-?\d+)\s*,')


class RunWriteError(VideoLLMError):
    """A run's file could not be written (disk full, quota, permissions, I/O error)."""

    def __init__(self, what: str | None, path: str | Path, err: OSError, hint: str = RESUME_HINT):
        reason = err.strerror or str(err) or type(err).__name__
        code = f" [{errno.errorcode.get(err.errno, err.errno)}]" if err.errno else ""
        target = f"{what} to {path}" if what else str(path)
        super().__init__(f"could not write {target}: {reason}{code}; {hint}")
        self.path, self.errno = Path(path), err.errno


def is_complete(rec: dict[str, Any]) -> bool:
    """Every field the scorer needs is there: an answered record has its text, a failed one its error."""
    if any(k not in rec for k in REQUIRED_FIELDS):
        return False
    return isinstance(rec["error"], str) if rec["error"] is not None else isinstance(rec["prediction"], str)


def scan_jsonl(path: str | Path) -> tuple[list[dict[str, Any]], list[str | None]]:
    """The records of a prediction file, and the question ids (None when unreadable) of its damaged lines.

    A torn or garbled line is skipped with a warning, never fatal; its id is read from the line's start when
    the line still has one (records start with `{"question_id": ...,`), so a resume can say it was redone.
    """
    p = Path(path)
    if not p.exists():
        return [], []
    out: list[dict[str, Any]] = []
    damaged: list[str | None] = []
    data = p.read_bytes()
    lines = data.split(b"\n")
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            where = "torn last line" if i == len(lines) - 1 else f"unreadable line {i + 1}"
            logger.warning("%s: skipping a %s (%d bytes); that question will be run again", p, where, len(raw))
            m = _QID.match(raw)
            damaged.append(str(json.loads(m.group(1))) if m else None)
            continue
        if isinstance(rec, dict) and "question_id" in rec:
            out.append(rec)
    return out, damaged


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Every readable record (complete or not: see `is_complete`); torn or garbled lines are skipped."""
    return scan_jsonl(path)[0]


def _cut_torn_tail(path: Path) -> None:
    """Truncate after the last newline so an interrupted write does not glue onto the next record."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - 1))
        if f.read(1) == b"\n":
            return
        block = 1 << 16
        pos = size
        while pos > 0:
            start = max(0, pos - block)
            f.seek(start)
            chunk = f.read(pos - start)
            nl = chunk.rfind(b"\n")
            if nl != -1:
                f.truncate(start + nl + 1)
                break
            pos = start
        else:
            f.truncate(0)
        f.flush()
        os.fsync(f.fileno())
    logger.warning("%s: cut off a torn last line left by an interrupted run", path)


def _open_append(path: Path) -> BinaryIO:
    """Unbuffered, so a failed write leaves nothing queued in Python to be flushed later (tests swap this)."""
    return open(path, "ab", buffering=0)


class JsonlWriter:
    """Appends records durably: one whole line per record, fsync'd before `append` returns.

    On a failed write or fsync the file is cut back to the end of the last complete record (truncating needs
    no free space) and `RunWriteError` is raised: the file never keeps half a record it was given.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _cut_torn_tail(self.path)
            self._f = _open_append(self.path)
            self._good = os.fstat(self._f.fileno()).st_size  # end of the last complete record
        except OSError as err:
            raise RunWriteError("the predictions file", self.path, err) from None

    def append(self, record: dict[str, Any]) -> None:
        data = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        try:
            view = memoryview(data)
            while view:  # a raw write may take only part of the buffer (e.g. the disk filled up mid-record)
                n = self._f.write(view)
                if not n:
                    raise OSError(errno.EIO, "write accepted no bytes")
                view = view[n:]
            os.fsync(self._f.fileno())
        except OSError as err:
            self._roll_back()
            qid = record.get("question_id")
            raise RunWriteError(f"the record of question {qid}" if qid is not None else "a record", self.path,
                                err) from None
        self._good += len(data)

    def _roll_back(self) -> None:
        """Cut off whatever part of the failed record reached the file."""
        try:
            os.ftruncate(self._f.fileno(), self._good)
            os.fsync(self._f.fileno())
        except OSError as err:  # the next resume cuts the torn line instead
            logger.warning("%s: could not cut back a partly written record (%s); the next run will", self.path, err)

    def close(self) -> None:
        if not self._f.closed:
            try:
                self._f.close()
            except OSError:  # unbuffered: nothing is pending, every record was already fsync'd
                pass

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_atomic(path: str | Path, text: str, hint: str = RESUME_HINT) -> None:
    """Replace `path` with `text` all at once (readers see the old file or the new one, never half).

    On a write error the old file is left as it was, the temporary one removed, and `RunWriteError` raised.
    """
    p = Path(path)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except OSError as err:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise RunWriteError(None, p, err, hint) from None


def write_jsonl_atomic(path: str | Path, records: Iterable[dict[str, Any]], hint: str = RESUME_HINT) -> None:
    write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), hint)
