"""Issue 14, worker and client: hostile requests, huge or non-regular image files, a worker killed while idle.
Every request is answered with a specific error, and the worker stays fully usable afterwards."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import struct
import sys
import textwrap
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from metricgold_engine.core import protocol as P
from metricgold_engine.core.client import WorkerClient
from metricgold_engine.core import errors as E
from metricgold_engine.core.errors import ImageLoadError, InvalidParams, error_from_reply

from test_worker import ENV, RawWorker, _image

posix_only = pytest.mark.skipif(os.name != "posix", reason="FIFOs, signals and shell-script stand-in workers")
SURROGATE = "\\udcff"  # as it appears in the JSON text: a lone surrogate once decoded


def _raw_request(method: str, params_json: str, id_json: str) -> bytes:
    return f'{{"jsonrpc":"2.0","id":{id_json},"method":"{method}","params":{params_json}}}\n'.encode()


def _huge_png(path: Path, width: int, height: int) -> Path:
    """A PNG whose header says width x height; its pixel data is a few bytes (refused before decoding, or it would
    fail as truncated)."""
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4:ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17:ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr:ihdr + 17])))
    path.write_bytes(bytes(data))
    return path


@pytest.fixture(scope="module")
def worker(tiny_checkpoint: Path):
    w = RawWorker([sys.executable, "-m", "metricgold_engine.worker", "--model", str(tiny_checkpoint), "--device", "cpu"])
    w.call("hello", None, "started", timeout=300)  # started (seconds of torch import on a busy machine) before timing
    yield w
    w.close()


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _image(tmp_path_factory.mktemp("hostile-images") / "room.png")


def _predict_ok(worker: RawWorker, image: Path, out: Path, request_id: object) -> None:
    reply, _ = worker.call("predict", {"image": str(image), "output_dir": str(out), "num_inference_steps": 1,
                                       "ensemble_size": 1}, request_id, timeout=60)
    assert reply.error is None, reply.error
    assert np.load(reply.result["depth_path"]).shape == (48, 64)


# ------------------------------------------------------------------------------------------------ not Unicode
def test_paths_and_ids_that_are_not_unicode_are_answered_and_the_worker_goes_on(worker, image, tmp_path):
    out = str(tmp_path).replace("\\", "\\\\")
    bad_image = f'{{"image":"{out}/{SURROGATE}.png","output_dir":"{out}"}}'
    worker.send_raw(_raw_request("predict", bad_image, "11"))
    _, reply = worker.next_message(timeout=60)
    assert reply.id == 11 and reply.error["code"] == P.INVALID_PARAMS
    assert "'image'" in reply.error["message"] and "Unicode" in reply.error["message"]

    worker.send_raw(_raw_request("predict", f'{{"image":"{image}","output_dir":"{out}/{SURROGATE}"}}', "12"))
    _, reply = worker.next_message(timeout=60)
    assert reply.id == 12 and reply.error["code"] == P.INVALID_PARAMS and "'output_dir'" in reply.error["message"]

    worker.send_raw(_raw_request("cancel", f'{{"request_id":"{SURROGATE}"}}', "13"))
    _, reply = worker.next_message(timeout=60)
    assert reply.id == 13 and reply.error["code"] == P.INVALID_PARAMS and "'request_id'" in reply.error["message"]

    for method in ("hello", "predict"):  # an id that cannot be echoed back: answered with id null
        worker.send_raw(_raw_request(method, "{}", f'"{SURROGATE}"'))
        _, reply = worker.next_message(timeout=60)
        assert reply.id is None and reply.error["code"] == P.INVALID_REQUEST and "'id'" in reply.error["message"]

    # Fully usable: hello, and predictions (the compute thread is alive)
    hello, _ = worker.call("hello", None, "still-there")
    assert hello.result["model_loaded"]
    _predict_ok(worker, image, tmp_path, 14)


def test_a_reply_that_cannot_be_encoded_is_still_answered(tmp_path):
    from metricgold_engine.worker import WorkerServer

    out = io.BytesIO()
    server = WorkerServer(out)
    server.send(P.result(5, {"depth_path": "/x/\udcff.npy"}))  # a result naming an undecodable file name
    server.send(P.result("\udcff", None))  # an id that cannot be echoed
    server.send(P.progress("\udcff", "denoise", 1, 2))  # a notification: dropped, not raised
    server.send(P.error(6, P.BAD_IMAGE, "/x/\udcff.png: file not found"))  # messages are escaped, not refused
    replies = [P.parse_response(line) for line in out.getvalue().splitlines()]
    assert [(r.id, r.error["code"]) for r in replies] == [(5, P.INTERNAL_ERROR), (None, P.INVALID_REQUEST),
                                                           (6, P.BAD_IMAGE)]
    assert "\\udcff.png: file not found" in replies[2].error["message"]


# ------------------------------------------------------------------------------------------------ huge images
def test_an_image_too_large_is_refused_from_its_header(worker, image, tmp_path):
    huge = _huge_png(tmp_path / "huge.png", 10000, 7000)
    bomb = _huge_png(tmp_path / "bomb.png", 30000, 30000)  # beyond Pillow's own decompression-bomb guard
    for path, megapixels in ((huge, "70.0"), (bomb, "more than 179.0 megapixels")):
        started = time.monotonic()
        reply, _ = worker.call("predict", {"image": str(path), "output_dir": str(tmp_path)}, f"big-{path.stem}")
        assert time.monotonic() - started < 10  # header only: milliseconds (decoding 70 MP took ~88 s)
        err = reply.error
        assert err["code"] == P.BAD_IMAGE and "image too large" in err["message"], err
        assert str(path) in err["message"] and "METRICGOLD_MAX_PIXELS" in err["message"]
        assert "limit of 40.0 megapixels" in err["message"] and megapixels in err["message"]
        assert err["data"]["reason"] == "image_too_large"
        assert isinstance(error_from_reply(err["code"], err["message"], err["data"]), E.ImageTooLarge)
    _predict_ok(worker, image, tmp_path, "after-big")


def test_the_pixel_limit_is_raised_or_lowered_by_the_environment(image, monkeypatch, tmp_path):
    from metricgold_engine.image_io import load_rgb_image

    monkeypatch.setenv("METRICGOLD_MAX_PIXELS", "3000")  # the image has 48 x 64 = 3072 pixels
    with pytest.raises(E.ImageTooLarge, match=r"48 = 0\.0 megapixels, above the limit of 0\.0 megapixels \(3000 pixels\)"):
        load_rgb_image(image)
    monkeypatch.setenv("METRICGOLD_MAX_PIXELS", "3072")
    assert load_rgb_image(image).size == (64, 48)
    with pytest.raises(E.ImageTooLarge, match=r"100 x 100 = 0\.0 megapixels, above the limit of 0\.0 megapixels \(9999"):
        load_rgb_image(_huge_png(tmp_path / "h.png", 100, 100), max_pixels=9999)  # the argument wins
    monkeypatch.setenv("METRICGOLD_MAX_PIXELS", "lots")
    with pytest.raises(InvalidParams, match="METRICGOLD_MAX_PIXELS='lots'"):
        load_rgb_image(image)


def test_out_of_memory_fails_only_its_request(image, tmp_path, monkeypatch):
    """In-process server: decoding the first image raises MemoryError; that request is answered, the next served."""
    import metricgold_engine.image_io as image_io
    from metricgold_engine.worker import WorkerServer

    real = image_io.load_rgb_image
    calls = []

    def load(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 1:
            raise MemoryError()
        return real(path, *args, **kwargs)

    monkeypatch.setattr(image_io, "load_rgb_image", load)
    out = io.BytesIO()
    server = WorkerServer(out, device="cpu", dtype="float32")
    server.pipe = object()  # a model is "loaded": the failure must come from the image, not a missing model
    lines = b"".join(P.encode(P.request("predict", {"image": str(p), "output_dir": str(tmp_path)}, i))
                     for i, p in ((1, image), (2, tmp_path / "missing.png")))
    assert server.serve(io.BytesIO(lines)) == 0
    replies = [P.parse_response(line) for line in out.getvalue().splitlines()]
    replies = [r for r in replies if not r.is_notification]
    assert [r.id for r in replies] == [1, 2]
    assert replies[0].error["code"] == P.INTERNAL_ERROR and "out of memory" in replies[0].error["message"]
    assert replies[0].error["data"] == {"type": "MemoryError"}
    assert replies[1].error["code"] == P.BAD_IMAGE and "file not found" in replies[1].error["message"]


# ------------------------------------------------------------------------------------------------ options, FIFOs
def test_too_many_steps_for_leading_spacing_is_invalid_params(worker, image, tmp_path):
    reply, _ = worker.call("predict", {"image": str(image), "output_dir": str(tmp_path), "num_inference_steps": 1000,
                                       "timestep_spacing": "leading"}, "steps")
    assert reply.error["code"] == P.INVALID_PARAMS, reply.error
    assert "num_inference_steps" in reply.error["message"] and "trailing" in reply.error["message"]
    assert not list(tmp_path.iterdir())  # refused before anything was written


@posix_only
def test_a_fifo_as_the_image_is_refused_at_once(worker, image, tmp_path):
    fifo = tmp_path / "photo.png"
    os.mkfifo(fifo)
    started = time.monotonic()
    reply, _ = worker.call("predict", {"image": str(fifo), "output_dir": str(tmp_path)}, "fifo", timeout=10)
    assert time.monotonic() - started < 10  # refused before open(), which would block until a writer came
    assert reply.id == "fifo" and reply.error["code"] == P.BAD_IMAGE
    assert "not a regular file" in reply.error["message"] and str(fifo) in reply.error["message"]
    # the compute thread is free: a cancel finds nothing running, a prediction runs
    cancel, _ = worker.call("cancel", {"request_id": "fifo"}, "c")
    assert cancel.result == {"cancelled": False}
    _predict_ok(worker, image, tmp_path, "after-fifo")


# ------------------------------------------------------------------------------------------------ the client
STAND_IN = textwrap.dedent(
    """
    import json, os, sys, time
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "pids"), "a") as f:
        f.write(f"{os.getpid()}\\n")
    first = len(open(os.path.join(here, "pids")).read().split()) == 1
    def send(obj):
        sys.stdout.write(json.dumps(obj) + "\\n"); sys.stdout.flush()
    for line in sys.stdin:
        msg = json.loads(line)
        if msg.get("method") == "hello":
            send({"jsonrpc": "2.0", "id": msg["id"], "result": {"protocol_version": 1, "pid": os.getpid()}})
            if first and sys.argv[1] == "deaf":
                # The first process stops reading while still alive (hung, or dying): a request cannot be written.
                os.close(0)  # (sys.stdin.close() would leave fd 0 open: the std streams do not own their fds)
                time.sleep(60)
                sys.exit(0)
        elif msg.get("method") == "predict":
            send({"jsonrpc": "2.0", "id": msg["id"], "error": {"code": -32003, "message": "stand-in: " + msg["params"]["image"]}})
        elif msg.get("method") == "shutdown":
            send({"jsonrpc": "2.0", "id": msg["id"], "result": None}); sys.exit(0)
    """
)


def _stand_in(tmp_path: Path, mode: str) -> Path:
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN)
    exe = tmp_path / f"python-{mode}"
    exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{script}" {mode} "$@"\n')
    exe.chmod(0o755)
    return exe


@posix_only
def test_the_client_refuses_a_path_that_is_not_unicode_itself(tmp_path):
    with WorkerClient(_stand_in(tmp_path, "plain")) as c:
        with pytest.raises(InvalidParams, match=r"^image: the path .*\\udcff.* is not valid Unicode"):
            c.predict(str(tmp_path / "\udcff.png"), tmp_path)
        with pytest.raises(InvalidParams, match=r"^out_dir: "):
            c.predict(tmp_path / "a.png", os.fsdecode(bytes(tmp_path) + b"/\xff"))
        with pytest.raises(InvalidParams, match=r"^source: the path .*\\udcff"):
            c.predict_sequence(str(tmp_path / "\udcff.mp4"), tmp_path)
        with pytest.raises(ImageLoadError, match="stand-in"):  # the client still works
            c.predict(tmp_path / "a.png", tmp_path)


@posix_only
def test_a_request_that_cannot_be_written_restarts_the_worker_and_is_sent_again(tmp_path):
    with WorkerClient(_stand_in(tmp_path, "deaf")) as c:
        first = c.info["pid"]
        time.sleep(0.5)  # the first process has closed its input by now, and lives on
        assert c.alive
        assert c.hello(timeout=10)["pid"] != first
        with pytest.raises(ImageLoadError, match="stand-in"):
            c.predict(tmp_path / "a.png", tmp_path)
    with contextlib.suppress(ProcessLookupError):
        os.kill(first, signal.SIGKILL)


@posix_only
def test_the_first_call_after_the_worker_was_killed_while_idle_succeeds(tiny_checkpoint, image, tmp_path):
    with WorkerClient(sys.executable, model=tiny_checkpoint, device="cpu", env={"PYTHONPATH": ENV["PYTHONPATH"]}) as c:
        for _ in range(1):
            pid = c.pid
            os.kill(pid, signal.SIGKILL)
            result = c.predict(image, tmp_path, num_inference_steps=1, ensemble_size=1, timeout=120)
            assert result.depth.shape == (48, 64) and c.pid != pid
