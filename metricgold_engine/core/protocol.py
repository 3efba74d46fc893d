"""The worker protocol: JSON-RPC 2.0, one JSON object a line, over the worker's stdin/stdout.

Both ends import this module: the worker (engine floor, torch) and the client (ground floor: stdlib only, so that
Blender's Python can use it). Everything here is pure: it builds, encodes, decodes and checks messages; nothing
reads or writes a stream. The protocol itself is written down for users in ``docs/protocol.md``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

#: Bumped whenever a message changes shape; the client refuses a worker that speaks another version.
PROTOCOL_VERSION = 1

JSONRPC = "2.0"

# The error codes and the exception family live in errors.py; they are re-exported here because every message
# builder and parser below speaks in them.
from .errors import (  # noqa: E402,F401
    BAD_IMAGE,
    CANCELLED,
    ERROR_NAMES,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    MODEL_LOAD_FAILED,
    MODEL_NOT_LOADED,
    OUTPUT_NOT_WRITABLE,
    PARSE_ERROR,
    MetricGoldError,
)
from .options import DEVICES, DTYPES, TIMESTEP_SPACINGS  # noqa: E402,F401

# --- methods and their parameters ----------------------------------------------------------------------------------
HELLO = "hello"
LOAD_MODEL = "load_model"
UNLOAD_MODEL = "unload_model"  # frees the model's memory; the worker stays up (added in 0.1: no version bump)
PREDICT = "predict"
CANCEL = "cancel"
SHUTDOWN = "shutdown"
PROGRESS = "progress"  # notification, worker -> client

# The stages a `progress` notification names, in the order a prediction goes through them.
STAGE_LOAD_MODEL = "load_model"
STAGE_LOAD_IMAGE = "load_image"
STAGE_DENOISE = "denoise"
STAGE_SAVE = "save"
STAGE_DECODE = "decode"  # MetricGold's tiled depth-VAE decode of a large image: step = tiles done (all members)
STAGE_PREDICT = "predict"  # a one-pass model's (Depth Pro, Depth Anything, ZoeDepth) forward pass, instead of denoise
STAGES = (STAGE_LOAD_MODEL, STAGE_LOAD_IMAGE, STAGE_DENOISE, STAGE_DECODE, STAGE_PREDICT, STAGE_SAVE)

# --- predict_sequence (video and image sequences, docs/sequences.md) ----------------------------------------------
PREDICT_SEQUENCE = "predict_sequence"
STAGE_FRAME = "frame"  # predict_sequence: after each frame (written or already done), step = frames handled
SEQUENCE_FORMATS = ("exr", "npy", "png16", "color")

#: The models' own keyword names that `predict` passes through (None = the model's default). All but
#: ``flip_average`` (ZoeDepth) are MetricGold's; a model ignores those it does not have (the result lists them).
PREDICT_OPTIONS = (
    "num_inference_steps",
    "ensemble_size",
    "processing_resolution",
    "seed",
    "timestep_spacing",
    "output_uncertainty",
    "flip_average",
)
#: What the user knows of the camera, ahead of the photo's EXIF: a horizontal field of view or a 35 mm equivalent
#: focal length (at most one).
PREDICT_CAMERA = ("fov_deg", "focal_35mm")


class ProtocolError(MetricGoldError, ValueError):
    """A message that breaks the protocol. ``code`` is the JSON-RPC error code to answer with; ``request_id`` the
    id to answer to (None when the id itself could not be read)."""

    def __init__(self, code: int, message: str, request_id: Any = None, data: Any = None) -> None:
        super().__init__(message, data, code=code)
        self.request_id = request_id
        # A well-formed notification (no "id") with a bad method or params: JSON-RPC 2.0 forbids answering it.
        self.is_notification = False


# A parameter check takes (method, name, value) and returns the cleaned value or raises ProtocolError.
_Check = Callable[[str, str, Any], Any]


def _bad_param(method: str, name: str, expected: str, value: Any) -> ProtocolError:
    return ProtocolError(
        INVALID_PARAMS, f"{method}: parameter '{name}' must be {expected}, got {_describe(value)}"
    )


def _describe(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    text = json.dumps(value) if _is_json_scalar(value) else type(value).__name__
    return text if len(text) <= 80 else text[:77] + "..."


def _is_json_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def _is_int(value: Any) -> bool:
    # bool is a subclass of int in Python, but `true` is not a number in JSON.
    return isinstance(value, int) and not isinstance(value, bool)


def is_valid_unicode(text: str) -> bool:
    """False when ``text`` holds an unpaired surrogate (JSON's "\\udcff", or an undecodable byte of a file name as
    Python represents it): such a string cannot be written as UTF-8, so it can be neither opened by name reliably
    nor named in a reply."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _path(method: str, name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or "\x00" in value:
        raise _bad_param(method, name, "a non-empty path string", value)
    if not is_valid_unicode(value):
        raise _bad_param(method, name, "a path that is valid Unicode (it holds an unpaired surrogate, e.g. an "
                                       "undecodable byte in a file name: rename the file)", value)
    return value


