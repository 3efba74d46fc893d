"""protocol.py: message building, parsing and parameter checks (pure functions, no processes)."""

from __future__ import annotations

import json

import re

import pytest

from metricgold_engine.core import protocol as P


def _line(obj: object) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def _predict(params: dict, request_id: object = 1) -> bytes:
    return _line({"jsonrpc": "2.0", "id": request_id, "method": "predict", "params": params})


GOOD = {"image": "a.png", "output_dir": "out"}


def test_encode_is_one_compact_line_and_decodes_back():
    msg = P.result(7, {"depth_path": "/tmp/é.npy", "shape": [2, 3]})
    data = P.encode(msg)
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    assert b" " not in data  # compact separators
    assert json.loads(data.decode("utf-8")) == msg
    assert P.decode(data) == msg


def test_nan_is_refused_both_ways():
    with pytest.raises(ValueError):
        P.encode(P.result(1, {"depth_min": float("nan")}))
    for text in (b'{"a": NaN}', b"Infinity", b"[-Infinity]"):
        with pytest.raises(P.ProtocolError) as info:
            P.decode(text)
        assert info.value.code == P.PARSE_ERROR
    assert P.finite_or_none(float("inf")) is None and P.finite_or_none(2.5) == 2.5


def test_error_codes_are_distinct_and_in_the_server_range():
    ours = [P.INTERNAL_ERROR, P.CANCELLED, P.MODEL_NOT_LOADED, P.BAD_IMAGE, P.OUTPUT_NOT_WRITABLE, P.MODEL_LOAD_FAILED]
    standard = [P.PARSE_ERROR, P.INVALID_REQUEST, P.METHOD_NOT_FOUND, P.INVALID_PARAMS]
    assert len(set(ours + standard)) == len(ours + standard)
    assert all(-32099 <= code <= -32000 for code in ours)
    assert standard == [-32700, -32600, -32601, -32602]  # fixed by the JSON-RPC 2.0 specification
    assert set(P.ERROR_NAMES) == set(ours + standard)


def test_valid_predict_fills_the_pipeline_defaults():
    req = P.parse_request(_predict({**GOOD, "seed": 3, "timestep_spacing": "trailing", "output_uncertainty": True}))
    assert req.id == 1 and req.method == "predict" and not req.is_notification
    assert req.params == {
        "image": "a.png", "output_dir": "out", "num_inference_steps": None, "ensemble_size": None,
        "processing_resolution": None, "seed": 3, "timestep_spacing": "trailing", "output_uncertainty": True,
        "flip_average": None, "fov_deg": None, "focal_35mm": None,
    }
    assert set(req.params) - {"image", "output_dir"} == set(P.PREDICT_OPTIONS) | set(P.PREDICT_CAMERA)


