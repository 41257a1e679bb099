"""video/remote.py: URL, data URI and file URI inputs, their caps and the private-address guard."""
from __future__ import annotations

import base64
import functools
import http.server
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from videollm.errors import InvalidRequestError
from videollm.video import remote
from videollm.video.remote import FetchLimits, VideoFetchError, VideoTooLargeError, check_address, materialize

CLIP = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40


@pytest.mark.parametrize("ip,private", [("8.8.8.8", False), ("2606:4700:4700::1111", False),
                                        ("127.0.0.1", True), ("10.1.2.3", True), ("192.168.0.9", True),
                                        ("172.16.5.4", True), ("169.254.169.254", True), ("::1", True),
                                        ("fe80::1", True), ("fc00::1", True), ("0.0.0.0", True),
                                        ("224.0.0.1", True), ("100.64.0.1", True), ("::ffff:127.0.0.1", True)])
def test_private_addresses_refused(ip, private):
    if private:
        with pytest.raises(VideoFetchError):
            check_address(ip, allow_private=False)
        check_address(ip, allow_private=True)
    else:
        check_address(ip, allow_private=False)


def test_every_resolved_address_is_checked(monkeypatch):
    answers = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.215.14", 80)),
               (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.7", 80))]
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: answers)
    with pytest.raises(VideoFetchError, match="private"):
        remote.resolve_public("videos.example", 80, allow_private=False)
    assert remote.resolve_public("videos.example", 80, allow_private=True) == "93.184.215.14"


def test_cli_tells_urls_apart_like_the_pipeline():
    from videollm import cli

    assert cli.REMOTE_PREFIXES == remote.REMOTE_PREFIXES
    assert remote.is_remote("HTTPS://x/y.mp4") and remote.is_remote("data:video/mp4;base64,AA")
    assert not remote.is_remote("clip.mp4") and not remote.is_remote(Path("http://x"))


def test_data_uri(tmp_path):
    uri = "data:video/mp4;base64," + base64.b64encode(CLIP).decode()
    path = materialize(uri, tmp_path)
    assert path.read_bytes() == CLIP
    again = materialize(uri, tmp_path)  # same bytes: same file and mtime, so the same feature-cache key
    assert again == path and os.stat(again).st_mtime_ns == os.stat(path).st_mtime_ns
    with pytest.raises(VideoTooLargeError):
        materialize(uri, tmp_path, FetchLimits(max_bytes=100))
    with pytest.raises(InvalidRequestError, match="not a video"):
        materialize("data:text/plain;base64,aGVsbG8=", tmp_path)
    with pytest.raises(InvalidRequestError, match="base64"):
        materialize("data:video/mp4,rawbytes", tmp_path)
    with pytest.raises(InvalidRequestError, match="invalid"):
        materialize("data:video/mp4;base64,@@@@", tmp_path)


def test_file_uri_only_under_allowed_dirs(tmp_path):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "a.mp4").write_bytes(CLIP)
    (tmp_path / "secret.mp4").write_bytes(CLIP)
    with pytest.raises(VideoFetchError, match="not allowed"):
        materialize(f"file://{allowed}/a.mp4", tmp_path)
    limits = FetchLimits(file_dirs=(str(allowed),))
    assert materialize(f"file://{allowed}/a.mp4", tmp_path / "x", limits) == (allowed / "a.mp4").resolve()
    with pytest.raises(VideoFetchError, match="outside") as err:
        materialize(f"file://{allowed}/../secret.mp4", tmp_path, limits)
    assert str(tmp_path) not in str(err.value)


@pytest.fixture()
def web(tmp_path):
    """A loopback server: /clip.mp4, /big.mp4, /page.html and /hop (a redirect to 127.0.0.2)."""
    (tmp_path / "clip.mp4").write_bytes(CLIP)
    (tmp_path / "big.mp4").write_bytes(CLIP * 50)
    (tmp_path / "page.html").write_text("<html></html>")
    seen: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.path)
            if self.path == "/hop":
                self.send_response(302)
                self.send_header("Location", f"http://127.0.0.2:{self.server.server_address[1]}/clip.mp4")
                self.end_headers()
                return
            super().do_GET()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(tmp_path)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", seen
    httpd.shutdown()


def test_http_fetch_caps_and_types(web, tmp_path):
    base, seen = web
    ok = FetchLimits(allow_private=True)
    assert materialize(f"{base}/clip.mp4", tmp_path / "out", ok).read_bytes() == CLIP
    with pytest.raises(VideoFetchError, match="private"):
        materialize(f"{base}/clip.mp4", tmp_path / "out")  # loopback refused by default, before connecting
    assert seen == ["/clip.mp4"]
    with pytest.raises(VideoTooLargeError):
        materialize(f"{base}/big.mp4", tmp_path / "out", FetchLimits(allow_private=True, max_bytes=len(CLIP) * 2))
    with pytest.raises(VideoFetchError, match="not a video"):
        materialize(f"{base}/page.html", tmp_path / "out", ok)
    with pytest.raises(VideoFetchError, match="HTTP 404"):
        materialize(f"{base}/missing.mp4", tmp_path / "out", ok)
    with pytest.raises(VideoFetchError, match="cannot fetch|cannot resolve"):
        materialize("http:///nohost.mp4", tmp_path / "out", ok)


def test_redirects_are_checked_again(web, tmp_path, monkeypatch):
    base, seen = web
    real = remote.check_address

    def only_first_loopback(ip, allow_private):  # 127.0.0.1 plays a public host, 127.0.0.2 a private one
        if ip != "127.0.0.1":
            real(ip, allow_private)

    monkeypatch.setattr(remote, "check_address", only_first_loopback)
    with pytest.raises(VideoFetchError, match="private"):
        materialize(f"{base}/hop", tmp_path / "out")
    assert seen == ["/hop"]  # the redirect target was never contacted


def test_fetch_timeout(tmp_path):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # accepts, never answers
    try:
        with pytest.raises(VideoFetchError, match="timed out"):
            materialize(f"http://127.0.0.1:{silent.getsockname()[1]}/v.mp4", tmp_path,
                        FetchLimits(allow_private=True, timeout_s=0.5))
    finally:
        silent.close()


def test_pipeline_and_cli_take_urls_with_the_same_caps(tiny_pipeline, short_video, web):
    """`pipe(data_uri, q)` answers like the file; a loopback URL is refused by default in the API and the CLI."""
    base, _ = web
    uri = "data:video/mp4;base64," + base64.b64encode(Path(short_video).read_bytes()).decode()
    assert tiny_pipeline(uri, "what is shown?").text == tiny_pipeline(str(short_video), "what is shown?").text
    with pytest.raises(VideoFetchError, match="private"):
        tiny_pipeline(f"{base}/clip.mp4", "what is shown?")
    for allow, expected in (("0", "private"), ("1", "video")):  # allowed: fetched, then not a decodable video
        env = {**os.environ, "VIDEOLLM_ALLOW_PRIVATE_URLS": allow}
        out = subprocess.run([sys.executable, "-m", "videollm", "ask", f"{base}/clip.mp4", "what?", "--model",
                              "tiny-random"], capture_output=True, text=True, env=env, timeout=120, check=False)
        assert out.returncode == 2 and out.stderr.startswith("error:") and expected in out.stderr, out.stderr
        assert "Traceback" not in out.stderr
