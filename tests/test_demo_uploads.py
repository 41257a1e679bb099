"""The demo's uploads: bounded, cleaned up, failures as messages. A real server on 127.0.0.1 driven through
gradio_client (never a share link), plus the upload folder's rules on their own."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

from videollm.demo.uploads import OWNER_FILE, UploadArea, UploadConfig, parse_size, prune_stale, user_message
from videollm.errors import NotAVideoError
from videollm.synthetic import write_video

ENV = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
       "HF_HUB_DISABLE_TELEMETRY": "1", "OMP_NUM_THREADS": "1"}


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != OWNER_FILE)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_up(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180.0) -> None:
    import httpx

    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise AssertionError("demo server exited:\n" + log.read_text()[-3000:])
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError("demo server did not come up:\n" + log.read_text()[-3000:])


@pytest.mark.slow
def test_demo_server_bounds_uploads_reports_failures_and_cleans_up(tmp_path):
    import httpx
    from gradio_client import Client, handle_file

    root, log = tmp_path / "tmp", tmp_path / "server.log"
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    with open(log, "wb") as out:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen([sys.executable, "-m", "videollm", "demo", "--model", "tiny-random", "--device",
                                 "cpu", "--port", str(port), "--max-upload-size", "1mb", "--temp-dir", str(root)],
                                env={**os.environ, **ENV}, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_up(url, proc, log)
        (area,) = root.glob("videollm-demo-*")  # the server's private upload folder
        examples = set(_files(root))  # the shipped example clips Gradio copied in for its Examples table

        # oversize: the server refuses the stream (HTTP 413) and keeps nothing of it; the client refuses too
        big = tmp_path / "holiday.mp4"
        big.write_bytes(os.urandom(2 * 1024 * 1024))
        with open(big, "rb") as f:
            r = httpx.post(url + "gradio_api/upload", files={"files": ("holiday.mp4", f)}, timeout=60)
        assert r.status_code == 413 and "maximum allowed size of 1048576 bytes" in r.text
        assert set(_files(root)) == examples
        client = Client(url, verbose=False)
        args = ("What is shown?", "", "tiny-random", "uniform", "", 4, "direct", "none", "none", 8, "(none)", [], "")
        with pytest.raises(Exception, match="exceeds the maximum file size"):
            client.predict(handle_file(str(big)), *args, api_name="/ask")

        # a 1x1 video is answered (both decoders read it), with no traceback anywhere
        tiny = write_video(tmp_path / "one.mp4", 8, fps=4, size=(1, 1), codec="mpeg4",
                           frame_fn=lambda i, h, w: np.full((h, w, 3), 100, np.uint8))
        out = client.predict(handle_file(str(tiny)), *args, api_name="/ask")
        md, gallery = out[4], out[7]
        assert "vl-answer" in md and str(root) not in repr(out)  # nothing the page gets names the server's folder
        assert "<img" in gallery and "data:image/jpeg;base64," in gallery  # kept frames inline, not files
        # a damaged file: a message on the page naming the user's file, one log line, no traceback
        broken = tmp_path / "dot.mp4"
        broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(4096))
        out = client.predict(handle_file(str(broken)), *args, api_name="/ask")
        md, gallery = out[4], out[7]
        assert 'class="vl-error"' in md and "dot.mp4" in md and str(root) not in repr(out) and gallery == ""
        assert "Errno" not in md

        # a good video is answered; its upload lives in the private folder while in use
        good = write_video(tmp_path / "clip.mp4", 12, fps=6, size=(48, 64))
        out = client.predict(handle_file(str(good)), *args, api_name="/ask")
        md, took, gallery = out[4], out[5], out[7]
        assert "vl-error" not in md and "vl-answer" in md and took.startswith("took") and "<img" in gallery
        assert str(root) not in repr(out)
        assert any(p.name == "clip.mp4" for p in _files(area))

        # the server's .owner record (pid, hostname) is not served, though the upload's folder is known
        owner = area / OWNER_FILE
        assert owner.exists() and str(area) in str(next(p for p in _files(area) if p.name == "clip.mp4"))
        for path in (owner, area / "files" / ".." / OWNER_FILE):
            r = httpx.get(url + f"gradio_api/file={path}", timeout=10)
            assert r.status_code == 403 and socket.gethostname() not in r.text
        clip = next(p for p in _files(area) if p.name == "clip.mp4")
        assert httpx.get(url + f"gradio_api/file={clip}", timeout=10).status_code == 200  # uploads still play
        client.close()  # the session ends (a browser tab closing): its upload goes at once, not at the sweep
        end = time.time() + 60
        while time.time() < end and any(p.name == "clip.mp4" for p in _files(area)):
            time.sleep(0.2)
        assert not any(p.name == "clip.mp4" for p in _files(area))
    finally:
        proc.send_signal(signal.SIGTERM)  # stop the server as a service manager would
        rc = proc.wait(timeout=120)
    text = log.read_text()
    assert rc == 0, text[-3000:]
    assert "Traceback" not in text
    assert "share=True" not in text and f"http://127.0.0.1:{port}/" in text  # no share hint; our own URL line
    failures = [line for line in text.splitlines() if "dot.mp4" in line]
    assert len(failures) == 1 and ("WARNING" in failures[0] or "ERROR" in failures[0]) and str(root) not in failures[0]
    assert list(root.iterdir()) == []  # uploads and derived files (gallery images) gone with the server


def test_upload_area_sweeps_replaces_and_prunes(tmp_path, monkeypatch):
    monkeypatch.delenv("GRADIO_TEMP_DIR", raising=False)  # restored after the test
    area = UploadArea(UploadConfig(root=str(tmp_path)))
    assert area.path.parent == tmp_path and (area.path / OWNER_FILE).exists()
    area.activate()  # Gradio's folder (served over HTTP) is files/, beside the owner record, not above it
    assert os.environ["GRADIO_TEMP_DIR"] == str(area.files) and area.files.parent == area.path
    assert not (area.files / OWNER_FILE).exists()
    old, fresh = area.path / "a" / "one.mp4", area.path / "b" / "frame.webp"
    for p in (old, fresh):
        p.parent.mkdir()
        p.write_bytes(b"x")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    assert area.sweep(max_idle_s=3600) == 1 and not old.parent.exists() and fresh.exists()
    assert area.sweep(max_idle_s=0) == 1 and area.files.is_dir()  # Gradio's folder itself stays

    # a session's upload is removed (with its folder) when it sends another one, or when its tab closes
    first, second = area.path / "c" / "v1.mp4", area.files / "d" / "v2.mp4"
    for p in (first, second):
        p.parent.mkdir()
        p.write_bytes(b"x")
    area.use("s1", str(first))
    area.use("s1", str(first))  # asking again about the same video keeps it
    assert first.exists()
    area.use("s1", str(second))
    assert not first.parent.exists() and second.exists()
    area.end_session("s1")
    assert not second.parent.exists()
    area.use("s2", "/etc/hostname")  # never touches files outside its folder
    area.end_session("s2")
    assert Path("/etc/hostname").exists()

    # a folder left by a server that died is removed by the next one; a live server's is kept
    dead = tmp_path / "videollm-demo-dead"
    dead.mkdir()
    (dead / OWNER_FILE).write_text(f"{_dead_pid()} {socket.gethostname()}\n")
    assert prune_stale(tmp_path) == [dead] and area.path.exists()
    area.close()
    assert not area.path.exists()


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_sizes_and_messages_without_server_paths(tmp_path):
    assert parse_size("2gb") == 2 * 1024 ** 3 and parse_size("500 MB") == 500 * 1024 ** 2
    assert parse_size("1048576") == 1048576 and parse_size("1.5GiB") == int(1.5 * 1024 ** 3)
    with pytest.raises(ValueError, match="not a size"):
        parse_size("lots")
    upload = tmp_path / "videollm-demo-x" / "3f2a" / "my holiday.mp4"
    err = NotAVideoError(f"{upload} is not a video (no video stream); tried {upload.parent}/other.mp4")
    msg = user_message(err, str(upload), tmp_path / "videollm-demo-x")
    assert msg.startswith("my holiday.mp4 is not a video") and str(tmp_path) not in msg and "other.mp4" in msg
    noisy = NotAVideoError(f"{upload}: not a video file ([Errno 1094995529] Invalid data found when processing "
                           f"input: '{upload}')")
    assert user_message(noisy, str(upload), tmp_path / "videollm-demo-x") == "my holiday.mp4: not a video file"