def _path_or_null(method: str, name: str, value: Any) -> str | None:
    return None if value is None else _path(method, name, value)


def _positive_int_or_null(method: str, name: str, value: Any) -> int | None:
    if value is None:
        return None
    if not _is_int(value) or value < 1:
        raise _bad_param(method, name, "an integer >= 1 or null", value)
    return int(value)


def _resolution_or_null(method: str, name: str, value: Any) -> int | None:
    # 0 means "process at the input resolution" (Marigold's convention).
    if value is None:
        return None
    if not _is_int(value) or value < 0:
        raise _bad_param(method, name, "an integer >= 0 (0 = input resolution) or null", value)
    return int(value)


def _seed_or_null(method: str, name: str, value: Any) -> int | None:
    if value is None:
        return None
    if not _is_int(value) or not 0 <= value < 2**64:
        raise _bad_param(method, name, "an integer in [0, 2**64) or null", value)
    return int(value)


def _spacing_or_null(method: str, name: str, value: Any) -> str | None:
    if value is None:
        return None
    if value not in TIMESTEP_SPACINGS:
        raise _bad_param(method, name, "one of " + ", ".join(TIMESTEP_SPACINGS) + " or null", value)
    return str(value)


def _bool_or_null(method: str, name: str, value: Any) -> bool | None:
    return None if value is None else _bool(method, name, value)


def _fov_or_null(method: str, name: str, value: Any) -> float | None:
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < 180:
        raise _bad_param(method, name, "a number of degrees in (0, 180) or null", value)
    return float(value)


def _positive_number_or_null(method: str, name: str, value: Any) -> float | None:
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise _bad_param(method, name, "a number > 0 or null", value)
    return float(value)


def _bool(method: str, name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _bad_param(method, name, "true or false", value)
    return value


def _device(method: str, name: str, value: Any) -> str:
    if isinstance(value, str):
        if value in DEVICES:
            return value
        head, _, index = value.partition(":")
        if head == "cuda" and index.isdigit():
            return value
    raise _bad_param(method, name, "one of " + ", ".join(DEVICES) + " or cuda:N", value)


def _dtype(method: str, name: str, value: Any) -> str:
    if value not in DTYPES:
        raise _bad_param(method, name, "one of " + ", ".join(DTYPES), value)
    return str(value)


def _request_id(method: str, name: str, value: Any) -> int | str:
    if not (_is_int(value) or (isinstance(value, str) and is_valid_unicode(value))):
        raise _bad_param(method, name, "a request id (integer or valid Unicode string)", value)
    return value  # type: ignore[no-any-return]


@dataclass(frozen=True)
class _Param:
    check: _Check
    required: bool = False
    default: Any = None


#: Every method's parameters (by name only). Unknown names are an error, never silently ignored.
PARAMS: dict[str, dict[str, _Param]] = {
    HELLO: {},
    LOAD_MODEL: {
        "path": _Param(_path_or_null, required=True),  # null: the built-in demo model
        "device": _Param(_device, default="auto"),
        "dtype": _Param(_dtype, default="auto"),
    },
    PREDICT: {
        "image": _Param(_path, required=True),
        "output_dir": _Param(_path, required=True),
        "num_inference_steps": _Param(_positive_int_or_null),
        "ensemble_size": _Param(_positive_int_or_null),
        "processing_resolution": _Param(_resolution_or_null),
        "seed": _Param(_seed_or_null),
        "timestep_spacing": _Param(_spacing_or_null),
        "output_uncertainty": _Param(_bool, default=False),
        "flip_average": _Param(_bool_or_null),
        "fov_deg": _Param(_fov_or_null),
        "focal_35mm": _Param(_positive_number_or_null),
    },
    UNLOAD_MODEL: {},
    CANCEL: {"request_id": _Param(_request_id, required=True)},
    SHUTDOWN: {},
}


def _formats(method: str, name: str, value: Any) -> list[str]:
    if (not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value)
            or not set(value) <= set(SEQUENCE_FORMATS)):
        raise _bad_param(method, name, f"a non-empty list of {', '.join(SEQUENCE_FORMATS)}", value)
    return list(dict.fromkeys(value))


