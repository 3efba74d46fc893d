"""The worker's Python environment, set up from inside Blender with one click.

Blender's Python has no PyTorch, so the worker runs in an environment of its own. This module plans that
environment, starts its set-up as ONE background process, watches it through a small JSON status file, cancels it
and removes it. It imports neither bpy nor anything relative at module level: Blender's side imports it, and the
set-up process runs this very file as a script (``python -I worker_env.py run PLAN.json``), so Blender only reads
the status file (which also works where ``bpy.app.timers`` never fire, e.g. Blender as a Python module).

Layout in the extension's user folder ``U``::

    U/worker_env/                 the working environment (``metricgold_env.json`` inside says what it holds)
    U/worker_env.tmp-PID/         an environment being built by the set-up process PID
    U/worker_env.old-PID/         the previous environment, for the moment of the swap
    U/worker_env.trash-N/         a folder being deleted
    U/worker_setup/status.json    the last set-up's state, step, progress, message; setup.log its full output

Steps: ``sys.executable -m venv`` (Blender's own Python), pip's upgrade, torch for the chosen device, the engine
wheel shipped in the extension (``--no-deps``), the engine's dependencies, then the worker in the new environment
must answer ``hello`` through the add-on's own torch-free client; only then is the folder renamed into place, and the
previous environment removed. A failure, a cancel or a kill leaves the previous environment as it was.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

ENV_DIR_NAME = "worker_env"
TMP_PREFIX = ENV_DIR_NAME + ".tmp-"
OLD_PREFIX = ENV_DIR_NAME + ".old-"
TRASH_PREFIX = ENV_DIR_NAME + ".trash-"
SETUP_DIR_NAME = "worker_setup"
MARKER_NAME = "metricgold_env.json"

#: Environment variables a user (or a test) may set to change what is installed.
TORCH_REQUIREMENT_VAR = "METRICGOLD_TORCH_REQUIREMENT"  # e.g. "torch==2.13.0"; default "torch torchvision"
TORCH_INDEX_VAR = "METRICGOLD_TORCH_INDEX_URL"  # the index torch comes from; set but empty: the default index
PIP_ARGS_VAR = "METRICGOLD_PIP_ARGS"  # extra arguments for every `pip install` (shell syntax), e.g. a proxy
ENGINE_EXTRAS_VAR = "METRICGOLD_ENGINE_EXTRAS"  # the engine's extras; default "backends"; set but empty: none
#: torchvision comes with torch, from the same index, so that the two builds match (the transformers backends,
#: Depth Pro's image processor and ZoeDepth's post-processing, need it).
DEFAULT_TORCH_REQUIREMENT = "torch torchvision"
DEFAULT_ENGINE_EXTRAS = "backends"

#: PyTorch's own wheel indexes. Windows gets its CUDA build only from there; on Linux PyPI's torch is the CUDA build
#: (several GB), so a CPU-only set-up takes the much smaller CPU build from PyTorch's CPU index.
TORCH_CUDA_INDEX = "https://download.pytorch.org/whl/cu128"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"

DEVICE_CHOICES = ("AUTO", "CUDA", "CPU")
RUNNING, READY, FAILED, CANCELLED = "running", "ready", "failed", "cancelled"
#: A status file not refreshed for this long belongs to a set-up process that no longer runs (heartbeat: 1 s).
STALE_AFTER_S = 60.0
#: How long a cancelled set-up gets to stop after SIGTERM before it is killed.
TERMINATE_GRACE_S = 1.0


@dataclass(frozen=True)
class Step:
    id: str
    label: str
    weight: float  # share of the whole set-up's progress bar


STEPS = (
    Step("venv", "Creating the Python environment", 0.04),
    Step("pip", "Updating pip", 0.04),
    Step("torch", "Installing PyTorch", 0.50),
    Step("engine", "Installing the MetricGold engine", 0.02),
    Step("deps", "Installing the engine's dependencies", 0.30),
    Step("verify", "Starting the worker", 0.08),
    Step("finish", "Moving the environment into place", 0.02),
)
STEP_BY_ID = {s.id: s for s in STEPS}


def step_fraction(step_id: str, within: float) -> float:
    """Progress of the whole set-up in [0, 1] when ``step_id`` is ``within`` (0..1) done."""
    done = 0.0
    for step in STEPS:
        if step.id == step_id:
            return min(1.0, done + step.weight * max(0.0, min(1.0, within)))
        done += step.weight
    return done


# --- pure planning -----------------------------------------------------------------------------------------------


def env_python(env_dir: str | os.PathLike[str], windows: bool | None = None) -> Path:
    """The python of a virtual environment folder."""
    windows = os.name == "nt" if windows is None else windows
    return Path(env_dir) / ("Scripts/python.exe" if windows else "bin/python")


def has_nvidia_driver(system: str | None = None) -> bool:
    """Whether an NVIDIA driver is installed (not whether torch can use it: torch is not here yet)."""
    system = system or platform.system()
    if system == "Linux":
        return os.path.exists("/proc/driver/nvidia/version") or shutil.which("nvidia-smi") is not None
    if system == "Windows":
        root = os.environ.get("SystemRoot", r"C:\Windows")
        return (shutil.which("nvidia-smi") is not None
                or os.path.exists(os.path.join(root, "System32", "nvml.dll"))
                or os.path.exists(os.path.join(root, "System32", "nvidia-smi.exe")))
    return False


def resolve_device(choice: str, system: str, machine: str, nvidia: bool) -> str:
    """The torch build to install, "cuda", "mps" or "cpu", for a choice of AUTO, CUDA or CPU.

    AUTO: CUDA on Linux and Windows when an NVIDIA driver is present, MPS-capable torch on Apple silicon, else CPU.
    """
    choice = choice.upper()
    if choice not in DEVICE_CHOICES:
        raise ValueError(f"device must be one of {', '.join(DEVICE_CHOICES)}, got {choice!r}")
    if choice == "CPU":
        return "cpu"
    if choice == "CUDA":
        if system == "Darwin":
            raise ValueError("NVIDIA CUDA is not available on macOS; choose Auto (Apple MPS) or CPU only")
        return "cuda"
    if system == "Darwin" and machine.lower() in ("arm64", "aarch64"):
        return "mps"
    if system in ("Linux", "Windows") and nvidia:
        return "cuda"
    return "cpu"


def torch_index_url(device: str, system: str, environ: Mapping[str, str]) -> str | None:
    """The index torch is installed from (None: pip's default index, i.e. PyPI)."""
    if TORCH_INDEX_VAR in environ:
        return environ[TORCH_INDEX_VAR].strip() or None
    if device == "cuda" and system == "Windows":
        return TORCH_CUDA_INDEX
    if device == "cpu" and system == "Linux":
        return TORCH_CPU_INDEX
    return None


def torch_requirement(environ: Mapping[str, str]) -> str:
    """What the PyTorch step installs: one or more requirements, separated by spaces."""
    return " ".join(environ.get(TORCH_REQUIREMENT_VAR, "").split()) or DEFAULT_TORCH_REQUIREMENT


def engine_extras(environ: Mapping[str, str]) -> str:
    value = environ.get(ENGINE_EXTRAS_VAR)
    return DEFAULT_ENGINE_EXTRAS if value is None else value.replace(" ", "")


def with_extras(source: str, extras: str) -> str:
    """pip's ``path[extra,...]`` form (works for a wheel and for a source folder)."""
    return f"{source}[{extras}]" if extras else source


def extra_pip_args(environ: Mapping[str, str]) -> list[str]:
    return shlex.split(environ.get(PIP_ARGS_VAR, ""), posix=os.name != "nt")


@dataclass(frozen=True)
class SetupPlan:
    """Everything the set-up process needs, written to ``plan.json`` for it."""

    user_dir: str
    base_python: str  # the Python that makes the venv (Blender's own)
    device_choice: str  # AUTO / CUDA / CPU, as the user chose
    device: str  # cuda / mps / cpu, the torch build
    torch_requirement: str
    torch_index_url: str | None
    pip_args: list[str]
    engine_source: str  # the engine wheel (or a source folder)
    engine_extras: str  # e.g. "backends"
    engine_version: str  # what the worker's hello must say
    client_path: str  # a folder on whose sys.path `metricgold_engine.core.client` is the add-on's client
    system: str = field(default_factory=platform.system)

    @property
    def env_dir(self) -> Path:
        return Path(self.user_dir) / ENV_DIR_NAME

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> SetupPlan:
        return cls(**json.loads(text))


def make_plan(
    user_dir: str | os.PathLike[str],
    device_choice: str,
    *,
    engine_source: str | os.PathLike[str],
    engine_version: str,
    client_path: str | os.PathLike[str],
    base_python: str | None = None,
    environ: Mapping[str, str] | None = None,
    system: str | None = None,
    machine: str | None = None,
    nvidia: bool | None = None,
) -> SetupPlan:
    environ = os.environ if environ is None else environ
    system = system or platform.system()
    machine = machine or platform.machine()
    nvidia = has_nvidia_driver(system) if nvidia is None else nvidia
    device = resolve_device(device_choice, system, machine, nvidia)
    return SetupPlan(
        user_dir=os.fspath(user_dir), base_python=base_python or sys.executable, device_choice=device_choice.upper(),
        device=device, torch_requirement=torch_requirement(environ),
        torch_index_url=torch_index_url(device, system, environ), pip_args=extra_pip_args(environ),
        engine_source=os.fspath(engine_source), engine_extras=engine_extras(environ), engine_version=engine_version,
        client_path=os.fspath(client_path),
        system=system,
    )


def pip_install_argv(python: str | os.PathLike[str], packages: list[str], *, plan: SetupPlan,
                     index_url: str | None = None, no_deps: bool = False, raw_progress: bool = True) -> list[str]:
    argv = [os.fspath(python), "-m", "pip", "install", "--no-warn-script-location"]
    if raw_progress:
        argv += ["--progress-bar", "raw"]  # "Progress N of M" lines: the download's fraction for the UI
    if index_url:
        argv += ["--index-url", index_url]
    if no_deps:
        argv.append("--no-deps")
    return argv + list(plan.pip_args) + packages


def child_environ(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for pip and the worker: nothing of Blender's own Python set-up leaks in."""
    env = dict(os.environ if environ is None else environ)
    for key in ("PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP", "VIRTUAL_ENV", "PIP_REQUIRE_VIRTUALENV", "PIP_USER"):
        env.pop(key, None)
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", PYTHONUNBUFFERED="1", PYTHONNOUSERSITE="1")
    return env


# --- pip's output --------------------------------------------------------------------------------------------------

_PROGRESS = re.compile(r"^Progress (\d+) of (\d+)\s*$")
_DOWNLOADING = re.compile(r"^\s*Downloading (\S+)")
_COLLECTING = re.compile(r"^\s*Collecting (\S+)")


@dataclass
class PipWatcher:
    """Turns pip's output lines into a fraction of the step and a short message."""

    fraction: float = 0.0
    message: str = ""
    collected: int = 0
    last_error: str = ""
    downloading: str = ""

    def feed(self, line: str) -> None:
        line = line.rstrip()
        m = _PROGRESS.match(line)
        if m:
            done, total = int(m.group(1)), int(m.group(2))
            if total > 0:
                self.message = f"Downloading {self.downloading} ({done / 1e6:.0f} of {total / 1e6:.0f} MB)"
                # downloads take most of an install's time: they fill 0.1 .. 0.85 of the step
                self.fraction = max(self.fraction, 0.1 + 0.75 * min(done / total, 1.0))
            return
        m = _DOWNLOADING.match(line)
        if m:
            self.downloading = os.path.basename(m.group(1).split("#")[0])
            self.message = f"Downloading {self.downloading}"
            return
        m = _COLLECTING.match(line)
        if m:
            self.collected += 1
            self.message = f"Collecting {m.group(1)}"
            self.fraction = max(self.fraction, min(0.1, 0.01 * self.collected))
            return
        if line.startswith("Installing collected packages"):
            self.message = "Installing " + line.split(":", 1)[-1].strip()[:120]
            self.fraction = max(self.fraction, 0.9)
        elif line.startswith("Successfully installed"):
            self.fraction = 1.0
        elif line.startswith("ERROR:") and not self.last_error:
            self.last_error = line[len("ERROR:"):].strip()


# --- files ---------------------------------------------------------------------------------------------------------


def write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def pid_alive(pid: int | None) -> bool:
    if not pid or pid <= 0:
        return False
    if os.name == "nt":
        import ctypes

        kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
        handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return False
        code = ctypes.c_ulong()
        kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
        kernel32.CloseHandle(handle)
        return code.value == 259  # STILL_ACTIVE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def folder_size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def _pid_of(name: str, prefix: str) -> int | None:
    try:
        return int(name[len(prefix):])
    except ValueError:
        return None


# --- the environment, seen from Blender ----------------------------------------------------------------------------


@dataclass(frozen=True)
class EnvInfo:
    """What ``metricgold_env.json`` says about a working environment."""

    engine_version: str
    torch_version: str
    device: str  # what torch in it uses ("cuda", "mps", "cpu")
    device_choice: str
    python: str
    size_bytes: int = 0
    created: float = 0.0


@dataclass(frozen=True)
class EnvStatus:
    """What the preferences show. ``phase`` is "none", "running", "ready" or "failed"; ``env`` the working
    environment, whatever the phase (a failed or cancelled set-up leaves the previous one in use)."""

    phase: str
    env: EnvInfo | None = None
    step: str = ""
    step_label: str = ""
    fraction: float = 0.0
    message: str = ""
    error: str = ""
    log_path: str = ""
    problem: str = ""  # the environment exists but cannot be used (its Python is gone)

    def outdated(self, addon_engine_version: str) -> bool:
        return self.env is not None and self.env.engine_version != addon_engine_version


class SetupBusy(RuntimeError):
    pass


class WorkerEnvironment:
    """The managed worker environment in one user folder: its state, and starting, cancelling or removing its
    set-up. One instance per folder per process (:func:`environment_for`), so that the set-up's process handle is
    kept."""

    def __init__(self, user_dir: str | os.PathLike[str]) -> None:
        self.user_dir = Path(user_dir)
        self.env_dir = self.user_dir / ENV_DIR_NAME
        self.setup_dir = self.user_dir / SETUP_DIR_NAME
        self.status_path = self.setup_dir / "status.json"
        self.log_path = self.setup_dir / "setup.log"
        self.plan_path = self.setup_dir / "plan.json"
        self._proc: subprocess.Popen[bytes] | None = None
        self._cleanup_threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    @property
    def python(self) -> Path:
        return env_python(self.env_dir)

    # state --------------------------------------------------------------------------------------------------------
    def env_info(self) -> EnvInfo | None:
        data = read_json(self.env_dir / MARKER_NAME)
        if data is None:
            return None
        try:
            return EnvInfo(**{k: data[k] for k in EnvInfo.__dataclass_fields__ if k in data})
        except TypeError:
            return None

    def read_status(self) -> dict[str, Any] | None:
        return read_json(self.status_path)

    def _runner_alive(self, status: Mapping[str, Any]) -> bool:
        if self._proc is not None and self._proc.pid == status.get("pid"):
            return self._proc.poll() is None
        fresh = time.time() - float(status.get("updated", 0)) < STALE_AFTER_S
        return fresh and pid_alive(status.get("pid"))

    def status(self) -> EnvStatus:
        """The state, without side effects (cheap enough for every redraw)."""
        env = self.env_info()
        problem = ""
        if env is not None and not self.python.exists():
            problem = (f"the environment's Python is gone ({self.python}; was the Blender it was made with removed?): "
                       "set up the worker again")
        st = self.read_status() or {}
        log = str(self.log_path) if self.log_path.exists() else ""
        common: dict[str, Any] = dict(env=env, log_path=log, problem=problem)
        state = st.get("state")
        if state == RUNNING and self._runner_alive(st):
            return EnvStatus(RUNNING, step=st.get("step", ""), step_label=st.get("step_label", ""),
                             fraction=float(st.get("fraction", 0.0)), message=st.get("message", ""), **common)
        if state == RUNNING:  # the set-up process died without a word (killed, crashed, power cut)
            return EnvStatus(FAILED, error=_died_message(None), **common)
        if state == FAILED:
            return EnvStatus(FAILED, error=st.get("error", ""), message=st.get("message", ""), **common)
        if env is not None and not problem:
            msg = "the last set-up was cancelled; this environment is still used" if state == CANCELLED else ""
            return EnvStatus(READY, message=msg, **common)
        return EnvStatus("none", message="set-up cancelled" if state == CANCELLED else "", **common)

    def running(self) -> bool:
        st = self.read_status()
        return bool(st and st.get("state") == RUNNING and self._runner_alive(st))

    def poll(self) -> EnvStatus:
        """:meth:`status`, after tidying up a set-up process that died without finishing (its folder removed, the
        status saying so). Call it from a timer, a redraw or a test loop."""
        st = self.read_status()
        if self._proc is not None and self._proc.poll() is not None and not (st and st.get("state") == RUNNING):
            self._proc = None  # finished and reaped
        if st and st.get("state") == RUNNING and not self._runner_alive(st):
            code = None
            if self._proc is not None and self._proc.pid == st.get("pid"):
                code = self._proc.poll()
                self._proc = None
            st = self.read_status() or st  # it may have finished just now
            if st.get("state") == RUNNING:
                self._recover_swap()
                self._discard(st.get("tmp_dir"))
                self._write_final(st, FAILED, error=_died_message(code))
        return self.status()

    # acting -------------------------------------------------------------------------------------------------------
    def start(self, plan: SetupPlan) -> int:
        """Start the set-up process; returns its pid. Raises SetupBusy while another set-up runs."""
        with self._lock:
            if self.running():
                raise SetupBusy("a worker set-up is already running; cancel it first")
            self.user_dir.mkdir(parents=True, exist_ok=True)
            self.setup_dir.mkdir(parents=True, exist_ok=True)
            self.clean_leftovers()
            self.plan_path.write_text(plan.to_json(), encoding="utf-8")
            argv = [plan.base_python, "-I", os.path.abspath(__file__), "run", str(self.plan_path)]
            kwargs: dict[str, Any] = {}
            if os.name == "nt":
                kwargs["creationflags"] = (getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)
                                           | getattr(subprocess, "CREATE_NO_WINDOW", 0))
            else:
                kwargs["start_new_session"] = True  # its own process group: Cancel stops pip with it
            self.log_path.write_text("", encoding="utf-8")
            with open(self.log_path, "ab") as log:
                self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                              env=child_environ(), cwd=str(self.setup_dir), **kwargs)
            now = time.time()
            write_json_atomic(self.status_path, {
                "state": RUNNING, "pid": self._proc.pid, "step": STEPS[0].id, "step_label": STEPS[0].label,
                "fraction": 0.0, "message": "starting", "log": str(self.log_path),
                "tmp_dir": str(self.user_dir / f"{TMP_PREFIX}{self._proc.pid}"), "started": now, "updated": now,
                "device": plan.device,
            })
            return self._proc.pid

    def cancel(self) -> float | None:
        """Stop a running set-up: its whole process tree, then its folder. Returns the seconds until the processes
        were gone (None when nothing ran). The folder is deleted on a background thread (:meth:`wait_cleanup`)."""
        st = self.read_status()
        if not st or st.get("state") != RUNNING:
            return None
        t0 = time.monotonic()
        pid = int(st.get("pid") or 0)
        kill_tree(pid, self._proc if self._proc is not None and self._proc.pid == pid else None)
        stopped = time.monotonic() - t0
        self._proc = None
        self._recover_swap()
        self._discard(st.get("tmp_dir"))
        self._write_final(st, CANCELLED, message="cancelled")
        return stopped

    def remove(self) -> bool:
        """Delete the working environment (nothing else uses it: close the workers first)."""
        if self.running():
            raise SetupBusy("a worker set-up is running; cancel it first")
        if not self.env_dir.exists():
            return False
        self._discard(str(self.env_dir))
        self.status_path.unlink(missing_ok=True)  # an old attempt's failure is no longer news; the log stays
        return True

    def _recover_swap(self) -> None:
        """A set-up stopped between the swap's two renames: put the previous environment back."""
        if self.env_dir.exists() or not self.user_dir.is_dir():
            return
        for entry in sorted(self.user_dir.glob(OLD_PREFIX + "*")):
            os.replace(entry, self.env_dir)
            return

    def clean_leftovers(self) -> list[str]:
        """Remove what a crashed set-up (or Blender) left: temporary and trash folders; a previous environment
        caught in the middle of a swap is put back. Returns the names removed."""
        removed: list[str] = []
        if not self.user_dir.is_dir():
            return removed
        st = self.read_status() or {}
        live_tmp = st.get("tmp_dir") if st.get("state") == RUNNING and self._runner_alive(st) else None
        self._recover_swap()
        for entry in sorted(self.user_dir.iterdir()):
            name = entry.name
            if name.startswith(OLD_PREFIX):  # a previous environment whose deletion did not finish
                self._discard(str(entry))
                removed.append(name)
            elif name.startswith((TMP_PREFIX, TRASH_PREFIX)) and str(entry) != live_tmp:
                self._discard(str(entry))
                removed.append(name)
        for stale in self.setup_dir.glob("*.tmp") if self.setup_dir.is_dir() else []:
            stale.unlink(missing_ok=True)
        return removed

    def wait_cleanup(self, timeout: float = 120.0) -> bool:
        deadline = time.monotonic() + timeout
        for t in list(self._cleanup_threads):
            t.join(max(0.0, deadline - time.monotonic()))
        self._cleanup_threads = [t for t in self._cleanup_threads if t.is_alive()]
        return not self._cleanup_threads

    # helpers ------------------------------------------------------------------------------------------------------
    def _discard(self, folder: str | None) -> None:
        """Rename ``folder`` out of the way at once (the name is free again), delete it on a thread."""
        if not folder or not os.path.isdir(folder):
            return
        target = Path(folder)
        if not target.name.startswith(TRASH_PREFIX):
            n = 0
            while True:
                candidate = self.user_dir / f"{TRASH_PREFIX}{os.getpid()}-{n}"
                if not candidate.exists():
                    break
                n += 1
            try:
                os.replace(target, candidate)
                target = candidate
            except OSError:
                pass  # delete it where it is
        thread = threading.Thread(target=shutil.rmtree, args=(target,), kwargs={"ignore_errors": True},
                                  name="metricgold-env-cleanup", daemon=True)
        thread.start()
        self._cleanup_threads.append(thread)

    def _write_final(self, st: Mapping[str, Any], state: str, *, error: str = "", message: str = "") -> None:
        data = dict(st, state=state, error=error, message=message or error, finished=time.time(),
                    updated=time.time())
        self.setup_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.status_path, data)


