"""Predictions on a background thread, so that Blender's UI stays responsive.

Blender's data may only be touched from the main thread. A :class:`PredictionJob` therefore does nothing but talk
to the worker (through ``metricgold_engine.core.client``) on its own thread; the modal operator polls it from a timer on
the main thread and builds the mesh once the depth is there. No bpy here: the tests drive it directly.

Workers are kept per (python, model, device) for the whole Blender session (:func:`shared_client`): loading a model
takes seconds to minutes, a second prediction should not pay for it again. They are closed on unregister.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

from .engine import client as worker_client

_clients: dict[tuple[str, str | None, str], Any] = {}
_clients_lock = threading.Lock()


def shared_client(python: str, model: str | None, device: str) -> Any:
    """The session's WorkerClient for these settings, started on first use (blocks while the worker starts).

    One worker at a time: a model can take most of a GPU's memory, so when the settings change the workers for the
    old settings are closed once the new one is up.
    """
    key = (python, model, device)
    with _clients_lock:
        client = _clients.get(key)
    if client is not None:
        return client
    client = worker_client.WorkerClient(python, model=model, device=device)  # slow: starts the worker
    with _clients_lock:
        existing = _clients.setdefault(key, client)
        stale = [c for k, c in _clients.items() if k != key]
        for k in [k for k in _clients if k != key]:
            del _clients[k]
    if existing is not client:  # another thread won the race
        client.close()
    for old in stale:
        old.close()
    return existing


def forget_client(client: Any) -> None:
    """Drop (and close) a client, e.g. after its worker failed to start or the user changed settings."""
    with _clients_lock:
        for key, value in list(_clients.items()):
            if value is client:
                del _clients[key]
    client.close()


def running_clients() -> list[Any]:
    """The session's workers (e.g. to unload their models)."""
    with _clients_lock:
        return list(_clients.values())


def close_all_clients() -> None:
    with _clients_lock:
        clients = list(_clients.values())
        _clients.clear()
    for client in clients:
        client.close()


class PredictionJob:
    """One ``predict`` call on a daemon thread.

    ``state`` goes "pending" -> "running" -> one of "done" (``result``), "failed" (``error``) or "cancelled".
    ``cancel()`` may be called at any time from the main thread; it returns at once and the worker stops within
    one denoising step (a worker that is still starting is cancelled as soon as it answers).
    """

    def __init__(
        self,
        get_client: Callable[[], Any],
        image_path: str | os.PathLike[str],
        out_dir: str | os.PathLike[str],
        options: dict[str, Any],
    ) -> None:
        self._get_client = get_client
        self.image_path = os.fspath(image_path)
        self.out_dir = os.fspath(out_dir)
        self.options = dict(options)
        self.state = "pending"
        self.result: Any = None
        self.error: BaseException | None = None
        self.stage = "starting worker"
        self.step = 0
        self.total = 0
        self._cancel = threading.Event()
        self._client: Any = None
        self._thread = threading.Thread(target=self._run, name="metricgold-predict", daemon=True)

    # main thread ------------------------------------------------------------------------------------------------
    def start(self) -> PredictionJob:
        self.state = "running"
        self._thread.start()
        return self

    def cancel(self) -> None:
        self._cancel.set()
        client = self._client
        if client is not None:
            client.cancel()

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed", "cancelled")

    @property
    def fraction(self) -> float:
        """Progress in [0, 1] for a progress bar (denoising dominates the time)."""
        if self.state == "done":
            return 1.0
        if self.stage == "denoise" and self.total > 0:
            return 0.05 + 0.85 * min(self.step / self.total, 1.0)
        if self.stage == "decode" and self.total > 0:
            return 0.9 + 0.05 * min(self.step / self.total, 1.0)
        return {"save": 0.95}.get(self.stage, 0.0)

    @property
    def status_text(self) -> str:
        if self.stage == "denoise" and self.total:
            return f"MetricGold: denoising step {self.step}/{self.total} (Esc to cancel)"
        if self.stage == "decode" and self.total:
            return f"MetricGold: decoding the depth, tile {self.step}/{self.total} (Esc to cancel)"
        names = {"load_image": "reading the image", "save": "saving the depth"}
        return f"MetricGold: {names.get(self.stage, self.stage)}... (Esc to cancel)"

    def wait(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # worker thread ----------------------------------------------------------------------------------------------
    def _on_progress(self, progress: Any) -> None:
        self.stage, self.step, self.total = progress.stage, progress.step, progress.total

    def _run(self) -> None:
        try:
            client = self._get_client()
            self._client = client
            if self._cancel.is_set():
                raise worker_client.PredictionCancelled("cancelled before the worker started")
            self.stage = "load_image"
            result = client.predict(
                self.image_path, self.out_dir, on_progress=self._on_progress, cancel=self._cancel, **self.options
            )
            _ = result.depth  # read the .npy here, not on the UI thread
            if result.uncertainty_path is not None:
                _ = result.uncertainty
            self.result = result
            self.state = "done"
        except worker_client.PredictionCancelled:
            self.state = "cancelled"
        except BaseException as e:  # reported on the main thread
            if self._cancel.is_set() and isinstance(e, worker_client.ClientClosed):
                self.state = "cancelled"
            else:
                self.error = e
                self.state = "failed"
