"""The add-on in real Blender (bpy 5.0.1), installed from the built extension zip exactly as a user installs it.

Depth Map -> Mesh against analytic geometry (every vertex within 1e-4 m, every vertex projecting onto its pixel
centre through the created camera), the worker path end to end with the tiny checkpoint, and the error paths
(missing image, missing worker Python, worker killed mid-run, cancel): the scene must be left as it was.
"""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")
from bpy_extras.object_utils import world_to_camera_view  # noqa: E402
from mathutils import Vector  # noqa: E402
from PIL import Image  # noqa: E402

from metricgold_engine.core import depth_io  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]


# ---- fixtures ---------------------------------------------------------------------------------------------------


@pytest.fixture
def addon(installed_addon):
    """The extension, installed from the built zip into a temporary repository (conftest.installed_addon)."""
    return installed_addon


@pytest.fixture
def scene(addon):
    bpy.ops.wm.read_homefile(use_empty=True)  # keeps preferences (the enabled extension), empties the scene
    return bpy.context.scene


def mod(addon: str, name: str):
    return sys.modules[f"{addon}.{name}"]


def snapshot() -> dict[str, set[str]]:
    kinds = ("objects", "meshes", "materials", "images", "cameras", "collections", "node_groups")
    snap = {k: {d.name for d in getattr(bpy.data, k)} for k in kinds}
    snap["scene_camera"] = {bpy.context.scene.camera.name if bpy.context.scene.camera else ""}
    snap["resolution"] = {f"{bpy.context.scene.render.resolution_x}x{bpy.context.scene.render.resolution_y}"}
    return snap


def vertex_positions(obj) -> np.ndarray:
    co = np.empty(len(obj.data.vertices) * 3, dtype=np.float32)
    obj.data.vertices.foreach_get("co", co)
    co = co.reshape(-1, 3).astype(np.float64)
    m = np.array(obj.matrix_world, dtype=np.float64)
    return co @ m[:3, :3].T + m[:3, 3]