def _died_message(code: int | None) -> str:
    how = "" if code is None else (f" (killed by signal {-code})" if code < 0 else f" (exit code {code})")
    return f"the set-up process stopped before it finished{how}; the previous environment (if any) is unchanged"


def kill_tree(pid: int, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Stop a set-up process and everything it started (pip and its children): SIGTERM to its process group, SIGKILL
    to whatever is left after a grace; returns once the group is empty (or, on Windows, once taskkill is done)."""
    if pid <= 0:
        return
    if os.name == "nt":
        subprocess.run(["taskkill", "/T", "/F", "/PID", str(pid)], capture_output=True)
    else:
        for sig, wait in ((signal.SIGTERM, TERMINATE_GRACE_S), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pid, sig)
            except (ProcessLookupError, PermissionError):
                break
            if _wait_group_gone(pid, proc, wait):
                break
    if proc is not None:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def _wait_group_gone(pgid: int, proc: subprocess.Popen[bytes] | None, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while True:
        if proc is not None:
            proc.poll()  # reap our own child, else its zombie keeps the group alive
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)


_environments: dict[str, WorkerEnvironment] = {}


def environment_for(user_dir: str | os.PathLike[str]) -> WorkerEnvironment:
    key = os.path.abspath(os.fspath(user_dir))
    env = _environments.get(key)
    if env is None:
        env = _environments[key] = WorkerEnvironment(key)
    return env


# --- the set-up process --------------------------------------------------------------------------------------------


class SetupFailed(RuntimeError):
    pass


class Runner:
    """Runs a plan's steps in this process (the background set-up process), writing the status file."""

    def __init__(self, plan: SetupPlan) -> None:
        self.plan = plan
        self.env = WorkerEnvironment(plan.user_dir)
        self.tmp_dir = Path(plan.user_dir) / f"{TMP_PREFIX}{os.getpid()}"
        self.python = env_python(self.tmp_dir, plan.system == "Windows")
        self.status: dict[str, Any] = {
            "state": RUNNING, "pid": os.getpid(), "log": str(self.env.log_path), "tmp_dir": str(self.tmp_dir),
            "started": time.time(), "device": plan.device, "fraction": 0.0,
        }
        self._last_write = 0.0
        self.current: subprocess.Popen[bytes] | None = None  # the step's process (pip, venv)

    def on_terminate(self, signum: int, frame: Any) -> None:
        """Cancel (SIGTERM to the process group): reap what this process started, so that nothing is left for the
        system to collect, then go; the caller deletes the temporary folder."""
        proc = self.current
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        os._exit(128 + signum)

    def update(self, step: Step, within: float, message: str, force: bool = False) -> None:
        self.status.update(step=step.id, step_label=step.label, fraction=step_fraction(step.id, within),
                           message=message, updated=time.time())
        now = time.monotonic()
        if force or now - self._last_write >= 0.5:
            write_json_atomic(self.env.status_path, self.status)
            self._last_write = now

    def log(self, text: str) -> None:
        print(text, flush=True)  # stdout is the log file

    def run_command(self, step: Step, argv: list[str]) -> None:
        self.log(f"\n$ {' '.join(argv)}")
        self.update(step, 0.0, step.label, force=True)
        proc = self.current = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                               stderr=subprocess.STDOUT, env=child_environ())
        watcher = PipWatcher()
        lines: list[str] = []

        def read() -> None:
            assert proc.stdout is not None
            for raw in proc.stdout:
                line = raw.decode("utf-8", "replace")
                lines.append(line)
                if not _PROGRESS.match(line):
                    sys.stdout.write(line)
                    sys.stdout.flush()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        seen = 0
        while True:  # a heartbeat at least every second, progress as pip reports it
            done = proc.poll() is not None
            reader.join(0.0 if not done else 5.0)
            for line in lines[seen:]:
                watcher.feed(line)
            seen = len(lines)
            self.update(step, watcher.fraction, watcher.message or step.label)
            if done and not reader.is_alive():
                break
            time.sleep(0.25)
        if proc.returncode != 0:
            reason = watcher.last_error or f"exit code {proc.returncode}"
            raise SetupFailed(f"{step.label} failed: {reason}")

    def run(self) -> int:
        plan = self.plan
        py = str(self.python)
        try:
            self.log(f"MetricGold worker set-up: engine {plan.engine_version}, torch for {plan.device} "
                     f"({plan.torch_requirement}, index {plan.torch_index_url or 'default'}), into {self.tmp_dir}")
            venv = STEP_BY_ID["venv"]
            self.run_command(venv, [plan.base_python, "-m", "venv", str(self.tmp_dir)])
            if not self.python.exists():
                raise SetupFailed(f"{venv.label} failed: {self.python} was not created")
            self.run_command(STEP_BY_ID["pip"], [py, "-m", "pip", "install", "--upgrade", "pip", *plan.pip_args])
            raw = _pip_supports_raw(py)
            torch_step = STEP_BY_ID["torch"]
            torch_step = Step(torch_step.id, f"{torch_step.label} ({plan.device.upper()})", torch_step.weight)
            self.run_command(torch_step, pip_install_argv(py, plan.torch_requirement.split(), plan=plan,
                                                          index_url=plan.torch_index_url, raw_progress=raw))
            self.run_command(STEP_BY_ID["engine"],
                             pip_install_argv(py, [plan.engine_source], plan=plan, no_deps=True, raw_progress=raw))
            self.run_command(STEP_BY_ID["deps"], pip_install_argv(
                py, [with_extras(plan.engine_source, plan.engine_extras)], plan=plan, raw_progress=raw))
            info = self.verify()
            self.finish(info)
        except BaseException as exc:
            message = str(exc) if isinstance(exc, SetupFailed) else f"{type(exc).__name__}: {exc}"
            self.log(f"\nFAILED: {message}")
            shutil.rmtree(self.tmp_dir, ignore_errors=True)
            self.status.update(state=FAILED, error=message, message=message, finished=time.time(),
                               updated=time.time())
            write_json_atomic(self.env.status_path, self.status)
            return 1
        return 0

    def verify(self) -> dict[str, Any]:
        step = STEP_BY_ID["verify"]
        self.update(step, 0.0, "Starting the worker in the new environment (importing torch)", force=True)
        sys.path.insert(0, self.plan.client_path)
        from metricgold_engine.core.client import WorkerClient  # the add-on's own client (torch-free)

        self.log(f"\n$ {self.python} -m metricgold_engine.worker   (hello through the add-on's client)")
        stop = threading.Event()

        def beat() -> None:  # importing torch takes a while: keep the heartbeat going
            while not stop.wait(1.0):
                self.update(step, 0.5, "Starting the worker in the new environment (importing torch)")

        beater = threading.Thread(target=beat, daemon=True)
        beater.start()
        try:
            # (on a cancel meanwhile, this worker, in a session of its own, sees its input end and exits)
            with WorkerClient(self.python, device="auto", start_timeout=600.0,
                              env={"PYTHONHOME": None, "PYTHONPATH": None, "PYTHONNOUSERSITE": "1"}) as client:
                info = dict(client.info)
        except Exception as exc:
            raise SetupFailed(f"the worker in the new environment did not start: {exc}") from None
        finally:
            stop.set()
            beater.join()
        self.log(f"hello: {json.dumps(info)}")
        if info.get("engine_version") != self.plan.engine_version:
            raise SetupFailed(f"the new environment's worker reports engine {info.get('engine_version')}, the add-on "
                              f"is {self.plan.engine_version}")
        return info

    def finish(self, info: Mapping[str, Any]) -> None:
        step = STEP_BY_ID["finish"]
        self.update(step, 0.0, step.label, force=True)
        final = self.plan.env_dir
        _retarget_scripts(self.tmp_dir, final, self.plan.system == "Windows")
        marker = EnvInfo(
            engine_version=str(info.get("engine_version")), torch_version=str(info.get("torch_version")),
            device=str(info.get("device")), device_choice=self.plan.device_choice,
            python=str(env_python(final, self.plan.system == "Windows")), size_bytes=folder_size(self.tmp_dir),
            created=time.time(),
        )
        write_json_atomic(self.tmp_dir / MARKER_NAME, asdict(marker))
        old = swap_into_place(self.tmp_dir, final)
        self.log(f"\nready: {final} ({marker.size_bytes / 1e9:.2f} GB), torch {marker.torch_version}, "
                 f"device {marker.device}")
        self.status.update(state=READY, step=step.id, step_label=step.label, fraction=1.0, message="ready",
                           info=dict(info), finished=time.time(), updated=time.time())
        write_json_atomic(self.env.status_path, self.status)
        if old is not None:  # after the news: deleting a few GB may take a while (a crash here: next attempt)
            shutil.rmtree(old, ignore_errors=True)


