"""The demo's uploads: a size limit, a private temp folder, and removal of every upload and derived file.

Gradio writes uploads, and the files it derives from them (re-encoded videos, example clips), under
`GRADIO_TEMP_DIR`, and serves every file there to anyone who names its path (`/gradio_api/file=…`). The demo
makes a folder of its own (`videollm-demo-XXXX` in the system temp folder, or under `--temp-dir`) holding the
server's `.owner` record and, beside it, `files/`: only `files/` is Gradio's, so the record (pid, hostname) is
never served (`launch` also blocks it by name). Kept frames are not files at all (the page gets them inline).
The demo removes:
- a session's previous upload when it sends another one, and all its uploads when the browser tab closes;
- every file idle for longer than `max_idle_s`, in a sweep every `sweep_every_s` seconds;
- the whole folder when the server stops; a folder left by a server that was killed (SIGKILL, power loss)
  is removed by the next server started on the same host.
Uploads over `max_size` are refused by Gradio while they stream in (HTTP 413; the page checks the size
before sending), so an oversize file never reaches the disk beyond the limit.
"""
from __future__ import annotations

import atexit
import logging
import os
import re
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

#: a long 720p video: one hour of H.264 at ~4.5 Mbit/s (a phone or camera's 720p30 bitrate) is ~2 GB, two
#: hours at the ~2.2 Mbit/s a streaming site serves 720p at; LVBench's hour-long videos fit. Raise it for 1080p.
DEFAULT_MAX_UPLOAD = "2gb"
PREFIX = "videollm-demo-"
OWNER_FILE = ".owner"
FILES_DIR = "files"
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)\s*$", re.IGNORECASE)
_ERRNO = re.compile(r"\s*\(?\[Errno -?\d+\][^)]*\)?")
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3, "t": 1024 ** 4}


@dataclass
class UploadConfig:
    max_size: str = DEFAULT_MAX_UPLOAD  # "2gb", "500mb", "1048576"
    sweep_every_s: float = 600.0
    max_idle_s: float = 3600.0  # a file nobody used for this long is removed by the sweep
    root: str | None = None  # where the private folder is made (default: the system temp folder)


def parse_size(text: str | int) -> int:
    """Bytes in `2gb`, `500 MB`, `1.5GiB`, `1048576` (binary units: Gradio's are, too)."""
    if isinstance(text, int):
        return text
    m = _SIZE.match(str(text))
    if not m:
        from videollm.errors import InvalidRequestError

        raise InvalidRequestError(f"upload size {text!r} is not a size like 2gb, 500mb or 1048576")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()[:1]])


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


