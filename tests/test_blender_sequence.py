"""Depth sequence -> one Geometry Nodes mesh that follows the timeline (metricgold_blender.sequence_mesh), in real
bpy 5.0.1: at each frame the evaluated mesh's vertices must be the unprojection of that frame's depth file
(``metricgold_engine.core.geometry.unproject``, float64), read through Blender's image sequence."""

from __future__ import annotations

import contextlib

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

bpy = pytest.importorskip("bpy")

from metricgold_blender import sequence_mesh  # noqa: E402
from metricgold_blender.mesh_builder import BuildError  # noqa: E402
from metricgold_engine.core.depth_io import write_depth_exr, write_depth_npy  # noqa: E402
from metricgold_engine.core.geometry import Intrinsics, unproject  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
W, H = 40, 30
K = Intrinsics(45.0, 47.0, 19.0, 15.5, W, H)  # off-centre principal point, non-square pixels


def _depth(frame: int) -> np.ndarray:
    """A slanted plane with a bump, different in every frame; frame 2 has a hole (0) and a NaN."""
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    d = 2.0 + 0.3 * frame + 0.02 * u - 0.01 * v + 0.3 * np.exp(-((u - 10 - 5 * frame) ** 2 + (v - 12) ** 2) / 20.0)
    if frame == 2:
        d[3:6, 4:9] = 0.0
        d[20, 30] = np.nan
    return d.astype(np.float32)


@pytest.fixture(scope="module")
def frames(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("seq")
    (root / "depth").mkdir()
    (root / "rgb").mkdir()
    for f in range(3):
        write_depth_exr(root / "depth" / f"{f + 4:06d}.exr", _depth(f))  # numbered from 4: offsets matter
        Image.fromarray(np.full((H, W, 3), 60 * f, dtype=np.uint8)).save(root / "rgb" / f"frame_{f + 1:04d}.png")
    return root


@pytest.fixture
def scene():
    bpy.ops.wm.read_homefile(use_empty=True)
    return bpy.context.scene


def _evaluated_vertices(obj) -> np.ndarray:
    depsgraph = bpy.context.evaluated_depsgraph_get()
    ev = obj.evaluated_get(depsgraph)
    mesh = ev.to_mesh()
    try:
        co = np.empty(len(mesh.vertices) * 3, dtype=np.float32)
        mesh.vertices.foreach_get("co", co)
        return co.reshape(-1, 3).astype(np.float64)
    finally:
        ev.to_mesh_clear()


def _expected(frame: int, stride: int = 1) -> np.ndarray:
    pts = unproject(_depth(frame).astype(np.float64), K, stride).reshape(-1, 3)
    return pts[np.isfinite(pts).all(axis=1)]


@contextlib.contextmanager
def _registered(cls):
    """Register the source checkout's operator class for one test. When the installed extension (another test file's
    session fixture) already registered the same operator, it is set aside and registered again afterwards, so that
    the extension's own unregister still finds its class."""
    previous = getattr(bpy.types, cls.__name__, None)
    if previous is not None:
        bpy.utils.unregister_class(previous)
    bpy.utils.register_class(cls)
    try:
        yield
    finally:
        bpy.utils.unregister_class(cls)
        if previous is not None:
            bpy.utils.register_class(previous)


@pytest.mark.parametrize("stride", [1, 3])
def test_evaluated_mesh_is_the_unprojection_of_each_frame(frames: Path, scene, stride: int) -> None:
    result = sequence_mesh.build_sequence_mesh(
        bpy.context, frames / "depth", K, name="seq", texture_path=frames / "rgb" / "frame_0001.png",
        stride=stride, max_relative_jump=0.0, start_frame=10)
    assert (result.frame_count, result.frame_start) == (3, 10)
    assert (scene.frame_start, scene.frame_end) == (10, 12) and scene.camera == result.camera
    # The mesh lives in the camera's frame: its world matrix is the camera's.
    assert np.allclose(np.array(result.object.matrix_world), np.array(result.camera.matrix_world))
    image = result.object.modifiers[0][sequence_mesh._interface_identifier(
        result.object.modifiers[0].node_group, "Depth")]
    # Float data (depths above 1 m come back as they are, below) used as is (Non-Color).
    assert image.source == "SEQUENCE" and image.colorspace_settings.name == "Non-Color"
    for scene_frame, depth_frame in ((11, 1), (10, 0), (12, 2), (30, 2), (1, 0)):  # the ends hold
        scene.frame_set(scene_frame)
        got = _evaluated_vertices(result.object)
        want = _expected(depth_frame, stride)
        assert got.shape == want.shape, (scene_frame, got.shape, want.shape)
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-6, err_msg=f"scene frame {scene_frame}")