def swap_into_place(new: Path, final: Path, replace: Callable[[Any, Any], None] = os.replace) -> Path | None:
    """Rename ``new`` to ``final``; an existing ``final`` is moved aside first (put back if the second rename fails)
    and returned, for the caller to delete once it has reported success. A crash between the two renames is
    repaired by :meth:`WorkerEnvironment.clean_leftovers` (the previous environment is put back)."""
    old = final.with_name(f"{OLD_PREFIX}{os.getpid()}") if final.exists() else None
    if old is not None:
        _retry(lambda: replace(final, old))
    try:
        _retry(lambda: replace(new, final))
    except BaseException:
        if old is not None:
            replace(old, final)
        raise
    return old


def _retry(action: Callable[[], None], seconds: float = 10.0) -> None:
    # Windows refuses to rename a folder while a program inside it runs (a worker still closing): try for a while.
    deadline = time.monotonic() + seconds
    while True:
        try:
            action()
            return
        except PermissionError:
            if os.name != "nt" or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _retarget_scripts(tmp_dir: Path, final: Path, windows: bool) -> None:
    """A venv names its own folder in its scripts' first lines and activate files; after the rename they must name
    the final folder. (The worker itself always runs as ``python -m``, which needs none of them.)"""
    old, new = str(tmp_dir).encode(), str(final).encode()
    for path in [*(tmp_dir / ("Scripts" if windows else "bin")).iterdir(), tmp_dir / "pyvenv.cfg"]:
        try:
            if path.is_symlink() or not path.is_file() or path.stat().st_size > 1 << 20:
                continue
            data = path.read_bytes()
            if b"\0" in data or old not in data:
                continue
            path.write_bytes(data.replace(old, new))
        except OSError:
            pass


def _pip_supports_raw(python: str) -> bool:
    """``--progress-bar raw`` exists from pip 24.1 on."""
    try:
        out = subprocess.run([python, "-m", "pip", "--version"], capture_output=True, text=True, timeout=60,
                             env=child_environ()).stdout
        major, minor = (int(x) for x in out.split()[1].split(".")[:2])
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        return False
    return (major, minor) >= (24, 1)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] != "run":
        print("usage: python -I worker_env.py run PLAN.json", file=sys.stderr)
        return 2
    plan_path = Path(argv[1])
    plan = SetupPlan.from_json(plan_path.read_text(encoding="utf-8"))
    runner = Runner(plan)
    if hasattr(signal, "SIGTERM"):
        signal.signal(signal.SIGTERM, runner.on_terminate)
    return runner.run()


if __name__ == "__main__":
    sys.exit(main())