def analytic_world(depth: np.ndarray, fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    """Independent reference: pixel (u, v) at planar depth d, for a camera at the origin looking along world +Y
    with +Z up: x = (u - cx) / fx * d to the right, y = d ahead, z = -(v - cy) / fy * d up."""
    h, w = depth.shape
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    d = depth.astype(np.float64)
    return np.stack([(u - cx) / fx * d, d, -(v - cy) / fy * d], axis=-1).reshape(-1, 3)


def check_projects_to_pixel_centres(scene, obj, camera, width: int, height: int, expected_depth: np.ndarray):
    world = vertex_positions(obj)
    v, u = np.divmod(np.arange(len(world)), width)
    for i, p in enumerate(world):
        ndc = world_to_camera_view(scene, camera, Vector(p))
        assert ndc.x == pytest.approx((u[i] + 0.5) / width, abs=1e-6)
        assert ndc.y == pytest.approx(1.0 - (v[i] + 0.5) / height, abs=1e-6)
        assert ndc.z == pytest.approx(expected_depth[i], abs=1e-4)


# ---- Depth Map -> Mesh: analytic geometry -------------------------------------------------------------------------

W, H = 12, 8
FX, FY, CX, CY = 10.0, 11.0, 5.2, 3.9  # off-centre principal point and non-square pixels: the hard case


def _run_depth_map(path, **kw):
    return bpy.ops.metricgold.depth_map_to_mesh(
        filepath=str(path), intrinsics_mode="INTRINSICS", fx=FX, fy=FY, cx=CX, cy=CY, **kw)


def test_fronto_parallel_plane(scene, tmp_path):
    depth = np.full((H, W), 2.0, np.float32)
    depth_io.write_depth_npy(tmp_path / "plane.npy", depth)
    assert _run_depth_map(tmp_path / "plane.npy") == {"FINISHED"}
    obj = bpy.data.objects["MetricGold plane"]
    camera = bpy.data.objects["MetricGold plane camera"]
    assert scene.camera == camera
    assert (scene.render.resolution_x, scene.render.resolution_y) == (W, H)
    assert len(obj.data.vertices) == W * H and len(obj.data.polygons) == (W - 1) * (H - 1)
    assert not obj.data.validate()  # our own edges and corners: nothing for Blender to fix
    np.testing.assert_allclose(vertex_positions(obj), analytic_world(depth, FX, FY, CX, CY), atol=1e-4)
    check_projects_to_pixel_centres(scene, obj, camera, W, H, depth.reshape(-1))
    # The stored depth attribute is the depth in metres.
    stored = np.empty(W * H, np.float32)
    obj.data.attributes["depth"].data.foreach_get("value", stored)
    np.testing.assert_allclose(stored, 2.0)
    assert obj.users_collection[0].name == "MetricGold plane"


def test_tilted_plane_exr(scene, tmp_path):
    # Plane n . X = c in OpenCV camera space (y down, z forward); per-pixel depth t = c / (n . ray), ray_z = 1.
    n = np.array([0.3, -0.5, 1.0])
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    rays = np.stack([(u - CX) / FX, (v - CY) / FY, np.ones_like(u)], axis=-1)
    depth = (3.0 / (rays @ n)).astype(np.float32)
    assert (depth > 0).all()
    depth_io.write_depth_exr(tmp_path / "tilt.exr", depth)
    assert _run_depth_map(tmp_path / "tilt.exr", cut_discontinuities=False) == {"FINISHED"}
    obj = bpy.data.objects["MetricGold tilt"]
    world = vertex_positions(obj)
    np.testing.assert_allclose(world, analytic_world(depth, FX, FY, CX, CY), atol=1e-4)
    # and the points are on the plane: world (x, y, z) = OpenCV (x, z, -y)
    np.testing.assert_allclose(world[:, 0] * n[0] - world[:, 2] * n[1] + world[:, 1] * n[2], 3.0, atol=1e-4)
    check_projects_to_pixel_centres(scene, obj, bpy.data.objects["MetricGold tilt camera"], W, H, depth.reshape(-1))


def test_step_png16_cut_and_unit_scale(scene, tmp_path):
    depth = np.full((H, W), 1.0, np.float32)
    depth[:, 6:] = 2.5  # a step between columns 5 and 6; exact in millimetres
    depth_io.write_depth_png16(tmp_path / "step.png", depth)
    scene.unit_settings.scale_length = 0.01  # 1 Blender unit = 1 cm
    assert _run_depth_map(tmp_path / "step.png", max_relative_jump=0.2) == {"FINISHED"}
    obj = bpy.data.objects["MetricGold step"]
    world_bu = vertex_positions(obj)
    np.testing.assert_allclose(world_bu * 0.01, analytic_world(depth, FX, FY, CX, CY), atol=1e-4)
    assert len(obj.data.polygons) == (W - 1) * (H - 1) - (H - 1)  # one column of faces cut at the step
    # all grid edges but the H horizontal ones across the step, (r, 5)-(r, 6): no kept face uses them
    assert len(obj.data.edges) == (W - 1) * H + W * (H - 1) - H
    assert not obj.data.validate()
    check_projects_to_pixel_centres(scene, obj, scene.camera, W, H, depth.reshape(-1) / 0.01)


def test_photo_uvs_material_and_point_cloud(addon, scene, tmp_path):
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[..., 0] = np.arange(W)[None, :] * 20
    rgb[..., 1] = np.arange(H)[:, None] * 30
    Image.fromarray(rgb).save(tmp_path / "photo.png")
    depth_io.write_depth_npy(tmp_path / "d.npy", np.full((H, W), 3.0))
    assert bpy.ops.metricgold.depth_map_to_mesh(
        filepath=str(tmp_path / "d.npy"), image_path=str(tmp_path / "photo.png"), intrinsics_mode="FOV",
        fov=math.radians(60.0)) == {"FINISHED"}
    obj = bpy.data.objects["MetricGold photo"]
    # UVs: each loop's UV is the pixel centre of its vertex.
    uv = np.empty(len(obj.data.loops) * 2, np.float32)
    obj.data.uv_layers["UVMap"].uv.foreach_get("vector", uv)
    vidx = np.empty(len(obj.data.loops), np.int32)
    obj.data.loops.foreach_get("vertex_index", vidx)
    v, u = np.divmod(vidx, W)
    np.testing.assert_allclose(uv.reshape(-1, 2), np.stack([(u + 0.5) / W, 1 - (v + 0.5) / H], -1), atol=1e-6)
    mat = obj.data.materials[0]
    textures = [n for n in mat.node_tree.nodes if n.type == "TEX_IMAGE"]
    assert textures and textures[0].image.filepath == str(tmp_path / "photo.png")
    cam = bpy.data.objects["MetricGold photo camera"].data
    assert cam.lens / cam.sensor_width == pytest.approx((W / 2 / math.tan(math.radians(30))) / W)

    # Point cloud, stride 2: ceil(8/2) * ceil(12/2) = 24 points with the photo's colours.
    assert bpy.ops.metricgold.depth_map_to_mesh(
        filepath=str(tmp_path / "d.npy"), image_path=str(tmp_path / "photo.png"), point_cloud=True,
        stride=2) == {"FINISHED"}
    pc = bpy.data.objects["MetricGold photo.001"]
    assert len(pc.data.vertices) == 24 and len(pc.data.polygons) == 0
    col = np.empty(24 * 4, np.float32)
    pc.data.color_attributes["Color"].data.foreach_get("color_srgb", col)
    col = col.reshape(4, 6, 4)  # rows 0, 2, 4, 6 x columns 0, 2, ..., 10
    np.testing.assert_allclose(col[..., :3] * 255, rgb[::2, ::2].astype(np.float64), atol=0.6)
    modifier = pc.modifiers[0]
    assert modifier.type == "NODES" and modifier.node_group.name == "MetricGold Points"
    ident = mod(addon, "mesh_builder").material_input_identifier(modifier.node_group)
    assert modifier[ident] == pc.data.materials[0]  # the points render with the photo's colours
    # what renders is a point cloud (Mesh to Points), one point per vertex
    point_clouds = [inst.object.data for inst in bpy.context.evaluated_depsgraph_get().object_instances
                    if inst.object.type == "POINTCLOUD" and inst.object.original == pc]
    assert len(point_clouds) == 1 and len(point_clouds[0].points) == 24
    assert "Color" in point_clouds[0].attributes


def test_exif_focal_length_sets_camera(scene, tmp_path):
    exif = Image.Exif()
    exif[0x8769] = {0xA405: 26}  # FocalLengthIn35mmFilm
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(tmp_path / "phone.jpg", exif=exif)
    depth_io.write_depth_npy(tmp_path / "phone.npy", np.full((H, W), 2.0))
    assert bpy.ops.metricgold.depth_map_to_mesh(
        filepath=str(tmp_path / "phone.npy"), image_path=str(tmp_path / "phone.jpg")) == {"FINISHED"}
    cam = bpy.data.objects["MetricGold phone camera"].data
    fx = 26.0 * math.hypot(W, H) / math.hypot(36.0, 24.0)  # 35 mm equivalent: the diagonals match
    assert cam.lens / cam.sensor_width == pytest.approx(fx / W)


def test_blender_fallback_reader_matches_depth_io(addon, tmp_path, monkeypatch):
    mb = mod(addon, "mesh_builder")
    depth = np.random.default_rng(0).uniform(0.5, 60.0, size=(5, 7)).astype(np.float32)
    depth[1, 1] = 0.0
    depth_io.write_depth_png16(tmp_path / "d.png", depth)
    depth_io.write_depth_exr(tmp_path / "d.exr", depth)
    for name in ("d.png", "d.exr"):
        np.testing.assert_allclose(
            mb._read_depth_with_blender(str(tmp_path / name)), depth_io.read_depth(tmp_path / name), atol=1e-6)
    images_before = len(bpy.data.images)
    Image.fromarray(np.zeros((3, 3, 3), np.uint8)).save(tmp_path / "rgb8.png")
    with pytest.raises(mod(addon, "engine").depth_io.DepthFileError, match="8-bit PNG"):
        mb._read_depth_with_blender(str(tmp_path / "rgb8.png"))
    assert len(bpy.data.images) == images_before


def test_depth_map_errors_leave_scene_unchanged(scene, tmp_path):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "square.png")
    depth_io.write_depth_npy(tmp_path / "wide.npy", np.ones((4, 8)))
    np.save(tmp_path / "nan.npy", np.full((4, 4), np.nan, np.float32))
    before = snapshot()
    cases = [
        (dict(filepath=str(tmp_path / "none.npy")), r"depth file not found: .*none\.npy"),
        (dict(filepath=str(tmp_path / "nan.npy")), "no valid pixel"),
        (dict(filepath=str(tmp_path / "wide.npy"), image_path=str(tmp_path / "square.png")),
         "different aspect ratios"),
        (dict(filepath=str(tmp_path / "wide.npy"), image_path=str(tmp_path / "missing.png")),
         r"photo not found: .*missing\.png"),
    ]
    for kwargs, message in cases:
        with pytest.raises(RuntimeError, match=message):
            bpy.ops.metricgold.depth_map_to_mesh(**kwargs)
        assert snapshot() == before  # the photo loaded for the aspect check is gone again


