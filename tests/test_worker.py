"""The worker process itself, driven with raw JSON lines (no client): real subprocesses, tiny checkpoint, CPU."""

from __future__ import annotations

import json
import os
import queue
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from metricgold_engine.core import protocol as P

REPO_ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}


class RawWorker:
    """A worker subprocess; stdout lines are collected on a thread, with their arrival times."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
        self.lines: queue.Queue[tuple[float, bytes]] = queue.Queue()
        self.stderr = bytearray()
        threading.Thread(target=self._pump, daemon=True).start()
        threading.Thread(target=lambda: self.stderr.extend(self.proc.stderr.read()), daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.lines.put((time.monotonic(), line))
        self.lines.put((time.monotonic(), b""))

    def send_raw(self, data: bytes) -> None:
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def send(self, method: str, params: dict | None = None, request_id: Any = None) -> None:
        self.send_raw(P.encode(P.request(method, params, request_id)))

    def next_message(self, timeout: float = 60.0) -> tuple[float, P.Response]:
        when, line = self.lines.get(timeout=timeout)
        assert line, f"worker ended; stderr:\n{self.stderr.decode(errors='replace')[-3000:]}"
        return when, P.parse_response(line)  # raises if the line is not JSON-RPC 2.0

    def call(self, method: str, params: dict | None = None, request_id: Any = None, timeout: float = 60.0):
        """Send a request; return (reply, notifications seen before it)."""
        self.send(method, params, request_id)
        notes = []
        while True:
            _, msg = self.next_message(timeout)
            if msg.is_notification:
                notes.append(msg)
            else:
                assert msg.id == request_id, f"reply to {msg.id!r} while waiting for {request_id!r}"
                return msg, notes

    def close(self) -> int:
        if self.proc.poll() is None:
            try:
                self.send("shutdown", None, "bye")
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


def _image(path: Path, h: int = 48, w: int = 64, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def worker(tiny_checkpoint: Path):
    """One worker for the module (starting one costs seconds of torch import), model loaded at start."""
    w = RawWorker([sys.executable, "-m", "metricgold_engine.worker", "--model", str(tiny_checkpoint), "--device", "cpu"])
    yield w
    assert w.close() == 0


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _image(tmp_path_factory.mktemp("images") / "room.png")


def test_hello_reports_versions_device_and_model(worker, tiny_checkpoint):
    import torch

    import metricgold_engine

    reply, notes = worker.call("hello", None, 1)
    info = reply.result
    assert notes == []
    assert info["protocol_version"] == P.PROTOCOL_VERSION
    assert info["engine_version"] == metricgold_engine.__version__
    assert info["torch_version"] == torch.__version__
    assert info["device"] == "cpu" and info["dtype"] == "float32"
    assert info["model_loaded"] is True and Path(info["model_path"]) == tiny_checkpoint.resolve()
    assert info["demo_model"] is False
    assert info["pid"] == worker.proc.pid


def test_predict_writes_files_reports_progress_and_keeps_the_model(worker, image, tmp_path):
    params = {"image": str(image), "output_dir": str(tmp_path / "new" / "dir"), "num_inference_steps": 3,
              "ensemble_size": 3, "seed": 5, "output_uncertainty": True}
    reply, notes = worker.call("predict", params, "p1")
    assert reply.error is None, reply.error
    res = reply.result
    depth = np.load(res["depth_path"])
    uncertainty = np.load(res["uncertainty_path"])
    assert Path(res["depth_path"]) == tmp_path / "new" / "dir" / "room_depth.npy"
    assert Path(res["uncertainty_path"]) == tmp_path / "new" / "dir" / "room_uncertainty.npy"
    assert depth.dtype == np.float32 and depth.shape == (48, 64) and res["shape"] == [48, 64]
    assert uncertainty.dtype == np.float32 and uncertainty.shape == (48, 64) and (uncertainty >= 0).all()
    assert res["depth_min"] == pytest.approx(float(depth.min()), rel=1e-7)
    assert res["depth_max"] == pytest.approx(float(depth.max()), rel=1e-7)
    assert res["settings"]["num_inference_steps"] == 3 and res["settings"]["ensemble_size"] == 3
    assert res["settings"]["seed"] == 5 and res["seconds"] > 0
    assert [f.name for f in (tmp_path / "new" / "dir").iterdir() if f.name.startswith(".")] == []  # no temp files
    # progress: load_image, every denoising step in order, then save; all for this request
    assert all(n.method == "progress" and n.params["request_id"] == "p1" for n in notes)
    denoise = [(n.params["step"], n.params["total"]) for n in notes if n.params["stage"] == "denoise"]
    assert denoise == [(k, 3) for k in range(1, 4)]  # batch_size 0 = whole ensemble in one batch
    stages = [n.params["stage"] for n in notes]
    assert stages[0] == "load_image" and stages[-1] == "save"
    # the model stays loaded: no load_model progress, the second request is fast and identical
    again, notes2 = worker.call("predict", params, "p2")
    assert not any(n.params["stage"] == "load_model" for n in notes2)
    np.testing.assert_array_equal(np.load(again.result["depth_path"]), depth)


def test_hundreds_of_malformed_lines_then_a_valid_request(worker, image, tmp_path):
    """Every reply is valid JSON-RPC with the right id and a specific code; the worker keeps serving."""
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("this is text, not a PNG")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    rng = random.Random(0)
    good = {"image": str(image), "output_dir": str(tmp_path / "o")}
    cases: list[tuple[bytes, Any, int]] = []  # (line, id of the reply, code)

    def req(request_id: Any, method: Any = "predict", params: Any = None, code: int = P.INVALID_PARAMS, **extra: Any):
        msg = {"jsonrpc": "2.0", "id": request_id, "method": method, **extra}
        if params is not None:
            msg["params"] = params
        cases.append((json.dumps(msg).encode(), request_id, code))

    for i in range(200):  # not JSON: random bytes (no newlines), truncated objects, invalid UTF-8, NaN
        junk = bytes(rng.choice(b"{}[]\":,abc 0123\xff\xfe\\") for _ in range(rng.randint(1, 40)))
        if not junk.strip():
            continue  # blank lines are skipped, not answered
        try:
            json.loads(junk)
            continue  # rarely, junk is valid JSON; skip it rather than guess its answer
        except (ValueError, UnicodeDecodeError):
            cases.append((junk, None, P.PARSE_ERROR))
    for text in (b'{"jsonrpc":"2.0","id":1,"method":"hello"', b"{'single': 'quotes'}", b"\xc3\x28",
                 b'{"a": NaN}', b"[" * 5000 + b"]" * 5000 + b"x", b'{"jsonrpc":"2.0",}'):
        cases.append((text, None, P.PARSE_ERROR))
    for value in (0, -1.5, '"str"', "null", "true", "[]", "[1,2]", '[{"jsonrpc":"2.0","id":1,"method":"hello"}]'):
        cases.append((str(value).encode(), None, P.INVALID_REQUEST))  # not an object
    for bad_id in (1.5, True, [1], {"a": 1}):
        cases.append((json.dumps({"jsonrpc": "2.0", "id": bad_id, "method": "hello"}).encode(), None, P.INVALID_REQUEST))
    n = 1000
    for version in ("1.0", 2.0, None, "2"):
        req(n := n + 1, "hello", jsonrpc=version, code=P.INVALID_REQUEST)  # overrides "2.0"
    for method in (None, 5, ["predict"]):
        req(n := n + 1, method, code=P.INVALID_REQUEST)
    req(n := n + 1, "hello", extra_member=1, code=P.INVALID_REQUEST)
    for method in ("predcit", "PREDICT", "", "rpc.discover", "progress", "__init__", "load"):
        req(n := n + 1, method, code=P.METHOD_NOT_FOUND)
    bad_values = {
        "num_inference_steps": ["4", 4.5, 0, -3, True, [4], {}],
        "ensemble_size": ["2", 0, 1.0, False],
        "processing_resolution": [-1, "512", 512.0, [512]],
        "seed": [-1, 2**64, "7", 0.5, True],
        "timestep_spacing": ["cosine", 1, True, ""],
        "output_uncertainty": [1, 0, "true", None],
        "image": [None, 3, "", [], {}],
        "output_dir": [None, 7, " ", ["o"]],
    }
    for name, values in bad_values.items():
        for value in values:
            req(n := n + 1, params={**good, name: value})
            req(f"s{n}", params={**good, name: value})  # string ids too
    for params in ({}, {"image": str(image)}, {"output_dir": "o"}, [str(image), "o"], "x", {**good, "step": 4},
                   {**good, "steps": 4, "seed": 1}):
        req(n := n + 1, params=params)
    for params in ({}, {"path": 3}, {"path": "m", "device": "gpu"}, {"path": "m", "dtype": "half"}, {"path": "m", "x": 1}):
        req(n := n + 1, "load_model", params)
    for params in ({}, {"request_id": 1.5}, {"request_id": None}, {"id": 1}):
        req(n := n + 1, "cancel", params)
    req(n := n + 1, "hello", {"verbose": True})
    req(n := n + 1, "shutdown", {"now": True})
    # well-formed requests the compute thread must refuse with a specific code
    for k in range(10):
        req(f"missing{k}", params={**good, "image": str(tmp_path / f"missing{k}.png")}, code=P.BAD_IMAGE)
        req(f"notimg{k}", params={**good, "image": str(not_an_image)}, code=P.BAD_IMAGE)
        req(f"ro{k}", params={**good, "output_dir": str(blocker / "sub")}, code=P.OUTPUT_NOT_WRITABLE)
    req("nomodel", "load_model", {"path": str(tmp_path / "no-such-model")}, code=P.MODEL_LOAD_FAILED)
    rng.shuffle(cases)
    assert len(cases) >= 300

    worker.send_raw(b"".join(line + b"\n" for line, _, _ in cases) + b"\n   \n")  # blank lines: no reply
    expected: dict[Any, list[int]] = {}
    for _, request_id, code in cases:
        expected.setdefault(request_id, []).append(code)
    got: dict[Any, list[int]] = {}
    replies = 0
    while replies < len(cases):
        _, msg = worker.next_message()  # parse_response: each line must be JSON-RPC 2.0
        if msg.is_notification:  # progress of the requests that reach the compute thread
            assert msg.method == "progress" and msg.params["request_id"] in expected
            continue
        assert msg.error is not None and msg.error["message"], msg
        got.setdefault(msg.id, []).append(msg.error["code"])
        replies += 1
    assert {k: sorted(v) for k, v in got.items()} == {k: sorted(v) for k, v in expected.items()}

    reply, _ = worker.call("predict", {**good, "num_inference_steps": 2, "ensemble_size": 1, "seed": 0}, "valid")
    assert reply.error is None and np.load(reply.result["depth_path"]).shape == (48, 64)
    assert worker.proc.poll() is None


def test_error_messages_name_the_problem(worker, image, tmp_path):
    missing = tmp_path / "nowhere.jpg"
    reply, _ = worker.call("predict", {"image": str(missing), "output_dir": str(tmp_path)}, 1)
    assert reply.error["code"] == P.BAD_IMAGE and str(missing) in reply.error["message"]
    blocker = tmp_path / "file"
    blocker.write_text("")
    reply, _ = worker.call("predict", {"image": str(image), "output_dir": str(blocker)}, 2)
    assert reply.error["code"] == P.OUTPUT_NOT_WRITABLE and str(blocker) in reply.error["message"]
    reply, _ = worker.call("predict", {"image": str(image), "output_dir": str(tmp_path), "ensemble": 3}, 3)
    assert reply.error["code"] == P.INVALID_PARAMS and "'ensemble'" in reply.error["message"]
    reply, _ = worker.call("load_model", {"path": str(tmp_path / "nope")}, 4)
    assert reply.error["code"] == P.MODEL_LOAD_FAILED and str(tmp_path / "nope") in reply.error["message"]
    assert list(tmp_path.glob("*.npy")) == []  # nothing half-written anywhere
    reply, _ = worker.call("hello", None, 5)
    assert reply.result["model_loaded"]  # a failed load keeps the model that was there
    worker.send_raw(b'{"jsonrpc": "2.0", "id": 6, "method": "hello", "params": {"x": "' + b"x" * (3 << 20) + b'"}}\n')
    _, msg = worker.next_message()
    assert msg.id is None and msg.error["code"] == P.PARSE_ERROR and "longer than" in msg.error["message"]
    reply, _ = worker.call("hello", None, 7)  # the rest of the long line was skipped, not read as requests
    assert reply.result["protocol_version"] == P.PROTOCOL_VERSION


def test_cancel_stops_within_one_denoising_step(worker, image, tmp_path):
    steps = 400
    worker.send("predict", {"image": str(image), "output_dir": str(tmp_path), "num_inference_steps": steps,
                            "ensemble_size": 1, "seed": 1}, "long")
    times = []
    while len(times) < 4:  # let a few steps run, timing them
        when, msg = worker.next_message()
        if msg.is_notification and msg.params["stage"] == "denoise":
            times.append(when)
            last_step = msg.params["step"]
    sent = time.monotonic()
    worker.send("cancel", {"request_id": "long"}, "c1")
    replies = {}
    while len(replies) < 2:  # the two replies may come in either order
        when, msg = worker.next_message()
        if msg.is_notification:
            last_step = msg.params["step"]
        else:
            replies[msg.id] = (when, msg)
    assert replies["c1"][1].result == {"cancelled": True}
    when, msg = replies["long"]
    assert msg.error["code"] == P.CANCELLED
    data = msg.error["data"]
    # The worker records the step count when the cancel arrived and when it stopped: at most one step more.
    assert data["step"] - data["cancel_requested_at_step"] <= 1
    assert data["step"] == last_step < steps
    step_time = float(np.median(np.diff(times)))
    assert when - sent < 3 * step_time + 2.0, (when - sent, step_time)  # slack: a loaded CI machine
    assert list(tmp_path.glob("*.npy")) == []  # a cancelled prediction writes nothing
    # the worker stays usable; cancelling something unknown (or finished) says so
    reply, _ = worker.call("cancel", {"request_id": "long"}, "c2")
    assert reply.result == {"cancelled": False}
    reply, _ = worker.call("predict", {"image": str(image), "output_dir": str(tmp_path), "num_inference_steps": 2,
                                       "ensemble_size": 1}, "after")
    assert reply.error is None


def test_cancel_as_notification_and_queued_requests(worker, image, tmp_path):
    params = {"image": str(image), "output_dir": str(tmp_path), "num_inference_steps": 300, "ensemble_size": 1}
    worker.send("predict", params, "first")
    worker.send("predict", {**params, "num_inference_steps": 2}, "queued")
    worker.send("predict", params, "first")  # an id still in use is refused, not mixed up
    _, msg = worker.next_message()
    while msg.is_notification:
        _, msg = worker.next_message()
    assert msg.id == "first" and msg.error["code"] == P.INVALID_REQUEST and "already used" in msg.error["message"]
    worker.send_raw(P.encode(P.notification("cancel", {"request_id": "queued"})))  # no reply to a notification
    worker.send_raw(P.encode(P.notification("cancel", {"request_id": "first"})))
    replies = {}
    while len(replies) < 2:
        _, msg = worker.next_message()
        if not msg.is_notification:
            replies[msg.id] = msg.error["code"]
    assert replies == {"first": P.CANCELLED, "queued": P.CANCELLED}
    reply, _ = worker.call("hello", None, "h")  # and no stray reply to the notifications came before this one
    assert reply.result["model_loaded"]


NOISY_WORKER = r"""
import ctypes, logging, os, subprocess, sys, warnings
import metricgold_engine.pipeline as pipeline_module

