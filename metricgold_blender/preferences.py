"""Add-on preferences: the worker (set up with one click, or an environment of the user's own), the model and the
prediction defaults.

The worker box's operators are thin: the set-up's planning, running and watching live in :mod:`.worker_env` (no
bpy); what to show lives in pure functions here (:func:`setup_refusal`, :func:`describe_status`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

#: What Operator.execute/invoke/modal return (the type fake-bpy-module gives them).
OperatorResult = set[Literal["RUNNING_MODAL", "CANCELLED", "FINISHED", "PASS_THROUGH", "INTERFACE"]]

import bpy
from bpy.props import EnumProperty, IntProperty, StringProperty

from . import jobs, worker_env
from .engine import CLIENT_SYS_PATH, ENGINE_VERSION, demo_model, engine_source

#: The add-on's package name: "metricgold_blender" in a checkout, "bl_ext.<repo>.metricgold" as an extension.
ADDON_ID = __package__ or "metricgold_blender"

DEVICE_ITEMS = [
    ("auto", "Automatic", "CUDA if present, then Apple MPS, else the CPU"),
    ("cuda", "CUDA", "An NVIDIA GPU"),
    ("mps", "Apple MPS", "Apple silicon GPU"),
    ("cpu", "CPU", "Slow, but works everywhere"),
]

SETUP_DEVICE_ITEMS = [
    ("AUTO", "Auto", "NVIDIA CUDA when an NVIDIA driver is installed (Linux, Windows), Apple MPS on Apple silicon, "
     "else CPU only"),
    ("CUDA", "NVIDIA CUDA", "PyTorch built for NVIDIA GPUs (the largest download)"),
    ("CPU", "CPU only", "PyTorch for the CPU: the smallest download, slow predictions"),
]

#: Where Blender's switch for the network is, named in the refusal message.
ONLINE_ACCESS_PREFERENCE = "Preferences > System > Network > Allow Online Access"


# Blender properties cannot hold None, so two values of a processing-resolution property stand for "not set here"
# (0 is a real choice: the photo's own size).
RESOLUTION_FROM_PREFERENCES = -2  # an operator's value: use the preferences' setting
RESOLUTION_MODEL_DEFAULT = -1  # the preferences' value: use the checkpoint's default


@dataclass(frozen=True)
class Settings:
    """A snapshot of the preferences (also used where the add-on is not enabled, e.g. scripts)."""

    python_executable: str = ""
    model_dir: str = ""
    device: str = "auto"
    steps: int = 0
    ensemble: int = 0
    processing_resolution: int = RESOLUTION_MODEL_DEFAULT
    seed: int = 0
    managed_python: str = ""  # the python of the environment set up by 'Set up worker', when there is one

    @property
    def model(self) -> str | None:
        """The model folder or Hugging Face Hub id, or None for the engine's built-in default model."""
        if self.model_dir and demo_model.is_hub_id(self.model_dir.strip()):
            return self.model_dir.strip()
        path = bpy.path.abspath(self.model_dir) if self.model_dir else ""
        return os.path.normpath(path) if path else None

    @property
    def python(self) -> str:
        """The worker's Python: the user's own when set, else the set-up environment's."""
        if self.python_executable:
            return bpy.path.abspath(self.python_executable)
        return self.managed_python

    def predict_options(
        self, steps: int = 0, ensemble: int = 0, processing_resolution: int = RESOLUTION_FROM_PREFERENCES
    ) -> dict[str, Any]:
        """Keyword options for ``WorkerClient.predict``: an operator's value overrides the preferences'; steps or
        ensemble 0 and RESOLUTION_MODEL_DEFAULT mean the checkpoint's default (None for the worker)."""
        steps = steps or self.steps
        ensemble = ensemble or self.ensemble
        res = self.processing_resolution if processing_resolution == RESOLUTION_FROM_PREFERENCES else processing_resolution
        return {
            "num_inference_steps": steps or None,
            "ensemble_size": ensemble or None,
            "processing_resolution": None if res == RESOLUTION_MODEL_DEFAULT else res,
            "seed": None if self.seed < 0 else self.seed,
            "output_uncertainty": True,
        }


