"""The HTTP layer: OpenAI-compatible routes over an `Engine` (FastAPI on uvicorn; imported only by `serve`).

FastAPI rather than litserve: the OpenAI surface needs full control of the body (size cap before parsing,
our own 4xx bodies), server-sent events and client-disconnect detection, while the queue, batching and
prefetching are the engine's (litserve would bring its own worker model around the same single model).

A pure ASGI gate in front checks the API key and the body size on every route and writes one access-log
line per request; every error, even a 404 route, is an OpenAI-style JSON body.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from ..types import Answer
from .engine import Engine, Event, Job, RequestTimeoutError
from .errors import ServeError, error_for
from .schema import ServeLimits, parse_chat

logger = logging.getLogger(__name__)
access = logging.getLogger("videollm.serve.access")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Answer fields returned in the `videollm` extra field
DETAILS = ("choice", "options", "kept_frames", "kept_timestamps", "visual_tokens", "sampled_frames",
           "tokens_per_frame", "generated_tokens", "reasoning", "thought", "initial_answer", "confidence",
           "thinking_fired", "finish_reason", "timings", "warnings", "compressor_stats")


@dataclass(frozen=True)
class ServeSettings:
    model_name: str
    api_key: str | None = None
    max_body_bytes: int = 700 * 2**20  # a base64 video of the default 512 MiB cap, plus JSON
    limits: ServeLimits = field(default_factory=ServeLimits)


def create_app(engine: Engine, settings: ServeSettings) -> ASGIApp:
    """The ASGI app: FastAPI routes behind the key/size/log gate."""
    app = FastAPI(title="videollm", docs_url=None, redoc_url=None, openapi_url=None)
    created = int(time.time())

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        kind = "not_found" if exc.status_code == 404 else "invalid_request_error"
        return _json_error(ServeError(str(exc.detail), exc.status_code, kind))

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _json_error(ServeError("the request does not match this route"))

    @app.exception_handler(Exception)
    async def any_error(_: Request, exc: Exception) -> JSONResponse:
        return _json_error(error_for(exc))

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": settings.model_name, "object": "model", "created": created,
                                            "owned_by": "videollm"}]}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "waiting": engine.waiting, **engine.stats}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        try:
            engine.check_room()  # a full queue answers 429 before reading (and parsing) a large body
            body = await _read_json(request, settings.max_body_bytes)
            req = parse_chat(body, settings.model_name, engine.base.config, settings.limits)
            events: asyncio.Queue[Event] = asyncio.Queue()
            job = engine.submit(req, asyncio.get_running_loop(), events)
        except Exception as err:  # noqa: BLE001 - every refusal becomes a JSON error; error_for logs bugs
            return _json_error(error_for(err))
        rid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        first = await _next_event(request, job, events)  # "ready" once the video is open and encoded
        if first.kind == "error":
            return _json_error(first.error or ServeError("request failed"))
        if req.stream:
            return StreamingResponse(_sse(request, job, events, rid, settings.model_name),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        while True:
            ev = await _next_event(request, job, events)
            if ev.kind == "done" and ev.answer is not None:
                return JSONResponse(_completion(rid, settings.model_name, ev))
            if ev.kind == "error":
                return _json_error(ev.error or ServeError("request failed"))

    return _Gate(app, settings)


async def _next_event(request: Any, job: Job, events: asyncio.Queue[Event]) -> Event:
    """The job's next event; cancels the job (and answers with an error event) if the client goes away."""
    while True:
        try:
            return await asyncio.wait_for(events.get(), timeout=0.25)
        except asyncio.TimeoutError:
            if await request.is_disconnected():
                job.cancel.set()
                return Event("error", error=ServeError("client disconnected", 499, "cancelled"))
            if job.stopped() and not job.cancel.is_set():
                job.cancel.set()  # the deadline passed while waiting: the engine drops it when it gets there
                return Event("error", error=RequestTimeoutError("the request took longer than the server's time-out"))


async def _sse(request: Any, job: Job, events: asyncio.Queue[Event], rid: str, model: str) -> AsyncIterator[bytes]:
    created = int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        body = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n".encode()

    try:
        yield chunk({"role": "assistant", "content": ""})
        while True:
            ev = await _next_event(request, job, events)
            if ev.kind == "delta":
                yield chunk({"content": ev.text})
            elif ev.kind == "done" and ev.answer is not None:
                yield chunk({}, _finish(ev.answer), videollm=_details(ev.answer))
                if job.request.include_usage:
                    usage = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                             "choices": [], "usage": _usage(ev)}
                    yield f"data: {json.dumps(usage)}\n\n".encode()
                break
            elif ev.kind == "error":
                err = ev.error or ServeError("request failed")
                yield f"data: {json.dumps(err.body())}\n\n".encode()
                break
        yield b"data: [DONE]\n\n"
    finally:
        job.cancel.set()  # a no-op once done; stops generation when the client left mid-stream


def _finish(ans: Answer) -> str:
    return "length" if ans.finish_reason == "length" else "stop"


def _usage(ev: Event) -> dict[str, int]:
    completion = ev.answer.generated_tokens if ev.answer is not None else 0
    return {"prompt_tokens": ev.prompt_tokens, "completion_tokens": completion,
            "total_tokens": ev.prompt_tokens + completion}


def _details(ans: Answer) -> dict[str, Any]:
    d = ans.to_dict()
    return {k: d[k] for k in DETAILS if k in d}


def _completion(rid: str, model: str, ev: Event) -> dict[str, Any]:
    ans = ev.answer
    assert ans is not None
    return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": ans.text},
                         "finish_reason": _finish(ans), "logprobs": None}],
            "usage": _usage(ev), "videollm": _details(ans)}


async def _read_json(request: Any, limit: int) -> Any:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ServeError(f"the request body is larger than the {limit // 2**20} MiB limit", 413,
                             "request_too_large")
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ServeError(f"the request body is not valid JSON ({err.msg if hasattr(err, 'msg') else err})") from err


def _json_error(err: ServeError) -> JSONResponse:
    headers = {"Retry-After": "2"} if err.status == 429 else None
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


class _Gate:
    """API key and body size on every route, and one access-log line per request."""

    def __init__(self, app: ASGIApp, settings: ServeSettings):
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status, sent = [0], [0]

        async def send_logged(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            elif message["type"] == "http.response.body":
                sent[0] += len(message.get("body", b""))
            await send(message)

        try:
            refusal = self._refusal(scope)
            if refusal is not None:
                await _send_error(send_logged, refusal)
                return
            await self.app(scope, receive, send_logged)
        finally:
            client = scope.get("client") or ("-", 0)
            access.info('%s "%s %s" %d %d %.0fms', client[0], scope.get("method", "-"), scope.get("path", "-"),
                        status[0], sent[0], (time.perf_counter() - start) * 1000)

    def _refusal(self, scope: Scope) -> ServeError | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        key = self.settings.api_key
        if key:
            given = headers.get("authorization", "")
            scheme, _, token = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
                return ServeError("missing or wrong API key (send 'Authorization: Bearer KEY')", 401,
                                  "invalid_api_key")
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.settings.max_body_bytes:
            return ServeError(f"the request body is larger than the {self.settings.max_body_bytes // 2**20} MiB "
                              "limit", 413, "request_too_large")
        return None


async def _send_error(send: Send, err: ServeError) -> None:
    body = json.dumps(err.body()).encode()
    await send({"type": "http.response.start", "status": err.status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