original_call = pipeline_module.MetricGoldPipeline.__call__

def noisy_call(self, *args, **kwargs):
    print("NOISE print")
    sys.stdout.write("NOISE sys.stdout\n"); sys.stdout.flush()
    sys.__stdout__.write("NOISE sys.__stdout__\n"); sys.__stdout__.flush()
    os.write(1, b"NOISE fd1\n")
    libc = ctypes.CDLL(None); libc.printf(b"NOISE printf\n"); libc.fflush(None)
    subprocess.run(["echo", "NOISE child"], check=True)
    warnings.warn("NOISE warning")
    logging.getLogger("diffusers").warning("NOISE diffusers logger")
    self.set_progress_bar_config(disable=False, file=sys.stdout)  # diffusers' tqdm bar onto 'stdout'
    return original_call(self, *args, **kwargs)

pipeline_module.MetricGoldPipeline.__call__ = noisy_call
from metricgold_engine.worker import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.skipif(sys.platform == "win32", reason="uses libc printf and echo")
def test_stdout_carries_only_protocol_lines_even_when_libraries_write(tiny_checkpoint, image, tmp_path):
    w = RawWorker([sys.executable, "-c", NOISY_WORKER, "--model", str(tiny_checkpoint), "--device", "cpu"])
    w.send("hello", None, 1)
    w.send("predict", {"image": str(image), "output_dir": str(tmp_path), "num_inference_steps": 2, "ensemble_size": 1}, 2)
    w.send_raw(b"junk\n")
    w.proc.stdin.close()  # end of input: the worker finishes what it received, then exits
    assert w.proc.wait(timeout=120) == 0
    lines = []
    while True:
        _, line = w.lines.get(timeout=10)
        if not line:
            break
        lines.append(line)
    messages = [P.parse_response(line) for line in lines]  # each stdout line is JSON-RPC, or this raises
    replies = {m.id: m for m in messages if not m.is_notification}
    assert set(replies) == {1, 2, None}
    assert replies[2].error is None and Path(replies[2].result["depth_path"]).is_file()
    time.sleep(0.2)
    stderr = w.stderr.decode(errors="replace")
    for noise in ("print", "sys.stdout", "sys.__stdout__", "fd1", "printf", "child", "warning", "diffusers logger"):
        assert f"NOISE {noise}" in stderr  # it happened, and went to stderr
    assert b"NOISE" not in b"".join(lines)