def test_failure_midway_removes_everything(addon, scene, monkeypatch):
    mb = mod(addon, "mesh_builder")
    k = mod(addon, "engine").geometry.Intrinsics.from_fov(4, 3, 60.0)
    before = snapshot()

    def boom(*a, **kw):
        raise RuntimeError("material failure")

    monkeypatch.setattr(mb, "make_material", boom)
    with pytest.raises(RuntimeError, match="material failure"):
        mb.build_depth_scene(bpy.context, np.ones((3, 4)), k, name="half")
    assert snapshot() == before


def test_registration_menus_and_undo_flags(addon):
    ops = mod(addon, "operators")
    for cls in ops.classes:
        assert {"REGISTER", "UNDO"} <= cls.bl_options  # one undo step per run
    idnames = {cls.bl_idname for cls in ops.classes}
    assert idnames == {"metricgold.image_to_depth_mesh", "metricgold.image_to_point_cloud",
                       "metricgold.depth_map_to_mesh"}
    ui = mod(addon, "ui")
    for menu, draw in ui.MENUS:
        assert draw in getattr(bpy.types, menu)._dyn_ui_initialize()


# ---- the worker path ----------------------------------------------------------------------------------------------


@pytest.fixture
def worker_prefs(addon, tiny_checkpoint):
    prefs = bpy.context.preferences.addons[addon].preferences
    prefs.python_executable = sys.executable
    prefs.model_dir = str(tiny_checkpoint)
    prefs.device = "cpu"
    prefs.steps, prefs.ensemble, prefs.processing_resolution = 2, 1, 32
    yield prefs
    prefs.python_executable = prefs.model_dir = ""