def get_settings(context: Any) -> Settings:
    addon = context.preferences.addons.get(ADDON_ID)
    if addon is None or addon.preferences is None:
        return Settings()
    p = addon.preferences
    return Settings(p.python_executable, p.model_dir, p.device, p.steps, p.ensemble, p.processing_resolution, p.seed,
                    managed_python=managed_python())


def check_worker_python(settings: Settings) -> str | None:
    """An error message when the configured worker Python cannot be used, else None."""
    python = settings.python
    if not python:
        return ("MetricGold: the worker is not set up. Open Preferences > Add-ons > MetricGold and press 'Set up "
                "worker' (or set 'Worker Python' to the python of an environment of your own with MetricGold).")
    if not os.path.isfile(python):
        return f"MetricGold: worker Python not found: {python} (Preferences > Add-ons > MetricGold)"
    if not os.access(python, os.X_OK):
        return f"MetricGold: worker Python is not executable: {python}"
    model = settings.model
    if model is not None and not os.path.isdir(model) and not demo_model.is_hub_id(model):
        return f"MetricGold: model folder not found: {model}"
    return None


# --- the worker environment ----------------------------------------------------------------------------------------


def worker_user_dir() -> Path:
    """The extension's own user folder (kept across updates of the extension), where the environment lives."""
    try:
        return Path(bpy.utils.extension_path_user(ADDON_ID, create=True))
    except ValueError:  # not installed as an extension (a source checkout): Blender's user data folder
        return Path(bpy.utils.user_resource("DATAFILES", path="metricgold", create=True))


def worker_environment() -> worker_env.WorkerEnvironment:
    return worker_env.environment_for(worker_user_dir())


def managed_python() -> str:
    """The set-up environment's python when it is ready (also while a new set-up runs: the old one still works)."""
    env = worker_environment()
    return str(env.python) if env.env_info() is not None and env.python.exists() else ""


def setup_refusal(online_access: bool, running: bool, source: Path | None) -> str | None:
    """Why 'Set up worker' cannot start now (None: it can). Checked before any process is started."""
    if not online_access:
        return ("MetricGold: setting up the worker downloads PyTorch and the engine's dependencies, but Blender's "
                f"online access is off. Turn on {ONLINE_ACCESS_PREFERENCE}, then press 'Set up worker' again.")
    if running:
        return "MetricGold: a worker set-up is already running (cancel it first)"
    if source is None:
        return ("MetricGold: this copy of the add-on has no engine wheel (engine_wheel/ in the extension zip): "
                "install a zip built with `python build.py`")
    return None


def describe_status(status: worker_env.EnvStatus, addon_version: str = ENGINE_VERSION) -> list[tuple[str, str]]:
    """The worker box's lines, as (icon, text)."""
    lines: list[tuple[str, str]] = []
    env = status.env
    if status.phase == worker_env.RUNNING:
        lines.append(("TIME", f"Setting up: {status.step_label} ({status.fraction:.0%})"))
        if status.message and status.message != status.step_label:
            lines.append(("BLANK1", status.message))
    elif status.phase == worker_env.FAILED:
        lines.append(("ERROR", f"Set-up failed: {status.error}"))
        if status.log_path:
            lines.append(("TEXT", f"Log: {status.log_path}"))
    if env is not None and not status.problem and status.phase != worker_env.RUNNING:
        lines.append(("CHECKMARK", f"Ready: torch {env.torch_version}, device {env.device}, engine "
                                   f"{env.engine_version} ({env.size_bytes / 1e9:.1f} GB)"))
        if status.outdated(addon_version):
            lines.append(("ERROR", f"The environment has engine {env.engine_version}, the add-on {addon_version}: "
                                   "press 'Update worker'"))
    if status.problem:
        lines.append(("ERROR", status.problem))
    if status.phase == "none" and env is None:
        lines.append(("INFO", "Not set up: 'Set up worker' installs PyTorch and the engine into the add-on's own "
                              "folder (about 1.5 GB for CPU only, 5-7 GB with CUDA)"))
    if status.message and status.phase in (worker_env.READY, "none"):
        lines.append(("INFO", status.message))
    return lines


_seen_ready: list[float] = [0.0]


