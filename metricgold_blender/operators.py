"""Operators: Image -> Metric Depth Mesh / Point Cloud (through the worker, modal) and Depth Map -> Mesh (no worker).

Operators are thin: they validate, call :mod:`.mesh_builder` / :mod:`.jobs`, and ``self.report`` one clear message.
The modal work lives in :class:`DepthTask`, a plain class whose :meth:`DepthTask.step` the modal timer calls; the
``synchronous`` option (scripts, tests, background mode) drives the very same ``step`` in a loop.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tempfile
import time
from collections.abc import Callable
from typing import Any

import bpy
import numpy as np
from bpy.props import BoolProperty, EnumProperty, FloatProperty, FloatVectorProperty, IntProperty, StringProperty

from . import jobs, mesh_builder, timing
from .engine import depth_io, geometry, mesh_size
from .preferences import (
    RESOLUTION_FROM_PREFERENCES,
    OperatorResult,
    Settings,
    check_worker_python,
    get_settings,
)

IMAGE_FILTER = "*.png;*.jpg;*.jpeg;*.tif;*.tiff;*.bmp;*.webp"
DEPTH_FILTER = "*.npy;*.exr;*.png"
#: Formats the worker (Pillow) reads; other images are saved as PNG before they are sent.
WORKER_FORMATS = {"PNG": ".png", "JPEG": ".jpg", "TIFF": ".tif", "BMP": ".bmp", "WEBP": ".webp"}

Report = Callable[[set[str], str], None]


# ---------------------------------------------------------------------------------------------------------------
# Shared options


class GeometryOptions:
    """Options shared by all three operators (Blender collects annotations of mixins)."""

    intrinsics_mode: EnumProperty(  # type: ignore[valid-type]
        name="Camera",
        items=[
            ("AUTO", "From Photo", "The photo's EXIF focal length when it has one, else the model's estimate "
             f"(Depth Pro), else a {geometry.DEFAULT_HORIZONTAL_FOV_DEG:g} degree horizontal field of view"),
            ("FOV", "Field of View", "A horizontal field of view, principal point at the centre"),
            ("INTRINSICS", "Intrinsics", "fx, fy, cx, cy in pixels of the photo (OpenCV convention)"),
        ],
        default="AUTO",
    )
    fov: FloatProperty(  # type: ignore[valid-type]
        name="Horizontal FOV", description="Horizontal field of view of the photo",
        default=math.radians(geometry.DEFAULT_HORIZONTAL_FOV_DEG), min=math.radians(1.0), max=math.radians(179.0),
        subtype="ANGLE")
    fx: FloatProperty(name="fx", description="Focal length in pixels (x)", default=1000.0, min=1e-3)  # type: ignore[valid-type]
    fy: FloatProperty(name="fy", description="Focal length in pixels (y)", default=1000.0, min=1e-3)  # type: ignore[valid-type]
    cx: FloatProperty(name="cx", description="Principal point x in pixels (0 = centre of the first pixel)", default=0.0)  # type: ignore[valid-type]
    cy: FloatProperty(name="cy", description="Principal point y in pixels (0 = centre of the first pixel)", default=0.0)  # type: ignore[valid-type]
    stride: IntProperty(  # type: ignore[valid-type]
        name="Stride", description="Use every n-th pixel in both directions (smaller meshes for large photos)",
        default=1, min=1, max=64)
    cut_discontinuities: BoolProperty(  # type: ignore[valid-type]
        name="Cut at Depth Jumps", description="Leave out faces across depth discontinuities (object outlines)",
        default=True)
    max_relative_jump: FloatProperty(  # type: ignore[valid-type]
        name="Jump Threshold",
        description="Cut a face when its corners' depths differ by more than this fraction of the nearest one",
        default=0.05, min=0.0, max=10.0, subtype="FACTOR")
    shading: EnumProperty(  # type: ignore[valid-type]
        name="Material",
        items=[("EMISSION", "Photo (unlit)", "Shows the photo exactly as it is"),
               ("PRINCIPLED", "Lit Surface", "Principled BSDF with the photo as base colour, lit by the scene")],
        default="EMISSION")
    point_size: FloatProperty(  # type: ignore[valid-type]
        name="Point Size", description="Point radius relative to the pixel's footprint", default=1.0, min=0.01,
        max=100.0)
    location: FloatVectorProperty(  # type: ignore[valid-type]
        name="Location", description="Where the camera goes (metres)", size=3, default=(0.0, 0.0, 0.0),
        subtype="TRANSLATION", options={"HIDDEN", "SKIP_SAVE"})
    limit_vertices: BoolProperty(  # type: ignore[valid-type]
        name="Limit Vertices",
        description=f"Raise the stride so that a large depth gives at most {mesh_size.DEFAULT_MAX_VERTICES:,} "
                    "vertices (or the processing resolution's pixel count, where larger: the depth has no finer "
                    "detail). Off: a vertex at every (stride-th) pixel; a 24-megapixel photo then needs about 6 GB",
        default=True)
    size_note: StringProperty(options={"HIDDEN", "SKIP_SAVE"})  # type: ignore[valid-type]  # the last size estimate

    def plan(self, options: mesh_builder.BuildOptions, depth_shape: tuple[int, ...],
             processing_pixels: int | None = None) -> tuple[mesh_builder.BuildOptions, Any]:
        """``options`` with the stride the vertex limit asks for, and the size estimate (also kept for draw)."""
        options, plan = plan_build(options, depth_shape, limit_vertices=self.limit_vertices,
                                   processing_pixels=processing_pixels)
        self.size_note = plan.describe()
        return options, plan

    def build_options(self, point_cloud: bool) -> mesh_builder.BuildOptions:
        return mesh_builder.BuildOptions(
            point_cloud=point_cloud,
            stride=self.stride,
            max_relative_jump=self.max_relative_jump if self.cut_discontinuities else None,
            shading=self.shading,
            point_size=self.point_size,
            location=tuple(self.location),  # type: ignore[arg-type]
        )

    def camera_hint(self, width: int) -> dict[str, float]:
        """What the user set of the camera, for the worker: a model whose metric depth depends on the focal length
        (Depth Pro) then uses it for the depth too. AUTO sends nothing (the worker reads the photo's EXIF)."""
        if self.intrinsics_mode == "FOV":
            return {"fov_deg": math.degrees(self.fov)}
        if self.intrinsics_mode == "INTRINSICS":
            return {"fov_deg": math.degrees(2.0 * math.atan(width / (2.0 * self.fx)))}
        return {}

    def resolve_intrinsics(self, width: int, height: int, photo_path: str | None) -> tuple[Any, str]:
        if self.intrinsics_mode == "INTRINSICS":
            return geometry.resolve_intrinsics(width, height, intrinsics=(self.fx, self.fy, self.cx, self.cy))
        if self.intrinsics_mode == "FOV":
            return geometry.resolve_intrinsics(width, height, fov_deg=math.degrees(self.fov))
        focal = geometry.focal_35mm_from_exif(photo_path) if photo_path else None
        return geometry.resolve_intrinsics(width, height, focal_35mm=focal)

    def draw_geometry(self, layout: Any, point_cloud: bool) -> None:
        layout.prop(self, "intrinsics_mode")
        if self.intrinsics_mode == "FOV":
            layout.prop(self, "fov")
        elif self.intrinsics_mode == "INTRINSICS":
            col = layout.column(align=True)
            for name in ("fx", "fy", "cx", "cy"):
                col.prop(self, name)
        layout.prop(self, "stride")
        layout.prop(self, "limit_vertices")
        if self.size_note:
            layout.label(text=self.size_note, icon="INFO")
        if point_cloud:
            layout.prop(self, "point_size")
        else:
            layout.prop(self, "cut_discontinuities")
            if self.cut_discontinuities:
                layout.prop(self, "max_relative_jump")
            layout.prop(self, "shading")


#: Extensions taken off a file or image name to name the objects.
_KNOWN_EXTENSIONS = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".exr", ".hdr", ".tga", ".npy"}


