"""The MetricGold worker: serves the pipeline over JSON-RPC 2.0 on stdin/stdout, one JSON object a line.

    python -m metricgold_engine.worker [--model PATH] [--device auto|cpu|cuda|mps] [--dtype auto|float32|...]

Blender (through ``metricgold_engine.core.client``) and anything else that can spawn a process drives it; the protocol
is described in ``docs/protocol.md``. Two threads: the main thread reads requests, so that ``hello`` and ``cancel``
are answered while a prediction runs; one compute thread serves ``load_model`` and ``predict`` in arrival order.
The model is loaded once and kept for every later request.

stdout carries protocol lines and nothing else: at start the real stdout is duplicated for the protocol and file
descriptor 1 is pointed at stderr, so print(), warnings, progress bars and even native code cannot corrupt the
stream. torch and the pipeline are imported only after that switch, for the same reason.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import queue
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable

from . import __version__
from .core import protocol
from .core.demo_model import is_hub_id
from .core.errors import (
    CheckpointError,
    MetricGoldError,
    ModelNotLoaded,
    OutputNotWritable,
    PredictionCancelled,
)

log = logging.getLogger("metricgold.worker")

#: Longest request line accepted (a request is a few hundred bytes; this only stops a runaway sender).
MAX_LINE_BYTES = 1 << 20


@dataclass
class _Job:
    """A `load_model` or `predict` request, queued or running on the compute thread."""

    request: protocol.Request
    cancel: threading.Event = field(default_factory=threading.Event)
    step: int = 0  # denoising steps done so far
    cancel_requested_at_step: int | None = None  # `step` when the cancel arrived, to show it took <= 1 more step


def claim_protocol_streams() -> tuple[BinaryIO, BinaryIO]:
    """Take the process's stdin/stdout for the protocol; afterwards fd 1 is stderr and fd 0 is the null device.

    Why at the file-descriptor level: Python-level redirection (sys.stdout = ...) does not stop C code, child
    processes or libraries holding the old stream from writing to fd 1, and one stray byte breaks the protocol.
    """
    sys.stdout.flush()
    protocol_out = os.dup(1)
    protocol_in = os.dup(0)
    os.dup2(2, 1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)  # nothing else may consume requests
    os.close(null)
    return os.fdopen(protocol_in, "rb"), os.fdopen(protocol_out, "wb")


class WorkerServer:
    """Reads requests from a binary line stream, writes replies and notifications to another."""

    def __init__(self, out: BinaryIO, device: str = "auto", dtype: str = "auto") -> None:
        self._out = out
        self._write_lock = threading.Lock()
        self._lock = threading.Lock()  # guards _jobs_by_id
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._jobs_by_id: dict[int | str | None, _Job] = {}
        self._compute = threading.Thread(target=self._compute_loop, name="metricgold-compute", daemon=True)
        self.default_device = device
        self.default_dtype = dtype
        self.estimator: Any = None  # a backends.DepthEstimator
        self.model_key: tuple[str, str, str] | None = None  # (path or Hub id, device, dtype) as requested
        self.client_gone = False

    # ------------------------------------------------------------------------------------------------- output
    def send(self, message: dict[str, Any]) -> None:
        """Write one message. Never raises: a reply that cannot be encoded becomes an error reply (the request is
        still answered); a notification that cannot be is dropped."""
        try:
            data = protocol.encode(message)
        except (UnicodeEncodeError, ValueError, TypeError, RecursionError) as exc:
            fallback = _unencodable_reply(message, exc)
            if fallback is None:
                log.error("dropped a message that cannot be encoded: %s", _message(exc))
                return
            data = protocol.encode(fallback)
        with self._write_lock:
            if self.client_gone:
                return
            try:
                self._out.write(data)
                self._out.flush()
            except (BrokenPipeError, OSError, ValueError):
                # The client closed its end: nobody to answer. Stop the work; the reader sees end of input.
                self.client_gone = True
                self.cancel_all()

    def _answer(self, request: protocol.Request, message: dict[str, Any]) -> None:
        if not request.is_notification:
            self.send(message)

    # ------------------------------------------------------------------------------------------------- input
    def serve(self, lines: BinaryIO) -> int:
        """Serve until `shutdown` or end of input; returns the exit code."""
        self._compute.start()
        try:
            while True:
                line = lines.readline(MAX_LINE_BYTES + 1)
                if not line:
                    log.info("end of input: finishing the requests received, then exiting")
                    break
                if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
                    while line and not line.endswith(b"\n"):  # skip the rest of the oversized line
                        line = lines.readline(MAX_LINE_BYTES)
                    self.send(protocol.error(None, protocol.PARSE_ERROR, f"request line longer than {MAX_LINE_BYTES} bytes"))
                    continue
                if self.handle_line(line):
                    return 0
        except KeyboardInterrupt:  # Ctrl-C when run by hand: stop the work rather than finish it
            self.cancel_all()
            return 130
        finally:
            self._drain_compute()
        return 0

    def handle_line(self, line: bytes) -> bool:
        """Serve one request line; True when it was `shutdown`."""
        if not line.strip():
            return False  # blank lines (keep-alives, a trailing newline) are not requests
        try:
            request = protocol.parse_request(line)
        except protocol.ProtocolError as exc:
            if exc.is_notification:
                log.warning("ignored a notification (no id, so no reply is allowed): %s", exc.message)
            else:
                self.send(protocol.error(exc.request_id, exc.code, exc.message, exc.data))
            return False
        try:
            return self._dispatch(request)
        except Exception as exc:  # a bug in the dispatcher itself must not end the worker
            log.error("internal error on %s: %s", request.method, traceback.format_exc())
            self._answer(request, protocol.error(request.id, protocol.INTERNAL_ERROR, _message(exc)))
            return False

    def _dispatch(self, request: protocol.Request) -> bool:
        method = request.method
        if method == protocol.HELLO:
            self._answer(request, protocol.result(request.id, self.info()))
        elif method == protocol.CANCEL:
            found = self.cancel(request.params["request_id"])
            self._answer(request, protocol.result(request.id, {"cancelled": found}))
        elif method == protocol.SHUTDOWN:
            self._drain_compute()
            self._answer(request, protocol.result(request.id, None))
            return True
        else:  # load_model, predict: the compute thread's work
            if request.is_notification:
                log.warning("ignored %s sent as a notification: it has no id to answer to", method)
                return False
            job = _Job(request)
            with self._lock:
                if request.id in self._jobs_by_id:
                    busy = True
                else:
                    busy = False
                    self._jobs_by_id[request.id] = job
            if busy:
                self.send(protocol.error(
                    request.id, protocol.INVALID_REQUEST, f"id {request.id!r} is already used by a request in progress"
                ))
            else:
                self._jobs.put(job)
        return False

    # ------------------------------------------------------------------------------------------------- cancelling
    def cancel(self, request_id: int | str) -> bool:
        """Mark a queued or running request cancelled; False when there is none with that id."""
        with self._lock:
            job = self._jobs_by_id.get(request_id)
        if job is None:
            return False
        if not job.cancel.is_set():
            job.cancel_requested_at_step = job.step
            job.cancel.set()
        return True

    def cancel_all(self) -> None:
        with self._lock:
            jobs = list(self._jobs_by_id.values())
        for job in jobs:
            if not job.cancel.is_set():
                job.cancel_requested_at_step = job.step
                job.cancel.set()

    def _drain_compute(self) -> None:
        """Let the compute thread finish every request already received (each gets its answer), then stop it.
        A client that is gone is noticed at its next progress line (broken pipe), which cancels the rest."""
        if self._compute.is_alive():
            self._jobs.put(None)
            self._compute.join()

    # ------------------------------------------------------------------------------------------------- compute
    def _compute_loop(self) -> None:
        handlers: dict[str, Callable[[_Job], Any]] = {
            protocol.LOAD_MODEL: self._load_model, protocol.UNLOAD_MODEL: self._unload_model,
            protocol.PREDICT: self._predict, protocol.PREDICT_SEQUENCE: self._predict_sequence,
        }
        while True:
            job = self._jobs.get()
            if job is None:
                return
            request = job.request
            try:
                try:
                    if job.cancel.is_set():
                        raise PredictionCancelled("cancelled")
                    reply = protocol.result(request.id, handlers[request.method](job))
                except PredictionCancelled:
                    reply = protocol.error(request.id, protocol.CANCELLED, f"{request.method} request {request.id!r} was cancelled", {
                        "step": job.step, "cancel_requested_at_step": job.cancel_requested_at_step,
                    })
                except MetricGoldError as exc:
                    reply = protocol.error(request.id, exc.code, exc.message, exc.data)
                except Exception as exc:  # out of memory, a bug, a broken file: answer, log, keep serving
                    reply = self._failure_reply(request, exc)
                # Forget the id before answering, so that a client may reuse it as soon as it has the answer.
                with self._lock:
                    self._jobs_by_id.pop(request.id, None)
                self.send(reply)
            except Exception as exc:  # even answering failed (out of memory while building the reply): say so, go on
                with self._lock:
                    self._jobs_by_id.pop(request.id, None)
                try:
                    self.send(protocol.error(request.id, protocol.INTERNAL_ERROR, _message(exc), {"type": type(exc).__name__}))
                except Exception:
                    pass  # the compute thread must outlive any one request, or every later request would hang

    def _failure_reply(self, request: protocol.Request, exc: Exception) -> dict[str, Any]:
        if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError
            exc = exc.with_traceback(None)  # let the request's frames (and their tensors) go before answering
            gc.collect()
            _empty_device_cache()
            log.error("%s %r ran out of memory (%s); the worker goes on", request.method, request.id, type(exc).__name__)
            return protocol.error(request.id, protocol.INTERNAL_ERROR, (
                f"{request.method}: out of memory ({type(exc).__name__}: {_message(exc)}). Only this request failed; "
                "try a smaller image, processing_resolution or ensemble_size"), {"type": type(exc).__name__})
        try:
            log.error("%s %r failed:\n%s", request.method, request.id, traceback.format_exc())
        except Exception:
            pass
        return protocol.error(request.id, protocol.INTERNAL_ERROR, _message(exc), {"type": type(exc).__name__})

    def _progress(self, job: _Job, stage: str, step: int, total: int) -> None:
        self.send(protocol.progress(job.request.id, stage, step, total))  # type: ignore[arg-type]

    def info(self) -> dict[str, Any]:
        import torch

        device: str | None = None
        dtype: str | None = None
        model_info: dict[str, Any] | None = None
        if self.estimator is not None:
            device, dtype = _device_and_dtype(self.estimator)
            model_info = self.estimator.info().as_json()
        else:
            from .devices import pick_device

            try:
                device = str(pick_device(self.default_device))
            except ValueError:
                device = self.default_device
        from .core.demo_model import is_demo_model

        return {
            "protocol_version": protocol.PROTOCOL_VERSION,
            "engine_version": __version__,
            "torch_version": torch.__version__,
            "python_version": sys.version.split()[0],
            "pid": os.getpid(),
            "device": device,
            "dtype": dtype,
            "model_loaded": self.estimator is not None,
            "model_path": None if self.model_key is None else self.model_key[0],
            # The built-in demo model is small and trained only on synthetic scenes: clients should say so.
            "demo_model": self.model_key is not None and is_demo_model(self.model_key[0]),
            # name, kind, licence (several popular weights are non-commercial: clients show it), default_options
            "model": model_info,
        }

    def load(self, path: str | None, device: str, dtype: str) -> None:
        """Load a model of any backend: a folder, a Hugging Face Hub id, or None (the built-in demo model); kept
        for every later request. The old model stays if the new one fails."""
        from .backends import load_estimator
        from .core.checkpoint_check import check_local_model
        from .core.demo_model import is_hub_id, resolve_model_path

        where: Any = path
        try:
            where = path if is_hub_id(path) else str(resolve_model_path(path).expanduser().resolve())
            key = (str(where), device, dtype)
            if key == self.model_key:
                return  # already loaded: loading is the expensive part, so it is done once
            if path is not None and not is_hub_id(path):
                check_local_model(where)  # milliseconds: a tampered MetricGold folder is named before any loading
            # None stays None so that the demo model is named as such; a folder goes as resolved.
            estimator = load_estimator(None if path is None else key[0], device=device, dtype=dtype)
        except (CheckpointError, ValueError, OSError) as exc:
            text = _message(exc)
            # The path is said once: the checks' messages already name the file.
            named = path is not None and (str(path) in text or str(where) in text)
            what = "the built-in demo model" if path is None else "the model" if named else f"the model {path}"
            raise CheckpointError(f"cannot load {what}: {text}") from None
        pipeline = getattr(estimator, "pipeline", None)
        if pipeline is not None:
            pipeline.set_progress_bar_config(disable=True)
        old, self.estimator, self.model_key = self.estimator, estimator, key
        if old is not None:
            del old
            gc.collect()
            _empty_device_cache()
        info = estimator.info()
        log.info("loaded %s (%s, licence %s) on %s", key[0], info.kind, info.licence or "unknown",
                 " ".join(_device_and_dtype(estimator)))

    def unload(self) -> None:
        """Drop the model and give its memory back (the device's cache too); the worker keeps running."""
        old, self.estimator, self.model_key = self.estimator, None, None
        if old is not None:
            del old
            gc.collect()
            _empty_device_cache()
            log.info("model unloaded")

    def _unload_model(self, job: _Job) -> dict[str, Any]:
        self.unload()
        return self.info()

    def _load_model(self, job: _Job) -> dict[str, Any]:
        params = job.request.params
        self._progress(job, protocol.STAGE_LOAD_MODEL, 0, 1)
        self.load(params["path"], params["device"], params["dtype"])
        self._progress(job, protocol.STAGE_LOAD_MODEL, 1, 1)
        return self.info()

    def _ensure_model(self, job: _Job) -> None:
        """Like the command line without --model: with no model loaded, the engine's built-in demo model, when it is
        installed."""
        if self.estimator is not None:
            return
        from .core.demo_model import DEMO_MODEL_PATH, demo_model_available

        if not demo_model_available():
            raise ModelNotLoaded(
                f"no model loaded, and the built-in demo model is not installed ({DEMO_MODEL_PATH}): send "
                "load_model with a checkpoint folder first (or start the worker with --model PATH)",
            )
        self._progress(job, protocol.STAGE_LOAD_MODEL, 0, 1)
        self.load(None, self.default_device, self.default_dtype)
        self._progress(job, protocol.STAGE_LOAD_MODEL, 1, 1)

    def _model_options(self, params: dict[str, Any]) -> tuple[Any, dict[str, Any], list[str]]:
        """(model info, the options the loaded model has, the names of those it has not). MetricGold's options sent
        to a one-pass model are listed, not used (the add-on always sends its MetricGold settings); None and False
        are "not asked for"."""
        info = self.estimator.info()
        options, ignored = {}, []
        for name in protocol.PREDICT_OPTIONS:
            value = params[name]
            if name in info.default_options:
                if value is not None:
                    options[name] = value
            elif value not in (None, False):
                ignored.append(name)
        return info, options, ignored

    def _predict(self, job: _Job) -> dict[str, Any]:
        import numpy as np

        from .core.depth_io import write_depth_npy
        from .core.geometry import exif_focal
        from .image_io import load_rgb_image

        started = time.perf_counter()
        params = job.request.params
        self._ensure_model(job)
        # 1. Check the inputs before any compute, so a typo costs milliseconds, not a whole prediction
        # Paths are taken relative to the worker's working folder; results always name absolute paths.
        image_path = Path(params["image"]).expanduser().absolute()
        output_dir = Path(params["output_dir"]).expanduser().absolute()
        self._progress(job, protocol.STAGE_LOAD_IMAGE, 0, 1)
        image = load_rgb_image(image_path)  # ImageLoadError (bad image) names the file, before any compute
        exif = exif_focal(image_path)
        self._progress(job, protocol.STAGE_LOAD_IMAGE, 1, 1)
        _check_writable(output_dir)

        # 2. The model's options: those it has (the others are listed in the result)
        info, options, ignored = self._model_options(params)

        # 3. Predict; progress reports each step and is where a cancel takes effect
        def progress(stage: str, step: int, total: int) -> None:
            if stage != protocol.STAGE_DECODE:  # job.step counts model steps (cancel replies report it)
                job.step = step
            self._progress(job, stage, step, total)
            if job.cancel.is_set():
                raise PredictionCancelled("cancelled")

        from .backends.photo import predict_photo

        if job.cancel.is_set():
            raise PredictionCancelled("cancelled")
        result = predict_photo(self.estimator, image, exif=exif, fov_deg=params["fov_deg"],
                               focal_35mm=params["focal_35mm"], progress=progress, **options)
        out = result.prediction
        if job.cancel.is_set():
            raise PredictionCancelled("cancelled")  # cancelled after the last step: write nothing

        # 3. Write atomically: a reader never sees a half-written file
        self._progress(job, protocol.STAGE_SAVE, 0, 1)
        stem = image_path.stem
        try:
            depth_path = write_depth_npy(output_dir / f"{stem}_depth.npy", out.depth)
            uncertainty_path = None
            if out.uncertainty is not None:
                uncertainty_path = write_depth_npy(output_dir / f"{stem}_uncertainty.npy", out.uncertainty)
        except OSError as exc:
            raise OutputNotWritable(f"output_dir {output_dir}: cannot write: {_message(exc)}") from None
        self._progress(job, protocol.STAGE_SAVE, 1, 1)

        finite = out.depth[np.isfinite(out.depth)]
        return {
            "depth_path": str(depth_path),
            "uncertainty_path": None if uncertainty_path is None else str(uncertainty_path),
            "shape": [int(out.depth.shape[0]), int(out.depth.shape[1])],
            "depth_min": protocol.finite_or_none(finite.min()) if finite.size else None,
            "depth_max": protocol.finite_or_none(finite.max()) if finite.size else None,
            "settings": out.settings,
            "seconds": time.perf_counter() - started,
            "camera": result.camera.as_json(),
            "model": info.as_json(),
            "ignored_options": ignored,
        }


    # ------------------------------------------------------------------------------------ video / sequences
    def _predict_sequence(self, job: _Job) -> dict[str, Any]:
        """Every frame of a video or image sequence (docs/sequences.md): progress per frame, cancel between and
        within frames (frames already written stay), frames already written are skipped (resume)."""
        import json

        from .core.errors import InvalidParams
        from .sequence import open_sequence, predict_sequence

        started = time.perf_counter()
        params = job.request.params
        # 1. The input and the output folder, checked before the model loads
        source = open_sequence(Path(params["source"]).expanduser().absolute(), fps=params["fps"],
                               name=params["name"])
        output_dir = Path(params["output_dir"]).expanduser().absolute()
        _check_writable(output_dir)
        self._ensure_model(job)  # as predict: the built-in demo model when none is loaded
        info, options, ignored = self._model_options(params)
        strength = params["denoise_strength"]
        if strength is not None and strength < 1.0 and info.kind != "metricgold":
            raise InvalidParams(f"denoise_strength: the warm start is for MetricGold models only ({info.kind} "
                                "loaded); use smoothing_alpha")

        # 2. Every frame; progress is where a cancel takes effect (between frames and between denoising steps)
        def progress(stage: str, step: int, total: int) -> None:
            if stage != protocol.STAGE_DECODE:  # job.step counts model steps (cancel replies report it)
                job.step = step
            self._progress(job, stage, step, total)
            if job.cancel.is_set():
                raise PredictionCancelled("cancelled")

        result = predict_sequence(
            self.estimator, source, output_dir, formats=params["formats"],
            denoise_strength=1.0 if strength is None else strength, smoothing_alpha=params["smoothing_alpha"],
            fov_deg=params["fov_deg"], focal_35mm=params["focal_35mm"], progress=progress, **options)
        reply = result.as_json()
        reply.update(camera=json.loads(result.camera_path.read_text(encoding="utf-8")), model=info.as_json(),
                     ignored_options=ignored, seconds=time.perf_counter() - started)
        return reply


def _device_and_dtype(estimator: Any) -> tuple[str, str]:
    """Where a loaded model runs, for ``hello``: the MetricGold pipeline's UNet, or the transformers model."""
    module = getattr(estimator, "pipeline", None)
    if module is not None:
        return str(module.device), str(module.unet.dtype).replace("torch.", "")
    model = estimator.model
    return str(model.device), str(model.dtype).replace("torch.", "")


def _check_writable(folder: Path) -> None:
    """Create ``folder`` if needed and prove it writable by creating (and removing) a file in it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise OutputNotWritable(
            f"output_dir {folder}: cannot create it or write to it ({exc.strerror or exc})"
        ) from None


def _unencodable_reply(message: dict[str, Any], exc: BaseException) -> dict[str, Any] | None:
    """An error reply standing in for a reply that could not be encoded; None for a notification (not answered)."""
    if "method" in message or "id" not in message:
        return None
    request_id = message["id"]
    if isinstance(request_id, str) and not protocol.is_valid_unicode(request_id):
        return protocol.error(None, protocol.INVALID_REQUEST, "invalid request: 'id' is not valid Unicode")
    return protocol.error(request_id, protocol.INTERNAL_ERROR,
                          f"the reply could not be encoded as UTF-8 JSON ({type(exc).__name__})")


def _message(exc: BaseException) -> str:
    text = str(exc).strip()
    return text if text else type(exc).__name__


def _empty_device_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m metricgold_engine.worker",
        description="MetricGold inference worker: JSON-RPC 2.0, one object a line, on stdin/stdout "
        "(see docs/protocol.md). Logs go to stderr.",
    )
    parser.add_argument("--model", help="model folder or Hugging Face Hub id to load at start (else send load_model)")
    parser.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps")
    parser.add_argument("--dtype", default="auto", choices=protocol.DTYPES, help="auto = float16 on GPUs, float32 on CPU")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        protocol.check_params(protocol.LOAD_MODEL, {"path": "-", "device": args.device, "dtype": args.dtype})
    except protocol.ProtocolError as exc:
        print(f"metricgold worker: {exc.message}", file=sys.stderr)
        return 2
    if args.model and not is_hub_id(args.model):
        # Checked before importing torch (seconds): a typo, or a tampered MetricGold folder, fails at once.
        from .core.checkpoint_check import check_local_model

        try:
            check_local_model(args.model)
        except CheckpointError as exc:
            print(f"metricgold worker: {exc.message}", file=sys.stderr)
            return 2
    requests, replies = claim_protocol_streams()
    logging.basicConfig(stream=sys.stderr, level=args.log_level, format="metricgold-worker %(levelname)s: %(message)s")
    import torch  # noqa: F401  (after the switch: import-time chatter goes to stderr)

    server = WorkerServer(replies, device=args.device, dtype=args.dtype)
    if args.model:
        try:
            server.load(args.model, args.device, args.dtype)
        except CheckpointError as exc:
            log.error("%s", exc.message)
            return 2
    log.info("ready (pid %d, protocol %d)", os.getpid(), protocol.PROTOCOL_VERSION)
    return server.serve(requests)


if __name__ == "__main__":
    sys.exit(main())