def test_bad_model_at_start_exits_with_a_message(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "metricgold_engine.worker", "--model", str(tmp_path / "missing"), "--device", "cpu"],
        input=b"", capture_output=True, env=ENV, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stdout == b""
    assert f"{tmp_path / 'missing'}: model folder not found" in proc.stderr.decode()


def test_predict_without_a_model_loads_the_built_in_demo_model(tiny_checkpoint, image, tmp_path, monkeypatch):
    """In-process WorkerServer (no subprocess): the tiny checkpoint stands in for the built-in demo model."""
    import io

    from metricgold_engine.core import demo_model as model_module
    from metricgold_engine.worker import WorkerServer

    monkeypatch.setattr(model_module, "DEMO_MODEL_PATH", tiny_checkpoint)
    out = io.BytesIO()
    server = WorkerServer(out, device="cpu", dtype="float32")
    params = {"image": str(image), "output_dir": str(tmp_path), "num_inference_steps": 1, "ensemble_size": 1}
    assert server.serve(io.BytesIO(P.encode(P.request("predict", params, 1)))) == 0  # end of input: finish, exit
    messages = [P.parse_response(line) for line in out.getvalue().splitlines()]
    stages = [m.params["stage"] for m in messages if m.is_notification]
    assert stages[:2] == ["load_model", "load_model"]
    reply = messages[-1]
    assert reply.id == 1 and reply.error is None and np.load(reply.result["depth_path"]).shape == (48, 64)
    info = server.info()
    assert info["model_loaded"] and Path(info["model_path"]) == tiny_checkpoint.resolve()
    assert info["demo_model"] is True  # so that clients can label it as the demo model


