"""scripts/image_to_mesh.py as a user runs it (``python scripts/image_to_mesh.py ...`` with bpy installed).

Each run is a fresh process, like ``blender -b -P``; the .blend it writes is opened in another fresh process and
described as JSON, so nothing here depends on the state of this test process's bpy.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("bpy")

from metricgold_engine.core import depth_io  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "scripts" / "image_to_mesh.py"

DESCRIBE = r"""
import json, sys, bpy
bpy.ops.wm.open_mainfile(filepath=sys.argv[1])
s = bpy.context.scene
out = {"collections": {}, "camera": s.camera.name if s.camera else None,
       "resolution": [s.render.resolution_x, s.render.resolution_y]}
for c in bpy.data.collections:
    objs = {}
    for o in c.objects:
        d = {"type": o.type, "location": list(o.matrix_world.translation)}
        if o.type == "MESH":
            d.update(vertices=len(o.data.vertices), faces=len(o.data.polygons),
                     attributes=sorted(a.name for a in o.data.attributes if not a.name.startswith(".")),
                     images=sorted(n.image.name for m in o.data.materials for n in m.node_tree.nodes
                                   if n.type == "TEX_IMAGE" and n.image))
        if o.type == "CAMERA":
            d.update(lens=o.data.lens, sensor_width=o.data.sensor_width, shift_x=o.data.shift_x,
                     shift_y=o.data.shift_y)
        objs[o.name] = d
    out["collections"][c.name] = objs