def object_name(label: str) -> str:
    """Objects' name for an image datablock name or a file path: its last part without an image extension or
    Blender's ``.001`` duplicate suffix ("IMG_2041.JPG.001" -> "MetricGold IMG_2041"); "image" when nothing is left."""
    base = re.split(r"[\\/]", label.strip())[-1]
    base = re.sub(r"\.\d{3}$", "", base)
    stem, ext = os.path.splitext(base)
    if ext.lower() in _KNOWN_EXTENSIONS:
        base = stem
    base = base.strip()
    return f"MetricGold {base or 'image'}"


def plan_build(options: mesh_builder.BuildOptions, depth_shape: tuple[int, ...], *, limit_vertices: bool = True,
               processing_pixels: int | None = None) -> tuple[mesh_builder.BuildOptions, Any]:
    """The build options with the stride raised to the vertex budget (see ``mesh_size``), and the plan."""
    hd, wd = int(depth_shape[0]), int(depth_shape[1])
    limit = mesh_size.vertex_limit(processing_pixels) if limit_vertices else None
    plan = mesh_size.plan_mesh(wd, hd, stride=options.stride, limit=limit, point_cloud=options.point_cloud)
    return dataclasses.replace(options, stride=plan.stride), plan


def processing_pixels(settings: dict[str, Any], depth_shape: tuple[int, ...]) -> int | None:
    """Pixels the model worked at, from the worker's settings (None when it does not say)."""
    resolution = settings.get("processing_resolution")
    if not isinstance(resolution, int) or isinstance(resolution, bool) or resolution < 0:
        return None
    return mesh_size.processing_pixel_count(int(depth_shape[1]), int(depth_shape[0]), resolution)


