"""Faults in long eval runs: two writers on one output, a full disk, incomplete records (real subprocesses)."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("pyarrow")

from test_eval import VIDEOMME, ScriptedPipe, make_videomme

from videollm.eval import store
from videollm.eval.lock import LOCK_FILE, RunLockedError, read_holder
from videollm.eval.report import summarize_run, write_run_report
from videollm.eval.runner import RunOptions, run
from videollm.eval.sharding import Shard
from videollm.eval.store import RunWriteError, read_jsonl, write_atomic
from videollm.eval.tasks import get_task, load_samples

TESTS_DIR = Path(__file__).parent
N_ANSWERABLE = 5  # VIDEOMME: 7 questions, one missing and one corrupt video

# A run whose model blocks after its first answer until GATE exists, so the test decides when it ends.
CHILD = """
import logging, sys, time
from pathlib import Path
from test_eval import ScriptedPipe
from videollm.eval.runner import RunOptions, run
from videollm.eval.sharding import detect_shard
from videollm.eval.tasks import get_task, load_samples
logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
data, out, gate, calls, wait = sys.argv[1:6]

class Gated(ScriptedPipe):
    def __call__(self, *a, **k):
        ans = super().__call__(*a, **k)
        while gate != "-" and not Path(gate).exists():
            time.sleep(0.05)
        return ans

task = get_task("videomme")
run(task, load_samples(task, data), Gated(calls_log=Path(calls)), out, shard=detect_shard(),
    options=RunOptions(progress=False, wait_for_lock=wait == "1"))
