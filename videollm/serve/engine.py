"""The request queue in front of the model: bounded, batched by video, prefetched, cancellable.

Two threads share the model. The *prefetch* thread takes the next requests, groups those about the same
video (same bytes, sampling and compressor: one batch), materialises the video once (`video/remote.py`),
opens it, and runs decoding and the vision tower into the feature cache (`VideoQAPipeline.prefetch`) while
the *answer* thread is still generating the previous answer. The answer thread then answers each question
of a batch on the one opened video: frames come from the feature cache and the prompt prefix from the prefix
cache, so a batch pays for its video once. Generation itself runs one request at a time (the CPU decode step
is batch-1).

Bounded: at most `max_queue` requests wait (the caller answers 429 past that). Every request has a deadline
and a cancel flag (set when its client disconnects); both are checked before each stage and after every
generated token. Temporary files are reference-counted per batch and removed when the batch ends.
"""
from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import queue
import shutil
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..answer.reasoning import THINK_OPEN, sentence_stops
from ..config import PipelineConfig
from ..errors import VideoLLMError
from ..pipeline import VideoQAPipeline
from ..types import Answer
from ..video import Video
from ..video.remote import FetchLimits, describe, materialize
from .errors import ServeError, error_for
from .memory import trim_heap
from .schema import ChatRequest

logger = logging.getLogger(__name__)


class QueueFullError(ServeError):
    status = 429
    kind = "rate_limit_exceeded"


class RequestTimeoutError(ServeError):
    status = 408
    kind = "timeout"


class CancelledByClient(Exception):
    """The client went away or the deadline passed: stop generating."""


@dataclass
class Event:
    kind: str  # "ready" | "delta" | "done" | "error"
    text: str = ""
    answer: Answer | None = None
    prompt_tokens: int = 0
    error: ServeError | None = None


@dataclass
class Job:
    request: ChatRequest
    deadline: float
    post: Callable[[Event], None]  # hands an event to the waiting HTTP handler (thread-safe)
    cancel: threading.Event = field(default_factory=threading.Event)
    id: int = 0

    def stopped(self) -> bool:
        return self.cancel.is_set() or time.monotonic() > self.deadline


@dataclass
class Batch:
    jobs: list[Job]
    path: Path | None = None
    video: Video | None = None
    pipe: VideoQAPipeline | None = None
    prefetch_s: float = 0.0  # decode + vision done ahead, shared by the batch's questions


@dataclass(frozen=True)
class EngineLimits:
    max_queue: int = 16
    timeout_s: float = 300.0
    max_duration_s: float = 4 * 3600.0
    max_batch: int = 8  # questions answered on one opened video in a row
    cache_idle_s: float = 300.0  # drop cached features and prefix KV after this long without requests
    fetch: FetchLimits = field(default_factory=FetchLimits)