print("JSON" + json.dumps(out))
"""


def run_script(*args, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"script failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def describe(blend: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", DESCRIBE, str(blend)], capture_output=True, text=True, check=True)
    line = next(line for line in proc.stdout.splitlines() if line.startswith("JSON"))
    return json.loads(line[4:])


def make_photo(path: Path, w: int, h: int, seed: int = 0) -> Path:
    Image.fromarray((np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)).save(path)
    return path


def test_depth_file_intrinsics_and_render(tmp_path):
    photo = make_photo(tmp_path / "desk.png", 32, 24)
    depth_io.write_depth_npy(tmp_path / "desk_depth.npy", np.linspace(1.0, 3.0, 24 * 32).reshape(24, 32))
    out = tmp_path / "scene.blend"
    proc = run_script(photo, "--depth", tmp_path / "desk_depth.npy", "--intrinsics", 30, 30, 15.5, 11.5,
                      "--out", out, "--render", tmp_path / "preview.png", "--render-side", tmp_path / "side.png")
    assert "wrote" in proc.stdout
    info = describe(out)
    objs = info["collections"]["MetricGold desk"]
    assert objs["MetricGold desk"]["vertices"] == 32 * 24
    assert objs["MetricGold desk"]["images"] == ["desk.png"]
    assert {"depth", "UVMap"} <= set(objs["MetricGold desk"]["attributes"])
    cam = objs["MetricGold desk camera"]
    assert cam["lens"] / cam["sensor_width"] == pytest.approx(30 / 32)  # fx / W
    assert cam["shift_x"] == pytest.approx(0.0, abs=1e-7) and cam["shift_y"] == pytest.approx(0.0, abs=1e-7)
    assert info["camera"] == "MetricGold desk camera" and info["resolution"] == [32, 24]
    with Image.open(tmp_path / "preview.png") as im:
        assert im.size == (640, 480)
        pixels = np.asarray(im.convert("RGB")).astype(np.float64)
    assert pixels.std() > 10  # the photo is visible, not an empty frame
    with Image.open(tmp_path / "side.png") as im:
        side = np.asarray(im.convert("RGB")).astype(np.float64)
    # seen from the side, the mesh covers part of the frame and shows the empty world around it
    background = np.all(np.abs(side - side[0, 0]) < 2, axis=-1)
    assert side.shape == pixels.shape and 0.05 < background.mean() < 0.95, background.mean()
    assert np.abs(side - pixels).mean() > 10
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "desk.png", "desk_depth.npy", "preview.png", "scene.blend", "side.png"]  # no temp files left


def test_worker_many_images_point_cloud(tmp_path, tiny_checkpoint):
    a = make_photo(tmp_path / "a.png", 24, 16, seed=1)
    b = make_photo(tmp_path / "b.png", 20, 10, seed=2)
    out = tmp_path / "two.blend"
    run_script(a, b, "--model", tiny_checkpoint, "--device", "cpu", "--steps", 2, "--ensemble", 1,
               "--point-cloud", "--stride", 2, "--out", out)
    info = describe(out)
    pa = info["collections"]["MetricGold a"]["MetricGold a"]
    pb = info["collections"]["MetricGold b"]["MetricGold b"]
    assert pa["vertices"] == 8 * 12 and pb["vertices"] == 5 * 10 and pa["faces"] == pb["faces"] == 0
    # side by side: b's camera is to the right of a's
    assert info["collections"]["MetricGold b"]["MetricGold b camera"]["location"][0] > 0.5
    assert (tmp_path / "two_depth" / "a_depth.npy").is_file()
    assert np.load(tmp_path / "two_depth" / "b_depth.npy").shape == (10, 20)


def test_errors(tmp_path):
    proc = run_script(tmp_path / "missing.jpg", "--out", tmp_path / "x.blend", check=False)
    assert proc.returncode == 1 and "image_to_mesh: error: image not found" in proc.stderr
    photo = make_photo(tmp_path / "p.png", 8, 6)
    proc = run_script(photo, photo, "--depth", tmp_path / "d.npy", "--out", tmp_path / "x.blend", check=False)
    assert proc.returncode == 2 and "--depth is for a single image" in proc.stderr
    proc = run_script(photo, "--depth", tmp_path / "d.npy", "--out", tmp_path / "x.blend", check=False)
    assert proc.returncode == 1 and "depth file not found" in proc.stderr
    proc = run_script(photo, "--python", tmp_path / "nopython", "--out", tmp_path / "x.blend", check=False)
    assert proc.returncode == 1 and "worker Python not found" in proc.stderr
    assert not (tmp_path / "x.blend").exists()


def test_depth_pro_model_camera_from_exif_through_the_worker(tmp_path):
    """Any backend through the add-on: the worker reads the EXIF focal (Blender's Python has no Pillow), the camera
    is built from its intrinsics and the report says where the focal length came from."""
    import math

    from metricgold_engine.backends.tiny import make_tiny_depth_model

    model = make_tiny_depth_model(tmp_path / "depth-pro", "depth_pro", licence="apple-amlr")
    photo = tmp_path / "phone.jpg"
    exif = Image.Exif()
    exif[0x8769] = {0xA405: 26}  # FocalLengthIn35mmFilm
    Image.fromarray((np.random.default_rng(3).random((24, 32, 3)) * 255).astype(np.uint8)).save(
        photo, exif=exif, quality=95)
    out = tmp_path / "pro.blend"
    proc = run_script(photo, "--model", model, "--device", "cpu", "--out", out)
    assert "camera from EXIF FocalLengthIn35mmFilm 26 mm" in proc.stdout and "[exif]" in proc.stdout
    cam = describe(out)["collections"]["MetricGold phone"]["MetricGold phone camera"]
    fx = 26 * math.hypot(32, 24) / math.hypot(36, 24)  # hand formula for the 35 mm equivalent
    assert cam["lens"] / cam["sensor_width"] == pytest.approx(fx / 32)
    # The depth is Depth Pro's with EXIF's focal: transformers' depth x f_exif / f_model
    import torch
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    processor = AutoImageProcessor.from_pretrained(model)
    net = AutoModelForDepthEstimation.from_pretrained(model).eval()
    with torch.no_grad():
        outputs = net(**processor(images=Image.open(photo).convert("RGB"), return_tensors="pt"))
    ref = processor.post_process_depth_estimation(outputs, target_sizes=[(24, 32)])[0]
    expected = ref["predicted_depth"].numpy().astype(np.float64) * fx / float(ref["focal_length"])
    depth = np.load(tmp_path / "pro_depth" / "phone_depth.npy")
    assert np.max(np.abs(depth / expected - 1)) < 1e-4


def test_ply_point_cloud_through_the_built_camera(tmp_path):
    """--ply: the point cloud is the depth unprojected through the camera the script built (non-square pixels and an
    off-centre principal point, so the camera -> intrinsics inverse is exercised), coloured with the photo."""
    from test_pointcloud import read_ply, reference_points

    photo = make_photo(tmp_path / "desk.png", 32, 24, seed=3)
    depth = np.linspace(1.0, 3.0, 24 * 32).reshape(24, 32)
    depth[3, 4] = 0.0  # invalid: left out
    depth_io.write_depth_npy(tmp_path / "desk_depth.npy", depth)
    (tmp_path / "clouds").mkdir()
    proc = run_script(photo, "--depth", tmp_path / "desk_depth.npy", "--intrinsics", 30, 27, 14.0, 12.5,
                      "--out", tmp_path / "scene.blend", "--ply", tmp_path / "clouds")
    assert "desk.ply" in proc.stdout
    _, rec = read_ply(tmp_path / "clouds" / "desk.ply")
    ref, where = reference_points(depth.astype(np.float32), 30.0, 27.0, 14.0, 12.5)
    assert len(rec) == 32 * 24 - 1
    np.testing.assert_allclose(np.stack([rec["x"], rec["y"], rec["z"]], axis=1), ref, rtol=1e-5, atol=1e-6)
    rgb = np.asarray(Image.open(photo).convert("RGB"))
    np.testing.assert_array_equal(np.stack([rec["red"], rec["green"], rec["blue"]], axis=1),
                                  rgb[where[:, 0], where[:, 1]])
    assert sorted(p.name for p in (tmp_path / "clouds").iterdir()) == ["desk.ply"]


# ---- issue 14 ---------------------------------------------------------------------------------------------------


def test_vertex_limit_and_its_estimate_in_the_output(tmp_path):
    photo = make_photo(tmp_path / "wide.png", 1500, 1000)
    depth_io.write_depth_npy(tmp_path / "wide_depth.npy", np.full((1000, 1500), 3.0))
    proc = run_script(photo, "--depth", tmp_path / "wide_depth.npy", "--out", tmp_path / "a.blend")
    note = ("1500 x 1000 depth: stride 2 gives 375,000 vertices (limit 1,000,000); without the limit: 1,500,000 "
            "vertices, about 390.0 MB of memory and a 60.0 MB .blend")
    assert note in proc.stdout and proc.stdout.index(note) < proc.stdout.index("wrote")  # said before building
    assert describe(tmp_path / "a.blend")["collections"]["MetricGold wide"]["MetricGold wide"]["vertices"] == 375_000
    proc = run_script(photo, "--depth", tmp_path / "wide_depth.npy", "--no-vertex-limit", "--out", tmp_path / "b.blend")
    assert "1500 x 1000 depth, vertex limit off: 1,500,000 vertices, about 390.0 MB of memory" in proc.stdout
    assert describe(tmp_path / "b.blend")["collections"]["MetricGold wide"]["MetricGold wide"]["vertices"] == 1_500_000


def test_several_photos_each_preview_shows_its_own_mesh(tmp_path, tiny_checkpoint):
    # A red and a blue photo of different shapes: each preview must show only its own photo, at its own size.
    Image.new("RGB", (24, 16), (255, 0, 0)).save(tmp_path / "red.png")
    Image.new("RGB", (20, 10), (0, 0, 255)).save(tmp_path / "blue.png")
    out = tmp_path / "two.blend"
    proc = run_script(tmp_path / "red.png", tmp_path / "blue.png", "--model", tiny_checkpoint, "--device", "cpu",
                      "--steps", 1, "--ensemble", 1, "--max-jump", 0, "--out", out, "--render", tmp_path / "p.png")
    assert f"rendered {tmp_path / 'p_red.png'}" in proc.stdout and f"rendered {tmp_path / 'p_blue.png'}" in proc.stdout
    assert not (tmp_path / "p.png").exists()
    for name, size, own, other in (("red", (640, 426), 0, 2), ("blue", (640, 320), 2, 0)):
        with Image.open(tmp_path / f"p_{name}.png") as im:
            assert im.size == size
            px = np.asarray(im.convert("RGB")).astype(np.int64)
        mine = (px[..., own] > 150) & (px[..., other] < 60)
        theirs = (px[..., other] > 150) & (px[..., own] < 60)
        # the mesh stops half a pixel short of the frame: 19/20 x 9/10 of it for the blue photo
        assert mine.mean() > 0.8 and theirs.sum() == 0, (name, mine.mean(), theirs.sum())
    # the saved file still looks through the last photo's camera
    assert describe(out)["camera"] == "MetricGold blue camera"


INTERRUPT_WRAPPER = r"""
import runpy, signal, sys
import bpy  # noqa: F401  Blender as a module, set up before the script runs
# Blender 4.2 installs its own SIGINT handler, which only sets an internal break flag: stand in for it with one
# that does nothing at all. The script must take Ctrl-C back for itself.
signal.signal(signal.SIGINT, signal.SIG_IGN)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _children(pid: int) -> list[int]:
    """Child processes of ``pid``, started from any of its threads (the worker is started from a thread)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def test_ctrl_c_cancels_a_headless_run_whatever_handler_blender_installed(tmp_path, tiny_checkpoint):
    import os
    import signal
    import time

    photo = make_photo(tmp_path / "slow.png", 24, 16)
    out = tmp_path / "slow.blend"
    proc = subprocess.Popen(
        [sys.executable, "-c", INTERRUPT_WRAPPER, str(SCRIPT), str(photo), "--model", str(tiny_checkpoint),
         "--device", "cpu", "--steps", "200", "--ensemble", "20", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not _children(proc.pid) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        workers = _children(proc.pid)
        assert workers, "the worker did not start"
        time.sleep(8.0)  # the worker loads its model and starts denoising (200 steps x 20: minutes)
        t0 = time.monotonic()
        os.kill(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends (the worker has its own session)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, (stdout, stderr)
    assert time.monotonic() - t0 < 15
    assert "image_to_mesh: cancelled (Ctrl-C)" in stderr and "Traceback" not in stderr
    assert not out.exists()
    # the worker was shut down too (closed by the add-on, or at the end of its input if it was still starting)
    deadline = time.monotonic() + 60
    while any(Path(f"/proc/{w}").exists() for w in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(Path(f"/proc/{w}").exists() for w in workers)


def test_ply_colours_of_an_rgba_photo_are_composited_on_white(tmp_path):
    """The PLY's colours are what the depth was computed from: an RGBA photo composited on white (image_io)."""
    from test_pointcloud import read_ply

    from metricgold_engine.image_io import load_rgb_image

    rng = np.random.default_rng(5)
    rgba = (rng.random((24, 32, 4)) * 255).astype(np.uint8)
    rgba[..., 3] = np.where(rng.random((24, 32)) < 0.5, 0, rgba[..., 3])  # many fully transparent pixels
    photo = tmp_path / "cutout.png"
    Image.fromarray(rgba, mode="RGBA").save(photo)
    depth_io.write_depth_npy(tmp_path / "cutout_depth.npy", np.full((24, 32), 2.0))
    (tmp_path / "clouds").mkdir()
    run_script(photo, "--depth", tmp_path / "cutout_depth.npy", "--out", tmp_path / "scene.blend",
               "--ply", tmp_path / "clouds")
    _, rec = read_ply(tmp_path / "clouds" / "cutout.ply")
    got = np.stack([rec["red"], rec["green"], rec["blue"]], axis=1).astype(int)
    expected = np.asarray(load_rgb_image(photo)).reshape(-1, 3).astype(int)  # row-major, every pixel valid
    assert np.abs(got - expected).max() <= 1