def depth_folder() -> str:
    """Where predicted depth files are kept: ``//metricgold`` beside a saved .blend, else the extension's user
    folder (kept across sessions and updates). Never a temporary folder: the report names the file."""
    if bpy.data.filepath:
        return os.path.join(os.path.dirname(bpy.path.abspath(bpy.data.filepath)), "metricgold")
    return os.path.join(user_folder(), "depth")


def user_folder() -> str:
    """The extension's user folder; outside an installed extension (a source checkout), Blender's user data
    folder ``datafiles/metricgold``."""
    try:
        return str(bpy.utils.extension_path_user(__package__, create=True))
    except ValueError:  # not an extension
        return str(bpy.utils.user_resource("DATAFILES", path="metricgold", create=True))


def _existing_file(path: str, what: str) -> str:
    path = bpy.path.abspath(path) if path else ""
    if not path:
        raise mesh_builder.BuildError(f"no {what} given")
    if not os.path.isfile(path):
        raise mesh_builder.BuildError(f"{what} not found: {path}")
    return path


def image_file_for_worker(image: Any, tmp_dir: str) -> str:
    """A file the worker can read holding ``image``: its own file when saved and unchanged, else a PNG copy."""
    path = bpy.path.abspath(image.filepath) if image.filepath else ""
    if (image.source == "FILE" and image.packed_file is None and not image.is_dirty and os.path.isfile(path)
            and image.file_format in WORKER_FORMATS):
        return path
    # named after the image (the worker names the depth after the file): "photo.png" -> photo_depth.npy
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", object_name(image.name).removeprefix("MetricGold ")) or "image"
    out = os.path.join(tmp_dir, f"{safe}.png")
    copy = image.copy()
    try:
        copy.file_format = "PNG"
        copy.save(filepath=out)
    except RuntimeError as e:
        raise mesh_builder.BuildError(f"cannot hand image '{image.name}' to the worker: {e}") from e
    finally:
        bpy.data.images.remove(copy)
    return out


# ---------------------------------------------------------------------------------------------------------------
# The modal task


