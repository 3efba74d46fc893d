"""trainer.synth: the synthetic RGB-D generator rendered by Blender.

Pure parts (camera model, scene sampler, output folder) are checked against hand-computed values. Rendering is
checked against independent float64 ray casting: Cycles' Z pass must give the planar depth of known geometry at
every pixel centre to 1 mm, through the same files and readers the trainer uses.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from trainer.synth.camera import (
    blender_camera_intrinsics,
    horizontal_fov_from_lens,
    lens_from_horizontal_fov,
)
from trainer.synth.output import (
    SynthOutputError,
    check_or_write_manifest,
    frame_done,
    frame_name,
    frame_paths,
    is_val,
    write_splits,
)
from trainer.synth.scenes import (
    SCENE_KINDS,
    CameraSpec,
    LightSpec,
    MaterialSpec,
    SceneSpec,
    ShapeSpec,
    WorldSpec,
    mesh_files_in,
    sample_scene,
)

W, H = 64, 48  # tiny renders: a few hundred ms each on 2 cores


# ---------------------------------------------------------------------------------------------------------------------
# Camera model (no bpy)


def test_intrinsics_hand_computed() -> None:
    # 50 mm lens on a 36 mm sensor spanning 64 px: f = 50 / 36 * 64 px; the centre of a 64 x 48 image in
    # pixel-centre coordinates is (31.5, 23.5).
    k = blender_camera_intrinsics(lens_mm=50.0, width=64, height=48)
    assert k.fx == pytest.approx(88.88888888888889, abs=1e-12)
    assert k.fy == pytest.approx(88.88888888888889, abs=1e-12)
    assert (k.cx, k.cy) == (31.5, 23.5)
    assert k.as_json() == {"fx": k.fx, "fy": k.fy, "cx": 31.5, "cy": 23.5}
    # VERTICAL fit measures the height by sensor_height: 50 / 24 * 480 = 1000 px.
    v = blender_camera_intrinsics(lens_mm=50.0, width=640, height=480, sensor_height_mm=24.0, sensor_fit="VERTICAL")
    assert v.fx == pytest.approx(1000.0, abs=1e-9) and (v.cx, v.cy) == (319.5, 239.5)
    # AUTO on a portrait image fits the larger (vertical) axis, still measured by sensor_width.
    p = blender_camera_intrinsics(lens_mm=18.0, width=48, height=64, sensor_width_mm=36.0)
    assert p.fx == pytest.approx(32.0, abs=1e-12)
    # A lens shift of 0.1 (view moves right, up) moves the principal point 6.4 px left and 6.4 px down.
    s = blender_camera_intrinsics(lens_mm=50.0, width=64, height=48, shift_x=0.1, shift_y=0.1)
    assert (s.cx, s.cy) == pytest.approx((31.5 - 6.4, 23.5 + 6.4), abs=1e-12)


def test_fov_lens_round_trip() -> None:
    assert lens_from_horizontal_fov(90.0) == pytest.approx(18.0, abs=1e-12)  # tan 45 deg = 1
    assert horizontal_fov_from_lens(18.0) == pytest.approx(90.0, abs=1e-12)
    for fov in (30.0, 60.0, 95.0):
        assert horizontal_fov_from_lens(lens_from_horizontal_fov(fov)) == pytest.approx(fov, abs=1e-9)
    with pytest.raises(ValueError, match="field of view"):
        lens_from_horizontal_fov(180.0)
    with pytest.raises(ValueError, match="sensor_fit"):
        blender_camera_intrinsics(lens_mm=50.0, width=64, height=48, sensor_fit="DIAGONAL")


def test_package_imports_without_blender() -> None:
    import subprocess
    import sys

    code = ("import sys, trainer.synth, trainer.synth.scenes, trainer.synth.camera, trainer.synth.output, "
            "trainer.synth.__main__; print(sorted(m for m in ('bpy', 'torch') if m in sys.modules))")
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------------------------------------------
# Scene sampler (no bpy)


def test_sample_scene_is_deterministic_per_frame() -> None:
    a, b = sample_scene(7, 3), sample_scene(7, 3)
    assert a == b
    assert sample_scene(7, 4) != a and sample_scene(8, 3) != a
    kinds = {sample_scene(0, i).kind for i in range(40)}
    assert kinds == set(SCENE_KINDS)
    assert {sample_scene(0, i, kinds=("street",)).kind for i in range(5)} == {"street"}
    with pytest.raises(ValueError, match="unknown scene kind 'forest'"):
        sample_scene(0, 0, kinds=("forest",))
    # Without mesh files no shape asks for one; with them, some shapes are the user's meshes.
    assert all(sh.kind != "mesh_file" for i in range(20) for sh in sample_scene(0, i).shapes)
    with_meshes = [sh for i in range(20) for sh in sample_scene(0, i, mesh_files=("chair.obj",)).shapes
                   if sh.kind == "mesh_file"]
    assert with_meshes and all(sh.mesh_path == "chair.obj" for sh in with_meshes)


def _inside_box(point: np.ndarray, shape: ShapeSpec, margin: float) -> bool:
    """Is ``point`` inside the oriented box of a cube shape, grown by ``margin``?"""
    ax, ay, az = shape.rotation
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    local = (rz @ ry @ rx).T @ (point - np.asarray(shape.location))
    return bool(np.all(np.abs(local) < np.asarray(shape.scale) + margin))


def test_sampled_cameras_are_in_free_space() -> None:
    """The camera must never start inside geometry (its depth would be garbage): check 150 sampled scenes."""
    for i in range(150):
        spec = sample_scene(1, i)
        cam = np.asarray(spec.camera.location)
        assert spec.camera.clip_start < 0.05 and spec.camera.clip_end >= 500.0
        for shape in spec.shapes:
            # Every built-in shape fits its unit box [-1, 1]^3 before scaling: its oriented box bounds it.
            assert not _inside_box(cam, shape, 0.02), (i, spec.kind, shape.name)


# ---------------------------------------------------------------------------------------------------------------------
# Output folder (no bpy)


def test_val_split_by_name_hash() -> None:
    names = [frame_name(i) for i in range(20000)]
    share = np.mean([is_val(n, 0.05) for n in names])
    assert 0.045 < share < 0.055
    assert [is_val(n, 0.05) for n in names[:50]] == [is_val(n, 0.05) for n in names[:50]]
    assert not any(is_val(n, 0.0) for n in names[:100]) and all(is_val(n, 1.0) for n in names[:100])
    with pytest.raises(ValueError, match="val fraction"):
        is_val("000000", 1.5)


def test_splits_and_manifest(tmp_path: Path) -> None:
    names = [frame_name(i) for i in range(200)]
    n_train, n_val = write_splits(tmp_path, names, 0.1)
    train = (tmp_path / "train.txt").read_text().split()
    val = (tmp_path / "val.txt").read_text().split()
    assert (len(train), len(val)) == (n_train, n_val)
    assert sorted(train + val) == names and not set(train) & set(val) and val == sorted(val)
    assert val == [n for n in names if is_val(n, 0.1)]

    settings = {"version": 1, "seed": 3, "width": 64, "height": 48, "samples": 4, "denoise": "fast",
                "kinds": ["room"], "mesh_files": [], "depth_format": "npy"}
    check_or_write_manifest(tmp_path, settings)
    check_or_write_manifest(tmp_path, dict(settings))  # same settings: resumable
    with pytest.raises(SynthOutputError, match=r"synth\.json: .*seed: folder has 3, this run 4"):
        check_or_write_manifest(tmp_path, {**settings, "seed": 4})
    (tmp_path / "synth.json").write_text("{not json")
    with pytest.raises(SynthOutputError, match=r"synth\.json: not a readable JSON file"):
        check_or_write_manifest(tmp_path, settings)


def test_frame_done_needs_all_three_files(tmp_path: Path) -> None:
    paths = frame_paths(tmp_path, "000005")
    assert paths["rgb"] == tmp_path / "rgb" / "000005.png"
    assert paths["depth"] == tmp_path / "depth" / "000005.npy"
    assert frame_paths(tmp_path, "000005", "exr")["depth"].suffix == ".exr"
    for key in ("depth", "intrinsics", "rgb"):
        assert not frame_done(tmp_path, "000005")
        paths[key].parent.mkdir(parents=True, exist_ok=True)
        paths[key].write_bytes(b"x")
    assert frame_done(tmp_path, "000005")


def test_cli_rejects_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from trainer.synth.__main__ import main

    assert main(["--out", str(tmp_path / "o"), "--count", "1", "--resolution", "64"]) == 2
    assert "--resolution must look like WIDTHxHEIGHT" in capsys.readouterr().err
    assert main(["--out", str(tmp_path / "o"), "--count", "1", "--kinds", "room,forest"]) == 2
    assert "unknown scene kind 'forest'" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["--out", str(tmp_path / "o"), "--count", "1", "--mesh-dir", str(tmp_path / "empty")]) == 2
    assert "no mesh files" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="not a folder"):
        mesh_files_in(tmp_path / "missing")


# ---------------------------------------------------------------------------------------------------------------------
# Rendering with Blender: known scenes against float64 ray casting

bpy = pytest.importorskip("bpy")

from metricgold_engine.core.depth_io import read_depth  # noqa: E402
from trainer.synth import blender_scene  # noqa: E402
from trainer.synth.generate import generate, render_scene_to_files  # noqa: E402

PLAIN = MaterialSpec("checker", (0.6, 0.6, 0.6), (0.1, 0.1, 0.1), 2.0, 0.5)
SUN = LightSpec("SUN", (0.0, 0.0, 5.0), (0.3, 0.2, 0.0), 3.0, (1.0, 1.0, 1.0), 0.01)
SETTINGS = blender_scene.RenderSettings(W, H, samples=4, denoise="off", device="cpu")


def _known_scene(shapes: list[ShapeSpec], lens_mm: float = 30.0) -> SceneSpec:
    """Camera at the origin with identity rotation: Blender camera space = world space, looking down -Z."""
    return SceneSpec(
        kind="test",
        shapes=tuple(shapes),
        lights=(SUN,),
        world=WorldSpec((0.3, 0.3, 0.3), (0.5, 0.6, 0.8), 1.0),
        camera=CameraSpec((0.0, 0.0, 0.0), (0.0, 0.0, 0.0), lens_mm),
        cycles_seed=0,
    )


def _euler_xyz(rx: float, ry: float, rz: float) -> np.ndarray:
    """Blender's XYZ Euler as a matrix (R = Rz @ Ry @ Rx), float64."""
    cx, sx, cy, sy, cz, sz = math.cos(rx), math.sin(rx), math.cos(ry), math.sin(ry), math.cos(rz), math.sin(rz)
    return (np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]]) @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
            @ np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]]))


