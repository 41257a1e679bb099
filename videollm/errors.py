"""Exceptions a user can act on. The CLI prints their message on one line, without a traceback."""
from __future__ import annotations


class VideoLLMError(Exception):
    """Base class for errors caused by the user's input or setup rather than a bug."""


class VideoError(VideoLLMError):
    """A video could not be used."""


class VideoNotFoundError(VideoError, FileNotFoundError):
    pass


class NotAVideoError(VideoError):
    """The file exists but holds no video stream (a text file, an image, audio only)."""


class CorruptVideoError(VideoError):
    """The file looks like a video container but cannot be decoded (truncated, damaged)."""


class EmptyVideoError(VideoError):
    """The video has no decodable frames."""


class InvalidRequestError(VideoLLMError, ValueError):
    """A request that cannot be served as asked: empty question, absurd sizes, impossible budget."""


class ModelLoadError(VideoLLMError):
    """A model could not be loaded (offline, wrong id, missing files)."""

    def __init__(self, model: str, err: Exception):
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        super().__init__(f"could not load model {model!r}: {first[:300]}. Without a model hub, use "
                         "--model videollm-mini (offline, real weights)")


class ModelUnavailableError(VideoLLMError):
    """A hub model that is neither cached nor downloadable right now (offline)."""


class NameClashError(VideoLLMError, ValueError):
    """A registry name that already holds a different implementation (two plugins, or a typo)."""


class UnknownNameError(InvalidRequestError, KeyError):
    """A compressor, model, mode or task name that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""