def poll_worker_setup() -> worker_env.EnvStatus:
    """Watch the set-up (timers, redraws and tests call this): tidy up after a set-up process that died, and once a
    new environment is in place, close the workers still running from the old one's files."""
    env = worker_environment()
    status = env.poll()
    st = env.read_status() or {}
    finished = float(st.get("finished") or 0.0)
    if st.get("state") == worker_env.READY and finished > _seen_ready[0]:
        _seen_ready[0] = finished
        jobs.close_all_clients()
    return status


def _tick() -> float | None:
    try:
        status = poll_worker_setup()
    except Exception:  # a timer that raises is unregistered by Blender; keep watching
        return 1.0
    wm = getattr(bpy.context, "window_manager", None)
    for window in getattr(wm, "windows", []):
        for area in window.screen.areas:
            if area.type in ("PREFERENCES", "STATUSBAR"):
                area.tag_redraw()
    return 0.5 if status.phase == worker_env.RUNNING else None


def watch_setup() -> None:
    """Redraw the preferences and the status bar while a set-up runs (Blender as a module has no timers: there
    :func:`poll_worker_setup` is called directly)."""
    if not bpy.app.timers.is_registered(_tick):
        bpy.app.timers.register(_tick, first_interval=0.5)


def draw_statusbar(self: Any, context: Any) -> None:
    try:
        status = worker_environment().status()
    except Exception:
        return
    if status.phase == worker_env.RUNNING:
        self.layout.progress(factor=status.fraction, type="BAR",
                             text=f"MetricGold worker set-up: {status.step_label}")


def start_setup(device_choice: str) -> worker_env.SetupPlan:
    """Plan and start the set-up for ``device_choice`` (AUTO, CUDA or CPU); raises SetupRefused."""
    env = worker_environment()
    source = engine_source()
    problem = setup_refusal(bpy.app.online_access, env.running(), source)
    if problem:
        raise SetupRefused(problem)
    assert source is not None
    try:
        plan = worker_env.make_plan(env.user_dir, device_choice, engine_source=source, engine_version=ENGINE_VERSION,
                                    client_path=CLIENT_SYS_PATH)
    except ValueError as e:
        raise SetupRefused(f"MetricGold: {e}") from None
    try:
        env.start(plan)
    except worker_env.SetupBusy as e:
        raise SetupRefused(f"MetricGold: {e}") from None
    watch_setup()
    return plan


class SetupRefused(RuntimeError):
    pass


class METRICGOLD_OT_worker_setup(bpy.types.Operator):
    """Make the worker's Python environment in the background: PyTorch for the chosen device, then the engine
    shipped with the add-on and its dependencies; it replaces the current one only once its worker answers"""

    bl_idname = "metricgold.worker_setup"
    bl_label = "Set up worker"
    bl_options = {"INTERNAL"}

    device: EnumProperty(  # type: ignore[valid-type]
        name="Device", items=SETUP_DEVICE_ITEMS, default="AUTO",
        description="The PyTorch build to install (default: the preferences' choice)")

    def execute(self, context: Any) -> OperatorResult:
        device = self.device
        if not self.properties.is_property_set("device"):
            addon = context.preferences.addons.get(ADDON_ID)
            device = addon.preferences.setup_device if addon is not None and addon.preferences else "AUTO"
        try:
            plan = start_setup(device)
        except SetupRefused as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        self.report({"INFO"}, f"MetricGold: setting up the worker (PyTorch for {plan.device.upper()}) in the "
                              "background; progress in the status bar and in Preferences > Add-ons > MetricGold")
        return {"FINISHED"}


class METRICGOLD_OT_worker_cancel(bpy.types.Operator):
    """Stop the running set-up; the previous environment (if any) stays as it was"""

    bl_idname = "metricgold.worker_cancel"
    bl_label = "Cancel"
    bl_options = {"INTERNAL"}

    def execute(self, context: Any) -> OperatorResult:
        seconds = worker_environment().cancel()
        if seconds is None:
            self.report({"WARNING"}, "MetricGold: no worker set-up is running")
            return {"CANCELLED"}
        self.report({"INFO"}, "MetricGold: worker set-up cancelled")
        return {"FINISHED"}