def has_ui(context: Any) -> bool:
    """Whether there is a window to show progress in (not in background mode or Blender-as-a-module)."""
    return not bpy.app.background and context.window is not None


class DepthTask:
    """One image through the worker and into the scene; :meth:`step` is called until it leaves RUNNING_MODAL."""

    def __init__(
        self,
        *,
        image_name: str,
        photo_path: str,
        settings: Settings,
        predict_options: dict[str, Any],
        build_options: mesh_builder.BuildOptions,
        resolve_intrinsics: Callable[[int, int, str | None], tuple[Any, str]],
        name: str,
        created: mesh_builder.Created,
        report: Report,
        depth_dir: str = "",
        use_worker_camera: bool = False,
        limit_vertices: bool = True,
    ) -> None:
        self.use_worker_camera = use_worker_camera  # the worker read the photo's EXIF (Blender's Python cannot)
        self.image_name = image_name
        self.photo_path = photo_path
        self.settings = settings
        self.build_options = build_options
        self.resolve_intrinsics = resolve_intrinsics
        self.name = name
        self.created = created
        self.report = report
        self.limit_vertices = limit_vertices
        self.size_note = ""
        self.out_dir = depth_dir or depth_folder()
        os.makedirs(self.out_dir, exist_ok=True)
        # The worker's copy of a packed or unsaved image: removed when the task ends (the depth is kept).
        self._scratch: tempfile.TemporaryDirectory[str] | None = tempfile.TemporaryDirectory(
            prefix="metricgold-", dir=bpy.app.tempdir or None)
        try:
            worker_image = image_file_for_worker(bpy.data.images[image_name], self._scratch.name)
        except BaseException:
            self._remove_scratch()
            raise
        self.job = jobs.PredictionJob(
            lambda: jobs.shared_client(settings.python, settings.model, settings.device),
            worker_image, self.out_dir, predict_options,
        )
        self.result: mesh_builder.BuildResult | None = None
        self._progress_shown = False
        self._area: Any = None  # the editor whose header shows progress (modal callbacks may get another)

    def start(self, context: Any) -> None:
        self.job.start()
        self._show_progress(context)

    # progress UI (no-ops without a window, as in background mode)
    def _show_progress(self, context: Any) -> None:
        if not has_ui(context):
            return
        wm = context.window_manager
        if not self._progress_shown:
            wm.progress_begin(0, 100)
            self._progress_shown = True
            self._area = context.area
        wm.progress_update(int(100 * self.job.fraction))
        if context.workspace is not None:
            context.workspace.status_text_set(self.job.status_text)
        if self._area is not None:
            self._area.header_text_set(self.job.status_text)

    def _clear_progress(self, context: Any) -> None:
        if not self._progress_shown:
            return
        self._progress_shown = False
        context.window_manager.progress_end()
        if context.workspace is not None:
            context.workspace.status_text_set(None)
        if self._area is not None:
            self._area.header_text_set(None)
            self._area = None

    def _remove_scratch(self) -> None:
        if self._scratch is not None:
            self._scratch.cleanup()
            self._scratch = None

    def _say(self, context: Any, level: set[str], text: str) -> None:
        """Report now; without a window (scripts) also print at once: reports are printed when the operator ends."""
        self.report(level, text)
        if not has_ui(context):
            print(text, flush=True)

    def cancel(self, context: Any) -> OperatorResult:
        """Esc: cancel the worker's request and leave the scene as it was."""
        self.job.cancel()
        self._remove_scratch()
        self._clear_progress(context)
        self.created.remove_all()
        self.report({"WARNING"}, "MetricGold: cancelled")
        return {"CANCELLED"}

    def step(self, context: Any) -> OperatorResult:
        job = self.job
        if not job.finished:
            self._show_progress(context)
            return {"RUNNING_MODAL"}
        self._clear_progress(context)
        self._remove_scratch()
        if job.state == "cancelled":
            self.created.remove_all()
            self.report({"WARNING"}, "MetricGold: cancelled")
            return {"CANCELLED"}
        if job.state == "failed":
            self.created.remove_all()
            error = job.error
            print(f"MetricGold: prediction failed: {error!r}")
            self.report({"ERROR"}, f"MetricGold: {error}")
            return {"CANCELLED"}
        return self._build(context)

    def _build(self, context: Any) -> OperatorResult:
        result = self.job.result
        image = bpy.data.images.get(self.image_name)
        if image is None:
            self.created.remove_all()
            self.report({"ERROR"}, f"MetricGold: the image '{self.image_name}' was removed during the prediction")
            return {"CANCELLED"}
        try:
            width, height = mesh_builder.image_size(image)
            hd, wd = result.depth.shape
            if not geometry.same_aspect(width, height, result.depth.shape):
                # The worker applies EXIF orientation, Blender's image loader does not.
                raise mesh_builder.BuildError(
                    f"the depth is {wd} x {hd} but Blender shows '{image.name}' as {width} x {height}: the photo "
                    "probably has an EXIF rotation Blender ignores; save it upright (rotated pixels) and try again")
            camera = result.get_camera() if self.use_worker_camera else None
            if camera is not None:  # the worker's camera describes the depth's pixels; the photo may be larger
                k = camera.intrinsics
                k = k if (k.width, k.height) == (width, height) else k.scaled(width, height)
                source = f"{camera.description} [{camera.focal_source}]"
            else:
                k, source = self.resolve_intrinsics(width, height, self.photo_path)
            options, plan = plan_build(self.build_options, result.depth.shape, limit_vertices=self.limit_vertices,
                                       processing_pixels=processing_pixels(result.settings, result.depth.shape))
            self.size_note = plan.describe()
            if self.size_note:  # before building: a lifted limit may take long
                self._say(context, {"WARNING"} if plan.limit is None else {"INFO"}, f"MetricGold: {self.size_note}")
            self.result = mesh_builder.build_depth_scene(
                context, result.depth, k, name=self.name, image=image, uncertainty=result.uncertainty,
                options=options, created=self.created,
            )
        except Exception as e:  # leave the scene as it was; say why, don't raise into the UI
            self.created.remove_all()
            self.report({"ERROR"}, f"MetricGold: {e}")
            return {"CANCELLED"}
        try:  # remembered for the expected time of the next run
            timing.remember_run(timing_file(), self.settings.model, self.settings.device, result.settings,
                                result.seconds)
        except OSError as e:
            print(f"MetricGold: could not remember the run's time: {e}")
        what = "points" if self.build_options.point_cloud else "vertices"
        demo = "" if self.settings.model else " (built-in DEMO model: expect rough depth)"
        if self.result.camera is not None:  # kept on the camera, for scripts and for the user to check later
            self.result.camera["metricgold_camera"] = source
        model = result.model or {}
        licence = f", {model.get('kind')} model, licence {model.get('licence') or 'unknown'}" if model else ""
        stride = f" (stride {options.stride})" if options.stride > 1 else ""
        self.report({"INFO"}, f"MetricGold: {self.name}: {self.result.vertex_count} {what}{stride}, camera from "
                              f"{source}, depth {result.depth_path}{licence}{demo}")
        return {"FINISHED"}