@pytest.mark.parametrize(
    "line, code, request_id",
    [
        (b"not json", P.PARSE_ERROR, None),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "hello"', P.PARSE_ERROR, None),  # truncated
        (b"\xff\xfe{}", P.PARSE_ERROR, None),  # not UTF-8
        (b"[" * 100000 + b"]" * 100000, P.PARSE_ERROR, None),  # nesting deeper than the parser allows
        (b"[]", P.INVALID_REQUEST, None),
        (b'[{"jsonrpc": "2.0", "id": 1, "method": "hello"}]', P.INVALID_REQUEST, None),  # batches unsupported
        (b"42", P.INVALID_REQUEST, None),
        (b'"hello"', P.INVALID_REQUEST, None),
        (b"null", P.INVALID_REQUEST, None),
        (b'{"jsonrpc": "2.0", "id": 1.5, "method": "hello"}', P.INVALID_REQUEST, None),
        (b'{"jsonrpc": "2.0", "id": true, "method": "hello"}', P.INVALID_REQUEST, None),
        (b'{"jsonrpc": "2.0", "id": [1], "method": "hello"}', P.INVALID_REQUEST, None),
        (b'{"jsonrpc": "1.0", "id": 4, "method": "hello"}', P.INVALID_REQUEST, 4),
        (b'{"id": 5, "method": "hello"}', P.INVALID_REQUEST, 5),
        (b'{"jsonrpc": "2.0", "id": "x", "method": 3}', P.INVALID_REQUEST, "x"),
        (b'{"jsonrpc": "2.0", "id": 6}', P.INVALID_REQUEST, 6),
        (b'{"jsonrpc": "2.0", "id": 7, "method": "hello", "extra": 1}', P.INVALID_REQUEST, 7),
        (b'{"jsonrpc": "2.0", "id": 8, "method": "predcit"}', P.METHOD_NOT_FOUND, 8),
        (b'{"jsonrpc": "2.0", "id": 9, "method": "hello", "params": [1]}', P.INVALID_PARAMS, 9),
        (b'{"jsonrpc": "2.0", "id": 10, "method": "hello", "params": {"x": 1}}', P.INVALID_PARAMS, 10),
        (b'{"jsonrpc": "2.0", "id": 11, "method": "cancel", "params": {}}', P.INVALID_PARAMS, 11),
        (b'{"jsonrpc": "2.0", "id": 12, "method": "cancel", "params": {"request_id": 1.0}}', P.INVALID_PARAMS, 12),
        (b'{"jsonrpc": "2.0", "id": 13, "method": "load_model", "params": {"path": ""}}', P.INVALID_PARAMS, 13),
        (b'{"jsonrpc": "2.0", "id": 14, "method": "load_model", "params": {"path": "m", "device": "gpu"}}',
         P.INVALID_PARAMS, 14),
        (b'{"jsonrpc": "2.0", "id": 15, "method": "load_model", "params": {"path": "m", "dtype": "half"}}',
         P.INVALID_PARAMS, 15),
    ],
)
def test_malformed_requests_get_the_right_code_and_id(line, code, request_id):
    with pytest.raises(P.ProtocolError) as info:
        P.parse_request(line)
    assert info.value.code == code
    assert info.value.request_id == request_id
    assert info.value.message  # a specific message, never empty


@pytest.mark.parametrize(
    "params, fragment",
    [
        ({"output_dir": "o"}, "missing required parameter 'image'"),
        ({"image": "a"}, "missing required parameter 'output_dir'"),
        ({**GOOD, "steps": 4}, "unknown parameter 'steps'"),
        ({**GOOD, "num_inference_steps": "4"}, "'num_inference_steps' must be an integer >= 1"),
        ({**GOOD, "num_inference_steps": 4.0}, "'num_inference_steps' must be an integer >= 1"),
        ({**GOOD, "num_inference_steps": True}, "'num_inference_steps' must be an integer >= 1"),  # bool is no int
        ({**GOOD, "num_inference_steps": 0}, "'num_inference_steps' must be an integer >= 1"),
        ({**GOOD, "ensemble_size": -1}, "'ensemble_size' must be an integer >= 1"),
        ({**GOOD, "processing_resolution": -8}, "'processing_resolution' must be an integer >= 0"),
        ({**GOOD, "seed": -1}, "'seed' must be an integer in [0, 2**64)"),
        ({**GOOD, "seed": 2**64}, "'seed' must be an integer in [0, 2**64)"),
        ({**GOOD, "timestep_spacing": "cosine"}, "'timestep_spacing' must be one of leading, trailing, linspace"),
        ({**GOOD, "output_uncertainty": 1}, "'output_uncertainty' must be true or false"),
        ({**GOOD, "output_uncertainty": None}, "'output_uncertainty' must be true or false"),
        ({**GOOD, "image": 5}, "'image' must be a non-empty path string"),
        ({**GOOD, "image": "  "}, "'image' must be a non-empty path string"),
        ({**GOOD, "output_dir": ["o"]}, "'output_dir' must be a non-empty path string, got an array"),
    ],
)
def test_predict_params_are_checked_by_name_and_type(params, fragment):
    with pytest.raises(P.ProtocolError) as info:
        P.parse_request(_predict(params, request_id="r"))
    assert info.value.code == P.INVALID_PARAMS and info.value.request_id == "r"
    assert fragment in info.value.message