print("finished", flush=True)
"""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "LOCAL_RANK")}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def _start(data: Path, out: Path, gate: Path | str, calls: Path, log: Path, wait: bool = False, **env: str):
    return subprocess.Popen([sys.executable, "-c", CHILD, str(data), str(out), str(gate), str(calls), "1" if wait
                             else "0"], env=_env(**env), stdout=open(log, "wb"), stderr=subprocess.STDOUT)


def _until(cond, what: str, timeout: float = 90.0) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _holds(lock: Path, pid: int) -> bool:
    h = read_holder(lock) if lock.exists() else None
    return h is not None and h.pid == pid


@pytest.fixture
def data(tmp_path):
    return make_videomme(tmp_path / "data")


def _opts(**kw) -> RunOptions:
    return RunOptions(progress=False, **kw)


# --- one writer per run directory ------------------------------------------------------------------------
@pytest.mark.slow
def test_second_process_refuses_naming_holder_then_waits(data, tmp_path, capsys, monkeypatch):
    out, gate = tmp_path / "run", tmp_path / "gate"
    a = _start(data, out, gate, tmp_path / "calls_a.log", tmp_path / "a.log")
    try:
        _until(lambda: _holds(out / LOCK_FILE, a.pid) or a.poll() is not None, "the first run to take its lock")
        assert a.poll() is None, (tmp_path / "a.log").read_text()

        # a second `videollm eval` on the same output refuses in one line, before loading any model
        from videollm import cli

        monkeypatch.setattr(cli, "build_pipeline", lambda args: pytest.fail("a model was loaded"))
        rc = cli.main(["eval", "--task", "videomme", "--data-dir", str(data), "--output", str(out), "--model",
                       "tiny-random", "--no-progress"])
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err
        holder = read_holder(out / LOCK_FILE)
        assert f"pid {a.pid} on {holder.host}, started {holder.started}" in lines[0] and "--wait" in lines[0]

        # with --wait the second process waits for the first, then finds nothing left to do
        b = _start(data, out, "-", tmp_path / "calls_b.log", tmp_path / "b.log", wait=True)
        _until(lambda: "waiting (--wait)" in (tmp_path / "b.log").read_text() or b.poll() is not None,
               "the second run to wait")
        assert b.poll() is None and a.poll() is None
        gate.touch()
        assert a.wait(timeout=90) == 0 and b.wait(timeout=90) == 0, (tmp_path / "b.log").read_text()
    finally:
        gate.touch()
        for p in (a,):
            if p.poll() is None:
                p.kill()
    assert len((tmp_path / "calls_a.log").read_text().splitlines()) == N_ANSWERABLE
    assert not (tmp_path / "calls_b.log").exists()  # the waiting run asked the model nothing
    ids = [r["question_id"] for r in read_jsonl(out / "predictions.jsonl")]
    assert ids == [r[1] for r in VIDEOMME]  # each question exactly once


@pytest.mark.slow
def test_shard_locks_per_rank_and_stale_lock_after_sigkill(data, tmp_path):
    """Rank 0 of 2 held by a live process: its twin and a single-process run refuse, rank 1 of 2 runs;
    after the holder is SIGKILLed its lock file is left behind but no obstacle."""
    out, gate = tmp_path / "run", tmp_path / "gate"
    a = _start(data, out, gate, tmp_path / "calls_a.log", tmp_path / "a.log", RANK="0", WORLD_SIZE="2")
    lock = out / "shards" / "rank000-of-002.lock"
    try:
        _until(lambda: _holds(lock, a.pid) or a.poll() is not None, "rank 0 to take its lock")
        task = get_task("videomme")
        samples = load_samples(task, data)
        for shard in (Shard(0, 2), Shard(), Shard(0, 3)):
            with pytest.raises(RunLockedError, match=f"pid {a.pid} .*rank 0 of 2"):
                run(task, samples, ScriptedPipe(), out, shard=shard, options=_opts())
        res = run(task, samples, ScriptedPipe(), out, shard=Shard(1, 2), options=_opts())
        assert res.done_now > 0  # another rank of the same split is no conflict
        a.send_signal(signal.SIGKILL)
        a.wait(timeout=30)
    finally:
        if a.poll() is None:
            a.kill()
    assert read_holder(lock).pid == a.pid  # the dead holder's label is still there...
    res = run(task, samples, ScriptedPipe(), out, shard=Shard(0, 2), options=_opts())  # ...and no obstacle
    assert res.done_now > 0
    assert [r["question_id"] for r in res.records] == [r[1] for r in VIDEOMME]


# --- a full disk ------------------------------------------------------------------------------------------
class FullDisk:
    """A file that takes `room` more bytes, writes part of the next record, then raises ENOSPC (like a disk
    filling up mid-write)."""

    def __init__(self, f, room: int):
        self.f, self.room = f, room

    def write(self, data) -> int:
        if len(data) <= self.room:
            self.room -= len(data)
            return self.f.write(data)
        if self.room > 0:
            n, self.room = self.f.write(bytes(data[: self.room])), 0
            return n
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self.f, name)


def test_full_disk_one_error_line_nothing_torn_then_resume(data, tmp_path, monkeypatch, capsys):
    from videollm import cli

    out = tmp_path / "run"
    real_open = store._open_append
    monkeypatch.setattr(store, "_open_append", lambda p: FullDisk(real_open(p), 2500))  # ~2 records' room
    monkeypatch.setattr(cli, "build_pipeline", lambda args: ScriptedPipe())
    argv = ["eval", "--task", "videomme", "--data-dir", str(data), "--output", str(out), "--model", "tiny-random",
            "--no-progress", "--no-plots"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: could not write the record of question ")
    assert "No space left on device [ENOSPC]" in err[0] and "re-run the same command to resume" in err[0]
    raw = (out / "predictions.jsonl").read_bytes()
    assert raw.endswith(b"\n")  # the partly written record was cut off again
    kept = [json.loads(line) for line in raw.splitlines()]
    assert 1 <= len(kept) < len(VIDEOMME) and all(store.is_complete(r) for r in kept)

    monkeypatch.setattr(store, "_open_append", real_open)  # space freed: the same command resumes
    assert cli.main(argv) == 0
    recs = read_jsonl(out / "predictions.jsonl")
    assert [r["question_id"] for r in recs] == [r[1] for r in VIDEOMME]
    assert recs[: len(kept)] == kept and summarize_run(out)["score"] == pytest.approx(400 / 7)


@pytest.fixture
def small_fs(tmp_path):
    """A 64 KiB tmpfs (needs root or CAP_SYS_ADMIN; skipped where it cannot be mounted)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], check=False,
                           capture_output=True)
    except OSError as err:  # no mount command
        pytest.skip(f"cannot mount a tmpfs here: {err}")
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()[:100]}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False, capture_output=True)


