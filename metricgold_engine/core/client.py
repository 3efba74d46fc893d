"""Drive the MetricGold worker process from any Python: the standard library and numpy are all it needs.

Blender's Python has no torch, and neither a crash nor a 10 GB model may take Blender down, so inference runs in a
worker process (``python -m metricgold_engine.worker``, started from an environment that has MetricGold installed)
and this client hides the process boundary behind ordinary method calls::

    from metricgold_engine import WorkerClient

    with WorkerClient("/path/to/venv/bin/python", model="/path/to/checkpoint") as worker:
        result = worker.predict("photo.jpg", "out/", num_inference_steps=10, ensemble_size=3, seed=0)
        depth = result.depth  # float32 metres, H x W

Threads: ``predict`` blocks its caller (run it on a background thread); ``cancel()`` and ``close()`` may be called from
any other thread at any time. Progress callbacks run on the thread that called ``predict``.

Nothing here (nor in anything it imports) imports torch. The protocol is described in ``docs/protocol.md``.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import sys
import threading
import time
import weakref
from typing import Any, Callable, Mapping

from . import protocol
from .checkpoint_check import check_local_model
from .demo_model import is_hub_id
from .errors import (
    ClientClosed,
    InvalidParams,
    MetricGoldError,
    PredictionCancelled,
    WorkerDied,
    WorkerError,
    WorkerStartError,
    WorkerTimeout,
    error_from_reply,
)
from .results import PredictionResult, Progress
from .worker_process import EOF, WorkerConnection

# The error family is defined once in errors.py; these names are re-exported because callers of the client catch them.
__all__ = [
    "WorkerClient",
    "PredictionResult",
    "Progress",
    "MetricGoldError",
    "WorkerError",
    "WorkerStartError",
    "WorkerDied",
    "WorkerTimeout",
    "PredictionCancelled",
    "ClientClosed",
]

log = logging.getLogger("metricgold.client")

#: How long a fresh worker may take to import torch and answer `hello` (cold disks, antivirus scans).
DEFAULT_START_TIMEOUT = 180.0
#: How long `close()` waits for the worker to exit by itself before killing it.
DEFAULT_CLOSE_TIMEOUT = 10.0
#: How long a timed-out prediction may take to acknowledge its cancellation before the worker is killed.
CANCEL_GRACE = 10.0
_POLL = 0.05  # seconds between checks of cancel events and deadlines while waiting for the worker


#: Methods whose first message (answer or progress) comes before any work: silence means they never started.
_SAID_BEFORE_WORK = (protocol.HELLO, protocol.LOAD_MODEL, protocol.PREDICT)


class _NotSent(Exception):
    """A request never started: it could not be written (the worker's input was closed), or the worker ended without
    a word about it (no reply, no progress)."""


# --- the client -----------------------------------------------------------------------------------------------------
def _kill_boxed(box: list[WorkerConnection | None]) -> None:
    conn, box[0] = box[0], None
    if conn is not None:
        conn.kill()


class WorkerClient:
    """Spawns ``python_executable -m metricgold_engine.worker`` and talks to it.

    ``model``: a checkpoint folder loaded right after start (and again after any restart); None to call
    ``load_model`` later. ``device``: "auto", "cpu", "cuda", "cuda:N" or "mps". ``env``: variables added to (or,
    with value None, removed from) this process's environment for the worker.
    """

    def __init__(
        self,
        python_executable: str | os.PathLike[str],
        model: str | os.PathLike[str] | None = None,
        device: str = "auto",
        env: Mapping[str, str | None] | None = None,
        *,
        dtype: str = "auto",
        start_timeout: float = DEFAULT_START_TIMEOUT,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
    ) -> None:
        self.python_executable = os.fspath(python_executable)
        try:
            protocol.check_params(protocol.LOAD_MODEL, {"path": "-", "device": device, "dtype": dtype})
        except protocol.ProtocolError as exc:
            raise ValueError(exc.message.replace("load_model:", "WorkerClient:", 1)) from None
        self._model = None if model is None else _model_argument(model, "model")
        self._device = device
        self._dtype = dtype
        self._use_demo = False  # load_model(None) was called: reload the demo model after a restart
        self._unloaded = False  # unload_model() was called: the next predict loads the model again
        self._env = dict(env or {})
        self.start_timeout = start_timeout
        self.close_timeout = close_timeout
        self._ids = itertools.count(1)
        self._state_lock = threading.Lock()  # held briefly: _conn, _closed, _active
        self._start_lock = threading.Lock()  # held while a worker starts (seconds)
        # The running connection sits in a box that a finalizer also holds: a client dropped without close() still
        # kills its worker (the connection itself is kept alive by its reader threads, so it cannot be the target).
        self._box: list[WorkerConnection | None] = [None]
        self._finalizer = weakref.finalize(self, _kill_boxed, self._box)
        self._closed = False
        self._active: set[int] = set()  # predict request ids in flight, for cancel()
        self.info: dict[str, Any] = {}  # the last `hello` result
        self._ensure_worker()

    @property
    def _conn(self) -> WorkerConnection | None:
        return self._box[0]

    @_conn.setter
    def _conn(self, conn: WorkerConnection | None) -> None:
        self._box[0] = conn

    # context manager
    def __enter__(self) -> WorkerClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # properties
    @property
    def pid(self) -> int | None:
        """Process id of the running worker (None when none runs)."""
        conn = self._conn
        return None if conn is None or conn.dead else conn.pid

    @property
    def alive(self) -> bool:
        conn = self._conn
        return conn is not None and not conn.dead and conn.proc.poll() is None

    def stderr_tail(self) -> str:
        conn = self._conn
        return "" if conn is None else conn.stderr_tail()

    # starting
    def _worker_env(self) -> dict[str, str]:
        env = dict(os.environ)
        for key, value in self._env.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = str(value)
        return env

    def _ensure_worker(self) -> WorkerConnection:
        with self._state_lock:
            if self._closed:
                raise ClientClosed("this WorkerClient is closed")
            conn = self._conn
        if conn is not None and conn.usable():
            return conn
        with self._start_lock:
            with self._state_lock:
                if self._closed:
                    raise ClientClosed("this WorkerClient is closed")
                conn = self._conn
            if conn is not None and conn.usable():
                return conn  # another thread started one meanwhile
            if conn is not None:
                conn.kill()  # reap the dead one: no zombie
            conn = self._start()
            with self._state_lock:
                if self._closed:  # close() ran while we were starting
                    conn.shutdown(self.close_timeout)
                    raise ClientClosed("this WorkerClient is closed")
                self._conn = conn
            return conn

    def _start(self) -> WorkerConnection:
        python = self.python_executable
        fix = (
            f"Set it to the python of an environment where MetricGold is installed, e.g. /path/to/venv/bin/python "
            f"(check with: {python} -c \"import metricgold_engine.worker\")."
        )
        argv = [python, "-m", "metricgold_engine.worker", "--device", self._device, "--dtype", self._dtype]
        try:
            conn = WorkerConnection(argv, self._worker_env())
        except FileNotFoundError:
            raise WorkerStartError(f"Python executable not found: {python!r}. {fix}") from None
        except PermissionError:
            raise WorkerStartError(f"Python executable is not executable (permission denied): {python!r}. {fix}") from None
        except OSError as exc:
            raise WorkerStartError(f"cannot run the Python executable {python!r}: {exc}. {fix}") from None
        try:
            info = self._call_on(conn, protocol.HELLO, {}, timeout=self.start_timeout, doing="starting")
        except (WorkerDied, _NotSent) as exc:
            died = exc if isinstance(exc, WorkerDied) else conn.died_error("starting")
            conn.kill()
            raise WorkerStartError(self._start_failure_message(died.stderr_tail, died.returncode)) from None
        except WorkerTimeout:
            tail = conn.stderr_tail()
            conn.kill()
            raise WorkerStartError(
                f"the MetricGold worker ({python}) did not answer 'hello' within {self.start_timeout:.0f} s; "
                f"last lines of its stderr:\n{tail}"
            ) from None
        except BaseException:
            conn.kill()
            raise
        version = info.get("protocol_version") if isinstance(info, dict) else None
        if version != protocol.PROTOCOL_VERSION:
            conn.kill()
            raise WorkerStartError(
                f"the MetricGold worker at {python} speaks protocol version {version!r} (engine "
                f"{info.get('engine_version') if isinstance(info, dict) else '?'}), this client speaks version "
                f"{protocol.PROTOCOL_VERSION}: install the same MetricGold release in both environments "
                f"({python} -m pip install --upgrade metricgold)."
            )
        self.info = info
        if self._model is not None or self._use_demo:
            try:
                self.info = self._call_on(
                    conn,
                    protocol.LOAD_MODEL,
                    {"path": self._model, "device": self._device, "dtype": self._dtype},
                    timeout=None,
                    doing="loading the built-in demo model" if self._model is None else f"loading the model {self._model}",
                )
            except _NotSent:
                died = conn.died_error("loading the model")
                conn.kill()
                raise died from None
            except BaseException:
                conn.kill()
                raise
        return conn

    def _start_failure_message(self, tail: str, returncode: int | None) -> str:
        python = self.python_executable
        if "No module named 'encodings'" in tail or "init_fs_encoding" in tail:
            # Typical when a host application (Blender) exports its own PYTHONHOME/PYTHONPATH to child processes.
            return (
                f"the Python at {python} could not start its standard library: PYTHONHOME or PYTHONPATH in this "
                f"process's environment point to another Python. Start the client with "
                f"env={{'PYTHONHOME': None, 'PYTHONPATH': None}}. Last lines of its stderr:\n{tail}"
            )
        for module in ("metricgold_engine", "torch", "diffusers", "transformers", "safetensors", "numpy", "PIL"):
            if f"No module named '{module}" in tail or f"No module named {module}" in tail:
                if module == "metricgold_engine":
                    return (
                        f"the Python at {python} cannot import metricgold_engine: MetricGold is not installed in that "
                        f"environment. Install it with `{python} -m pip install metricgold` (from a source checkout: "
                        f"`{python} -m pip install -e /path/to/MetricGold`), or choose the python of the environment "
                        f"where it is installed."
                    )
                return (
                    f"the Python at {python} has MetricGold but lacks its dependency {module!r}. Install MetricGold "
                    f"with its dependencies there: `{python} -m pip install metricgold`."
                )
        return (
            f"the MetricGold worker started with {python} exited before answering 'hello' (exit code {returncode}). "
            f"Is it a Python >= 3.11 with MetricGold installed? Last lines of its stderr:\n{tail}"
        )

    # calls
    def _call_on(
        self,
        conn: WorkerConnection,
        method: str,
        params: Mapping[str, Any],
        *,
        timeout: float | None,
        doing: str,
        on_progress: Callable[[Progress], None] | None = None,
        cancel: Any = None,
    ) -> Any:
        """Send one request on ``conn`` and wait for its reply, passing progress to ``on_progress`` and turning
        ``cancel`` (an object with ``is_set()``, e.g. threading.Event) and ``timeout`` into a `cancel` request."""
        request_id = next(self._ids)
        inbox = conn.register(request_id)
        is_predict = method in (protocol.PREDICT, protocol.PREDICT_SEQUENCE)  # what cancel() stops
        answered = False
        if is_predict:
            with self._state_lock:
                self._active.add(request_id)
        try:
            if not conn.send(protocol.request(method, params, request_id)):
                # The pipe was closed before the request went out (the worker died while idle): it never started.
                raise _NotSent(method)
            deadline = None if timeout is None else time.monotonic() + timeout
            cancel_sent = timed_out = heard = False
            kill_at = None
            while True:
                try:
                    item = inbox.get(timeout=_POLL)
                except queue.Empty:
                    item = None
                # Checked on every message too, not only in quiet moments: progress lines can arrive faster than
                # _POLL (fast GPUs), and a cancel or deadline must still take effect.
                now = time.monotonic()
                if cancel is not None and not cancel_sent and cancel.is_set():
                    cancel_sent = self._send_cancel(conn, request_id)
                if deadline is not None and not timed_out and now >= deadline:
                    timed_out = True
                    kill_at = now + CANCEL_GRACE
                    if method in (protocol.PREDICT, protocol.PREDICT_SEQUENCE, protocol.LOAD_MODEL) and not cancel_sent:
                        cancel_sent = self._send_cancel(conn, request_id)
                    if not is_predict:
                        kill_at = now  # nothing else to wait for
                if kill_at is not None and now >= kill_at:
                    conn.kill()
                    raise WorkerTimeout(
                        f"{method} did not finish within {timeout} s; the worker (pid {conn.pid}) did not respond "
                        f"and was stopped. The next call starts a fresh worker."
                    )
                if item is None:
                    continue
                kind, message = item
                if kind == EOF:
                    if self._closed:
                        raise ClientClosed(f"the WorkerClient was closed while {doing}")
                    if not heard and method in _SAID_BEFORE_WORK:
                        # Not a word about this request: the worker was already dying (killed while idle) when it
                        # was sent. These methods answer or report progress before any work, so it never started.
                        raise _NotSent(method)
                    raise conn.died_error(doing)
                heard = True
                if message.is_notification:
                    if on_progress is not None and message.method == protocol.PROGRESS:
                        p = message.params or {}
                        on_progress(Progress(str(p.get("stage", "")), int(p.get("step", 0)), int(p.get("total", 0))))
                    continue
                answered = True
                if message.error is None:
                    return message.result
                code, text, data = message.error["code"], message.error["message"], message.error.get("data")
                if code == protocol.CANCELLED and timed_out:
                    raise WorkerTimeout(f"{method} did not finish within {timeout} s and was cancelled")
                raise error_from_reply(code, text, data)
        finally:
            if not answered and not conn.dead and method in (protocol.PREDICT, protocol.PREDICT_SEQUENCE, protocol.LOAD_MODEL):
                # Leaving without an answer (the progress callback raised, Ctrl-C): the worker must not go on.
                self._send_cancel(conn, request_id)
            conn.unregister(request_id)
            if is_predict:
                with self._state_lock:
                    self._active.discard(request_id)

    def _send_cancel(self, conn: WorkerConnection, request_id: int) -> bool:
        # A notification (no id): the caller never waits for its answer, so cancel() cannot block the UI thread.
        conn.send(protocol.notification(protocol.CANCEL, {"request_id": request_id}))
        return True

    def _call(self, method: str, params: Mapping[str, Any], *, timeout: float | None, doing: str, **kwargs: Any) -> Any:
        conn = self._ensure_worker()
        try:
            return self._call_on(conn, method, params, timeout=timeout, doing=doing, **kwargs)
        except _NotSent:
            # A worker that died while idle (killed, out of memory) is replaced once, and the request, which never
            # reached it, sent again: hello, load_model and predict have no effect that a resend could double.
            log.info("the worker (pid %s) was gone before %s; starting a fresh one", conn.pid, doing)
            conn.kill()
            conn = self._ensure_worker()
            try:
                return self._call_on(conn, method, params, timeout=timeout, doing=doing, **kwargs)
            except _NotSent:
                raise conn.died_error(doing) from None

    # the public calls
    def hello(self, timeout: float | None = 30.0) -> dict[str, Any]:
        """Protocol version, engine and torch versions, device, and whether a model is loaded."""
        self.info = self._call(protocol.HELLO, {}, timeout=timeout, doing="answering hello")
        return self.info

    def load_model(
        self, path: str | os.PathLike[str] | None, device: str | None = None, dtype: str | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Load (or switch to) a checkpoint folder, or with ``path=None`` the built-in demo model. Remembered, so a
        restarted worker loads it again."""
        try:
            params = protocol.check_params(protocol.LOAD_MODEL, {
                "path": None if path is None else _model_argument(path, "path"),
                "device": device or self._device, "dtype": dtype or self._dtype,
            })
        except protocol.ProtocolError as exc:
            raise ValueError(exc.message) from None
        what = "the built-in demo model" if params["path"] is None else f"the model {params['path']}"
        self.info = self._call(protocol.LOAD_MODEL, params, timeout=timeout, doing=f"loading {what}")
        self._model, self._device, self._dtype = params["path"], params["device"], params["dtype"]
        self._use_demo = params["path"] is None
        self._unloaded = False
        return self.info

    def unload_model(self, timeout: float | None = 60.0) -> dict[str, Any]:
        """Free the worker's model memory (after the predictions already sent); the worker keeps running. The next
        ``predict`` loads the same model again first (a restarted worker would too)."""
        self.info = self._call(protocol.UNLOAD_MODEL, {}, timeout=timeout, doing="unloading the model")
        self._unloaded = True
        return self.info

    def predict(
        self,
        image: str | os.PathLike[str],
        out_dir: str | os.PathLike[str],
        *,
        on_progress: Callable[[Progress], None] | None = None,
        cancel: Any = None,
        timeout: float | None = None,
        **options: Any,
    ) -> PredictionResult:
        """Predict metric depth for ``image``; the worker writes ``<out_dir>/<stem>_depth.npy`` (and
        ``<stem>_uncertainty.npy``). ``options`` are the pipeline's keywords: num_inference_steps, ensemble_size,
        processing_resolution, seed, timestep_spacing, output_uncertainty.

        Raises PredictionCancelled (cancel() or ``cancel.is_set()``), WorkerTimeout, the error family's class for
        the worker's answer (ImageLoadError, OutputNotWritable, ModelNotLoaded, InvalidParams ...; all
        MetricGoldError, with the JSON-RPC ``code``) and WorkerDied (the next call starts a fresh worker).
        """
        params = dict(options, image=_absolute(image, "image"), output_dir=_absolute(out_dir, "out_dir"))
        try:
            params = protocol.check_params(protocol.PREDICT, params)
        except protocol.ProtocolError as exc:
            raise TypeError(str(exc).replace("predict:", "predict():", 1)) from None
        if self._unloaded and (self._model is not None or self._use_demo):
            self.load_model(self._model)  # not the demo model by default: the model this client was given
        value = self._call(
            protocol.PREDICT, params, timeout=timeout, doing=f"predicting {params['image']}",
            on_progress=on_progress, cancel=cancel,
        )
        return PredictionResult.from_json(value)

    def predict_sequence(
        self,
        source: str | os.PathLike[str],
        out_dir: str | os.PathLike[str],
        *,
        on_progress: Callable[[Progress], None] | None = None,
        cancel: Any = None,
        timeout: float | None = None,
        **options: Any,
    ) -> dict[str, Any]:
        """Depth for every frame of a video, folder of images or printf pattern (``docs/sequences.md``): the worker
        writes ``<out_dir>/NAME_depth_000001.exr`` ... and ``NAME_camera.json``, skipping frames already written.
        ``options``: predict's, plus name, formats, denoise_strength, smoothing_alpha, fps. ``on_progress`` gets
        stage "frame" (step = frames handled, total = frame count) besides each frame's own stages. Returns the
        worker's result (name, output_dir, camera_path, depth_pattern, frame_count, fps, written, skipped, camera,
        ...). Raises as :meth:`predict`; a cancelled run keeps the frames it wrote (call again to resume)."""
        params = dict(options, source=_absolute(source, "source"), output_dir=_absolute(out_dir, "out_dir"))
        try:
            params = protocol.check_params(protocol.PREDICT_SEQUENCE, params)
        except protocol.ProtocolError as exc:
            raise TypeError(str(exc).replace("predict_sequence:", "predict_sequence():", 1)) from None
        if self._unloaded and (self._model is not None or self._use_demo):
            self.load_model(self._model)  # as predict: the model this client was given, not the demo model
        result: dict[str, Any] = self._call(
            protocol.PREDICT_SEQUENCE, params, timeout=timeout, doing=f"predicting the frames of {params['source']}",
            on_progress=on_progress, cancel=cancel,
        )
        return result

    def cancel(self) -> None:
        """Cancel every prediction in flight on this client (any thread; returns at once). Each raises
        PredictionCancelled in its own thread, within one denoising step."""
        with self._state_lock:
            conn, active = self._conn, sorted(self._active)
        if conn is not None and not conn.dead:
            for request_id in active:
                self._send_cancel(conn, request_id)

    def close(self, timeout: float | None = None) -> None:
        """Stop the worker: ask it to shut down, kill it if it has not exited within ``timeout`` s. Idempotent;
        may be called from another thread while a prediction runs (it then raises PredictionCancelled or
        ClientClosed)."""
        self.cancel()  # first, so that a running prediction stops at its next step instead of finishing
        with self._state_lock:
            self._closed = True
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.shutdown(self.close_timeout if timeout is None else timeout)

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.alive else ("closed" if self._closed else "not running")
        return f"WorkerClient({self.python_executable!r}, model={self._model!r}, {state})"


def _model_argument(model: str | os.PathLike[str], name: str) -> str:
    """A Hub id goes as it is (the worker fetches it); a local folder as an absolute path, checked first: a missing
    folder or a tampered MetricGold one is a CheckpointError in milliseconds, before any worker starts."""
    if is_hub_id(model):
        return os.fspath(model)
    path = _absolute(model, name)
    check_local_model(path)
    return path


def _absolute(path: str | os.PathLike[str], name: str) -> str:
    """The absolute path to send (the worker may run in another working folder; "~" expanded as a shell would).
    Raises InvalidParams naming the parameter when the path cannot be sent: JSON is UTF-8, and a file name with an
    undecodable byte reaches Python as an unpaired surrogate."""
    text = os.fspath(path)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if not protocol.is_valid_unicode(text):
        raise InvalidParams(
            f"{name}: the path {text!r} is not valid Unicode (a file name with an undecodable byte): the worker "
            "cannot be sent it; rename the file or folder"
        )
    return os.path.abspath(os.path.expanduser(text))


def default_python() -> str:
    """The Python running this code: right when this environment has MetricGold (and torch) installed."""
    return sys.executable