class Engine:
    """Owns the threads; `submit()` is called from the event loop."""

    def __init__(self, pipe: VideoQAPipeline, limits: EngineLimits):
        self.base = pipe
        self.limits = limits
        self._pipes: dict[tuple[object, ...], VideoQAPipeline] = {self._pipe_key(pipe.config): pipe}
        self._incoming: deque[Job] = deque()
        self._cv = threading.Condition()
        self._ready: queue.Queue[Batch | None] = queue.Queue(maxsize=1)  # the prefetcher runs one batch ahead
        self._waiting = 0  # accepted, not yet started by the answer thread
        self._ids = itertools.count(1)
        self._scratch = Path(tempfile.mkdtemp(prefix="videollm-serve-"))
        self._files: dict[Path, int] = {}
        self._files_lock = threading.Lock()
        self._last_active = time.monotonic()
        self._dirty = False  # caches hold something worth dropping when idle
        self._stop = threading.Event()
        #: counts since start (GET /health shows them): answered, cancelled (client gone or deadline), failed,
        #: batches (videos opened) — `answered / batches` > 1 means questions shared an encoding
        self.stats = {"answered": 0, "cancelled": 0, "failed": 0, "batches": 0}
        self._threads = [threading.Thread(target=self._prefetch_loop, name="videollm-prefetch", daemon=True),
                         threading.Thread(target=self._answer_loop, name="videollm-answer", daemon=True)]
        for t in self._threads:
            t.start()

    # ---- called from the event loop ---------------------------------------------------------------
    def check_room(self) -> None:
        """Raise `QueueFullError` when no request could be accepted now."""
        if self._waiting >= self.limits.max_queue:
            raise QueueFullError(f"the server is busy ({self._waiting} requests waiting); retry later")

    def submit(self, request: ChatRequest, loop: asyncio.AbstractEventLoop, events: asyncio.Queue[Event]) -> Job:
        def post(ev: Event) -> None:
            loop.call_soon_threadsafe(events.put_nowait, ev)

        with self._cv:
            self.check_room()
            job = Job(request, time.monotonic() + self.limits.timeout_s, post, id=next(self._ids))
            self._waiting += 1
            self._incoming.append(job)
            self._cv.notify_all()
        return job

    @property
    def waiting(self) -> int:
        return self._waiting

    def close(self) -> None:
        self._stop.set()
        with self._cv:
            self._cv.notify_all()
        try:
            self._ready.put_nowait(None)
        except queue.Full:
            pass
        for t in self._threads:
            t.join(timeout=5)
        shutil.rmtree(self._scratch, ignore_errors=True)

    # ---- prefetch thread --------------------------------------------------------------------------
    def _next_batch(self) -> list[Job] | None:
        with self._cv:
            while not self._incoming and not self._stop.is_set():
                self._cv.wait(timeout=1.0)
            if self._stop.is_set():
                return None
            first = self._incoming.popleft()
            jobs = [first]
            key = first.request.batch_key
            for other in list(self._incoming):  # questions about the same video join this batch
                if len(jobs) >= self.limits.max_batch:
                    break
                if other.request.batch_key == key and other.request.video == first.request.video:
                    self._incoming.remove(other)
                    jobs.append(other)
            return jobs

    def _prefetch_loop(self) -> None:
        while not self._stop.is_set():
            jobs = self._next_batch()
            if jobs is None:
                return
            batch = Batch(jobs)
            try:
                self._prepare(batch)
            except Exception as err:  # noqa: BLE001 - every job of the batch gets the error; the loop goes on
                self._fail(batch, err)
                continue
            self._ready.put(batch)

    def _prepare(self, batch: Batch) -> None:
        live = [j for j in batch.jobs if not j.stopped()]
        if not live:
            raise CancelledByClient()
        req = live[0].request
        pipe = self._pipe_for(req.config)
        batch.pipe = pipe
        path = materialize(req.video, self._scratch, self.limits.fetch)
        batch.path = path
        self._acquire(path)
        video = pipe.load(str(path), req.config.sampling)
        batch.video = video
        duration = float(video.info.duration or 0.0)
        if duration > self.limits.max_duration_s:
            raise _too_long(duration, self.limits.max_duration_s)
        # overlap: decode + vision of this batch run now, while the answer thread may still be generating
        r = live[0].request
        started = time.perf_counter()
        if not getattr(pipe.compressor, "wants_options", False):  # Tempo scores segments with the LLM itself:
            # running it beside the answer thread's generation would share one LLM between two threads
            pipe.prefetch(video, r.question, r.options, budget=r.config.budget, reasoning=r.config.reasoning,
                          generation=r.config.generation)
        batch.prefetch_s = time.perf_counter() - started
        for job in live:  # a streamed reply starts now: every error about the video has had its chance
            job.post(Event("ready"))

    # ---- answer thread ----------------------------------------------------------------------------
    def _answer_loop(self) -> None:
        while not self._stop.is_set():
            try:
                batch = self._ready.get(timeout=1.0)
            except queue.Empty:
                self._maybe_drop_caches()
                continue
            if batch is None:
                return
            self._count("batches")
            try:
                for job in batch.jobs:
                    with self._cv:
                        self._waiting -= 1
                    self._answer(batch, job)
            finally:
                self._release(batch)
                self._last_active = time.monotonic()
                self._dirty = True

    def _answer(self, batch: Batch, job: Job) -> None:
        assert batch.pipe is not None and batch.video is not None
        req = job.request
        if job.stopped():
            self._count("cancelled")
            job.post(Event("error", error=_stopped_error(job)))
            return
        from ..runtime.generation import token_listener

        streamer = _Streamer(batch.pipe, req, job)
        try:
            with token_listener(streamer):
                ans = batch.pipe(batch.video, req.question, req.options, budget=req.config.budget,
                                 reasoning=req.config.reasoning, generation=req.config.generation,
                                 answer_format=req.config.answer_format)
        except CancelledByClient:
            self._count("cancelled")
            job.post(Event("error", error=_stopped_error(job)))
            return
        except Exception as err:  # noqa: BLE001 - the client gets a JSON error (error_for logs bugs)
            self._count("failed")
            job.post(Event("error", error=error_for(err, self._hide(batch))))
            return
        self._count("answered")
        ans.text, trimmed = trim_stops(ans.text, req.stops)
        if trimmed:
            ans.finish_reason = "stop"
        ans.timings["prefetch"] = round(batch.prefetch_s, 6)
        streamer.finish(ans.text)
        job.post(Event("done", answer=ans, prompt_tokens=prompt_tokens(batch.pipe, req, ans)))

    # ---- helpers ----------------------------------------------------------------------------------
    def _count(self, name: str) -> None:
        with self._cv:
            self.stats[name] += 1

    def _fail(self, batch: Batch, err: BaseException) -> None:
        for job in batch.jobs:
            with self._cv:
                self._waiting -= 1
            self._count("cancelled" if isinstance(err, CancelledByClient) else "failed")
            if isinstance(err, CancelledByClient):
                job.post(Event("error", error=_stopped_error(job)))
            else:
                job.post(Event("error", error=error_for(err, self._hide(batch))))
        self._release(batch)

    def _hide(self, batch: Batch) -> dict[str, str]:
        """Local paths that must not reach a client, and what to say instead."""
        hide = {str(self._scratch): "<tmp>"}
        if batch.path is not None:
            hide[str(batch.path)] = describe(batch.jobs[0].request.video)
        return hide

    def _pipe_for(self, cfg: PipelineConfig) -> VideoQAPipeline:
        key = self._pipe_key(cfg)
        pipe = self._pipes.get(key)
        if pipe is None:  # another compressor or system prompt: same backbone, a new (cheap) pipeline
            if len(self._pipes) > 16:
                self._pipes = {self._pipe_key(self.base.config): self.base}
            pipe = self._pipes[key] = VideoQAPipeline(self.base.backbone, cfg)
        return pipe

    @staticmethod
    def _pipe_key(cfg: PipelineConfig) -> tuple[object, ...]:
        return (cfg.compressor, repr(cfg.compressor_options), cfg.compressor_weights, cfg.system_prompt,
                cfg.reasoning, repr(cfg.reasoning_options))

    def _acquire(self, path: Path) -> None:
        with self._files_lock:
            self._files[path] = self._files.get(path, 0) + 1

    def _release(self, batch: Batch) -> None:
        if batch.video is not None:
            batch.video.close()
            batch.video = None
        path = batch.path
        if path is None:
            return
        batch.path = None
        with self._files_lock:
            n = self._files.get(path, 0) - 1
            if n <= 0:
                self._files.pop(path, None)
                if path.parent == self._scratch:
                    path.unlink(missing_ok=True)
            else:
                self._files[path] = n

    def _maybe_drop_caches(self) -> None:
        if not self._dirty or time.monotonic() - self._last_active < self.limits.cache_idle_s or self._waiting:
            return
        from ..feature_cache import default_cache
        from ..runtime.prefix_cache import default_prefix_cache

        default_cache().clear()
        default_prefix_cache().clear()
        gc.collect()
        trim_heap()
        self._dirty = False
        logger.info("idle for %.0f s: cached features and prompt prefixes dropped", self.limits.cache_idle_s)