def timing_file() -> str:
    """Where the add-on remembers prediction times (Blender's user config folder; METRICGOLD_TIMING_FILE overrides,
    as the tests do)."""
    return os.environ.get("METRICGOLD_TIMING_FILE") or os.path.join(
        bpy.utils.user_resource("CONFIG", path="metricgold"), "timing.json")


class _ImageToDepth(GeometryOptions):
    """Shared body of the two worker operators (``point_cloud`` tells them apart)."""

    point_cloud = False

    filepath: StringProperty(  # type: ignore[valid-type]
        name="Image", description="Photo to estimate depth for (empty: the Image Editor's image)", subtype="FILE_PATH",
        options={"SKIP_SAVE"})
    filter_glob: StringProperty(default=IMAGE_FILTER, options={"HIDDEN"})  # type: ignore[valid-type]
    image_name: StringProperty(  # type: ignore[valid-type]
        name="Blender Image", description="An image already in the file (set from the Image Editor)",
        options={"HIDDEN", "SKIP_SAVE"})
    steps: IntProperty(name="Steps", description="Denoising steps (0: preferences)", default=0, min=0)  # type: ignore[valid-type]
    ensemble: IntProperty(name="Ensemble", description="Ensemble size (0: preferences)", default=0, min=0)  # type: ignore[valid-type]
    processing_resolution: IntProperty(  # type: ignore[valid-type]
        name="Processing Resolution", description="-2: preferences, -1: model default, 0: the image's own",
        default=RESOLUTION_FROM_PREFERENCES, min=RESOLUTION_FROM_PREFERENCES)
    fast_mode: BoolProperty(  # type: ignore[valid-type]
        name="Fast Mode", default=True,
        description="Trailing spacing and 1-4 steps where steps and ensemble are left to the model (the model's own "
                    "defaults when they already are fast)")
    worker_python: StringProperty(  # type: ignore[valid-type]
        name="Worker Python", description="Override the preferences' worker Python", subtype="FILE_PATH",
        options={"HIDDEN", "SKIP_SAVE"})
    model_dir: StringProperty(  # type: ignore[valid-type]
        name="Model", description="Override the preferences' model (a folder or a Hugging Face id)", subtype="DIR_PATH",
        options={"HIDDEN", "SKIP_SAVE"})
    device: StringProperty(  # type: ignore[valid-type]
        name="Device", description="Override the preferences' device (auto, cpu, cuda, cuda:N, mps)",
        options={"HIDDEN", "SKIP_SAVE"})
    depth_dir: StringProperty(  # type: ignore[valid-type]
        name="Depth Folder", description="Where the worker writes the depth files (empty: Blender's temp folder)",
        subtype="DIR_PATH", options={"HIDDEN", "SKIP_SAVE"})
    synchronous: BoolProperty(  # type: ignore[valid-type]
        name="Synchronous", description="Block until done (scripts and background mode)", default=False,
        options={"HIDDEN", "SKIP_SAVE"})

    _task: DepthTask | None = None
    _timer: Any = None

    def invoke(self, context: Any, event: Any) -> OperatorResult:
        if not self.filepath and not self.image_name:
            space = context.space_data
            if space is not None and space.type == "IMAGE_EDITOR" and space.image is not None:
                self.image_name = space.image.name
            else:
                context.window_manager.fileselect_add(self)  # type: ignore[arg-type]
                return {"RUNNING_MODAL"}
        return self.execute(context)

    def _settings(self, context: Any) -> Settings:
        s = get_settings(context)
        return dataclasses.replace(s, python_executable=self.worker_python or s.python_executable,
                                   model_dir=self.model_dir or s.model_dir, device=self.device or s.device)

    def execute(self, context: Any) -> OperatorResult:
        settings = self._settings(context)
        problem = check_worker_python(settings)
        if problem:
            self.report({"ERROR"}, problem)  # type: ignore[attr-defined]
            return {"CANCELLED"}
        created = mesh_builder.Created()
        try:
            if self.filepath:
                photo_path = _existing_file(self.filepath, "image")
                image = mesh_builder.load_image(photo_path, created)
            else:
                image = bpy.data.images.get(self.image_name) if self.image_name else None
                if image is None:
                    raise mesh_builder.BuildError(
                        f"no image: '{self.image_name}' is not in this file" if self.image_name
                        else "no image: open one in the Image Editor or choose a file")
                mesh_builder.image_size(image)
                photo_path = bpy.path.abspath(image.filepath) if image.filepath else ""
            options = self._predict_options(settings)
            options.update(self.camera_hint(mesh_builder.image_size(image)[0]))
            self._task = DepthTask(
                image_name=image.name, photo_path=photo_path, settings=settings, predict_options=options,
                build_options=self.build_options(self.point_cloud), resolve_intrinsics=self.resolve_intrinsics,
                name=object_name(image.name), created=created, report=self.report,  # type: ignore[attr-defined]
                depth_dir=bpy.path.abspath(self.depth_dir) if self.depth_dir else "",
                use_worker_camera=self.intrinsics_mode == "AUTO",
                limit_vertices=self.limit_vertices,
            )
        except (mesh_builder.BuildError, OSError) as e:
            created.remove_all()
            self.report({"ERROR"}, f"MetricGold: {e}")  # type: ignore[attr-defined]
            return {"CANCELLED"}
        self._task.start(context)
        if self.synchronous or not has_ui(context):
            return self._run_blocking(context)
        wm = context.window_manager
        self._timer = wm.event_timer_add(0.1, window=context.window)
        wm.modal_handler_add(self)  # type: ignore[arg-type]
        return {"RUNNING_MODAL"}

    def _predict_options(self, settings: Settings) -> dict[str, Any]:
        options = settings.predict_options(self.steps, self.ensemble, self.processing_resolution)
        return timing.apply_fast_mode(options, timing.read_model_defaults(settings.model)) if self.fast_mode \
            else options

    def _run_blocking(self, context: Any) -> OperatorResult:
        assert self._task is not None
        state: OperatorResult
        try:
            while (state := self._task.step(context)) == {"RUNNING_MODAL"}:
                time.sleep(0.05)
        except KeyboardInterrupt:
            return self._task.cancel(context)
        self.size_note = self._task.size_note
        return state

    def modal(self, context: Any, event: Any) -> OperatorResult:
        assert self._task is not None
        if event.type == "ESC":
            self._end(context)
            return self._task.cancel(context)
        if event.type == "TIMER":
            state = self._task.step(context)
            if state != {"RUNNING_MODAL"}:
                self._end(context)
                self.size_note = self._task.size_note
            return state
        return {"PASS_THROUGH"}  # the UI stays usable while the worker runs

    def _end(self, context: Any) -> None:
        if self._timer is not None:
            context.window_manager.event_timer_remove(self._timer)
            self._timer = None

    def draw(self, context: Any) -> None:
        layout: Any = self.layout  # type: ignore[attr-defined]
        col = layout.column()
        row = col.row(align=True)
        row.prop(self, "steps")
        row.prop(self, "ensemble")
        col.prop(self, "processing_resolution")
        col.prop(self, "fast_mode")
        settings = self._settings(context)
        col.label(text=timing.expected_text(timing_file(), settings.model, settings.device,
                                            self._predict_options(settings),
                                            timing.read_model_defaults(settings.model)))
        self.draw_geometry(col, self.point_cloud)


