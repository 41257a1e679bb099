"""An OpenAI chat-completions body → a checked `ChatRequest` (no model, no video touched).

Messages follow the OpenAI format, with vLLM's `{"type": "video_url", "video_url": {"url": ...}}` content
parts. The question is the last user turn's text; the video is the latest `video_url` in the conversation,
so a follow-up turn (the client re-sends the history) asks about the same video. videollm's own knobs arrive
as extra body fields (`extra_body=` in the `openai` client) and end up in a `PipelineConfig` checked by
`validate()`, exactly like the CLI's flags.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from ..config import PipelineConfig
from ..errors import InvalidRequestError
from ..question import format_question
from ..runtime.generation import GenerationConfig
from ..video.sampling import SamplingConfig


class ModelNotFoundError(InvalidRequestError):
    """The body names a model this server does not serve (404, as OpenAI answers)."""


#: OpenAI fields accepted and ignored (they change nothing here)
IGNORED = {"user", "metadata", "store", "service_tier", "parallel_tool_calls", "stream_options"}
#: OpenAI fields accepted only at their default (anything else would be silently wrong)
AT_DEFAULT: dict[str, Any] = {"n": 1, "presence_penalty": 0, "frequency_penalty": 0, "logprobs": False,
                              "logit_bias": None, "tools": None, "tool_choice": None, "response_format": None,
                              "top_logprobs": None}
#: videollm's extra fields
EXTRA = {"compressor", "compressor_options", "budget", "reasoning", "reasoning_options", "options", "answer_format",
         "fps", "frames", "max_frames"}
OPENAI = {"model", "messages", "stream", "max_tokens", "max_completion_tokens", "temperature", "top_p", "seed",
          "stop"}
MAX_STOPS = 4


@dataclass(frozen=True)
class ServeLimits:
    """Per-request bounds the operator sets (`videollm serve --max-…`)."""

    max_tokens: int = 1024
    max_frames: int = 256


@dataclass
class ChatRequest:
    video: str  # URL, data URI or file URI
    question: str
    options: list[str] | None
    config: PipelineConfig  # the server's config with this request's knobs, validated
    stream: bool
    include_usage: bool
    stops: tuple[str, ...]

    @property
    def batch_key(self) -> tuple[object, ...]:
        """Requests with equal keys can share one opened video and its encoded frames."""
        c = self.config
        return (hash(self.video), self.video[:64], repr(c.sampling), c.compressor, repr(c.compressor_options),
                c.system_prompt)


def parse_chat(body: object, served_model: str, base: PipelineConfig, limits: ServeLimits) -> ChatRequest:
    """Check every field; raise `InvalidRequestError` (400) or `ModelNotFoundError` (404)."""
    if not isinstance(body, dict):
        raise InvalidRequestError("the request body must be a JSON object")
    unknown = sorted(set(body) - IGNORED - set(AT_DEFAULT) - EXTRA - OPENAI)
    if unknown:
        raise InvalidRequestError(f"unknown field(s) {', '.join(map(repr, unknown))}")
    for name, default in AT_DEFAULT.items():
        v = body.get(name)
        if not (v is None or v == default or (default is None and not v)):
            raise InvalidRequestError(f"{name}={body[name]!r} is not supported by this server")
    model = body.get("model")
    if model is not None and model != served_model:
        raise ModelNotFoundError(f"the model {model!r} does not exist; this server serves {served_model!r}")
    video, question, system = _read_messages(body.get("messages"))
    stream = _bool(body, "stream", False)
    so = body.get("stream_options") or {}
    include_usage = bool(isinstance(so, dict) and so.get("include_usage"))
    stops = _stops(body.get("stop"))
    generation = _generation(body, base.generation, stops, limits)
    options = _options(body.get("options"))
    format_question(question, options)  # an empty question or bad options: refused before any work
    cfg = _config(body, base, generation, limits, system)
    return ChatRequest(video=video, question=question, options=options, config=cfg, stream=stream,
                       include_usage=include_usage, stops=stops)


def _read_messages(messages: object) -> tuple[str, str, str | None]:
    if not isinstance(messages, list) or not messages:
        raise InvalidRequestError("messages must be a non-empty list")
    video: str | None = None
    system: str | None = None
    question: str | None = None
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or msg.get("role") not in ("system", "developer", "user", "assistant"):
            raise InvalidRequestError(f"messages[{i}] must be an object with role system, user or assistant")
        texts, videos = _parts(msg.get("content"), i)
        if msg["role"] in ("system", "developer"):
            if videos:
                raise InvalidRequestError(f"messages[{i}]: a system message cannot hold a video")
            system = "\n".join(texts) or None
        elif msg["role"] == "user":
            if videos:
                video = videos[-1]
            question = "\n".join(t for t in texts if t.strip())
    if messages[-1].get("role") != "user":
        raise InvalidRequestError("the last message must be the user's question")
    if video is None:
        raise InvalidRequestError("no video in the conversation: add a {\"type\": \"video_url\", \"video_url\": "
                                  "{\"url\": ...}} content part to a user message")
    if not question:
        raise InvalidRequestError("the last user message holds no question text")
    return video, question, system


def _parts(content: object, i: int) -> tuple[list[str], list[str]]:
    if isinstance(content, str):
        return [content], []
    if content is None:
        return [], []
    if not isinstance(content, list):
        raise InvalidRequestError(f"messages[{i}].content must be a string or a list of parts")
    texts: list[str] = []
    videos: list[str] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "video_url":
            ref = part.get("video_url")
            url = ref.get("url") if isinstance(ref, dict) else ref
            if not isinstance(url, str) or not url:
                raise InvalidRequestError(f"messages[{i}].content[{j}].video_url needs a url")
            videos.append(url)
        elif kind in ("image_url", "input_audio", "audio_url", "file", "input_image"):
            raise InvalidRequestError(f"messages[{i}].content[{j}]: {kind} parts are not supported; send a video_url")
        else:
            raise InvalidRequestError(f"messages[{i}].content[{j}] must be a text or video_url part")
    return texts, videos


def _bool(body: dict[str, Any], name: str, default: bool) -> bool:
    v = body.get(name, default)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise InvalidRequestError(f"{name} must be true or false, got {v!r}")
    return v


def _number(body: dict[str, Any], name: str, lo: float, hi: float, default: float) -> float:
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
        raise InvalidRequestError(f"{name} must be a number in [{lo:g}, {hi:g}], got {v!r}")
    return float(v)


def _int(body: dict[str, Any], name: str, lo: int, hi: int) -> int | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise InvalidRequestError(f"{name} must be a whole number in [{lo}, {hi}], got {v!r}")
    return v


def _stops(stop: object) -> tuple[str, ...]:
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) or len(stops) > MAX_STOPS:
        raise InvalidRequestError(f"stop must be a non-empty string or a list of at most {MAX_STOPS} of them")
    return tuple(stops)


def _generation(body: dict[str, Any], base: GenerationConfig, stops: tuple[str, ...],
                limits: ServeLimits) -> GenerationConfig:
    max_tokens = _int(body, "max_completion_tokens", 1, limits.max_tokens)
    max_tokens = _int(body, "max_tokens", 1, limits.max_tokens) if max_tokens is None else max_tokens
    top_p = _number(body, "top_p", 0.0, 1.0, base.top_p)
    if top_p <= 0:
        raise InvalidRequestError("top_p must be in (0, 1]")
    seed = _int(body, "seed", -(2**63), 2**63 - 1)
    gen = replace(base, max_new_tokens=max_tokens or base.max_new_tokens,
                  temperature=_number(body, "temperature", 0.0, 2.0, base.temperature), top_p=top_p,
                  seed=base.seed if seed is None else seed % 2**63, stop_strings=stops)
    gen.validate()
    return gen


def _options(options: object) -> list[str] | None:
    if options is None:
        return None
    if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
        raise InvalidRequestError("options must be a list of strings (multiple-choice answers)")
    return list(options)


def _config(body: dict[str, Any], base: PipelineConfig, generation: GenerationConfig, limits: ServeLimits,
            system: str | None) -> PipelineConfig:
    """The server's config with this request's knobs, checked by `PipelineConfig.validate()`."""
    changes: dict[str, Any] = {"generation": generation, "system_prompt": system or base.system_prompt}
    if body.get("compressor") is not None:
        if not isinstance(body["compressor"], str):
            raise InvalidRequestError("compressor must be a name (string)")
        if body["compressor"] != base.compressor:
            changes.update(compressor=body["compressor"], compressor_options={}, compressor_weights=None)
    if body.get("compressor_options") is not None:
        if not isinstance(body["compressor_options"], dict):
            raise InvalidRequestError("compressor_options must be an object of option names and values")
        changes["compressor_options"] = dict(body["compressor_options"])
    if "budget" in body:
        changes["budget"] = body["budget"]
    if body.get("reasoning") is not None:
        changes["reasoning"] = body["reasoning"]
    if body.get("reasoning_options") is not None:
        if not isinstance(body["reasoning_options"], dict):
            raise InvalidRequestError("reasoning_options must be an object")
        changes["reasoning_options"] = dict(body["reasoning_options"])
    if body.get("answer_format") is not None:
        from ..answer import ANSWER_FORMATS

        if body["answer_format"] not in ANSWER_FORMATS:
            raise InvalidRequestError(f"answer_format must be one of {', '.join(ANSWER_FORMATS)}")
        changes["answer_format"] = body["answer_format"]
    frames = _int(body, "frames", 1, limits.max_frames)
    max_frames = _int(body, "max_frames", 1, limits.max_frames)
    fps = body.get("fps")
    if fps is not None and frames is not None:
        raise InvalidRequestError("give frames or fps, not both")
    if fps is not None or frames is not None or max_frames is not None:
        s = base.sampling
        fps_value = _number(body, "fps", 1e-6, 240.0, 0.0) if fps is not None else None
        changes["sampling"] = SamplingConfig(num_frames=frames or s.num_frames, fps=fps_value,
                                             max_frames=min(max_frames or s.max_frames, limits.max_frames),
                                             max_side=s.max_side)
    cfg = replace(base, **changes)
    return cfg.validate()