class _Streamer:
    """Token listener: stops generation when the job is cancelled, and streams the answer's text.

    Only text that cannot change any more is sent: leading whitespace is dropped and trailing whitespace or a
    tail that could begin a stop string is held back, so the streamed chunks add up to the unstreamed answer.
    Multi-phase reasoning modes (think, auto) rewrite their output; their text is sent once, at the end."""

    def __init__(self, pipe: VideoQAPipeline, req: ChatRequest, job: Job):
        self.job = job
        self.tok = pipe.backbone.tokenizer
        self.eos = set(pipe.backbone.eos_token_ids)
        self.stops = tuple(req.stops) + (THINK_OPEN,) + sentence_stops(pipe.backbone, req.options)
        self.live = req.stream and req.config.reasoning == "direct" and req.config.answer_format == "free"
        self.sent = ""
        self.calls = 0

    def __call__(self, ids: list[int]) -> None:
        self.calls += 1
        if self.job.stopped():
            raise CancelledByClient()
        if not self.live:
            return
        upto = ids[:-1] if ids and ids[-1] in self.eos else ids
        text = self.tok.decode(upto, skip_special_tokens=False).lstrip()
        for s in self.stops:
            at = text.find(s)
            if at >= 0:
                text = text[:at]
        text = text.rstrip()
        if text.endswith("\ufffd"):  # half of a multi-byte character
            return
        hold = max((k for s in self.stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        safe = text[: len(text) - hold].rstrip() if hold else text
        if len(safe) > len(self.sent) and safe.startswith(self.sent):
            self.job.post(Event("delta", text=safe[len(self.sent):]))
            self.sent = safe

    def finish(self, final: str) -> None:
        if not self.job.request.stream:
            return
        if final.startswith(self.sent):
            if len(final) > len(self.sent):
                self.job.post(Event("delta", text=final[len(self.sent):]))
        else:  # cannot happen for direct answers; say so rather than send a different text silently
            logger.warning("request %d: streamed text diverged from the final answer", self.job.id)
        self.sent = final


def trim_stops(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    """The text before the first stop string (OpenAI leaves the stop string out), and whether one was found."""
    cut = min((text.find(s) for s in stops if s in text), default=-1)
    return (text[:cut].rstrip(), True) if cut >= 0 else (text, False)


def prompt_tokens(pipe: VideoQAPipeline, req: ChatRequest, ans: Answer) -> int:
    """Prompt tokens as the LLM saw them: the rendered chat text plus the visual tokens."""
    from ..question import format_question

    rendered = pipe.backbone.render_prompt(format_question(req.question, req.options), system=req.config.system_prompt)
    return len(pipe.backbone.tokenizer(rendered, add_special_tokens=False)["input_ids"]) + ans.visual_tokens


def _stopped_error(job: Job) -> ServeError:
    if job.cancel.is_set():
        return ServeError("the client closed the connection; request cancelled", 499, "cancelled")
    return RequestTimeoutError("the request took longer than the server's time-out")


def _too_long(duration: float, cap: float) -> VideoLLMError:
    from ..errors import InvalidRequestError

    return InvalidRequestError(f"the video lasts {duration:.0f} s; this server takes at most {cap:.0f} s")