def _fraction_or_null(method: str, name: str, value: Any) -> float | None:
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value <= 1:
        raise _bad_param(method, name, "a number in (0, 1] or null", value)
    return float(value)


def _string_or_null(method: str, name: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or "/" in value or "\\" in value:
        raise _bad_param(method, name, "a file name prefix (no folder separators) or null", value)
    return value


PARAMS[PREDICT_SEQUENCE] = {
    "source": _Param(_path, required=True),  # a video file, a folder of images or a printf pattern
    "output_dir": _Param(_path, required=True),
    **{k: v for k, v in PARAMS[PREDICT].items() if k not in ("image", "output_dir")},
    "name": _Param(_string_or_null),
    "formats": _Param(_formats, default=["exr"]),
    "denoise_strength": _Param(_fraction_or_null),  # null: 1.0 (independent frames)
    "smoothing_alpha": _Param(_fraction_or_null),  # null: off
    "fps": _Param(_positive_number_or_null),
}


def check_params(method: str, params: Mapping[str, Any] | None) -> dict[str, Any]:
    """The cleaned parameters of ``method``, defaults filled in. Raises ProtocolError(INVALID_PARAMS) naming the
    first parameter that is unknown, missing or ill-typed."""
    if method not in PARAMS:
        raise ProtocolError(METHOD_NOT_FOUND, f"unknown method {method!r} (known: {', '.join(PARAMS)})")
    spec = PARAMS[method]
    params = {} if params is None else params
    if not isinstance(params, Mapping):
        raise ProtocolError(INVALID_PARAMS, f"{method}: params must be an object (by-name), got {_describe(params)}")
    unknown = sorted(set(params) - set(spec))
    if unknown:
        known = ", ".join(spec) or "none"
        raise ProtocolError(INVALID_PARAMS, f"{method}: unknown parameter {unknown[0]!r} (known: {known})")
    cleaned: dict[str, Any] = {}
    for name, param in spec.items():
        if name not in params:
            if param.required:
                raise ProtocolError(INVALID_PARAMS, f"{method}: missing required parameter {name!r}")
            cleaned[name] = param.default
        else:
            cleaned[name] = param.check(method, name, params[name])
    if method in (PREDICT, PREDICT_SEQUENCE) and cleaned["fov_deg"] is not None and cleaned["focal_35mm"] is not None:
        raise ProtocolError(INVALID_PARAMS, f"{method}: give 'fov_deg' or 'focal_35mm', not both")
    return cleaned


# --- messages ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Request:
    """A request (``is_notification`` False) or a client notification (no ``id``: no answer is sent)."""

    method: str
    params: dict[str, Any]
    id: int | str | None = None
    is_notification: bool = False


def _valid_id(value: Any) -> bool:
    return value is None or _is_int(value) or isinstance(value, str)


def request(method: str, params: Mapping[str, Any] | None, request_id: int | str) -> dict[str, Any]:
    msg: dict[str, Any] = {"jsonrpc": JSONRPC, "id": request_id, "method": method}
    if params:
        msg["params"] = dict(params)
    return msg


def notification(method: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    msg: dict[str, Any] = {"jsonrpc": JSONRPC, "method": method}
    if params is not None:
        msg["params"] = dict(params)
    return msg


def result(request_id: Any, value: Any) -> dict[str, Any]:
    return {"jsonrpc": JSONRPC, "id": request_id, "result": value}


def error(request_id: Any, code: int, message: str, data: Any = None) -> dict[str, Any]:
    # A message naming a file with an undecodable byte must still be sendable: such characters are escaped.
    text = str(message)
    if not is_valid_unicode(text):
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    err: dict[str, Any] = {"code": int(code), "message": text}
    if data is not None:
        err["data"] = data
    return {"jsonrpc": JSONRPC, "id": request_id, "error": err}


def progress(request_id: int | str, stage: str, step: int, total: int) -> dict[str, Any]:
    """The `progress` notification the worker sends while serving a request."""
    return notification(PROGRESS, {"request_id": request_id, "stage": stage, "step": int(step), "total": int(total)})


def encode(message: Mapping[str, Any]) -> bytes:
    """One line of the stream: compact UTF-8 JSON and a newline. NaN and infinities are not JSON, so they are
    refused here rather than sent as tokens the other end cannot parse."""
    return (json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")


def _reject_constant(token: str) -> Any:
    raise ValueError(f"{token} is not valid JSON")


def decode(line: bytes | str) -> Any:
    """Parse one line. Raises ProtocolError(PARSE_ERROR) when it is not UTF-8 JSON (NaN/Infinity included)."""
    try:
        text = line.decode("utf-8") if isinstance(line, (bytes, bytearray)) else line
        return json.loads(text, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(PARSE_ERROR, f"parse error: {exc}") from None


def parse_request(line: bytes | str) -> Request:
    """Decode and check one client line: JSON, a JSON-RPC 2.0 request object, a known method and well-typed
    params. Raises ProtocolError carrying the code and, when it could be read, the id to answer to."""
    msg = decode(line)
    if isinstance(msg, list):
        raise ProtocolError(INVALID_REQUEST, "invalid request: batch requests (arrays) are not supported")
    if not isinstance(msg, dict):
        raise ProtocolError(INVALID_REQUEST, f"invalid request: expected a JSON object, got {_describe(msg)}")
    has_id = "id" in msg
    request_id = msg.get("id")
    if not _valid_id(request_id):
        raise ProtocolError(INVALID_REQUEST, f"invalid request: 'id' must be an integer, a string or null, got {_describe(request_id)}")
    if isinstance(request_id, str) and not is_valid_unicode(request_id):
        # It could never be echoed back as UTF-8: answered with id null, as JSON-RPC does for an unreadable id.
        raise ProtocolError(INVALID_REQUEST, f"invalid request: 'id' is not valid Unicode (an unpaired surrogate), "
                                             f"got {_describe(request_id)}")
    if msg.get("jsonrpc") != JSONRPC:
        raise ProtocolError(INVALID_REQUEST, "invalid request: 'jsonrpc' must be \"2.0\"", request_id)
    method = msg.get("method")
    if not isinstance(method, str):
        raise ProtocolError(INVALID_REQUEST, "invalid request: 'method' must be a string", request_id)
    extra = sorted(set(msg) - {"jsonrpc", "id", "method", "params"})
    if extra:
        raise ProtocolError(INVALID_REQUEST, f"invalid request: unexpected member {extra[0]!r}", request_id)
    try:
        params = check_params(method, msg.get("params"))
    except ProtocolError as exc:
        exc.request_id = request_id
        exc.is_notification = not has_id
        raise
    return Request(method=method, params=params, id=request_id, is_notification=not has_id)


@dataclass(frozen=True)
class Response:
    """A reply (result or error) to request ``id``, or a worker notification (``method`` set)."""

    id: Any = None
    result: Any = None
    error: dict[str, Any] | None = None
    method: str | None = None
    params: dict[str, Any] | None = None

    @property
    def is_notification(self) -> bool:
        return self.method is not None


def parse_response(line: bytes | str) -> Response:
    """Decode and check one worker line (client side). Raises ProtocolError when it is not JSON-RPC 2.0."""
    msg = decode(line)
    if not isinstance(msg, dict) or msg.get("jsonrpc") != JSONRPC:
        raise ProtocolError(INVALID_REQUEST, f"not a JSON-RPC 2.0 message: {str(line)[:200]}")
    if "method" in msg:
        if "id" in msg or not isinstance(msg["method"], str) or not isinstance(msg.get("params", {}), dict):
            raise ProtocolError(INVALID_REQUEST, f"malformed notification: {str(line)[:200]}")
        return Response(method=msg["method"], params=msg.get("params", {}))
    if "id" not in msg or not _valid_id(msg["id"]) or (("result" in msg) == ("error" in msg)):
        raise ProtocolError(INVALID_REQUEST, f"malformed response: {str(line)[:200]}")
    if "error" in msg:
        err = msg["error"]
        if not (isinstance(err, dict) and _is_int(err.get("code")) and isinstance(err.get("message"), str)):
            raise ProtocolError(INVALID_REQUEST, f"malformed error object: {str(line)[:200]}")
        return Response(id=msg["id"], error=err)
    return Response(id=msg["id"], result=msg["result"])


def finite_or_none(value: float) -> float | None:
    """A float for JSON: None where it is NaN or infinite (JSON has no such numbers)."""
    value = float(value)
    return value if math.isfinite(value) else None
