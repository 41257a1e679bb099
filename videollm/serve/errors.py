"""OpenAI-style error bodies, and the one mapping from exceptions to them.

Every user error becomes `{"error": {"message", "type", "param", "code"}}` with a 4xx status. Messages never
carry a server path: callers pass the local paths to hide and what to say instead.
"""
from __future__ import annotations

import logging

from ..errors import InvalidRequestError, VideoError, VideoLLMError

logger = logging.getLogger(__name__)


class ServeError(VideoLLMError):
    """An error with its HTTP status and OpenAI error type."""

    status = 400
    kind = "invalid_request_error"

    def __init__(self, message: str, status: int | None = None, kind: str | None = None):
        super().__init__(message)
        if status is not None:
            self.status = status
        if kind is not None:
            self.kind = kind

    def body(self) -> dict[str, object]:
        return {"error": {"message": str(self), "type": self.kind, "param": None, "code": self.kind}}


def error_for(err: BaseException, hide: dict[str, str] | None = None) -> ServeError:
    """The client's view of `err`: a 4xx for anything the request caused; a bug is logged and a bare 500."""
    from ..video.remote import VideoFetchError, VideoTooLargeError
    from .schema import ModelNotFoundError

    if isinstance(err, ServeError):
        return err
    message = " ".join(str(err).split())
    for secret, shown in sorted((hide or {}).items(), key=lambda kv: -len(kv[0])):
        message = message.replace(secret, shown)
    if isinstance(err, VideoTooLargeError):
        return ServeError(message, 413, "video_too_large")
    if isinstance(err, VideoFetchError):
        return ServeError(message, 400, "video_fetch_failed")
    if isinstance(err, ModelNotFoundError):
        return ServeError(message, 404, "model_not_found")
    if isinstance(err, VideoError):
        return ServeError(message, 400, "invalid_video")
    if isinstance(err, (InvalidRequestError, VideoLLMError)):
        return ServeError(message, 400, "invalid_request_error")
    logger.error("internal error", exc_info=err)
    return ServeError("internal server error", 500, "server_error")