def test_texture_plays_the_photo_sequence_and_depth_jumps_are_cut(frames: Path, scene) -> None:
    result = sequence_mesh.build_sequence_mesh(
        bpy.context, frames / "depth" / "000005.exr", K, name="seq", texture_path=frames / "rgb",
        max_relative_jump=0.05, start_frame=1)
    tex = next(n for n in result.object.data.materials[0].node_tree.nodes if n.bl_idname == "ShaderNodeTexImage")
    assert tex.image.source == "SEQUENCE"
    user = tex.image_user
    # Scene frame 1 shows file frame_0001: Blender shows file (frame - frame_start + 1 + offset).
    assert (user.frame_duration, user.frame_start, user.frame_offset) == (3, 1, 0)
    # What the evaluated material shows at each scene frame (Blender sets the evaluated copy's image user).
    mat = result.object.data.materials[0]
    for scene_frame, file in ((1, "frame_0001.png"), (2, "frame_0002.png"), (3, "frame_0003.png"), (9, "frame_0003.png")):
        scene.frame_set(scene_frame)
        ev_tex = next(n for n in mat.evaluated_get(bpy.context.evaluated_depsgraph_get()).node_tree.nodes
                      if n.bl_idname == "ShaderNodeTexImage")
        assert Path(ev_tex.image.filepath_from_user(image_user=ev_tex.image_user)).name == file, scene_frame
    scene.frame_set(1)
    ev = result.object.evaluated_get(bpy.context.evaluated_depsgraph_get())
    mesh = ev.to_mesh()
    # The bump changes depth by < 5 % between neighbours: nothing is cut in frame 0 (a full grid's edges).
    assert len(mesh.edges) == (W - 1) * H + W * (H - 1)
    ev.to_mesh_clear()
    scene.frame_set(3)  # frame 2 has a hole: its border edges go (vertices without depth go too)
    mesh = ev.evaluated_get(bpy.context.evaluated_depsgraph_get()).to_mesh()
    assert len(mesh.vertices) == W * H - 15 - 1
    assert len(mesh.polygons) < (W - 1) * (H - 1) - 20


def test_bad_input_is_refused_and_leaves_the_scene_as_it_was(frames: Path, scene, tmp_path: Path) -> None:
    before = {c: len(getattr(bpy.data, c)) for c in ("objects", "meshes", "images", "materials", "collections")}
    write_depth_npy(tmp_path / "000001.npy", _depth(0))
    with pytest.raises(BuildError, match="must be float OpenEXR"):
        sequence_mesh.build_sequence_mesh(bpy.context, tmp_path / "000001.npy", K, name="x")
    gap = tmp_path / "gap"
    gap.mkdir()
    for n in (1, 2, 4):
        write_depth_exr(gap / f"{n:06d}.exr", _depth(0))
    with pytest.raises(BuildError, match=r"gaps \(missing numbers \[3\]\)"):
        sequence_mesh.build_sequence_mesh(bpy.context, gap, K, name="x")
    with pytest.raises(BuildError, match="different aspect ratios"):
        sequence_mesh.build_sequence_mesh(bpy.context, frames / "depth", Intrinsics(50, 50, 20, 20, 41, 41), name="x")
    with pytest.raises(BuildError, match="no such folder or file"):
        sequence_mesh.build_sequence_mesh(bpy.context, tmp_path / "gap" / "nothing", K, name="x")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BuildError, match="no numbered .exr files"):
        sequence_mesh.build_sequence_mesh(bpy.context, tmp_path / "empty", K, name="x")
    after = {c: len(getattr(bpy.data, c)) for c in before}
    assert after == before


def test_operator_builds_the_mesh_and_reports_bad_input(frames: Path, scene, tmp_path: Path) -> None:
    import json

    cls = sequence_mesh.METRICGOLD_OT_depth_sequence_to_mesh
    with _registered(cls):
        camera = tmp_path / "camera.json"
        camera.write_text(json.dumps({"width": W, "height": H, "intrinsics": K.as_json()}))
        assert bpy.ops.metricgold.depth_sequence_to_mesh(
            filepath=str(frames / "depth" / "000004.exr"), texture_path=str(frames / "rgb"),
            camera_file=str(camera), start_frame=5, cut_discontinuities=False) == {"FINISHED"}
        obj = next(o for o in scene.objects if o.type == "MESH")
        scene.frame_set(6)
        np.testing.assert_allclose(_evaluated_vertices(obj), _expected(1), rtol=2e-6, atol=1e-6)
        # Without a camera file: a 55 degree field of view over the photos' size.
        assert bpy.ops.metricgold.depth_sequence_to_mesh(
            filepath=str(frames / "depth"), intrinsics_mode="FOV") == {"FINISHED"}
        with pytest.raises(RuntimeError, match="camera file not found"):
            bpy.ops.metricgold.depth_sequence_to_mesh(filepath=str(frames / "depth"),
                                                      camera_file=str(tmp_path / "none.json"))