def test_cancel_during_the_tiled_depth_decode_is_answered_quickly(tiny_checkpoint, image, tmp_path):
    """A large photo's depth decode runs in tiles; the worker reports each tile (stage "decode") and a cancel that
    arrives during the decode is answered before the decode finishes, within 2 s."""
    import os
    import threading
    import time

    from metricgold_engine.worker import WorkerServer

    req_r, req_w = os.pipe()
    rep_r, rep_w = os.pipe()
    server = WorkerServer(os.fdopen(rep_w, "wb", buffering=0), device="cpu", dtype="float32")
    server.load(str(tiny_checkpoint), "cpu", "float32")
    pipe = server.estimator.pipeline
    # Make the small test photo decode as a large one does: many small tiles, nothing kept whole.
    pipe.decode_tile_threshold, pipe.decode_tile_size, pipe.decode_whole_max_elements = 16 * 16, 16, 1
    thread = threading.Thread(target=server.serve, args=(os.fdopen(req_r, "rb", buffering=0),), daemon=True)
    thread.start()
    requests = os.fdopen(req_w, "wb", buffering=0)
    replies = os.fdopen(rep_r, "rb", buffering=0)
    params = {"image": str(image), "output_dir": str(tmp_path), "num_inference_steps": 1, "ensemble_size": 1,
              "processing_resolution": 0}
    requests.write(P.encode(P.request("predict", params, 7)))
    stages, sent_at, reply = [], None, None
    for line in replies:
        message = P.parse_response(line)
        if message.is_notification:
            stages.append((message.params["stage"], message.params["step"], message.params["total"]))
            if message.params["stage"] == "decode" and sent_at is None:
                sent_at = time.monotonic()
                requests.write(P.encode(P.notification("cancel", {"request_id": 7})))
            continue
        reply = message
        break
    answered_in = time.monotonic() - sent_at
    requests.close()
    thread.join(30)
    decode = [s for s in stages if s[0] == "decode"]
    assert decode and decode[0][2] > 3  # several tiles were announced ...
    assert decode[-1][1] < decode[0][2]  # ... and the decode stopped before the last one
    assert reply.id == 7 and reply.error["code"] == P.CANCELLED and answered_in < 2.0
    assert not list(tmp_path.glob("*.npy"))  # a cancelled prediction writes nothing