def test_zero_resolution_and_nulls_are_accepted():
    req = P.parse_request(_predict({**GOOD, "processing_resolution": 0, "seed": None, "ensemble_size": None}))
    assert req.params["processing_resolution"] == 0 and req.params["seed"] is None


def test_devices_and_dtypes():
    for device in ("auto", "cpu", "cuda", "cuda:1", "mps"):
        assert P.check_params("load_model", {"path": "m", "device": device})["device"] == device
    for device in ("cuda:", "cuda:x", "tpu", "", None):
        with pytest.raises(P.ProtocolError):
            P.check_params("load_model", {"path": "m", "device": device})
    assert P.check_params("load_model", {"path": "m"}) == {"path": "m", "device": "auto", "dtype": "auto"}
    assert P.check_params("load_model", {"path": None})["path"] is None  # the built-in demo model, asked for
    with pytest.raises(P.ProtocolError, match="missing required parameter 'path'"):
        P.check_params("load_model", {})  # ... explicitly, never by omission


def test_notifications_are_marked():
    req = P.parse_request(_line({"jsonrpc": "2.0", "method": "cancel", "params": {"request_id": 3}}))
    assert req.is_notification and req.id is None and req.params == {"request_id": 3}
    with pytest.raises(P.ProtocolError) as info:  # a bad notification must not be answered: the flag says so
        P.parse_request(_line({"jsonrpc": "2.0", "method": "nope"}))
    assert info.value.is_notification
    with pytest.raises(P.ProtocolError) as info:  # an explicit null id is a request, answered with id null
        P.parse_request(_line({"jsonrpc": "2.0", "id": None, "method": "nope"}))
    assert not info.value.is_notification and info.value.request_id is None


def test_builders_and_parse_response():
    assert P.request("hello", None, 1) == {"jsonrpc": "2.0", "id": 1, "method": "hello"}
    err = P.error(3, P.BAD_IMAGE, "x.png: file not found", {"k": 1})
    assert err == {"jsonrpc": "2.0", "id": 3, "error": {"code": -32003, "message": "x.png: file not found", "data": {"k": 1}}}
    resp = P.parse_response(P.encode(err))
    assert resp.id == 3 and resp.error["code"] == P.BAD_IMAGE and not resp.is_notification
    resp = P.parse_response(P.encode(P.result("a", None)))
    assert resp.id == "a" and resp.result is None and resp.error is None
    note = P.parse_response(P.encode(P.progress(5, "denoise", 2, 10)))
    assert note.is_notification and note.params == {"request_id": 5, "stage": "denoise", "step": 2, "total": 10}
    for bad in (b"[]", b'{"jsonrpc": "2.0", "id": 1}', b'{"jsonrpc": "2.0", "id": 1, "result": 1, "error": {}}',
                b'{"jsonrpc": "2.0", "id": 1, "error": {"code": "x", "message": "m"}}', b'{"id": 1, "result": 1}'):
        with pytest.raises(P.ProtocolError):
            P.parse_response(bad)


@pytest.mark.parametrize("params, message", [
    ({"fov_deg": 180}, "'fov_deg' must be a number of degrees in (0, 180)"),
    ({"fov_deg": True}, "'fov_deg' must be a number of degrees"),
    ({"focal_35mm": 0}, "'focal_35mm' must be a number > 0"),
    ({"focal_35mm": float("inf")}, "'focal_35mm' must be a number > 0"),
    ({"flip_average": 1}, "'flip_average' must be true or false"),
    ({"fov_deg": 60, "focal_35mm": 26}, "give 'fov_deg' or 'focal_35mm', not both"),
])
def test_predict_camera_and_backend_params(params, message):
    with pytest.raises(P.ProtocolError, match=re.escape(message)):
        P.check_params(P.PREDICT, {**GOOD, **params})
    good = P.check_params(P.PREDICT, {**GOOD, "fov_deg": 60, "flip_average": True})
    assert (good["fov_deg"], good["flip_average"], good["focal_35mm"]) == (60.0, True, None)
