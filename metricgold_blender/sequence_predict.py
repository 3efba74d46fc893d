"""Image Sequence / Movie -> Metric Depth Mesh: the worker predicts every frame (``predict_sequence``, see
docs/sequences.md), then :func:`.sequence_mesh.build_sequence_mesh` makes the one timeline-driven mesh.

Like the photo operators, the worker runs on a background thread (:class:`SequenceJob`) and a modal timer polls it;
``synchronous`` (scripts, tests, background mode) drives the same :meth:`SequenceTask.step` in a loop. Frames the
worker already wrote into the output folder are skipped (resume), and a cancelled run keeps them.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

import bpy
from bpy.props import BoolProperty, FloatProperty, IntProperty, StringProperty

from . import jobs, sequence_mesh
from .engine import client as worker_client
from .operators import GeometryOptions, has_ui
from .preferences import RESOLUTION_FROM_PREFERENCES, OperatorResult, Settings, check_worker_python, get_settings

__all__ = ["METRICGOLD_OT_sequence_to_depth_mesh", "SequenceJob", "SequenceTask", "classes", "sequence_source"]

Report = Callable[[set[str], str], None]


def sequence_source(path: str) -> str:
    """What the worker reads: a movie file as it is, the folder of a picked image (every image in it is a frame)."""
    if os.path.isdir(path) or path.lower().endswith(sequence_mesh.MOVIE_SUFFIXES):
        return path
    return os.path.dirname(path)


class SequenceJob(jobs.PredictionJob):
    """``predict_sequence`` on a daemon thread; ``result`` is the worker's reply (``camera_path``, ``frame_count``,
    ``written``, ``skipped``, ...)."""

    @property
    def fraction(self) -> float:
        if self.state == "done":
            return 1.0
        return min(self.step / self.total, 1.0) if self.stage == "frame" and self.total else 0.0

    @property
    def status_text(self) -> str:
        if self.stage == "frame" and self.total:
            return f"MetricGold: frame {self.step}/{self.total} (Esc to cancel; written frames are kept)"
        return f"MetricGold: {self.stage}... (Esc to cancel)"

    def _on_progress(self, progress: Any) -> None:
        if progress.stage == "frame":  # the per-frame stages inside a frame would make the bar jump back
            self.stage, self.step, self.total = progress.stage, progress.step, progress.total

    def _run(self) -> None:
        try:
            client = self._get_client()
            self._client = client
            if self._cancel.is_set():
                raise worker_client.PredictionCancelled("cancelled before the worker started")
            self.stage = "frame"
            self.result = client.predict_sequence(self.image_path, self.out_dir, on_progress=self._on_progress,
                                                  cancel=self._cancel, **self.options)
            self.state = "done"
        except worker_client.PredictionCancelled:
            self.state = "cancelled"
        except BaseException as e:  # reported on the main thread
            if self._cancel.is_set() and isinstance(e, worker_client.ClientClosed):
                self.state = "cancelled"
            else:
                self.error = e
                self.state = "failed"


class SequenceTask:
    """One sequence through the worker and into the scene; :meth:`step` is called until it leaves RUNNING_MODAL."""

    def __init__(self, *, source: str, texture: str, out_dir: str, settings: Settings, options: dict[str, Any],
                 build: dict[str, Any], report: Report,
                 intrinsics: Callable[[int, int], Any] | None = None) -> None:
        self.texture, self.build, self.report, self.settings = texture, build, report, settings
        self.intrinsics = intrinsics  # the user's own intrinsics for the frames' size, instead of the worker's
        self.job = SequenceJob(lambda: jobs.shared_client(settings.python, settings.model, settings.device),
                               source, out_dir, options)
        self.result: sequence_mesh.SequenceMeshResult | None = None

    def step(self, context: Any) -> OperatorResult:
        job = self.job
        if not job.finished:
            if has_ui(context):
                context.workspace.status_text_set(job.status_text)
            return {"RUNNING_MODAL"}
        if has_ui(context):
            context.workspace.status_text_set(None)
        if job.state == "cancelled":
            self.report({"WARNING"}, f"MetricGold: cancelled; the frames written so far are in {job.out_dir}")
            return {"CANCELLED"}
        if job.state == "failed":
            print(f"MetricGold: sequence prediction failed: {job.error!r}")
            self.report({"ERROR"}, f"MetricGold: {job.error}")
            return {"CANCELLED"}
        try:
            camera_path = job.result["camera_path"]
            k = sequence_mesh.read_camera_file(camera_path)
            if self.intrinsics is not None:
                k = self.intrinsics(k.width, k.height)
            depth = sequence_mesh.depth_files_of_camera_file(camera_path)
            self.result = sequence_mesh.build_sequence_mesh(
                context, depth, k, name=sequence_mesh.sequence_name(str(depth)), texture_path=self.texture,
                **self.build)
        except Exception as e:  # the scene is left as it was (build_sequence_mesh cleans up); say why
            self.report({"ERROR"}, f"MetricGold: {e}")
            return {"CANCELLED"}
        demo = "" if self.settings.model else " (built-in DEMO model: expect rough depth)"
        self.report({"INFO"}, f"MetricGold: {self.result.object.name}: {self.result.frame_count} frames from scene "
                              f"frame {self.result.frame_start}, depth in {job.out_dir}{demo}")
        return {"FINISHED"}


class METRICGOLD_OT_sequence_to_depth_mesh(GeometryOptions, bpy.types.Operator):
    """Predict metric depth for every frame of an image sequence or movie with the worker, then build one mesh that
    plays it back with the timeline (Geometry Nodes), textured with the frames"""

    bl_idname = "metricgold.sequence_to_depth_mesh"
    bl_label = "Image Sequence / Movie to Metric Depth Mesh"
    bl_options = {"REGISTER", "UNDO"}

    filepath: StringProperty(  # type: ignore[valid-type]
        name="Frames", description="A movie file, or one image of the sequence (every image in its folder is a "
        "frame, in natural order)", subtype="FILE_PATH", options={"SKIP_SAVE"})
    depth_dir: StringProperty(  # type: ignore[valid-type]
        name="Depth Folder", description="Where the depth files go (a rerun skips frames already there; empty: "
        "Blender's temp folder)", subtype="DIR_PATH", options={"SKIP_SAVE"})
    temporal_strength: FloatProperty(  # type: ignore[valid-type]
        name="Temporal Strength", description="MetricGold warm start: each frame starts from the previous one's "
        "depth noised to this fraction of the schedule (1 = independent frames)", default=1.0, min=0.01, max=1.0)
    smoothing: FloatProperty(  # type: ignore[valid-type]
        name="Smoothing", description="Weight of the new frame in a moving average of log depth (1 = off)",
        default=1.0, min=0.01, max=1.0)
    start_frame: IntProperty(name="Start Frame", description="Scene frame of the first frame", default=1)  # type: ignore[valid-type]
    synchronous: BoolProperty(  # type: ignore[valid-type]
        name="Synchronous", description="Block until done (scripts and background mode)", default=False,
        options={"HIDDEN", "SKIP_SAVE"})

    _task: SequenceTask | None = None
    _timer: Any = None

    def invoke(self, context: Any, event: Any) -> OperatorResult:
        if self.filepath:
            return self.execute(context)
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context: Any) -> OperatorResult:
        s = get_settings(context)
        problem = check_worker_python(s)
        if problem:
            self.report({"ERROR"}, problem)
            return {"CANCELLED"}
        path = bpy.path.abspath(self.filepath)
        if not path or not os.path.exists(path):
            self.report({"ERROR"}, f"MetricGold: frames not found: {path or '(none chosen)'}")
            return {"CANCELLED"}
        source = sequence_source(path)
        try:
            if self.depth_dir:
                out_dir = bpy.path.abspath(self.depth_dir)
                os.makedirs(out_dir, exist_ok=True)
            else:  # Blender's session temp folder, removed when Blender exits
                out_dir = tempfile.mkdtemp(prefix="metricgold-seq-", dir=bpy.app.tempdir or None)
        except OSError as e:
            self.report({"ERROR"}, f"MetricGold: cannot create the depth folder: {e}")
            return {"CANCELLED"}
        options = s.predict_options(0, 0, RESOLUTION_FROM_PREFERENCES)
        options = {k: v for k, v in options.items() if v is not None}
        if self.temporal_strength < 1.0:
            options["denoise_strength"] = self.temporal_strength
        if self.smoothing < 1.0:
            options["smoothing_alpha"] = self.smoothing
        if self.intrinsics_mode == "FOV":  # the worker uses it (depth of focal-aware models, its camera file)
            options.update(self.camera_hint(0))
        # Typed intrinsics are in pixels of the frames: the mesh uses them as typed.
        own: Callable[[int, int], Any] | None = (lambda w, h: self.resolve_intrinsics(w, h, None)[0]) if (
            self.intrinsics_mode == "INTRINSICS") else None
        build = dict(stride=self.stride, max_relative_jump=self.max_relative_jump if self.cut_discontinuities
                     else None, shading=self.shading, start_frame=self.start_frame)
        self._task = SequenceTask(source=source, texture=source, out_dir=out_dir, settings=s, options=options,
                                  build=build, report=self.report,  # type: ignore[arg-type]
                                  intrinsics=own)
        self._task.job.start()
        if self.synchronous or not has_ui(context):
            try:
                while (state := self._task.step(context)) == {"RUNNING_MODAL"}:
                    time.sleep(0.05)
            except KeyboardInterrupt:
                self._task.job.cancel()
                return {"CANCELLED"}
            return state
        wm = context.window_manager
        self._timer = wm.event_timer_add(0.2, window=context.window)
        wm.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context: Any, event: Any) -> OperatorResult:
        assert self._task is not None
        if event.type == "ESC":  # the worker stops within a step; the next timer tick reports it
            self._task.job.cancel()
            return {"RUNNING_MODAL"}
        if event.type == "TIMER":
            state = self._task.step(context)
            if state != {"RUNNING_MODAL"} and self._timer is not None:
                context.window_manager.event_timer_remove(self._timer)
                self._timer = None
            return state
        return {"PASS_THROUGH"}

    def draw(self, context: Any) -> None:
        layout: Any = self.layout
        col = layout.column()
        for prop in ("depth_dir", "temporal_strength", "smoothing", "start_frame", "intrinsics_mode"):
            col.prop(self, prop)
        if self.intrinsics_mode == "FOV":
            col.prop(self, "fov")
        for prop in ("stride", "cut_discontinuities", "max_relative_jump", "shading"):
            col.prop(self, prop)


classes = (METRICGOLD_OT_sequence_to_depth_mesh,)
