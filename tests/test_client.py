"""WorkerClient: real worker subprocesses with the tiny checkpoint on the CPU, plus stand-in workers (a few lines of
stdlib Python) for the failure modes of process management that a real worker cannot be made to show on demand."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from metricgold_engine.core import protocol as P
from metricgold_engine.core.demo_model import DEMO_MODEL_PATH
from metricgold_engine.core.client import (
    ClientClosed,
    MetricGoldError,
    PredictionCancelled,
    Progress,
    WorkerClient,
    WorkerDied,
    WorkerStartError,
    WorkerTimeout,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
ENV = {"PYTHONPATH": str(REPO_ROOT)}  # added to the environment: the worker finds the package from any folder
posix_only = pytest.mark.skipif(os.name != "posix", reason="stand-in workers are shell scripts; signals")


def _reaped(pid: int) -> bool:
    """True when no process (not even a zombie) has this pid any more."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _wait_reaped(pid: int, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if _reaped(pid):
            return True
        time.sleep(0.05)
    return False


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(1)
    path = tmp_path_factory.mktemp("client-images") / "street.png"
    Image.fromarray((rng.random((40, 56, 3)) * 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def client(tiny_checkpoint: Path):
    """One worker for the module (a start costs seconds of torch import)."""
    with WorkerClient(sys.executable, model=tiny_checkpoint, device="cpu", env=ENV) as c:
        yield c
    assert not c.alive


# --------------------------------------------------------------------------------------------- import floor
def test_client_imports_without_torch():
    code = (
        "import sys\n"
        "for name in ('torch', 'diffusers', 'transformers'):\n"
        "    sys.modules[name] = None  # any import of them now raises ImportError\n"
        "import metricgold_engine.core.client, metricgold_engine.core.protocol\n"
        "from metricgold_engine.core.client import WorkerClient, PredictionResult\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


# --------------------------------------------------------------------------------------------- real worker
def test_prediction_equals_the_in_process_pipeline(client, tiny_pipeline, image, tmp_path):
    options = dict(num_inference_steps=3, ensemble_size=3, processing_resolution=64, seed=7,
                   timestep_spacing="trailing", output_uncertainty=True)
    result = client.predict(image, tmp_path, **options)
    expected = tiny_pipeline(str(image), **options)
    # Same code, same seed, same CPU: the process boundary must not change a single value.
    np.testing.assert_allclose(result.depth, expected.depth, rtol=1e-6, atol=0)
    np.testing.assert_allclose(result.uncertainty, expected.uncertainty, rtol=1e-6, atol=1e-7)
    assert result.depth.dtype == np.float32 and result.depth.shape == (40, 56) == result.shape
    assert result.settings == expected.settings
    assert result.depth_min == pytest.approx(float(np.min(expected.depth)), rel=1e-6)
    assert result.depth_max == pytest.approx(float(np.max(expected.depth)), rel=1e-6)
    assert Path(result.depth_path) == tmp_path / "street_depth.npy" and result.seconds > 0


def test_progress_reaches_the_callback_in_order(client, image, tmp_path):
    seen: list[Progress] = []
    client.predict(image, tmp_path, on_progress=seen.append, num_inference_steps=4, ensemble_size=1)
    denoise = [(p.step, p.total) for p in seen if p.stage == "denoise"]
    assert denoise == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert seen[0].stage == "load_image" and seen[-1] == Progress("save", 1, 1)


def test_bad_requests_raise_specific_errors_and_the_worker_goes_on(client, image, tmp_path):
    pid = client.pid
    with pytest.raises(MetricGoldError) as info:
        client.predict(tmp_path / "missing.jpg", tmp_path)
    assert info.value.code == P.BAD_IMAGE and "missing.jpg" in str(info.value)
    (tmp_path / "blocker").write_text("")
    with pytest.raises(MetricGoldError) as info:
        client.predict(image, tmp_path / "blocker" / "out")
    assert info.value.code == P.OUTPUT_NOT_WRITABLE and "blocker" in str(info.value)
    with pytest.raises(TypeError, match="unknown parameter 'steps'"):
        client.predict(image, tmp_path, steps=4)
    with pytest.raises(TypeError, match="'ensemble_size' must be an integer"):
        client.predict(image, tmp_path, ensemble_size="3")
    with pytest.raises(MetricGoldError) as info:
        client.load_model(tmp_path / "no-model")
    assert info.value.code == P.MODEL_LOAD_FAILED
    assert client.hello()["model_loaded"] and client.pid == pid


def test_cancel_from_another_thread_stops_within_one_step(client, image, tmp_path):
    pid = client.pid
    running = threading.Event()
    step_times: list[float] = []
    outcome: dict[str, object] = {}

    def on_progress(p: Progress) -> None:
        if p.stage == "denoise":
            step_times.append(time.monotonic())
            if p.step == 3:
                running.set()

    def background() -> None:
        try:
            client.predict(image, tmp_path, on_progress=on_progress, num_inference_steps=400, ensemble_size=1)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome["error"] = exc
        outcome["when"] = time.monotonic()

    thread = threading.Thread(target=background)
    thread.start()
    assert running.wait(60)
    cancelled_at = time.monotonic()
    client.cancel()  # the UI thread: returns at once
    assert time.monotonic() - cancelled_at < 0.1
    thread.join(60)
    error = outcome["error"]
    assert isinstance(error, PredictionCancelled) and error.code == P.CANCELLED
    assert error.data["step"] - error.data["cancel_requested_at_step"] <= 1
    step = float(np.median(np.diff(step_times)))
    assert outcome["when"] - cancelled_at < 3 * step + 2.0  # slack: a loaded CI machine
    assert not list(tmp_path.glob("*.npy"))
    assert client.predict(image, tmp_path, num_inference_steps=2, ensemble_size=1).depth.shape == (40, 56)
    assert client.pid == pid  # the same worker, still usable


def test_cancel_event_and_timeout(client, image, tmp_path):
    event = threading.Event()

    def on_progress(p: Progress) -> None:
        if p.stage == "denoise" and p.step == 2:
            event.set()

    with pytest.raises(PredictionCancelled):
        client.predict(image, tmp_path, cancel=event, on_progress=on_progress, num_inference_steps=400, ensemble_size=1)
    pid = client.pid
    started = time.monotonic()
    with pytest.raises(WorkerTimeout):
        client.predict(image, tmp_path, timeout=0.5, num_inference_steps=500, ensemble_size=1)
    assert time.monotonic() - started < 5
    assert client.pid == pid  # a responsive worker is cancelled, not killed
    assert client.predict(image, tmp_path, num_inference_steps=1, ensemble_size=1).shape == (40, 56)


def test_a_failing_progress_callback_cancels_its_request(client, image, tmp_path):
    times: list[float] = []

    def explode(p: Progress) -> None:
        if p.stage == "denoise":
            times.append(time.monotonic())
            if p.step == 3:
                raise RuntimeError("callback failed")

    with pytest.raises(RuntimeError, match="callback failed"):
        client.predict(image, tmp_path, on_progress=explode, num_inference_steps=500, ensemble_size=1)
    step = float(np.median(np.diff(times)))
    t0 = time.monotonic()  # had the other 497 steps gone on, this request would have queued behind them
    client.predict(image, tmp_path, num_inference_steps=1, ensemble_size=1)
    assert time.monotonic() - t0 < 100 * step


def test_two_threads_share_one_client(client, image, tmp_path):
    totals: dict[int, set[int]] = {2: set(), 3: set()}
    results = {}

    def run(steps: int) -> None:
        results[steps] = client.predict(
            image, tmp_path / str(steps), num_inference_steps=steps, ensemble_size=1, seed=steps,
            on_progress=lambda p: totals[steps].add(p.total) if p.stage == "denoise" else None,
        )

    threads = [threading.Thread(target=run, args=(steps,)) for steps in (2, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert totals == {2: {2}, 3: {3}}  # each request's progress went to its own caller
    assert results[2].settings["num_inference_steps"] == 2 and results[3].settings["num_inference_steps"] == 3


@posix_only
def test_sigkill_mid_request_raises_worker_died_and_the_next_call_restarts(client, image, tmp_path):
    old_pid = client.pid

    def kill_on_step(p: Progress) -> None:
        if p.stage == "denoise" and p.step == 2:
            os.kill(old_pid, signal.SIGKILL)

    with pytest.raises(WorkerDied) as info:
        client.predict(image, tmp_path, on_progress=kill_on_step, num_inference_steps=400, ensemble_size=1)
    message = str(info.value)
    assert f"pid {old_pid}" in message and "SIGKILL" in message and "street.png" in message
    assert info.value.returncode == -signal.SIGKILL
    assert "ready" in info.value.stderr_tail  # the tail of the worker's stderr comes with it
    assert _wait_reaped(old_pid)  # no zombie
    result = client.predict(image, tmp_path, num_inference_steps=2, ensemble_size=1)  # a fresh worker
    assert client.pid != old_pid and result.depth.shape == (40, 56)
    assert client.info["model_loaded"]  # the model was loaded again


def test_unload_model_frees_it_and_the_next_predict_reloads_the_same_model(tiny_checkpoint, image, tmp_path):
    with WorkerClient(sys.executable, model=tiny_checkpoint, device="cpu", env=ENV) as c:
        pid = c.pid
        first = c.predict(image, tmp_path / "a", num_inference_steps=2, ensemble_size=1, seed=3).depth
        info = c.unload_model()
        assert info["model_loaded"] is False and info["model_path"] is None and c.pid == pid  # same process
        assert c.hello()["model_loaded"] is False
        # the next prediction loads the configured model again (not the built-in demo model) and matches
        again = c.predict(image, tmp_path / "b", num_inference_steps=2, ensemble_size=1, seed=3).depth
        assert Path(c.hello()["model_path"]) == tiny_checkpoint.resolve() and c.pid == pid
        np.testing.assert_array_equal(first, again)
        assert c.unload_model()["model_loaded"] is False
        assert c.unload_model()["model_loaded"] is False  # nothing loaded: still fine


def test_model_later_and_close_from_another_thread(tiny_checkpoint, image, tmp_path):
    c = WorkerClient(sys.executable, device="cpu", env=ENV)
    pid = c.pid
    assert c.info["model_loaded"] is False and c.info["protocol_version"] == P.PROTOCOL_VERSION
    if (DEMO_MODEL_PATH / "model_index.json").is_file():  # predict without a model uses the built-in one
        result = c.predict(image, tmp_path, num_inference_steps=1, ensemble_size=1)
        assert result.shape == (40, 56) and Path(c.hello()["model_path"]) == DEMO_MODEL_PATH.resolve()
    else:
        with pytest.raises(MetricGoldError) as info:
            c.predict(image, tmp_path)
        assert info.value.code == P.MODEL_NOT_LOADED and "load_model" in str(info.value)
        assert str(DEMO_MODEL_PATH) in str(info.value)
    assert c.load_model(tiny_checkpoint)["model_loaded"]
    started = threading.Event()
    outcome: list[BaseException] = []

    def background() -> None:
        try:
            c.predict(image, tmp_path, num_inference_steps=500, ensemble_size=1,
                      on_progress=lambda p: started.set())
        except BaseException as exc:  # noqa: BLE001
            outcome.append(exc)

    thread = threading.Thread(target=background)
    thread.start()
    assert started.wait(60)
    t0 = time.monotonic()
    c.close()
    thread.join(30)
    assert time.monotonic() - t0 < 10
    assert len(outcome) == 1 and isinstance(outcome[0], (PredictionCancelled, ClientClosed))
    assert not c.alive and _wait_reaped(pid)
    with pytest.raises(ClientClosed):
        c.predict(image, tmp_path)
    c.close()  # idempotent


# --------------------------------------------------------------------------------------------- stand-in workers
STAND_IN = textwrap.dedent(
    """
    import json, os, signal, sys, time
    mode = sys.argv[1]
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "pids"), "a") as f:
        f.write(f"{os.getpid()}\\n")
    def send(obj):
        sys.stdout.write(json.dumps(obj) + "\\n"); sys.stdout.flush()
    if mode == "crash":
        sys.stderr.write("stand-in: simulated crash before hello\\n"); sys.exit(3)
    if mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for line in sys.stdin:
        msg = json.loads(line)
        if msg.get("method") == "hello":
            version = 999 if mode == "version" else 1
            send({"jsonrpc": "2.0", "id": msg["id"], "result": {"protocol_version": version,
                  "engine_version": "9.9", "pid": os.getpid(), "model_loaded": False}})
        elif msg.get("method") == "predict" and mode == "chatty":
            # Progress every 2 ms, far faster than the client's poll, until a cancel arrives (or 5 s pass).
            import threading
            stop, rid = threading.Event(), msg["id"]
            def stream():
                step, t0 = 0, time.monotonic()
                while not stop.is_set() and time.monotonic() - t0 < 5:
                    step += 1
                    send({"jsonrpc": "2.0", "method": "progress",
                          "params": {"request_id": rid, "stage": "denoise", "step": step, "total": 10**6}})
                    time.sleep(0.002)
                code, text = (-32001, "cancelled") if stop.is_set() else (-32000, "stand-in: no cancel arrived")
                send({"jsonrpc": "2.0", "id": rid, "error": {"code": code, "message": text}})
            threading.Thread(target=stream).start()
        elif msg.get("method") == "cancel" and mode == "chatty":
            stop.set()
        elif msg.get("method") == "predict" and mode == "dies":
            sys.stderr.write("stand-in: simulated native crash\\n"); sys.stderr.flush(); os._exit(3)
        elif msg.get("method") == "shutdown" and mode != "stubborn":
            send({"jsonrpc": "2.0", "id": msg["id"], "result": None}); sys.exit(0)
    while mode == "stubborn":
        time.sleep(1)
    """
)


def _stand_in(tmp_path: Path, mode: str) -> Path:
    """An executable that the client runs as if it were a Python: it ignores the arguments and plays ``mode``."""
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN)
    exe = tmp_path / f"python-{mode}"
    exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{script}" {mode} "$@"\n')
    exe.chmod(0o755)
    return exe


def test_missing_python_says_so(tmp_path):
    with pytest.raises(WorkerStartError) as info:
        WorkerClient(tmp_path / "no" / "python")
    message = str(info.value)
    assert "Python executable not found" in message and str(tmp_path / "no" / "python") in message
    assert "import metricgold_engine" in message  # and how to check a fix


def test_a_foreign_pythonhome_is_diagnosed(tmp_path):
    # Host applications (Blender builds among them) may export PYTHONHOME to their children.
    with pytest.raises(WorkerStartError) as info:
        WorkerClient(sys.executable, env={"PYTHONHOME": str(tmp_path / "elsewhere")})
    assert "PYTHONHOME or PYTHONPATH" in str(info.value)
    assert "env={'PYTHONHOME': None, 'PYTHONPATH': None}" in str(info.value)


@posix_only
def test_python_without_the_engine_says_how_to_install(tmp_path, monkeypatch):
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "bare")], check=True, timeout=120)
    python = tmp_path / "bare" / "bin" / "python"
    monkeypatch.chdir(tmp_path)  # so that `-m` cannot find the package in the working folder
    with pytest.raises(WorkerStartError) as info:
        WorkerClient(python, env={"PYTHONPATH": None})
    message = str(info.value)
    assert f"{python} cannot import metricgold_engine" in message
    assert f"{python} -m pip install metricgold" in message


@posix_only
def test_protocol_mismatch_is_a_clear_error_and_leaves_no_process(tmp_path):
    with pytest.raises(WorkerStartError) as info:
        WorkerClient(_stand_in(tmp_path, "version"))
    message = str(info.value)
    assert "protocol version 999" in message and f"speaks version {P.PROTOCOL_VERSION}" in message
    assert "9.9" in message and "pip install --upgrade metricgold" in message
    pids = [int(line) for line in (tmp_path / "pids").read_text().split()]
    assert len(pids) == 1 and _wait_reaped(pids[0])


@posix_only
def test_crash_before_hello_shows_its_stderr(tmp_path):
    with pytest.raises(WorkerStartError) as info:
        WorkerClient(_stand_in(tmp_path, "crash"))
    assert "exit code 3" in str(info.value) and "simulated crash before hello" in str(info.value)
    assert all(_wait_reaped(int(pid)) for pid in (tmp_path / "pids").read_text().split())


@posix_only
def test_cancel_lands_while_progress_streams_faster_than_the_poll(tmp_path, image):
    """A cancel event must take effect even when progress lines never leave the client a quiet moment."""
    c = WorkerClient(_stand_in(tmp_path, "chatty"))
    event = threading.Event()

    def on_progress(p: Progress) -> None:
        if p.step == 3:
            event.set()

    t0 = time.monotonic()
    with pytest.raises(PredictionCancelled):
        c.predict(image, tmp_path, cancel=event, on_progress=on_progress)
    assert time.monotonic() - t0 < 4
    c.close()


@posix_only
def test_close_kills_a_worker_that_does_not_exit(tmp_path):
    c = WorkerClient(_stand_in(tmp_path, "stubborn"), close_timeout=0.5)
    pid = c.info["pid"]
    t0 = time.monotonic()
    c.close()
    assert time.monotonic() - t0 < 5
    assert _wait_reaped(pid)


@posix_only
def test_a_dropped_client_kills_its_worker(tmp_path):
    c = WorkerClient(_stand_in(tmp_path, "stubborn"))
    pid = c.info["pid"]
    del c
    gc.collect()
    assert _wait_reaped(pid)


@posix_only
def test_worker_that_dies_mid_call_is_replaced_by_the_next_call(tmp_path, image):
    with WorkerClient(_stand_in(tmp_path, "dies")) as c:
        first = c.info["pid"]
        with pytest.raises(WorkerDied) as info:
            c.predict(image, tmp_path)
        assert "exited with code 3" in str(info.value) and "simulated native crash" in str(info.value)
        assert info.value.returncode == 3 and _wait_reaped(first)
        assert c.hello()["pid"] != first  # a fresh worker answered
