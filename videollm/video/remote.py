"""Video given by URL or inline: `http(s)://…`, `data:video/…;base64,…` and `file://…`, made a local file.

The pipeline, `videollm ask` and `videollm serve` all take these through `materialize()`, with the same caps
(`FetchLimits`). A server that fetches URLs for its users must not become a way into the network behind it,
so every address a host name resolves to is checked (private, loopback, link-local, multicast, reserved and
unspecified addresses are refused unless `allow_private`), the connection goes to the address that was
checked (no second DNS answer can swap it), and each redirect is checked again. `file://` is refused unless
the operator names directories it may read from.

Files are named by the SHA-256 of their bytes and given a fixed modification time, so the same video sent
again (a follow-up turn re-sends the whole conversation) has the same feature-cache key and is not
re-encoded.
"""
from __future__ import annotations

import atexit
import base64
import binascii
import hashlib
import http.client
import ipaddress
import logging
import os
import shutil
import socket
import ssl
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InvalidRequestError, VideoError, VideoNotFoundError

logger = logging.getLogger(__name__)

#: the defaults every entry point shares (`videollm serve` flags override them; env vars for ask/Python)
DEFAULT_MAX_BYTES = int(float(os.environ.get("VIDEOLLM_MAX_VIDEO_MB", "512")) * 2**20)
DEFAULT_TIMEOUT_S = float(os.environ.get("VIDEOLLM_FETCH_TIMEOUT", "60"))
MAX_REDIRECTS = 5
#: what makes a video argument a URL or data URI rather than a path (the CLI keeps a torch-free copy)
REMOTE_PREFIXES = ("http://", "https://", "data:", "file://")
_FIXED_MTIME = 1_000_000_000  # same bytes → same (size, mtime, content) → same feature-cache key
#: content types a video URL may answer with; octet-stream because many servers label mp4 files so
VIDEO_CONTENT_TYPES = ("video/", "application/octet-stream", "application/mp4")


class VideoFetchError(VideoError):
    """A remote or inline video could not be had (refused address, bad type, time-out, HTTP error)."""


class VideoTooLargeError(VideoFetchError):
    """The video is larger than the configured cap."""


@dataclass(frozen=True)
class FetchLimits:
    """What a URL, data URI or file URI may cost and reach."""

    max_bytes: int = DEFAULT_MAX_BYTES
    timeout_s: float = DEFAULT_TIMEOUT_S
    allow_private: bool = os.environ.get("VIDEOLLM_ALLOW_PRIVATE_URLS", "0") == "1"
    #: directories `file://` URIs may name (resolved); empty: `file://` refused
    file_dirs: tuple[str, ...] = field(default_factory=tuple)


def is_remote(source: object) -> bool:
    """Whether `source` is a URL or data URI this module resolves (a plain path is not)."""
    if not isinstance(source, str):
        return False
    return source[:8].lower().startswith(REMOTE_PREFIXES)


def describe(source: str) -> str:
    """A short, safe name for a source in messages (never a data URI's payload or a file path)."""
    low = source[:8].lower()
    if low.startswith("data:"):
        return "the inline (data:) video"
    if low.startswith("file:"):
        return "the file:// video"
    parts = urllib.parse.urlsplit(source)
    return f"{parts.scheme}://{parts.hostname or ''}{parts.path[:80]}"


def materialize(source: str, directory: str | os.PathLike[str], limits: FetchLimits | None = None) -> Path:
    """The video at `source` as a file in `directory` (named by its content), within `limits`.

    A `file://` URI under an allowed directory is returned as it is (nothing copied)."""
    limits = limits or FetchLimits()
    low = source[:8].lower()
    if low.startswith("file:"):
        return _local_file(source, limits)
    if low.startswith("data:"):
        data = _decode_data_uri(source, limits)
    elif low.startswith(("http://", "https://")):
        data = _download(source, limits)
    else:
        raise InvalidRequestError(f"unsupported video URL scheme in {describe(source)!r}; use http(s)://, "
                                  "data:video/…;base64, or file://")
    return _store(data, Path(directory))


