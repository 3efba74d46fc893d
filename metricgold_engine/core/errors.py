"""One family of errors for the worker, the client and the CLI, each with the JSON-RPC code the worker answers with.

The worker raises these and answers ``{"code": exc.code, "message": exc.message}``; the client turns an error reply
back into the same class (:func:`error_from_reply`); the CLI prints ``exc.message``. The codes are listed for users
in ``docs/protocol.md``.
"""

from __future__ import annotations

from typing import Any

# JSON-RPC 2.0's own codes.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
# MetricGold's codes, in the range the specification leaves to servers (-32000 to -32099).
INTERNAL_ERROR = -32000  # an unexpected exception while serving a request; the worker keeps serving
CANCELLED = -32001  # the request was cancelled (a `cancel` call, or the worker shutting down)
MODEL_NOT_LOADED = -32002  # `predict` before any model was loaded
BAD_IMAGE = -32003  # the image is missing, unreadable, not an image, truncated or empty
OUTPUT_NOT_WRITABLE = -32004  # the output folder cannot be created or written to
MODEL_LOAD_FAILED = -32005  # `load_model` could not load the checkpoint (missing folder, bad component, device)

ERROR_NAMES = {
    PARSE_ERROR: "parse error",
    INVALID_REQUEST: "invalid request",
    METHOD_NOT_FOUND: "method not found",
    INVALID_PARAMS: "invalid params",
    INTERNAL_ERROR: "internal error",
    CANCELLED: "cancelled",
    MODEL_NOT_LOADED: "model not loaded",
    BAD_IMAGE: "bad image",
    OUTPUT_NOT_WRITABLE: "output not writable",
    MODEL_LOAD_FAILED: "model load failed",
}


class MetricGoldError(Exception):
    """Base of every error MetricGold reports. ``code`` is its JSON-RPC error code; ``message`` names the file or
    field and what was wrong; ``data`` is optional JSON-able detail."""

    code: int = INTERNAL_ERROR

    def __init__(self, message: str, data: Any = None, *, code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.data = data
        if code is not None:
            self.code = code


class InvalidParams(MetricGoldError, ValueError):
    """A request's parameter (or an option of the CLI or the pipeline) has the wrong type or range."""

    code = INVALID_PARAMS


class PredictionCancelled(MetricGoldError):
    """The request was cancelled (a `cancel`, the client's cancel event or timeout, or the worker shutting down)."""

    code = CANCELLED


class ModelNotLoaded(MetricGoldError):
    """`predict` with no model loaded and no built-in demo model installed."""

    code = MODEL_NOT_LOADED


class ImageLoadError(MetricGoldError, ValueError):
    """The image is missing, not an image, truncated or empty; the message names the file."""

    code = BAD_IMAGE


class ImageTooLarge(ImageLoadError):
    """The image has more pixels than the limit (checked from the file's header, before decoding); the message names
    the file, its size, the limit and how to raise it. Same code as ImageLoadError; the reply's ``data`` says
    ``{"reason": "image_too_large", "pixels": N, "max_pixels": M}`` so that the client raises this class again."""

    REASON = "image_too_large"


class OutputNotWritable(MetricGoldError):
    """The output folder cannot be created or written to; the message names it."""

    code = OUTPUT_NOT_WRITABLE


class CheckpointError(MetricGoldError, ValueError):
    """A model folder is missing, incomplete or not loadable; the message names the folder, part and field."""

    code = MODEL_LOAD_FAILED


class DepthFileError(MetricGoldError, ValueError):
    """A depth file (.npy, .exr, 16-bit .png) is missing or malformed; the message names the file."""

    code = INVALID_PARAMS


_BY_CODE: dict[int, type[MetricGoldError]] = {
    cls.code: cls for cls in (InvalidParams, PredictionCancelled, ModelNotLoaded, ImageLoadError, OutputNotWritable,
                              CheckpointError)
}


def error_from_reply(code: int, message: str, data: Any = None) -> MetricGoldError:
    """The exception for a worker's error reply: the family's class for ``code`` (MetricGoldError for others)."""
    cls = _BY_CODE.get(code, MetricGoldError)
    if cls is ImageLoadError and isinstance(data, dict) and data.get("reason") == ImageTooLarge.REASON:
        cls = ImageTooLarge
    return cls(message, data, code=code)


# --- what only the client side can see: the worker process itself -------------------------------------------------
class WorkerError(MetricGoldError, RuntimeError):
    """The worker process could not serve a call (it would not start, died, hung, or the client was closed)."""


class WorkerStartError(WorkerError):
    """The worker could not be started: no such Python, MetricGold not installed there, protocol mismatch."""


class WorkerDied(WorkerError):
    """The worker process ended while a request was outstanding (killed, out of memory, crashed in native code).
    The next call on the same client starts a fresh worker."""

    def __init__(self, message: str, returncode: int | None = None, stderr_tail: str = "") -> None:
        super().__init__(message)
        self.returncode = returncode
        self.stderr_tail = stderr_tail


class WorkerTimeout(WorkerError, TimeoutError):
    """A request did not finish within its ``timeout``; it was cancelled (or, if the worker hung, the worker killed)."""


class ClientClosed(WorkerError):
    """The client was closed (possibly from another thread) before or during the call."""