@pytest.fixture
def photo(tmp_path) -> Path:
    rgb = (np.random.default_rng(0).random((16, 24, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "room.png")
    return tmp_path / "room.png"


def test_worker_end_to_end_mesh(addon, scene, worker_prefs, photo):
    assert bpy.ops.metricgold.test_worker() == {"FINISHED"}
    assert bpy.ops.metricgold.image_to_depth_mesh(filepath=str(photo), ensemble=2, synchronous=True) == {"FINISHED"}
    obj = bpy.data.objects["MetricGold room"]
    assert len(obj.data.vertices) == 16 * 24
    tex = [n for n in obj.data.materials[0].node_tree.nodes if n.type == "TEX_IMAGE"][0]
    assert bpy.path.abspath(tex.image.filepath) == str(photo)
    assert scene.camera == bpy.data.objects["MetricGold room camera"]
    assert (scene.render.resolution_x, scene.render.resolution_y) == (24, 16)
    depth = np.empty(16 * 24, np.float32)
    obj.data.attributes["depth"].data.foreach_get("value", depth)
    assert np.isfinite(depth).all() and (depth > 0).all()
    # the depth the worker wrote is what the mesh holds, pixel by pixel (row-major vertices: no invalid pixels)
    written = Path(mod(addon, "operators").depth_folder()) / "room_depth.npy"  # unsaved file: the user folder
    np.testing.assert_array_equal(depth, np.load(written).reshape(-1))
    uncertainty = np.empty(16 * 24, np.float32)
    obj.data.attributes["uncertainty"].data.foreach_get("value", uncertainty)  # ensemble of 2: a spread
    assert (uncertainty >= 0).all() and uncertainty.max() > 0


def test_worker_point_cloud_from_image_editor_image(scene, worker_prefs):
    # A generated (never saved) image, as the Image Editor's active image: handed to the worker as a PNG copy.
    image = bpy.data.images.new("painted", 20, 10)
    image.generated_color = (0.2, 0.4, 0.6, 1.0)
    assert bpy.ops.metricgold.image_to_point_cloud(image_name="painted", stride=3, synchronous=True) == {"FINISHED"}
    obj = bpy.data.objects["MetricGold painted"]
    assert len(obj.data.vertices) == math.ceil(10 / 3) * math.ceil(20 / 3)
    assert len(obj.data.polygons) == 0
    assert "painted" in bpy.data.images and len(bpy.data.images) == 1  # no stray copy left behind


def test_missing_image_and_python(scene, worker_prefs, tmp_path):
    before = snapshot()
    with pytest.raises(RuntimeError, match=r"image not found: .*nothere\.png"):
        bpy.ops.metricgold.image_to_depth_mesh(filepath=str(tmp_path / "nothere.png"), synchronous=True)
    with pytest.raises(RuntimeError, match="no image: open one in the Image Editor"):
        bpy.ops.metricgold.image_to_depth_mesh(synchronous=True)
    with pytest.raises(RuntimeError, match=r"worker Python not found: /no/such/python"):
        bpy.ops.metricgold.image_to_depth_mesh(filepath=str(tmp_path / "x.png"), worker_python="/no/such/python",
                                               synchronous=True)
    assert snapshot() == before


def test_worker_python_without_metricgold(scene, worker_prefs, photo, tmp_path):
    # A Python that exists but lacks MetricGold: an isolated interpreter (-I ignores the venv's site-packages).
    fake = tmp_path / "python-without-metricgold"
    fake.write_text(f"#!/bin/sh\nexec {sys.base_prefix}/bin/python3 -I -S \"$@\"\n")
    fake.chmod(0o755)
    before = snapshot()
    with pytest.raises(RuntimeError, match="cannot import metricgold_engine: MetricGold is not installed"):
        bpy.ops.metricgold.image_to_depth_mesh(filepath=str(photo), worker_python=str(fake), synchronous=True)
    assert snapshot() == before


def _task(addon, photo, reports, **options):
    ops, prefs_mod, mb = mod(addon, "operators"), mod(addon, "preferences"), mod(addon, "mesh_builder")
    settings = prefs_mod.get_settings(bpy.context)
    created = mb.Created()
    image = mb.load_image(photo, created)
    return ops.DepthTask(
        image_name=image.name, photo_path=str(photo), settings=settings,
        predict_options=dict(settings.predict_options(), **options), build_options=mb.BuildOptions(),
        resolve_intrinsics=lambda w, h, p: mod(addon, "engine").geometry.resolve_intrinsics(w, h),
        name="MetricGold task", created=created, report=lambda level, text: reports.append((level, text)),
    )


def _drive(task, until=lambda: False, timeout=120.0):
    """What the modal timer does: call step() until the task leaves RUNNING_MODAL."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = task.step(bpy.context)
        if state != {"RUNNING_MODAL"} or until():
            return state
        time.sleep(0.01)
    raise AssertionError("task did not finish")


def test_worker_killed_mid_run(addon, scene, worker_prefs, photo):
    before = snapshot()
    reports: list = []
    task = _task(addon, photo, reports, num_inference_steps=200, ensemble_size=2)
    task.start(bpy.context)
    assert _drive(task, until=lambda: task.job.stage == "denoise") == {"RUNNING_MODAL"}
    os.kill(task.job._client.pid, signal.SIGKILL)
    assert _drive(task) == {"CANCELLED"}
    assert reports[-1][0] == {"ERROR"} and "killed by SIGKILL" in reports[-1][1]
    assert snapshot() == before  # the photo the task loaded is gone again


def test_cancel_mid_run(addon, scene, worker_prefs, photo):
    before = snapshot()
    reports: list = []
    task = _task(addon, photo, reports, num_inference_steps=200, ensemble_size=2)
    task.start(bpy.context)
    assert _drive(task, until=lambda: task.job.stage == "denoise") == {"RUNNING_MODAL"}
    client = task.job._client
    t0 = time.monotonic()
    assert task.cancel(bpy.context) == {"CANCELLED"}  # what Esc does
    assert reports[-1] == ({"WARNING"}, "MetricGold: cancelled")
    assert task.job.wait(timeout=30)
    assert task.job.state == "cancelled" and time.monotonic() - t0 < 10
    assert client.alive  # the request was cancelled, the worker (and its loaded model) kept
    assert snapshot() == before


def test_empty_model_folder_uses_and_labels_the_demo_model(addon, scene, worker_prefs, photo, monkeypatch):
    import dataclasses

    prefs_mod = mod(addon, "preferences")
    configured = prefs_mod.get_settings(bpy.context)
    monkeypatch.setattr(prefs_mod, "get_settings", lambda context: dataclasses.replace(configured, model_dir=""))
    reports: list = []
    task = _task(addon, photo, reports)  # the demo model's own defaults (1 step x 4 at 128 px)
    assert task.settings.model is None
    task.start(bpy.context)
    assert _drive(task) == {"FINISHED"}, reports
    assert reports[-1][0] == {"INFO"} and "built-in DEMO model" in reports[-1][1]


class _Recorder:
    """Stands in for the window manager, workspace and area: records what the task shows."""

    def __init__(self) -> None:
        self.calls: list = []

    def __getattr__(self, name):
        return lambda *args: self.calls.append((name, *args))


def test_progress_in_status_bar_and_header(addon, scene, worker_prefs, photo, monkeypatch):
    # Background mode has no window; a recorder stands in for it so the modal path's UI calls are checked.
    from types import SimpleNamespace

    ops = mod(addon, "operators")
    monkeypatch.setattr(ops, "has_ui", lambda context: True)
    wm, workspace, area = _Recorder(), _Recorder(), _Recorder()
    ui_context = SimpleNamespace(window_manager=wm, workspace=workspace, area=area, scene=bpy.context.scene)
    reports: list = []
    task = _task(addon, photo, reports, num_inference_steps=3, ensemble_size=1)
    task.start(ui_context)
    state = _drive_with(task, ui_context)
    assert state == {"FINISHED"}, reports
    assert wm.calls[0] == ("progress_begin", 0, 100) and wm.calls[-1] == ("progress_end",)
    updates = [c[1] for c in wm.calls if c[0] == "progress_update"]
    assert updates == sorted(updates) and all(0 <= u <= 100 for u in updates)
    texts = [c[1] for c in area.calls if c[0] == "header_text_set"]
    assert len(texts) >= 2 and texts[-1] is None  # shown while running, cleared at the end
    assert all(t.startswith("MetricGold: ") and t.endswith("(Esc to cancel)") for t in texts[:-1])
    assert workspace.calls[-1] == ("status_text_set", None)
    assert "MetricGold task" in bpy.data.objects
    # a configured model folder is not called the demo model (the label is for an empty folder setting)
    assert task.settings.model and reports[-1][0] == {"INFO"} and "DEMO" not in reports[-1][1]


def _drive_with(task, context, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = task.step(context)
        if state != {"RUNNING_MODAL"}:
            return state
        time.sleep(0.005)
    raise AssertionError("task did not finish")


def test_exif_rotated_photo_is_a_clear_error(addon, scene, worker_prefs, tmp_path):
    # EXIF orientation 6 (rotate 90 degrees): the worker predicts on the upright 16 x 24 image, Blender shows 24 x 16.
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.zeros((16, 24, 3), np.uint8)).save(tmp_path / "rotated.jpg", exif=exif)
    before = snapshot()
    with pytest.raises(RuntimeError, match=r"depth is 16 x 24 but Blender shows 'rotated.jpg' as 24 x 16.*EXIF"):
        bpy.ops.metricgold.image_to_depth_mesh(filepath=str(tmp_path / "rotated.jpg"), synchronous=True)
    assert snapshot() == before


def test_one_worker_at_a_time(addon, worker_prefs):
    jobs = mod(addon, "jobs")
    first = jobs.shared_client(sys.executable, worker_prefs.model_dir, "cpu")
    assert jobs.shared_client(sys.executable, worker_prefs.model_dir, "cpu") is first  # reused, model kept
    other = jobs.shared_client(sys.executable, None, "cpu")  # settings changed: the old worker is closed
    assert other is not first and not first.alive and other.alive
    jobs.forget_client(other)
    assert not other.alive


def test_test_worker_names_the_model_kind_and_licence(addon, tmp_path, monkeypatch):
    prefs = mod(addon, "preferences")
    hello = {"engine_version": "0.1.0", "device": "cpu", "demo_model": False,
             "model": {"name": "apple/DepthPro-hf", "kind": "depth_pro", "licence": "apple-amlr"}}
    assert prefs.describe_worker(hello).endswith("model apple/DepthPro-hf (depth_pro), licence apple-amlr")
    hello["model"]["licence"] = None
    assert prefs.describe_worker(hello).endswith("licence unknown (see the model card)")
    # A Hugging Face id is a model too (the worker fetches it): not refused as a missing folder
    monkeypatch.chdir(tmp_path)
    settings = prefs.Settings(python_executable=sys.executable, model_dir="apple/DepthPro-hf")
    assert settings.model == "apple/DepthPro-hf" and prefs.check_worker_python(settings) is None
    settings = prefs.Settings(python_executable=sys.executable, model_dir=str(tmp_path / "missing"))
    assert "model folder not found" in prefs.check_worker_python(settings)


# ---- issue 14: large photos, RGBA photos, where depth files are kept, names --------------------------------------


def test_large_depth_is_subsampled_to_the_vertex_limit(addon, scene, tmp_path, capfd):
    # 1500 x 1000 = 1.5 million pixels: above the default limit of a million vertices, so stride 2 (750 x 500)
    depth = np.full((1000, 1500), 2.0, np.float32)
    depth_io.write_depth_npy(tmp_path / "big.npy", depth)
    assert bpy.ops.metricgold.depth_map_to_mesh(filepath=str(tmp_path / "big.npy")) == {"FINISHED"}
    obj = bpy.data.objects["MetricGold big"]
    assert len(obj.data.vertices) == 750 * 500
    out = capfd.readouterr().out
    # the estimate is printed before the mesh is built (reports print when the operator ends)
    note = "MetricGold: 1500 x 1000 depth: stride 2 gives 375,000 vertices (limit 1,000,000); without the limit: " \
           "1,500,000 vertices, about 390.0 MB of memory and a 60.0 MB .blend"
    assert note in out and out.index(note) < out.index("Info: MetricGold: MetricGold big: 375000 vertices (stride 2)")
    # the vertices still sit on their pixels: every other pixel of the full-resolution grid
    k = mod(addon, "engine").geometry.resolve_intrinsics(1500, 1000)[0]
    world = vertex_positions(obj)
    assert world[1, 0] - world[0, 0] == pytest.approx(2 * 2.0 / k.fx, abs=1e-6)  # float32 positions

    assert bpy.ops.metricgold.depth_map_to_mesh(filepath=str(tmp_path / "big.npy"), limit_vertices=False) == {
        "FINISHED"}
    assert len(bpy.data.objects["MetricGold big.001"].data.vertices) == 1500 * 1000
    out = capfd.readouterr().out
    assert ("MetricGold: 1500 x 1000 depth, vertex limit off: 1,500,000 vertices, about 390.0 MB of memory and a "
            "60.0 MB .blend") in out


def test_vertex_limit_follows_the_processing_resolution(addon):
    ops = mod(addon, "operators")
    options = mod(addon, "mesh_builder").BuildOptions()
    # the worker worked at 2048 px on a 6000 x 4000 photo: 2048 x 1365 pixels of detail, so stride 3, not 5
    pixels = ops.processing_pixels({"processing_resolution": 2048}, (4000, 6000))
    assert pixels == 2048 * 1365
    assert ops.plan_build(options, (4000, 6000), processing_pixels=pixels)[0].stride == 3
    assert ops.plan_build(options, (4000, 6000))[0].stride == 5  # no processing resolution known: a million
    assert ops.processing_pixels({}, (4000, 6000)) is None
    # native resolution: every pixel is detail, nothing subsampled; a lifted limit keeps the user's stride
    native = ops.processing_pixels({"processing_resolution": 0}, (4000, 6000))
    assert ops.plan_build(options, (4000, 6000), processing_pixels=native)[0].stride == 1
    assert ops.plan_build(options, (4000, 6000), limit_vertices=False)[0].stride == 1


def _rgba_photo(path: Path) -> np.ndarray:
    """An 8 x 6 RGBA photo: saturated colours under alpha 0, 64, 128, 200 and 255."""
    rng = np.random.default_rng(3)
    rgba = (rng.random((6, 8, 4)) * 255).astype(np.uint8)
    rgba[..., 3] = np.array([0, 64, 128, 200, 255, 255, 0, 128], np.uint8)[None, :]
    rgba[:, 0, :3] = (255, 0, 0)  # pure red under alpha 0: must show as white
    Image.fromarray(rgba, "RGBA").save(path)
    return rgba


def test_rgba_photo_renders_on_white_like_the_depth_input(addon, scene, tmp_path):
    from metricgold_engine.image_io import load_rgb_image  # what the worker computes the depth from

    _rgba_photo(tmp_path / "cutout.png")
    expected = np.asarray(load_rgb_image(tmp_path / "cutout.png")).astype(np.float64)
    depth_io.write_depth_npy(tmp_path / "cutout_depth.npy", np.full((6, 8), 2.0))
    assert bpy.ops.metricgold.depth_map_to_mesh(
        filepath=str(tmp_path / "cutout_depth.npy"), image_path=str(tmp_path / "cutout.png")) == {"FINISHED"}
    # Render the mesh through its camera, a sample at each pixel centre (tiny filter), colours as they are.
    scene.render.engine = "CYCLES"
    scene.cycles.device, scene.cycles.samples = "CPU", 4
    scene.cycles.filter_width = 0.01
    scene.view_settings.view_transform = "Standard"
    scene.render.dither_intensity = 0.0
    scene.cycles.use_denoising = False  # the denoiser would blur neighbouring pixels together
    scene.render.image_settings.file_format = "PNG"
    scene.render.filepath = str(tmp_path / "render.png")
    bpy.ops.render.render(write_still=True)
    with Image.open(tmp_path / "render.png") as im:
        rendered = np.asarray(im.convert("RGB")).astype(np.float64)
    assert rendered.shape == expected.shape
    # interior pixels (the mesh stops half a pixel short of the frame); alpha 0 shows white, not the colour under it
    inner = (slice(1, -1), slice(1, -1))
    np.testing.assert_allclose(rendered[inner], expected[inner], atol=2.0)
    assert (rendered[1:-1, 6] == 255).all()

    # Point clouds take the same composite into their colour attribute (linear; compare in sRGB).
    assert bpy.ops.metricgold.depth_map_to_mesh(
        filepath=str(tmp_path / "cutout_depth.npy"), image_path=str(tmp_path / "cutout.png"), point_cloud=True,
        stride=1) == {"FINISHED"}
    pc = bpy.data.objects["MetricGold cutout.001"]
    col = np.empty(48 * 4, np.float32)
    pc.data.color_attributes["Color"].data.foreach_get("color_srgb", col)
    np.testing.assert_allclose(col.reshape(6, 8, 4)[..., :3] * 255, expected, atol=0.6)


def test_on_white_node_group_matches_the_numpy_formula(addon, scene):
    # The node group, evaluated node by node, against mesh_builder.on_white and Pillow's formula on bytes.
    mb = mod(addon, "mesh_builder")
    group = mb.on_white_node_group()
    ops = {"LESS_THAN": lambda a, b, c: (a < b) * 1.0, "MULTIPLY_ADD": lambda a, b, c: a * b + c,
           "SUBTRACT": lambda a, b, c: a - b, "MULTIPLY": lambda a, b, c: a * b, "DIVIDE": lambda a, b, c: a / b,
           "POWER": lambda a, b, c: np.power(a, b)}
    rng = np.random.default_rng(0)
    srgb8 = rng.integers(0, 256, size=(500, 3))
    alpha8 = rng.integers(0, 256, size=500)
    linear = mb._SRGB_BYTE_TO_LINEAR[srgb8].astype(np.float64)
    inputs = {("Color", "Red"): linear[:, 0], ("Color", "Green"): linear[:, 1], ("Color", "Blue"): linear[:, 2]}

    def value(socket):
        if not socket.is_linked:
            return socket.default_value
        link = socket.links[0]
        node, out = link.from_node, link.from_socket
        if node.type == "SEPARATE_COLOR":
            return inputs[("Color", out.name)]
        if node.type == "GROUP_INPUT":
            return alpha8 / 255.0
        a, b, c = (value(s) for s in node.inputs[:3])
        return ops[node.operation](a, b, c)

    join = next(n for n in group.nodes if n.type == "COMBINE_COLOR")
    got = np.stack([value(join.inputs[i]) for i in range(3)], axis=-1)
    np.testing.assert_allclose(got, mb.on_white(linear, alpha8 / 255.0), atol=1e-6)  # float32 node constants
    # Pillow's alpha_composite on white, in bytes: round(a * c + (255 - a)) within one level
    pillow = np.asarray(Image.alpha_composite(
        Image.new("RGBA", (500, 1), (255, 255, 255, 255)),
        Image.fromarray(np.concatenate([srgb8, alpha8[:, None]], 1)[None].astype(np.uint8), "RGBA")).convert("RGB"))
    encoded = mb._linear_to_srgb(got) * 255.0
    assert np.abs(encoded - pillow[0]).max() <= 1.0


def test_depth_file_is_kept_beside_the_saved_blend(addon, scene, worker_prefs, photo, tmp_path):
    bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "scene.blend"))
    reports: list = []
    task = _task(addon, photo, reports)
    task.start(bpy.context)
    assert _drive(task) == {"FINISHED"}, reports
    depth_path = re.search(r", depth (\S+\.npy)", reports[-1][1]).group(1)
    assert depth_path == str(tmp_path / "metricgold" / "room_depth.npy")
    assert np.load(depth_path).shape == (16, 24)
    assert not list(Path(bpy.app.tempdir).glob("metricgold-*"))  # the task's temporary folder is gone, the depth stays
    bpy.ops.wm.read_homefile(use_empty=True)


def test_packed_renamed_image_names_objects_and_keeps_its_depth(addon, scene, worker_prefs, photo):
    image = bpy.data.images.load(str(photo))
    image.pack()
    image.name = "Kitchen"  # the file is room.png; the user named the image Kitchen
    ops = mod(addon, "operators")
    assert bpy.ops.metricgold.image_to_depth_mesh(image_name="Kitchen", synchronous=True) == {"FINISHED"}
    assert "MetricGold Kitchen" in bpy.data.objects and "MetricGold Kitchen camera" in bpy.data.objects
    assert "MetricGold Kitchen" in bpy.data.collections
    # unsaved .blend: the depth goes to the extension's user folder, not to a temporary folder
    folder = ops.depth_folder()
    assert folder == os.path.join(bpy.utils.extension_path_user(addon), "depth")
    written = Path(folder) / "Kitchen_depth.npy"
    assert np.load(written).shape == (16, 24)
    # the worker's PNG copy of the packed image was in a temporary folder that is gone again
    assert not list(Path(bpy.app.tempdir).glob("metricgold-*/Kitchen.png"))
    written.unlink()


def test_worker_image_sequence_to_depth_mesh(addon, scene, worker_prefs, tmp_path):
    """Image Sequence / Movie -> Metric Depth Mesh through the real worker (predict_sequence): at two scene frames the
    evaluated mesh is the unprojection of the depth file the worker wrote for that frame."""
    from metricgold_engine.core.geometry import unproject

    frames = tmp_path / "frames"
    frames.mkdir()
    rng = np.random.default_rng(1)
    for k in range(1, 4):
        Image.fromarray((rng.random((16, 24, 3)) * 255).astype(np.uint8)).save(frames / f"f_{k:04d}.png")
    assert bpy.ops.metricgold.sequence_to_depth_mesh(
        filepath=str(frames / "f_0002.png"), depth_dir=str(tmp_path / "d"), smoothing=0.5, cut_discontinuities=False,
        synchronous=True) == {"FINISHED"}
    obj = next(o for o in scene.objects if o.type == "MESH")
    k = mod(addon, "sequence_mesh").read_camera_file(tmp_path / "d" / "frames_camera.json")
    assert (scene.frame_start, scene.frame_end) == (1, 3)
    for frame in (1, 3):
        scene.frame_set(frame)
        ev = obj.evaluated_get(bpy.context.evaluated_depsgraph_get())
        mesh = ev.to_mesh()
        got = np.empty(len(mesh.vertices) * 3, np.float32)
        mesh.vertices.foreach_get("co", got)
        ev.to_mesh_clear()
        depth = depth_io.read_depth(tmp_path / "d" / f"frames_depth_{frame:06d}.exr").astype(np.float64)
        np.testing.assert_allclose(got.reshape(-1, 3), unproject(depth, k).reshape(-1, 3), rtol=2e-6, atol=1e-6)