class METRICGOLD_OT_image_to_depth_mesh(_ImageToDepth, bpy.types.Operator):
    """Estimate metric depth of a photo and build a mesh in metres with a camera that sees it as the photo did"""

    bl_idname = "metricgold.image_to_depth_mesh"
    bl_label = "Metric Depth Mesh"
    bl_options = {"REGISTER", "UNDO"}


class METRICGOLD_OT_image_to_point_cloud(_ImageToDepth, bpy.types.Operator):
    """Estimate metric depth of a photo and build a coloured point cloud in metres, with its camera"""

    bl_idname = "metricgold.image_to_point_cloud"
    bl_label = "Metric Depth Point Cloud"
    bl_options = {"REGISTER", "UNDO"}

    point_cloud = True

    stride: IntProperty(  # type: ignore[valid-type]
        name="Stride", description="Keep every n-th pixel in both directions", default=2, min=1, max=64)


class METRICGOLD_OT_depth_map_to_mesh(GeometryOptions, bpy.types.Operator):
    """Build a mesh in metres, with its camera, from an existing depth file (.npy, .exr, 16-bit PNG in mm)"""

    bl_idname = "metricgold.depth_map_to_mesh"
    bl_label = "Depth Map to Mesh"
    bl_options = {"REGISTER", "UNDO"}

    filepath: StringProperty(  # type: ignore[valid-type]
        name="Depth File", description="Depth in metres (.npy, .exr) or 16-bit PNG in millimetres",
        subtype="FILE_PATH", options={"SKIP_SAVE"})
    filter_glob: StringProperty(default=DEPTH_FILTER, options={"HIDDEN"})  # type: ignore[valid-type]
    image_path: StringProperty(  # type: ignore[valid-type]
        name="Photo", description="Optional photo for the texture and camera (same aspect as the depth)",
        subtype="FILE_PATH", options={"SKIP_SAVE"})
    uncertainty_path: StringProperty(  # type: ignore[valid-type]
        name="Uncertainty", description="Optional uncertainty map (metres, .npy/.exr)", subtype="FILE_PATH",
        options={"SKIP_SAVE"})
    point_cloud: BoolProperty(name="Point Cloud", description="Points instead of faces", default=False)  # type: ignore[valid-type]

    def invoke(self, context: Any, event: Any) -> OperatorResult:
        if self.filepath:
            return self.execute(context)
        context.window_manager.fileselect_add(self)  # type: ignore[arg-type]
        return {"RUNNING_MODAL"}

    def execute(self, context: Any) -> OperatorResult:
        created = mesh_builder.Created()
        try:
            depth_path = _existing_file(self.filepath, "depth file")
            depth = mesh_builder.read_depth_file(depth_path)
            uncertainty = None
            if self.uncertainty_path:
                uncertainty = mesh_builder.read_depth_file(_existing_file(self.uncertainty_path, "uncertainty file"))
                uncertainty = np.nan_to_num(uncertainty, nan=0.0)
            image = photo_path = None
            if self.image_path:
                photo_path = _existing_file(self.image_path, "photo")
                image = mesh_builder.load_image(photo_path, created)
                width, height = mesh_builder.image_size(image)
                hd, wd = depth.shape
                if not geometry.same_aspect(width, height, depth.shape):
                    raise mesh_builder.BuildError(
                        f"{photo_path} is {width} x {height} but the depth {depth_path} is {wd} x {hd}: "
                        "different aspect ratios")
            else:
                height, width = depth.shape
            k, source = self.resolve_intrinsics(width, height, photo_path)
            options, plan = self.plan(self.build_options(self.point_cloud), depth.shape)
            if self.size_note:  # before building: a lifted limit may take long
                self.report({"WARNING"} if plan.limit is None else {"INFO"}, f"MetricGold: {self.size_note}")
                if not has_ui(context):
                    print(f"MetricGold: {self.size_note}", flush=True)
            result = mesh_builder.build_depth_scene(
                context, depth, k, name=object_name(image.name if image is not None else depth_path),
                image=image, uncertainty=uncertainty, options=options, created=created,
            )
        except (mesh_builder.BuildError, depth_io.DepthFileError, ValueError) as e:
            created.remove_all()
            self.report({"ERROR"}, f"MetricGold: {e}")
            return {"CANCELLED"}
        what = "points" if self.point_cloud else "vertices"
        if result.camera is not None:
            result.camera["metricgold_camera"] = source
        stride = f" (stride {options.stride})" if options.stride > 1 else ""
        self.report({"INFO"}, f"MetricGold: {result.object.name}: {result.vertex_count} {what}{stride}, camera from "
                              f"{source}")
        return {"FINISHED"}

    def draw(self, context: Any) -> None:
        layout: Any = self.layout
        col = layout.column()
        col.prop(self, "image_path")
        col.prop(self, "uncertainty_path")
        col.prop(self, "point_cloud")
        self.draw_geometry(col, self.point_cloud)


classes = (METRICGOLD_OT_image_to_depth_mesh, METRICGOLD_OT_image_to_point_cloud, METRICGOLD_OT_depth_map_to_mesh)