def _pixel_rays(lens_mm: float, du: float = 0.0, dv: float = 0.0) -> np.ndarray:
    """Blender camera-space ray directions with z = -1 through pixel centres (+ an offset in pixels), float64.
    Built from the lens and sensor directly (36 mm across W pixels), not from the code under test."""
    f = lens_mm / 36.0 * W
    u, v = np.meshgrid(np.arange(W, dtype=np.float64) + du, np.arange(H, dtype=np.float64) + dv)
    x = (u + 0.5 - W / 2.0) / f
    y = -(v + 0.5 - H / 2.0) / f
    return np.stack([x, y, -np.ones_like(x)], axis=-1)


def _box_hits(rays: np.ndarray, center: np.ndarray, rot: np.ndarray, half: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Planar depth of the first hit of rays from the origin on an oriented box (slab method; 0 = miss) and the
    axis (0, 1, 2; -1 = miss) of the face hit."""
    d = rays @ rot  # = (rot.T @ ray) for every ray: ray in box coordinates
    o = rot.T @ (-center)
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = (-half - o) / d
        t2 = (half - o) / d
    t_near = np.nanmax(np.minimum(t1, t2), axis=-1)
    t_far = np.nanmin(np.maximum(t1, t2), axis=-1)
    hit = (t_near <= t_far) & (t_far > 0)
    face = np.where(hit, np.nanargmax(np.minimum(t1, t2), axis=-1), -1)
    return np.where(hit, t_near, 0.0), face  # rays have z = -1, so the ray parameter is the planar depth


def _box_depth(rays: np.ndarray, center: np.ndarray, rot: np.ndarray, half: np.ndarray) -> np.ndarray:
    return _box_hits(rays, center, rot, half)[0]


def _render(tmp_path: Path, spec: SceneSpec, name: str = "000000") -> tuple[np.ndarray, dict[str, float]]:
    paths = frame_paths(tmp_path, name)
    render_scene_to_files(spec, paths, SETTINGS)
    depth = read_depth(paths["depth"])  # the trainer's reader: invalid -> NaN
    intrinsics = json.loads(paths["intrinsics"].read_text())
    return np.nan_to_num(depth.astype(np.float64), nan=0.0), intrinsics


def test_fronto_parallel_plane_reads_its_distance(tmp_path: Path) -> None:
    # A 100 m x 100 m slab whose front face lies at z = -3: every pixel must read 3.000 m +- 1 mm.
    slab = ShapeSpec("cube", (0.0, 0.0, -3.05), (0.0, 0.0, 0.0), (50.0, 50.0, 0.05), PLAIN)
    depth, _ = _render(tmp_path, _known_scene([slab]))
    assert depth.shape == (H, W)
    assert np.abs(depth - 3.0).max() < 1e-3


def test_tilted_plane_matches_ray_casting_and_unprojects_onto_the_plane(tmp_path: Path) -> None:
    rot = _euler_xyz(math.radians(35.0), math.radians(-20.0), 0.0)
    center = np.array([0.2, -0.1, -4.0])
    slab = ShapeSpec("cube", tuple(center), (math.radians(35.0), math.radians(-20.0), 0.0), (60.0, 60.0, 0.02), PLAIN)
    lens = 24.0
    depth, intr = _render(tmp_path, _known_scene([slab], lens_mm=lens))
    expected = _box_depth(_pixel_rays(lens), center, rot, np.array([60.0, 60.0, 0.02]))
    assert expected.min() > 1.0 and np.ptp(expected) > 1.0  # a strongly slanted plane fills the view
    assert np.abs(depth - expected).max() < 1e-3

    # The intrinsics JSON is the camera's K: equal to Blender's own view frame of the camera ...
    fx, fy, cx, cy = _k_from_view_frame(bpy.context.scene.camera, W, H)
    assert (intr["fx"], intr["fy"], intr["cx"], intr["cy"]) == pytest.approx((fx, fy, cx, cy), abs=1e-4)
    # ... and unprojecting the depth with it (OpenCV: x right, y down, z forward) lands on the known plane.
    u, v = np.meshgrid(np.arange(W), np.arange(H))
    pts_cv = np.stack([(u - intr["cx"]) / intr["fx"] * depth, (v - intr["cy"]) / intr["fy"] * depth, depth], -1)
    pts_blender = pts_cv * np.array([1.0, -1.0, -1.0])
    normal = rot @ np.array([0.0, 0.0, 1.0])
    front = center + 0.02 * normal
    assert np.abs((pts_blender - front) @ normal).max() < 1e-3


def _k_from_view_frame(cam: Any, width: int, height: int) -> tuple[float, float, float, float]:
    """fx, fy, cx, cy from Blender's own image-plane corners of the camera (pixel-centre convention)."""
    corners = np.array([tuple(c) for c in cam.data.view_frame(scene=bpy.context.scene)])
    z = -corners[0, 2]
    x_left, x_right = corners[:, 0].min(), corners[:, 0].max()
    y_bottom, y_top = corners[:, 1].min(), corners[:, 1].max()
    return (width * z / (x_right - x_left), height * z / (y_top - y_bottom),
            -x_left / (x_right - x_left) * width - 0.5, y_top / (y_top - y_bottom) * height - 0.5)


@pytest.mark.parametrize("fit,size,shift", [("AUTO", (64, 48), (0.1, -0.05)), ("AUTO", (48, 64), (-0.2, 0.1)),
                                            ("VERTICAL", (64, 48), (0.0, 0.2)), ("HORIZONTAL", (40, 60), (0.1, 0.1))])
def test_intrinsics_match_blender_view_frame(fit: str, size: tuple[int, int], shift: tuple[float, float]) -> None:
    scene = blender_scene.build_scene(_known_scene([]), blender_scene.RenderSettings(*size, samples=1))
    cam: Any = scene.camera
    cam.data.sensor_fit, cam.data.sensor_width, cam.data.sensor_height = fit, 36.0, 24.0
    cam.data.shift_x, cam.data.shift_y = shift
    k = blender_camera_intrinsics(lens_mm=cam.data.lens, width=size[0], height=size[1], sensor_width_mm=36.0,
                                  sensor_height_mm=24.0, sensor_fit=fit, shift_x=shift[0], shift_y=shift[1])
    assert (k.fx, k.fy, k.cx, k.cy) == pytest.approx(_k_from_view_frame(cam, *size), abs=1e-4)  # float32 frame


def test_box_matches_ray_casting_and_background_is_invalid(tmp_path: Path) -> None:
    angles = (math.radians(20.0), math.radians(30.0), math.radians(-10.0))
    center, half = np.array([0.15, -0.1, -2.5]), np.array([0.7, 0.5, 0.4])
    box = ShapeSpec("cube", tuple(center), angles, tuple(half), PLAIN)
    lens = 30.0
    depth, _ = _render(tmp_path, _known_scene([box], lens_mm=lens))
    rot = _euler_xyz(*angles)
    expected, face = _box_hits(_pixel_rays(lens), center, rot, half)
    # A pixel whose centre ray grazes an edge (the face hit changes within 0.01 px) is ambiguous in float32.
    shifted = [_box_hits(_pixel_rays(lens, du, dv), center, rot, half)[1] for du, dv in
               ((0.01, 0), (-0.01, 0), (0, 0.01), (0, -0.01))]
    stable = np.all([s == face for s in shifted], axis=0)
    assert stable.mean() > 0.98
    hit = expected > 0
    assert 0.1 < hit.mean() < 0.9  # both the box and the background are in view
    assert np.abs(depth - expected)[stable].max() < 1e-3
    assert np.all(depth[stable & ~hit] == 0.0)  # sky: no surface -> invalid, not 1e10


def test_imported_mesh_is_normalised_and_placed(tmp_path: Path) -> None:
    # An off-centre 2 m cube in an OBJ file: normalised to half-extent 1, then scaled by 0.5 at z = -3,
    # so its front face lies at z = -2.5.
    mesh_dir = tmp_path / "meshes"
    mesh_dir.mkdir()
    verts = [(x, y, z) for x in (5, 7) for y in (1, 3) for z in (-2, 0)]
    faces = [(1, 2, 4, 3), (5, 7, 8, 6), (1, 5, 6, 2), (3, 4, 8, 7), (1, 3, 7, 5), (2, 6, 8, 4)]
    (mesh_dir / "cube.obj").write_text("".join(f"v {x} {y} {z}\n" for x, y, z in verts)
                                      + "".join("f " + " ".join(map(str, f)) + "\n" for f in faces))
    (path,) = mesh_files_in(mesh_dir)
    obj = ShapeSpec("mesh_file", (0.0, 0.0, -3.0), (0.0, 0.0, 0.0), (0.5, 0.5, 0.5), PLAIN, mesh_path=path)
    depth, _ = _render(tmp_path, _known_scene([obj], lens_mm=50.0))
    expected = _box_depth(_pixel_rays(50.0), np.array([0.0, 0.0, -3.0]), np.eye(3), np.full(3, 0.5))
    interior = expected > 0
    assert interior.sum() > 100
    assert np.abs(depth[H // 2 - 5: H // 2 + 5, W // 2 - 5: W // 2 + 5] - 2.5).max() < 1e-3
    assert np.array_equal(depth > 0, interior)


# ---------------------------------------------------------------------------------------------------------------------
# The generator end to end: folder format, determinism, resume


def test_generate_is_deterministic_resumable_and_readable_by_the_trainer(tmp_path: Path) -> None:
    from trainer.data.folder import FolderReader

    kw: dict[str, Any] = dict(width=W, height=H, samples=4, denoise="fast", device="cpu", progress=False)
    out = tmp_path / "a"
    stats = generate(out, 3, seed=5, **kw)
    assert (stats.rendered, stats.skipped) == (3, 0)
    names = [frame_name(i) for i in range(3)]
    assert sorted((out / "train.txt").read_text().split() + (out / "val.txt").read_text().split()) == names

    # The trainer's own reader takes the folder as it is.
    reader = FolderReader(out, "train")
    for name in reader.names():
        sample = reader.load(name)
        assert sample.rgb.shape == (H, W, 3) and sample.depth.shape == (H, W)
        assert sample.valid.mean() > 0.3 and sample.intrinsics is not None
        assert sample.intrinsics["cx"] == W / 2 - 0.5 and sample.intrinsics["cy"] == H / 2 - 0.5

    # Same seed, another folder: identical frames. Another seed: different ones.
    generate(tmp_path / "b", 3, seed=5, **kw)
    generate(tmp_path / "c", 1, seed=6, **kw)
    for name in names:
        for sub in ("depth/{}.npy", "intrinsics/{}.json"):
            assert (out / sub.format(name)).read_bytes() == (tmp_path / "b" / sub.format(name)).read_bytes()
        # Cycles' colour sums vary in the last float bit between renders, which can flip an 8-bit rounding.
        rgb_a = np.asarray(Image.open(out / f"rgb/{name}.png"), dtype=np.int16)
        rgb_b = np.asarray(Image.open(tmp_path / "b" / f"rgb/{name}.png"), dtype=np.int16)
        assert np.abs(rgb_a - rgb_b).max() <= 1 and (rgb_a != rgb_b).mean() < 0.01
    assert not np.array_equal(np.load(out / "depth/000000.npy"), np.load(tmp_path / "c/depth/000000.npy"))

    # Resume: frame 1 lost its RGB (killed before the last rename) and left a temporary file behind.
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and "000000" in p.name}
    depth1 = np.load(out / "depth/000001.npy")
    rgb2 = np.asarray(Image.open(out / "rgb/000002.png"), dtype=np.int16)
    (out / "rgb/000001.png").unlink()
    for sub in ("rgb/000002.png", "depth/000002.npy", "intrinsics/000002.json"):  # frame 2 deleted entirely
        (out / sub).unlink()
    stale = out / "rgb" / ".000001.abc.tmp.png"
    stale.write_bytes(b"half")
    other = out / "depth" / ".000007.xyz.tmp.npy"  # another process's frame in flight: not ours to remove
    other.write_bytes(b"busy")
    stats = generate(out, 3, seed=5, **kw)
    assert (stats.rendered, stats.skipped) == (2, 1)
    assert frame_done(out, "000001") and frame_done(out, "000002") and not stale.exists() and other.exists()
    other.unlink()
    assert np.array_equal(np.load(out / "depth/000001.npy"), depth1)
    assert np.abs(np.asarray(Image.open(out / "rgb/000002.png"), dtype=np.int16) - rgb2).max() <= 1
    assert len(mtimes) == 3
    for p, t in mtimes.items():
        assert p.stat().st_mtime_ns == t, p  # the finished frame is untouched

    # Resuming with another resolution is refused instead of mixing two data sets.
    with pytest.raises(SynthOutputError, match="width: folder has 64, this run 32"):
        generate(out, 3, seed=5, **{**kw, "width": 32})


def test_every_scene_kind_renders_in_its_depth_range(tmp_path: Path) -> None:
    ranges = {"tabletop": (0.05, 4.0), "room": (0.1, 12.0), "street": (0.5, 200.0)}
    for kind, (lo, hi) in ranges.items():
        spec = sample_scene(11, 0, kinds=(kind,))
        depth, _ = _render(tmp_path / kind, spec)
        valid = depth[depth > 0]
        assert valid.size > 0.5 * depth.size, kind
        assert lo < valid.min() and valid.max() < hi, (kind, valid.min(), valid.max())
        if kind != "street":
            assert valid.size == depth.size, kind  # closed scenes: no sky anywhere
    assert os.listdir(tmp_path / "room" / "depth") == ["000000.npy"]  # no scratch EXR left behind


def test_cli_renders_and_exr_depth_equals_npy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from trainer.synth.__main__ import main

    common = ["--count", "1", "--resolution", "32x24", "--samples", "2", "--seed", "9", "--kinds", "tabletop",
              "--device", "cpu", "--no-progress"]
    assert main(["--out", str(tmp_path / "npy"), *common]) == 0
    assert "rendered 1 frames, skipped 0 already written" in capsys.readouterr().out
    assert main(["--out", str(tmp_path / "exr"), "--depth-format", "exr", *common]) == 0
    npy = read_depth(tmp_path / "npy" / "depth" / "000000.npy")
    exr = read_depth(tmp_path / "exr" / "depth" / "000000.exr")
    assert npy.shape == (24, 32) and np.isfinite(npy).all()
    assert np.array_equal(npy, exr)
    assert main(["--out", str(tmp_path / "npy"), *common]) == 0  # resumed: nothing to do
    assert "rendered 0 frames, skipped 1 already written" in capsys.readouterr().out


def test_ctrl_c_stops_after_the_current_frame(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import signal

    import trainer.synth.generate as gen

    original = gen.render_scene_to_files

    def render_then_interrupt(*args: Any, **kwargs: Any) -> None:
        signal.raise_signal(signal.SIGINT)  # arrives while "rendering": the frame must still be finished
        original(*args, **kwargs)

    monkeypatch.setattr(gen, "render_scene_to_files", render_then_interrupt)
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt, match="stopped after 1 frames"):
        generate(tmp_path, 5, width=32, height=24, samples=2, device="cpu", progress=False)
    assert signal.getsignal(signal.SIGINT) is before  # the handler is given back
    assert frame_done(tmp_path, "000000") and not (tmp_path / "rgb" / "000001.png").exists()
    assert (tmp_path / "train.txt").read_text().split() + (tmp_path / "val.txt").read_text().split() == ["000000"]
    assert not [p for p in tmp_path.rglob(".*") if p.is_file()]  # no temporary files left


def test_a_render_without_any_surface_is_refused_and_writes_nothing(tmp_path: Path) -> None:
    paths = frame_paths(tmp_path, "000000")
    with pytest.raises(RuntimeError, match=r"000000\.npy: the render saw no surface at all"):
        render_scene_to_files(_known_scene([]), paths, SETTINGS)
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]