class METRICGOLD_OT_worker_remove(bpy.types.Operator):
    """Delete the worker environment set up by the add-on (an environment of your own is not touched)"""

    bl_idname = "metricgold.worker_remove"
    bl_label = "Remove"
    bl_options = {"INTERNAL"}

    def invoke(self, context: Any, event: Any) -> OperatorResult:
        return context.window_manager.invoke_confirm(self, event)  # type: ignore[no-any-return]

    def execute(self, context: Any) -> OperatorResult:
        env = worker_environment()
        jobs.close_all_clients()  # a worker may be running from the files about to go
        try:
            removed = env.remove()
        except worker_env.SetupBusy as e:
            self.report({"ERROR"}, f"MetricGold: {e}")
            return {"CANCELLED"}
        if not removed:
            self.report({"WARNING"}, "MetricGold: no worker environment to remove")
            return {"CANCELLED"}
        self.report({"INFO"}, f"MetricGold: removed the worker environment {env.env_dir}")
        return {"FINISHED"}


class METRICGOLD_OT_worker_open_log(bpy.types.Operator):
    """Open the last set-up's log in the system's text viewer"""

    bl_idname = "metricgold.worker_open_log"
    bl_label = "Open log"
    bl_options = {"INTERNAL"}

    def execute(self, context: Any) -> OperatorResult:
        log = worker_environment().log_path
        if not log.is_file():
            self.report({"WARNING"}, "MetricGold: no set-up log yet")
            return {"CANCELLED"}
        bpy.ops.wm.path_open(filepath=str(log))
        return {"FINISHED"}


class METRICGOLD_OT_unload_model(bpy.types.Operator):
    """Free the memory the worker's model takes (the worker keeps running; the next prediction loads it again)"""

    bl_idname = "metricgold.unload_model"
    bl_label = "Unload model"
    bl_options = {"INTERNAL"}

    def execute(self, context: Any) -> OperatorResult:
        clients = [c for c in jobs.running_clients() if c.alive]
        if not clients:
            self.report({"INFO"}, "MetricGold: no worker is running, so no model is loaded")
            return {"FINISHED"}
        try:
            for client in clients:
                client.unload_model()
        except Exception as e:
            self.report({"ERROR"}, f"MetricGold: unloading the model failed: {e}")
            return {"CANCELLED"}
        self.report({"INFO"}, "MetricGold: model unloaded; its memory is free")
        return {"FINISHED"}


class METRICGOLD_OT_test_worker(bpy.types.Operator):
    """Start the worker with the settings above and show its engine version, device and model"""

    bl_idname = "metricgold.test_worker"
    bl_label = "Test worker"
    bl_options = {"INTERNAL"}

    def execute(self, context: Any) -> OperatorResult:
        settings = get_settings(context)
        problem = check_worker_python(settings)
        if problem:
            self.report({"ERROR"}, problem)
            return {"CANCELLED"}
        try:
            client = jobs.shared_client(settings.python, settings.model, settings.device)
            info = client.hello()
        except Exception as e:  # every failure is the user's to read
            self.report({"ERROR"}, f"MetricGold worker failed: {e}")
            return {"CANCELLED"}
        self.report({"INFO"}, describe_worker(info))
        return {"FINISHED"}


DEMO_MODEL_NOTE = "the built-in DEMO model (small, trained only on synthetic scenes: expect rough depth)"


def describe_worker(info: dict[str, Any]) -> str:
    model = info.get("model") or info.get("model_path") or f"not loaded yet ({DEMO_MODEL_NOTE} unless a model folder is set)"
    licence = ""
    if isinstance(model, dict):
        # Several popular weights are non-commercial: the licence is shown before the model is used.
        licence = f", licence {model.get('licence') or 'unknown (see the model card)'}"
        kind = f" ({model['kind']})" if model.get("kind") else ""
        model = f"{model.get('path') or model.get('name') or '?'}{kind}"
    if info.get("demo_model"):
        model = DEMO_MODEL_NOTE
    return (f"MetricGold worker OK: engine {info.get('engine_version', '?')}, torch {info.get('torch_version', '?')}, "
            f"device {info.get('device', '?')}, model {model}{licence}")