class UploadArea:
    """A private temp folder for one server, with per-session tracking, a sweeper and removal on close."""

    def __init__(self, cfg: UploadConfig | None = None):
        self.cfg = cfg or UploadConfig()
        self.max_bytes = parse_size(self.cfg.max_size)
        root = Path(self.cfg.root or tempfile.gettempdir())
        root.mkdir(parents=True, exist_ok=True)
        prune_stale(root)
        self.path = Path(tempfile.mkdtemp(prefix=PREFIX, dir=root))
        (self.path / OWNER_FILE).write_text(f"{os.getpid()} {socket.gethostname()}\n")
        self.files = self.path / FILES_DIR  # Gradio's folder: everything in it can be fetched over HTTP
        self.files.mkdir()
        self._sessions: dict[str, set[str]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sweeper: threading.Thread | None = None
        atexit.register(self.close)  # however the app was served, its uploads go when the process ends
        free = shutil.disk_usage(self.path).free
        if free < 2 * self.max_bytes:
            logger.warning("only %s free under %s: two uploads of the %s allowed would fill it", human_size(free),
                           self.path, human_size(self.max_bytes))

    def activate(self) -> None:
        """Point Gradio's upload and cache folder here (read when components and the app are created)."""
        os.environ["GRADIO_TEMP_DIR"] = str(self.files)

    def owns(self, path: str | os.PathLike[str]) -> bool:
        try:
            return Path(path).resolve().is_relative_to(self.path.resolve())
        except OSError:
            return False

    def use(self, session: str | None, path: str) -> None:
        """`session` is working on `path`: keep it from the sweep; its previous, different upload goes."""
        if not self.owns(path):
            return
        try:
            os.utime(path)  # the sweep goes by last use
        except OSError:
            pass
        if session is None:
            return
        with self._lock:
            old = self._sessions.get(session, set()) - {path}
            self._sessions[session] = {path}
        for p in old:
            self._remove(p)

    def end_session(self, session: str | None) -> None:
        """The browser tab closed: its uploads go now rather than at the next sweep."""
        with self._lock:
            paths = self._sessions.pop(session or "", set())
        for p in paths:
            self._remove(p)

    def sweep(self, max_idle_s: float | None = None) -> int:
        """Remove files unused for `max_idle_s` (default: the config's) and the folders they leave empty."""
        limit = time.time() - (self.cfg.max_idle_s if max_idle_s is None else max_idle_s)
        removed = 0
        for dirpath, dirnames, filenames in os.walk(self.path, topdown=False):
            for name in filenames:
                p = Path(dirpath) / name
                if p.name == OWNER_FILE and p.parent == self.path:
                    continue
                try:
                    if p.stat().st_mtime < limit:
                        p.unlink()
                        removed += 1
                except OSError:
                    continue
            if Path(dirpath) not in (self.path, self.files):
                try:
                    os.rmdir(dirpath)  # only when empty
                except OSError:
                    pass
        if removed:
            logger.info("removed %d idle upload file(s) from %s", removed, self.path)
        return removed

    def start_sweeper(self) -> None:
        def loop() -> None:
            while not self._stop.wait(self.cfg.sweep_every_s):
                try:
                    self.sweep()
                except Exception as err:  # noqa: BLE001 - a failed sweep must not end the server
                    logger.warning("upload sweep failed: %s", err)

        self._sweeper = threading.Thread(target=loop, name="videollm-upload-sweeper", daemon=True)
        self._sweeper.start()

    def close(self) -> None:
        """Remove the folder and everything in it (the server is stopping). Safe to call twice."""
        self._stop.set()
        if self.path.exists():
            shutil.rmtree(self.path, ignore_errors=True)
            logger.info("removed the demo's upload folder %s", self.path)

    def _remove(self, path: str) -> None:
        """Remove an upload with the folder Gradio gave it (which also holds its re-encoded copies)."""
        if not self.owns(path):
            return
        p = Path(path).resolve()
        folder = p.parent
        roots = (self.path.resolve(), self.files.resolve())
        try:
            if folder not in roots and folder.parent in roots:
                shutil.rmtree(folder, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
        except OSError:
            pass


def prune_stale(root: Path) -> list[Path]:
    """Remove the folders of demo servers on this host that are no longer running (killed, crashed)."""
    removed = []
    host = socket.gethostname()
    for d in root.glob(PREFIX + "*"):
        try:
            pid_text, owner_host = (d / OWNER_FILE).read_text().split()
            pid = int(pid_text)
        except (OSError, ValueError):
            continue
        if owner_host != host or pid == os.getpid() or _alive(pid):
            continue
        shutil.rmtree(d, ignore_errors=True)
        removed.append(d)
        logger.info("removed %s, left by demo server pid %d that is no longer running", d, pid)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def user_message(err: BaseException, upload: str | None, area_path: Path | None = None) -> str:
    """The error's first line with the server's path to the upload replaced by the name the user gave it."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if upload:
        name = Path(upload).name
        text = text.replace(str(upload), name).replace(str(Path(upload).resolve()), name)
    roots = [str(area_path)] if area_path else []
    roots.append(os.environ.get("GRADIO_TEMP_DIR") or str(Path(tempfile.gettempdir()) / "gradio"))
    for root in filter(None, roots):
        text = re.sub(re.escape(root.rstrip("/")) + r"/[^\s'\"]*/([^/\s'\"]+)", r"\1", text)
        text = text.replace(root, "…")
    text = _ERRNO.sub("", text).strip()  # "([Errno 1094995529] Invalid data …: 'x.mp4')" says nothing more
    return text[:400]
