"""One running worker process: its pipes, reader threads and the messages waiting for each request.

A connection is replaced as a whole when its process dies, so replies of a dead worker can never be confused with a
fresh one's. :class:`~metricgold_engine.core.client.WorkerClient` owns one at a time.
"""

from __future__ import annotations

import collections
import logging
import os
import queue
import signal
import subprocess
import threading
import weakref
from typing import Any, Mapping

from . import protocol
from .errors import WorkerDied

log = logging.getLogger("metricgold.client")

#: Lines of the worker's stderr kept for error messages.
STDERR_TAIL_LINES = 60

EOF = "eof"
MESSAGE = "message"


def _kill_process(proc: subprocess.Popen[bytes]) -> None:
    # Used by weakref.finalize: a client dropped without close() still leaves no orphan or zombie.
    if proc.poll() is None:
        proc.kill()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


class WorkerConnection:
    """A running worker process, its pipes and reader threads. Replaced as a whole when the process dies, so
    replies of a dead worker can never be confused with a fresh one's."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        kwargs: dict[str, Any] = {}
        if os.name == "nt":
            kwargs["creationflags"] = getattr(subprocess, "CREATE_NO_WINDOW", 0)
        else:
            # Its own session: Ctrl-C in a terminal reaches the caller, which then closes the worker cleanly.
            kwargs["start_new_session"] = True
        self.argv = argv
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, bufsize=0, **kwargs
        )
        self.pid = self.proc.pid
        self._finalizer = weakref.finalize(self, _kill_process, self.proc)
        self._write_lock = threading.Lock()
        self._lock = threading.Lock()
        self._pending: dict[int | str, queue.Queue[tuple[str, Any]]] = {}
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self.dead = False
        self._stdout_thread = threading.Thread(target=self._read_stdout, name=f"metricgold-worker-{self.pid}-stdout", daemon=True)
        self._stderr_thread = threading.Thread(target=self._read_stderr, name=f"metricgold-worker-{self.pid}-stderr", daemon=True)
        self._stderr_thread.start()
        self._stdout_thread.start()

    # reader threads
    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                message = protocol.parse_response(line)
            except protocol.ProtocolError as exc:
                # The worker keeps stdout for protocol lines only; anything else is a bug worth seeing.
                log.warning("ignoring a line from the worker that is not JSON-RPC: %s", exc)
                continue
            # Progress notifications name their request in params; replies carry its id.
            key = (message.params or {}).get("request_id") if message.is_notification else message.id
            with self._lock:
                target = self._pending.get(key) if isinstance(key, (int, str)) else None
            if target is not None:
                target.put((MESSAGE, message))
            elif not message.is_notification:
                log.debug("reply for an unknown request id %r: %s", message.id, message.error or message.result)
        with self._lock:
            self.dead = True
            waiting = list(self._pending.values())
        for target in waiting:
            target.put((EOF, None))

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            self._stderr_tail.append(line)
            log.debug("worker %s: %s", self.pid, line)

    def stderr_tail(self, wait: float = 0.0) -> str:
        """The last lines the worker wrote to stderr (waiting up to ``wait`` s for the stream to end)."""
        if wait:
            self._stderr_thread.join(wait)
        return "\n".join(self._stderr_tail)

    # requests
    def register(self, request_id: int | str) -> queue.Queue[tuple[str, Any]]:
        inbox: queue.Queue[tuple[str, Any]] = queue.Queue()
        with self._lock:
            self._pending[request_id] = inbox
            if self.dead:
                inbox.put((EOF, None))
        return inbox

    def unregister(self, request_id: int | str) -> None:
        with self._lock:
            self._pending.pop(request_id, None)

    def send(self, message: Mapping[str, Any]) -> bool:
        """Write one line; False when the pipe is already broken (the reader thread reports the death)."""
        data = protocol.encode(message)
        with self._write_lock:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(data)
                self.proc.stdin.flush()
                return True
            except (BrokenPipeError, OSError, ValueError):
                return False

    def usable(self) -> bool:
        """Not known dead: its output has not ended and the process has not exited (the reader thread may not have
        seen the end of a process killed a moment ago)."""
        return not self.dead and self.proc.poll() is None

    def died_error(self, doing: str) -> WorkerDied:
        returncode = self.reap(timeout=5.0)
        tail = self.stderr_tail(wait=2.0)
        if returncode is None:
            how = "closed its output"
        elif returncode < 0:
            try:
                name = signal.Signals(-returncode).name
            except ValueError:
                name = f"signal {-returncode}"
            how = f"was killed by {name}"
            if name == "SIGKILL":
                how += " (by a user, or by the system when it ran out of memory)"
        else:
            how = f"exited with code {returncode}"
        message = f"the MetricGold worker (pid {self.pid}) {how} while {doing}."
        message += "\nLast lines of its stderr:\n" + tail if tail else "\nIt wrote nothing to stderr."
        return WorkerDied(message, returncode=returncode, stderr_tail=tail)

    # ending
    def reap(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._close_pipes()

    def shutdown(self, timeout: float) -> None:
        """Ask the worker to exit (shutdown request, then end of input); kill it if it has not exited in time."""
        if self.proc.poll() is None:
            self.send(protocol.request(protocol.SHUTDOWN, None, "__close__"))
            with self._write_lock:
                try:
                    assert self.proc.stdin is not None
                    self.proc.stdin.close()
                except (BrokenPipeError, OSError, ValueError):
                    pass
            if self.reap(timeout) is None:
                log.warning("worker %s did not exit within %.1f s; killing it", self.pid, timeout)
        self.kill()

    def _close_pipes(self) -> None:
        self._stdout_thread.join(5)
        self._stderr_thread.join(5)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                if stream is not None:
                    stream.close()
            except (BrokenPipeError, OSError, ValueError):
                pass
        self._finalizer.detach()