def _store(data: bytes, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / (hashlib.sha256(data).hexdigest()[:32] + ".video")
    if not path.exists():
        tmp = path.with_suffix(f".part{threading.get_ident()}")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    os.utime(path, (_FIXED_MTIME, _FIXED_MTIME))
    return path


# ---- data: and file: ----------------------------------------------------------------------------------
def _decode_data_uri(uri: str, limits: FetchLimits) -> bytes:
    header, sep, payload = uri.partition(",")
    if not sep:
        raise InvalidRequestError("a data URI needs a ',' before its payload")
    media, *params = header[5:].split(";")
    if "base64" not in (p.strip().lower() for p in params):
        raise InvalidRequestError("only base64 data URIs are accepted (data:video/mp4;base64,...)")
    if not _video_type(media):
        raise InvalidRequestError(f"a data URI of type {media.strip() or 'unknown'!r} is not a video; "
                                  "use data:video/...;base64,")
    if len(payload) * 3 // 4 > limits.max_bytes:
        raise VideoTooLargeError(f"the inline video is larger than the {_mib(limits.max_bytes)} limit")
    try:
        return base64.b64decode(payload.strip(), validate=True)
    except (binascii.Error, ValueError) as err:
        raise InvalidRequestError(f"the data URI's base64 payload is invalid ({err})") from err


def _local_file(uri: str, limits: FetchLimits) -> Path:
    if not limits.file_dirs:
        raise VideoFetchError("file:// URLs are not allowed here (the operator can allow directories)")
    parts = urllib.parse.urlsplit(uri)
    if parts.netloc not in ("", "localhost"):
        raise VideoFetchError("file:// URLs must name a local path (file:///...)")
    path = Path(urllib.parse.unquote(parts.path)).resolve()
    for allowed in limits.file_dirs:
        if path.is_relative_to(Path(allowed).resolve()):
            break
    else:
        raise VideoFetchError("the file:// path is outside the allowed directories")
    if not path.is_file():
        raise VideoNotFoundError("the file:// video does not exist")
    if path.stat().st_size > limits.max_bytes:
        raise VideoTooLargeError(f"the file:// video is larger than the {_mib(limits.max_bytes)} limit")
    return path


# ---- http(s) --------------------------------------------------------------------------------------------
def check_address(ip: str, allow_private: bool) -> None:
    """Refuse an address on a private, loopback, link-local or otherwise non-public network."""
    addr = ipaddress.ip_address(ip.split("%")[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if allow_private:
        return
    if (addr.is_private or addr.is_loopback or addr.is_link_local or addr.is_multicast or addr.is_reserved
            or addr.is_unspecified or not addr.is_global):
        raise VideoFetchError("the video URL points to a private, loopback or link-local address; refused")


def resolve_public(host: str, port: int, allow_private: bool) -> str:
    """One address of `host` to connect to, after checking every address it resolves to."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as err:
        raise VideoFetchError(f"cannot resolve the video URL's host {host!r}") from err
    addresses = [str(info[4][0]) for info in infos]
    if not addresses:
        raise VideoFetchError(f"cannot resolve the video URL's host {host!r}")
    for ip in addresses:
        check_address(ip, allow_private)
    return addresses[0]


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to the checked address, whatever DNS answers now."""

    def __init__(self, host: str, port: int, ip: str, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self._ip = ip

    def connect(self) -> None:
        self.sock = socket.create_connection((self._ip, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, ip: str, timeout: float):
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._ip = ip

    def connect(self) -> None:
        sock = socket.create_connection((self._ip, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]


def _download(url: str, limits: FetchLimits) -> bytes:
    deadline = time.monotonic() + limits.timeout_s
    for _ in range(MAX_REDIRECTS + 1):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise VideoFetchError(f"cannot fetch {describe(url)!r}: only http(s) URLs with a host")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as err:
            raise VideoFetchError("the video URL has an invalid port") from err
        ip = resolve_public(parts.hostname, port, limits.allow_private)
        cls = _PinnedHTTPSConnection if parts.scheme == "https" else _PinnedHTTPConnection
        conn = cls(parts.hostname, port, ip, timeout=max(0.1, deadline - time.monotonic()))
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        try:
            conn.request("GET", target, headers={"User-Agent": "videollm", "Accept": "video/*"})
            resp = conn.getresponse()
            if resp.status in (301, 302, 303, 307, 308):
                location = resp.getheader("Location")
                if not location:
                    raise VideoFetchError(f"{describe(url)}: a redirect without a Location")
                url = urllib.parse.urljoin(url, location)  # checked again on the next round
                continue
            if resp.status != 200:
                raise VideoFetchError(f"{describe(url)}: the server answered HTTP {resp.status}")
            ctype = (resp.getheader("Content-Type") or "").split(";")[0].strip().lower()
            if not _video_type(ctype):
                raise VideoFetchError(f"{describe(url)}: the server says it is {ctype or 'untyped'}, not a video")
            length = resp.getheader("Content-Length")
            if length and length.isdigit() and int(length) > limits.max_bytes:
                raise VideoTooLargeError(f"{describe(url)}: {_mib(int(length))} is over the "
                                         f"{_mib(limits.max_bytes)} limit")
            return _read_capped(resp, limits.max_bytes, deadline, url)
        except (OSError, http.client.HTTPException) as err:
            if time.monotonic() >= deadline or isinstance(err, (socket.timeout, TimeoutError)):
                raise VideoFetchError(f"{describe(url)}: timed out after {limits.timeout_s:g} s") from err
            raise VideoFetchError(f"{describe(url)}: cannot be fetched ({type(err).__name__})") from err
        finally:
            conn.close()
    raise VideoFetchError(f"{describe(url)}: more than {MAX_REDIRECTS} redirects")


def _read_capped(resp: http.client.HTTPResponse, cap: int, deadline: float, url: str) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while True:
        if time.monotonic() > deadline:
            raise TimeoutError("deadline")
        chunk = resp.read(1 << 16)
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > cap:
            raise VideoTooLargeError(f"{describe(url)}: larger than the {_mib(cap)} limit")
        chunks.append(chunk)


def _video_type(media: str) -> bool:
    media = media.strip().lower()
    return any(media.startswith(t) for t in VIDEO_CONTENT_TYPES)


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n} bytes"


# ---- the process-wide store for `ask` and the Python API ----------------------------------------------
_STORE: Path | None = None
_STORE_LOCK = threading.Lock()
#: fetched files kept for reuse by `pipe(url, q)` (a follow-up about the same URL is not re-encoded)
STORE_KEEP = 4


def fetch(source: str, limits: FetchLimits | None = None) -> str:
    """`source` as a local path in a private temp folder that is removed when the process exits; the
    folder keeps the `STORE_KEEP` most recent videos."""
    global _STORE
    with _STORE_LOCK:
        if _STORE is None:
            _STORE = Path(tempfile.mkdtemp(prefix="videollm-remote-"))
            atexit.register(shutil.rmtree, _STORE, True)
        store = _STORE
    path = materialize(source, store, limits)
    if path.parent == store:
        kept = sorted(store.glob("*.video"), key=lambda p: p.stat().st_ctime, reverse=True)
        for old in kept[STORE_KEEP:]:
            if old != path:
                old.unlink(missing_ok=True)
    return str(path)