class MetricGoldPreferences(bpy.types.AddonPreferences):
    bl_idname = ADDON_ID

    python_executable: StringProperty(  # type: ignore[valid-type]
        name="Worker Python",
        description="Python executable of an environment of your own where MetricGold (with PyTorch) is installed; "
        "empty: the environment made by 'Set up worker'",
        subtype="FILE_PATH",
    )
    model_dir: StringProperty(  # type: ignore[valid-type]
        name="Model",
        description="A model folder (MetricGold, Depth Pro, Depth Anything V2 metric, ZoeDepth) or a Hugging Face id "
                    "such as apple/DepthPro-hf (downloaded once by the worker); empty: the built-in demo model",
        subtype="DIR_PATH",
    )
    setup_device: EnumProperty(  # type: ignore[valid-type]
        name="PyTorch for", items=SETUP_DEVICE_ITEMS, default="AUTO",
        description="Which PyTorch build 'Set up worker' installs")
    device: EnumProperty(name="Device", items=DEVICE_ITEMS, default="auto")  # type: ignore[valid-type]
    steps: IntProperty(  # type: ignore[valid-type]
        name="Steps", description="Denoising steps (0: the model's default)", default=0, min=0, max=1000)
    ensemble: IntProperty(  # type: ignore[valid-type]
        name="Ensemble", description="Predictions averaged per image (0: the model's default)", default=0, min=0,
        max=64)
    processing_resolution: IntProperty(  # type: ignore[valid-type]
        name="Processing resolution",
        description="Longest side the model works at (-1: the model's default, 0: the image's own resolution)",
        default=RESOLUTION_MODEL_DEFAULT, min=RESOLUTION_MODEL_DEFAULT, max=8192)
    seed: IntProperty(  # type: ignore[valid-type]
        name="Seed", description="Noise seed, for repeatable results (-1: random)", default=0, min=-1)

    def draw(self, context: Any) -> None:
        layout: Any = self.layout
        self.draw_worker(layout.box())
        layout.prop(self, "model_dir")
        if not self.model_dir:
            layout.label(text=f"No model: {DEMO_MODEL_NOTE}.", icon="INFO")
        layout.prop(self, "device")
        row = layout.row()
        row.prop(self, "steps")
        row.prop(self, "ensemble")
        row = layout.row()
        row.prop(self, "processing_resolution")
        row.prop(self, "seed")

    def draw_worker(self, box: Any) -> None:
        box.label(text="Worker (runs the model in its own Python with PyTorch)", icon="CONSOLE")
        status = worker_environment().status()
        for icon, text in describe_status(status):
            box.label(text=text, icon=icon)
        if status.phase == worker_env.RUNNING:
            box.progress(factor=status.fraction, type="BAR", text=status.step_label)
            row = box.row()
            row.operator(METRICGOLD_OT_worker_cancel.bl_idname, icon="CANCEL")
        else:
            row = box.row()
            row.prop(self, "setup_device", text="")
            outdated = status.outdated(ENGINE_VERSION)
            label = "Update worker" if outdated else ("Set up again" if status.env else "Set up worker")
            op = row.operator(METRICGOLD_OT_worker_setup.bl_idname, text=label, icon="IMPORT")
            if outdated and status.env is not None:
                op.device = status.env.device_choice  # the same build as before, in one click
            else:
                op.device = self.setup_device
            if status.env is not None:
                row.operator(METRICGOLD_OT_worker_remove.bl_idname, icon="TRASH")
        if status.log_path:
            row.operator(METRICGOLD_OT_worker_open_log.bl_idname, icon="TEXT")
        if not bpy.app.online_access and status.phase != worker_env.RUNNING:
            box.label(text=f"Online access is off: set-up needs {ONLINE_ACCESS_PREFERENCE}", icon="ERROR")
        box.prop(self, "python_executable", text="Own environment's Python")
        if self.python_executable:
            box.label(text="Using your own environment; clear the field to use the one set up here", icon="INFO")
        row = box.row()
        row.operator(METRICGOLD_OT_test_worker.bl_idname, icon="PLAY")
        row.operator(METRICGOLD_OT_unload_model.bl_idname, icon="X")
        row.label(text=f"Add-on engine {ENGINE_VERSION}")


classes = (METRICGOLD_OT_test_worker, METRICGOLD_OT_worker_setup, METRICGOLD_OT_worker_cancel,
           METRICGOLD_OT_worker_remove, METRICGOLD_OT_worker_open_log, METRICGOLD_OT_unload_model,
           MetricGoldPreferences)
