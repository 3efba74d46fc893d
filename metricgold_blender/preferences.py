"""Add-on preferences: where the worker's Python and the model are, and the prediction defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal

#: What Operator.execute/invoke/modal return (the type fake-bpy-module gives them).
OperatorResult = set[Literal["RUNNING_MODAL", "CANCELLED", "FINISHED", "PASS_THROUGH", "INTERFACE"]]

import bpy
from bpy.props import EnumProperty, IntProperty, StringProperty

from . import jobs
from .engine import ENGINE_VERSION, demo_model

#: The add-on's package name: "metricgold_blender" in a checkout, "bl_ext.<repo>.metricgold" as an extension.
ADDON_ID = __package__ or "metricgold_blender"

DEVICE_ITEMS = [
    ("auto", "Automatic", "CUDA if present, then Apple MPS, else the CPU"),
    ("cuda", "CUDA", "An NVIDIA GPU"),
    ("mps", "Apple MPS", "Apple silicon GPU"),
    ("cpu", "CPU", "Slow, but works everywhere"),
]

SETUP_STEPS = (
    "MetricGold runs its model in a separate Python (Blender's own has no PyTorch):",
    "1. Make an environment with Python 3.11+:   python3 -m venv ~/metricgold-env",
    "2. Install MetricGold there:   ~/metricgold-env/bin/python -m pip install metricgold",
    "   (from a source checkout:   ~/metricgold-env/bin/python -m pip install -e /path/to/MetricGold)",
    "3. Set 'Worker Python' below to that environment's python (Windows: metricgold-env\\Scripts\\python.exe)",
    "4. Optionally set 'Model' to a model folder or Hugging Face id (README 'Which model?'), press 'Test worker'.",
)


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

    @property
    def model(self) -> str | None:
        """The model folder or Hugging Face Hub id, or None for the engine's built-in default model."""
        if self.model_dir and demo_model.is_hub_id(self.model_dir.strip()):
            return self.model_dir.strip()
        path = bpy.path.abspath(self.model_dir) if self.model_dir else ""
        return os.path.normpath(path) if path else None

    @property
    def python(self) -> str:
        return bpy.path.abspath(self.python_executable) if self.python_executable else ""

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
    return Settings(p.python_executable, p.model_dir, p.device, p.steps, p.ensemble, p.processing_resolution, p.seed)


def check_worker_python(settings: Settings) -> str | None:
    """An error message when the configured worker Python cannot be used, else None."""
    python = settings.python
    if not python:
        return ("MetricGold: no worker Python set. Open Preferences > Add-ons > MetricGold and set 'Worker Python' "
                "to the python of an environment with MetricGold installed.")
    if not os.path.isfile(python):
        return f"MetricGold: worker Python not found: {python} (Preferences > Add-ons > MetricGold)"
    if not os.access(python, os.X_OK):
        return f"MetricGold: worker Python is not executable: {python}"
    model = settings.model
    if model is not None and not os.path.isdir(model) and not demo_model.is_hub_id(model):
        return f"MetricGold: model folder not found: {model}"
    return None


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
    return (f"MetricGold worker OK: engine {info.get('engine_version', '?')}, device {info.get('device', '?')}, "
            f"model {model}{licence}")


class MetricGoldPreferences(bpy.types.AddonPreferences):
    bl_idname = ADDON_ID

    python_executable: StringProperty(  # type: ignore[valid-type]
        name="Worker Python",
        description="Python executable of an environment where MetricGold (with PyTorch) is installed",
        subtype="FILE_PATH",
    )
    model_dir: StringProperty(  # type: ignore[valid-type]
        name="Model",
        description="A model folder (MetricGold, Depth Pro, Depth Anything V2 metric, ZoeDepth) or a Hugging Face id "
                    "such as apple/DepthPro-hf (downloaded once by the worker); empty: the built-in demo model",
        subtype="DIR_PATH",
    )
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
        box = layout.box()
        for line in SETUP_STEPS:
            box.label(text=line)
        layout.prop(self, "python_executable")
        layout.prop(self, "model_dir")
        if not self.model_dir:
            layout.label(text=f"No model folder: {DEMO_MODEL_NOTE}.", icon="INFO")
        layout.prop(self, "device")
        row = layout.row()
        row.prop(self, "steps")
        row.prop(self, "ensemble")
        row = layout.row()
        row.prop(self, "processing_resolution")
        row.prop(self, "seed")
        row = layout.row()
        row.operator(METRICGOLD_OT_test_worker.bl_idname, icon="PLAY")
        row.label(text=f"Add-on engine {ENGINE_VERSION}")


classes = (METRICGOLD_OT_test_worker, MetricGoldPreferences)