def test_really_full_disk(data, small_fs, monkeypatch, capsys):
    """The same on a real filesystem that fills up: room for a few records only."""
    from videollm import cli

    filler = small_fs / "filler"
    with open(filler, "wb", buffering=0) as f:  # fill it, then free three 4 KiB pages: run.json, the lock
        try:                                      # label and a few records
            while f.write(b"\0" * 4096):
                pass
        except OSError:
            pass
    os.truncate(filler, max(0, filler.stat().st_size - 3 * 4096))
    monkeypatch.setattr(cli, "build_pipeline", lambda args: ScriptedPipe())
    out = small_fs / "run"
    argv = ["eval", "--task", "videomme", "--data-dir", str(data), "--output", str(out), "--model", "tiny-random",
            "--no-progress", "--no-plots"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: could not write ") and "[ENOSPC]" in err[0], err
    preds = out / "predictions.jsonl"
    raw = preds.read_bytes() if preds.exists() else b""
    assert raw == b"" or raw.endswith(b"\n")
    kept = [json.loads(line) for line in raw.splitlines()]
    assert len(kept) < len(VIDEOMME) and all(store.is_complete(r) for r in kept)

    filler.unlink()  # space freed: the same command resumes and finishes
    assert cli.main(argv) == 0
    recs = read_jsonl(preds)
    assert [r["question_id"] for r in recs] == [r[1] for r in VIDEOMME] and recs[: len(kept)] == kept


def test_failed_atomic_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "summary.json"
    target.write_text("old")

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(store.os, "fsync", no_space)
    with pytest.raises(RunWriteError, match=r"could not write .*summary.json: No space left on device"):
        write_atomic(target, "new")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["summary.json"]


# --- resume trusts only complete records -----------------------------------------------------------------
def test_incomplete_and_torn_records_are_redone_and_reported(data, tmp_path):
    task = get_task("videomme")
    samples = load_samples(task, data)
    out = tmp_path / "run"
    run(task, samples, ScriptedPipe(), out, options=_opts(settings={"task": "videomme"}))
    preds = out / "predictions.jsonl"
    lines = preds.read_text().splitlines()
    by_id = {json.loads(x)["question_id"]: x for x in lines}
    damaged = [x for x in lines if json.loads(x)["question_id"] not in ("001-2", "002-1")]
    damaged.insert(1, '{"question_id": "001-2"}')  # only an id: not an answer
    damaged.insert(3, by_id["002-1"][:40])  # torn in the middle of the file
    damaged.append('{"question_id": "001-1", "task": "videomme"}')  # a later partial record of a done question
    preds.write_text("\n".join(damaged) + "\n")

    pipe = ScriptedPipe()
    res = run(task, samples, pipe, out, options=_opts(settings={"task": "videomme"}))
    assert res.redone == 2 and res.done_now == 2 and len(pipe.prompts) == 2
    recs = read_jsonl(preds)
    assert [r["question_id"] for r in recs] == [r[1] for r in VIDEOMME]
    assert {r["question_id"] for r in recs if r.get("replaced_incomplete")} == {"001-2", "002-1"}
    assert recs[0] == json.loads(by_id["001-1"])  # the complete record beat the later partial one
    s = write_run_report(out, plots=False)
    assert s["redone_incomplete"] == 2 and s["score"] == pytest.approx(400 / 7)
    assert "2 question(s) were answered again" in (out / "report.md").read_text()