DUMP = r"""
import sys, bpy, numpy as np
bpy.ops.wm.open_mainfile(filepath=sys.argv[1])
obj = next(o for o in bpy.context.scene.objects if o.type == "MESH")
for frame in (1, 2):
    bpy.context.scene.frame_set(frame)
    ev = obj.evaluated_get(bpy.context.evaluated_depsgraph_get())
    m = ev.to_mesh()
    co = np.empty(len(m.vertices) * 3, dtype=np.float32)
    m.vertices.foreach_get("co", co)
    np.save(f"{sys.argv[2]}_{frame}.npy", co.reshape(-1, 3))
    ev.to_mesh_clear()
"""


def test_headless_script_writes_a_blend_that_plays_the_sequence(frames: Path, tmp_path: Path) -> None:
    import json

    # The engine's sequence output (docs/sequences.md): flat NAME_depth_######.exr from 1 and NAME_camera.json,
    # beside files of other formats that must not be taken for depth.
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    for f in range(3):
        write_depth_exr(out_dir / f"clip_depth_{f + 1:06d}.exr", _depth(f))
        write_depth_npy(out_dir / f"clip_uncertainty_{f + 1:06d}.npy", _depth(f))
        Image.fromarray(np.zeros((H, W), dtype=np.uint16)).save(out_dir / f"clip_depth16_{f + 1:06d}.png")
    (out_dir / "clip_camera.json").write_text(json.dumps(
        {**K.as_json(), "width": W, "height": H, "fps": 24.0, "frame_count": 3, "first_frame": 1,
         "depth_files": "clip_depth_######.exr"}))
    out = tmp_path / "seq.blend"
    run = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "sequence_to_mesh.py"), str(out_dir / "clip_camera.json"),
         "--out", str(out), "--texture", str(frames / "rgb"), "--max-jump", "0"],
        capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "clip: 3 frames (scene frames 1-3)" in run.stdout and f"{W * H} vertices" in run.stdout
    subprocess.run([sys.executable, "-c", DUMP, str(out), str(tmp_path / "v")], check=True, timeout=300)
    for frame in (1, 2):  # reopened from the file, in a fresh Blender: the sequence still plays
        got = np.load(tmp_path / f"v_{frame}.npy").astype(np.float64)
        np.testing.assert_allclose(got, _expected(frame - 1), rtol=2e-6, atol=1e-6)
    bad = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "sequence_to_mesh.py"), str(tmp_path / "nope"),
                          "--out", str(tmp_path / "x.blend")], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and "no such folder or file" in bad.stderr and not (tmp_path / "x.blend").exists()


def test_sequence_name() -> None:
    assert sequence_mesh.sequence_name("/o/clip_depth_000001.exr") == "clip"
    assert sequence_mesh.sequence_name("/o/000003/depth/000001.exr") == "depth"


class _FakeSequenceClient:
    """Stands in for the worker's predict_sequence (docs/sequences.md): writes NAME_depth_######.exr numbered from 1
    and NAME_camera.json, with progress per frame; the real worker is tested on the engine's side."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[str, str, dict]] = []
        self.fail = fail

    def predict_sequence(self, source, out_dir, *, on_progress=None, cancel=None, **options):
        import json
        from types import SimpleNamespace

        self.calls.append((str(source), str(out_dir), options))
        if self.fail:
            raise ValueError(f"{source}: frame 2 is 10 x 10, the first frame 40 x 30")
        out = Path(out_dir)
        for f in range(3):
            write_depth_exr(out / f"rgb_depth_{f + 1:06d}.exr", _depth(f))
            if on_progress:
                on_progress(SimpleNamespace(stage="frame", step=f + 1, total=3))
        camera = out / "rgb_camera.json"
        camera.write_text(json.dumps({**K.as_json(), "width": W, "height": H, "frame_count": 3, "first_frame": 1,
                                      "depth_files": "rgb_depth_######.exr"}))
        return {"camera_path": str(camera), "frame_count": 3, "written": 3, "skipped": 0}


def test_image_sequence_operator_predicts_through_the_worker_then_builds(frames: Path, scene, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from metricgold_blender import jobs, sequence_predict
    from metricgold_blender.preferences import Settings

    fake = _FakeSequenceClient()
    monkeypatch.setattr(jobs, "shared_client", lambda python, model, device: fake)
    monkeypatch.setattr(sequence_predict, "get_settings", lambda context: Settings(python_executable=sys.executable))
    cls = sequence_predict.METRICGOLD_OT_sequence_to_depth_mesh
    with _registered(cls):
        assert bpy.ops.metricgold.sequence_to_depth_mesh(
            filepath=str(frames / "rgb" / "frame_0002.png"), depth_dir=str(tmp_path / "d"), temporal_strength=0.5,
            cut_discontinuities=False, synchronous=True) == {"FINISHED"}
        source, out_dir, options = fake.calls[0]
        assert source == str(frames / "rgb") and out_dir == str(tmp_path / "d")  # the picked image's folder
        assert options["denoise_strength"] == 0.5 and "smoothing_alpha" not in options
        obj = next(o for o in scene.objects if o.type == "MESH")
        assert obj.name == "rgb"
        tex = next(n for n in obj.data.materials[0].node_tree.nodes if n.bl_idname == "ShaderNodeTexImage")
        assert tex.image.source == "SEQUENCE" and tex.image_user.frame_duration == 3
        for frame in (1, 3):
            scene.frame_set(frame)
            np.testing.assert_allclose(_evaluated_vertices(obj), _expected(frame - 1), rtol=2e-6, atol=1e-6)
        # Typed intrinsics (pixels of the frames) replace the worker's camera for the mesh.
        assert bpy.ops.metricgold.sequence_to_depth_mesh(
            filepath=str(frames / "rgb"), depth_dir=str(tmp_path / "d2"), intrinsics_mode="INTRINSICS", fx=60.0,
            fy=60.0, cx=20.0, cy=14.0, cut_discontinuities=False, synchronous=True) == {"FINISHED"}
        obj2 = next(o for o in scene.objects if o.type == "MESH" and o != obj)
        scene.frame_set(2)
        want = unproject(_depth(1).astype(np.float64), Intrinsics(60.0, 60.0, 20.0, 14.0, W, H)).reshape(-1, 3)
        np.testing.assert_allclose(_evaluated_vertices(obj2), want, rtol=2e-6, atol=1e-6)
        assert "fov_deg" not in fake.calls[-1][2]
        # A failing worker: one clear error, nothing added to the scene.
        monkeypatch.setattr(jobs, "shared_client", lambda python, model, device: _FakeSequenceClient(fail=True))
        n_objects = len(bpy.data.objects)
        with pytest.raises(RuntimeError, match="frame 2 is 10 x 10"):
            bpy.ops.metricgold.sequence_to_depth_mesh(filepath=str(frames / "rgb"), depth_dir=str(tmp_path / "e"),
                                                      synchronous=True)
        assert len(bpy.data.objects) == n_objects


def test_headless_script_predicts_a_photo_sequence_then_builds(frames: Path, tiny_checkpoint: Path,
                                                               tmp_path: Path) -> None:
    """One command from photos to a playing mesh: --predict runs the worker's predict_sequence, then the mesh is
    built from the depth files and camera it wrote; the reopened .blend shows each frame's unprojected depth."""
    import json

    from metricgold_engine.core.depth_io import read_depth

    out = tmp_path / "pred.blend"
    argv = [sys.executable, str(REPO_ROOT / "scripts" / "sequence_to_mesh.py"), str(frames / "rgb"), "--predict",
            "--model", str(tiny_checkpoint), "--device", "cpu", "--out", str(out), "--max-jump", "0"]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "3 frame(s) predicted" in run.stderr and "3 frames" in run.stdout
    depth_dir = tmp_path / "pred_depth"
    camera = json.loads(next(depth_dir.glob("*_camera.json")).read_text())
    k = Intrinsics(camera["fx"], camera["fy"], camera["cx"], camera["cy"], camera["width"], camera["height"])
    subprocess.run([sys.executable, "-c", DUMP, str(out), str(tmp_path / "v")], check=True, timeout=300)
    for frame in (1, 2):
        depth = read_depth(sorted(depth_dir.glob("*_depth_*.exr"))[frame - 1]).astype(np.float64)
        want = unproject(depth, k).reshape(-1, 3)
        got = np.load(tmp_path / f"v_{frame}.npy").astype(np.float64)
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-5)
    again = subprocess.run(argv, capture_output=True, text=True, timeout=600)  # resumable: nothing predicted again
    assert again.returncode == 0 and "0 frame(s) predicted, 3 already there" in again.stderr
