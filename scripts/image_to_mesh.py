#!/usr/bin/env python3
"""Photos to a .blend with metric depth meshes and matching cameras, without Blender's UI.

    blender -b -P scripts/image_to_mesh.py -- IMAGES... --out scene.blend [--model DIR] [--python PY]
        [--depth FILE] [--fov DEG | --intrinsics FX FY CX CY] [--point-cloud] [--stride N]
        [--steps N] [--ensemble N] [--processing-resolution N] [--device DEV] [--no-vertex-limit]
        [--render preview.png] [--render-side side.png] [--ply DIR]

or the same with ``python scripts/image_to_mesh.py ...`` where ``bpy`` (Blender as a Python module) is installed.
Predicted depths are kept next to the .blend, in ``<out>_depth/NAME_depth.npy`` (metres, float32).
Each image goes into its own collection, side by side along X. ``--depth`` takes an existing depth file (.npy,
.exr, 16-bit PNG in mm) for a single image and needs no model or worker. ``--render`` renders each image's mesh
through its own camera (Cycles, a few samples, 640 px wide) with a light, the other images' objects hidden: with
several images ``preview.png`` becomes ``preview_NAME.png`` per image (:func:`preview_paths`). ``--render-side``
does the same from a camera orbited 30 degrees about the mesh's centre, where the depth shows as 3D.
A mesh keeps at most about a million vertices (a larger stride for large photos) unless ``--no-vertex-limit``;
the size is printed before building. Ctrl-C cancels the prediction and exits with status 130; the .blend is
written only once every image is done.
``--ply DIR`` also writes ``DIR/NAME.ply``: each image's depth as a coloured point cloud in metres, in the camera
space of the camera built for it (looking down -Z, +Y up; see ``metricgold_engine.core.pointcloud``).

The work is done by the add-on's own operators (``metricgold.image_to_depth_mesh`` etc.), run synchronously.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import signal
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # a repository script: the add-on and engine are its siblings
    sys.path.insert(0, str(REPO_ROOT))

PREVIEW_WIDTH = 640
PREVIEW_SAMPLES = 8
GAP_M = 0.5  # metres between neighbouring images' meshes
SIDE_DEGREES = 30.0  # orbit of the side view about the vertical axis through the mesh's centre


class ScriptError(Exception):
    pass


class Interrupted(Exception):
    """Ctrl-C: the run was cancelled."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="image_to_mesh.py", description="Photos to metric depth meshes and cameras in a .blend file.")
    p.add_argument("images", nargs="*", type=Path, help="photos (PNG, JPEG, ...); optional with --depth")
    p.add_argument("--out", required=True, type=Path, help="the .blend file to write")
    p.add_argument("--model", help="model folder or Hugging Face id: MetricGold, Depth Pro, Depth Anything V2 metric "
                                   "or ZoeDepth (default: the engine's built-in demo model)")
    p.add_argument("--python", dest="worker_python", help="Python of the worker environment (default: this Python)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"), help="worker device")
    p.add_argument("--depth", type=Path, help="existing depth file for a single image: no model needed")
    cam = p.add_mutually_exclusive_group()
    cam.add_argument("--fov", type=float, metavar="DEG", help="horizontal field of view in degrees")
    cam.add_argument("--intrinsics", type=float, nargs=4, metavar=("FX", "FY", "CX", "CY"),
                     help="pinhole intrinsics in pixels of the photo (OpenCV convention)")
    p.add_argument("--point-cloud", action="store_true", help="coloured points instead of a mesh")
    p.add_argument("--stride", type=int, default=None, help="use every N-th pixel (default 1; point cloud 2)")
    p.add_argument("--max-jump", type=float, default=0.05,
                   help="cut faces across relative depth jumps above this (default 0.05; 0 keeps all faces)")
    p.add_argument("--steps", type=int, default=0, help="denoising steps (default: the model's)")
    p.add_argument("--ensemble", type=int, default=0, help="ensemble size (default: the model's)")
    p.add_argument("--processing-resolution", type=int, default=-1,
                   help="longest side the model works at (default: the model's; 0: the image's own)")
    p.add_argument("--no-vertex-limit", action="store_true",
                   help="a vertex at every (stride-th) pixel however large the photo (default: at most about a "
                        "million vertices, or the processing resolution's pixel count where larger)")
    p.add_argument("--render", type=Path,
                   help="also render a preview PNG of each image through its own camera (several images: "
                        "PREVIEW_NAME.png each)")
    p.add_argument("--render-side", type=Path,
                   help="also render a PNG from a camera orbited SIDE_DEGREES about each mesh's centre, which shows "
                        "the depth as 3D (seen through the photo's own camera, a mesh looks like the photo)")
    p.add_argument("--ply", type=Path, metavar="DIR",
                   help="also write DIR/NAME.ply per image: binary PLY point cloud in metres through the built camera")
    args = p.parse_args(argv)
    if not args.images and not args.depth:
        p.error("give at least one image (or --depth FILE)")
    if args.depth and len(args.images) > 1:
        p.error("--depth is for a single image")
    if args.stride is not None and args.stride < 1:
        p.error("--stride must be >= 1")
    return args


def script_argv() -> list[str]:
    """Arguments after ``--`` under ``blender -P``; all arguments under plain Python."""
    argv = sys.argv
    return argv[argv.index("--") + 1:] if "--" in argv else argv[1:]


def geometry_kwargs(args: argparse.Namespace) -> dict:
    kw: dict = {"stride": args.stride or (2 if args.point_cloud else 1)}
    if args.fov is not None:
        kw.update(intrinsics_mode="FOV", fov=math.radians(args.fov))
    elif args.intrinsics is not None:
        fx, fy, cx, cy = args.intrinsics
        kw.update(intrinsics_mode="INTRINSICS", fx=fx, fy=fy, cx=cx, cy=cy)
    kw.update(cut_discontinuities=args.max_jump > 0, max_relative_jump=max(args.max_jump, 0.0))
    kw["limit_vertices"] = not args.no_vertex_limit
    return kw


def intrinsics_from_camera(cam: dict, width: int, height: int, aspect_x: float = 1.0, aspect_y: float = 1.0):
    """The pinhole intrinsics a Blender camera built by the add-on shows (sensor fit HORIZONTAL, lens shift), for a
    render of ``width`` x ``height``: the inverse of ``mesh_builder.camera_settings``."""
    from metricgold_engine.core.geometry import Intrinsics

    fx = cam["lens"] * width / cam["sensor_width"]
    fy = fx * aspect_x / aspect_y  # non-square pixels are a pixel aspect
    cx = (width - 1) / 2.0 - cam["shift_x"] * width
    cy = (height - 1) / 2.0 + cam["shift_y"] * fy * width / fx
    return Intrinsics(fx, fy, cx, cy, int(width), int(height))


def write_point_cloud(bpy, scene, ply_path: Path, depth_path: Path, photo: Path | None) -> None:
    """``ply_path`` from the depth file, the scene camera built for it and the photo's pixels (as Blender loaded
    them, sampled at the depth's pixels)."""
    import numpy as np

    from metricgold_blender import mesh_builder
    from metricgold_engine.core.depth_io import read_depth
    from metricgold_engine.core.pointcloud import write_depth_ply

    depth = read_depth(depth_path)
    cam, render = scene.camera.data, scene.render
    k = intrinsics_from_camera(
        {"lens": cam.lens, "sensor_width": cam.sensor_width, "shift_x": cam.shift_x, "shift_y": cam.shift_y},
        render.resolution_x, render.resolution_y, render.pixel_aspect_x, render.pixel_aspect_y)
    hd, wd = depth.shape
    if (k.width, k.height) != (wd, hd):
        k = k.scaled(wd, hd)
    rgb = None
    image = None
    if photo is not None:
        target = os.path.realpath(photo)
        image = next((im for im in bpy.data.images
                      if im.filepath and os.path.realpath(bpy.path.abspath(im.filepath)) == target), None)
    if image is not None:
        rgba = mesh_builder.image_pixels(image).astype(np.float64)  # row 0 at the top
        px = rgba[..., :3]
        if image.is_float:  # linear values: encode as sRGB like the photo's bytes
            px = np.clip(px, 0.0, 1.0)
            px = np.where(px <= 0.0031308, 12.92 * px, 1.055 * px ** (1 / 2.4) - 0.055)
        if mesh_builder.image_has_alpha(image):  # on white, in sRGB-encoded values, as the depth's input was
            alpha = np.clip(rgba[..., 3:], 0.0, 1.0)
            px = alpha * px + (1.0 - alpha)
        hi, wi = px.shape[:2]
        rows = np.clip(np.rint((np.arange(hd) + 0.5) * hi / hd - 0.5), 0, hi - 1).astype(np.int64)
        cols = np.clip(np.rint((np.arange(wd) + 0.5) * wi / wd - 0.5), 0, wi - 1).astype(np.int64)
        rgb = np.clip(np.rint(px[np.ix_(rows, cols)] * 255.0), 0, 255).astype(np.uint8)
    write_depth_ply(ply_path, depth, k, rgb=rgb)


def preview_paths(path: Path, names: list[str]) -> list[Path]:
    """Where each image's render goes: ``path`` itself for one image; ``STEM_NAME.SUFFIX`` for several (NAME the
    image's file stem, made safe; ``STEM_N_NAME`` with N counting from 1 where two stems are the same)."""
    if len(names) == 1:
        return [path]
    safe = [re.sub(r"[^A-Za-z0-9_.-]+", "_", n) or "image" for n in names]
    unique = len(set(safe)) == len(safe)
    return [path.with_name(f"{path.stem}_{n if unique else f'{i + 1}_{n}'}{path.suffix}") for i, n in enumerate(safe)]


def interrupt_handler() -> tuple[dict, object]:
    """Make Ctrl-C raise KeyboardInterrupt here, whatever handler Blender installed for SIGINT (in background mode
    a version may install its own, which need not raise anything in Python); the operator's synchronous loop turns
    it into a cancel of the worker's request. Returns a flag set on Ctrl-C and the previous handler (to restore)."""
    state = {"interrupted": False}

    def on_sigint(signum, frame):
        state["interrupted"] = True
        raise KeyboardInterrupt

    return state, signal.signal(signal.SIGINT, on_sigint)


def render_preview(bpy, scene, out: Path) -> None:
    """A small Cycles render through the scene camera, with a sun; written atomically."""
    from metricgold_engine.core.depth_io import atomic_write

    if scene.camera is None:
        raise ScriptError("nothing to render: no camera was created")
    if "MetricGold preview light" not in scene.objects:
        light_data = bpy.data.lights.new("MetricGold preview light", "SUN")
        light_data.energy = 3.0
        light = bpy.data.objects.new("MetricGold preview light", light_data)
        light.rotation_euler = (math.radians(50.0), 0.0, math.radians(30.0))
        scene.collection.objects.link(light)
    if scene.world is None:
        scene.world = bpy.data.worlds.new("World")
    render = scene.render
    scene.view_settings.view_transform = "Standard"  # show the photo's colours as they are
    render.engine = "CYCLES"
    scene.cycles.samples = PREVIEW_SAMPLES
    scene.cycles.device = "CPU"
    render.resolution_percentage = max(1, round(100 * PREVIEW_WIDTH / render.resolution_x))
    render.image_settings.file_format = "PNG"
    with atomic_write(out) as tmp:
        render.filepath = str(tmp)
        render.use_file_extension = False
        bpy.ops.render.render(write_still=True)
        if not tmp.exists() or tmp.stat().st_size == 0:
            raise ScriptError(f"Blender did not write the render to {tmp}")


def render_side_view(bpy, scene, out: Path, mesh=None, degrees: float = SIDE_DEGREES) -> None:
    """Render from a copy of the scene camera pulled back and orbited ``degrees`` about the world's vertical axis
    through the centre of ``mesh``'s bounding box (default: the last mesh), then put the photo's camera back (the
    .blend is saved before this). It orbits towards the side where the scene is deeper, so it does not end up behind
    a near wall."""
    import numpy as np
    from mathutils import Matrix, Vector

    camera = scene.camera
    meshes = [o for o in scene.objects if o.type == "MESH"]
    if camera is None or not meshes:
        raise ScriptError("nothing to render: no camera or mesh was created")
    mesh = mesh if mesh is not None else meshes[-1]
    points = np.empty(len(mesh.data.vertices) * 3)
    mesh.data.vertices.foreach_get("co", points)
    to_camera = np.array(camera.matrix_world.inverted() @ mesh.matrix_world)
    xyz = points.reshape(-1, 3) @ to_camera[:3, :3].T + to_camera[:3, 3]  # camera looks along -Z, x to the right
    right = xyz[:, 0] > 0
    right_deeper = bool(right.any() and (~right).any() and -xyz[right, 2].mean() > -xyz[~right, 2].mean())
    centre = sum((mesh.matrix_world @ Vector(c) for c in mesh.bound_box), Vector()) / 8.0
    pull_back = camera.matrix_world.to_3x3() @ Vector((0.0, 0.0, 0.5 * (centre - camera.location).length))
    angle = math.radians(degrees if right_deeper else -degrees)
    orbit = Matrix.Translation(centre) @ Matrix.Rotation(angle, 4, "Z") @ Matrix.Translation(-centre)
    side = bpy.data.objects.new("MetricGold side view", camera.data)
    side.matrix_world = orbit @ Matrix.Translation(pull_back) @ camera.matrix_world
    scene.collection.objects.link(side)
    scene.camera = side
    try:
        render_preview(bpy, scene, out)
    finally:
        scene.camera = camera
        bpy.data.objects.remove(side)


class Built:
    """One image's collection, camera, mesh and render settings, to render it alone through its camera."""

    def __init__(self, scene, name: str) -> None:
        self.name = name
        self.camera = scene.camera
        self.collection = self.camera.users_collection[0]
        self.mesh = next(o for o in self.collection.objects if o.type == "MESH")
        r = scene.render
        self.render = {k: getattr(r, k) for k in ("resolution_x", "resolution_y", "pixel_aspect_x", "pixel_aspect_y")}


def render_each(bpy, scene, built: list[Built], path: Path, side: bool) -> list[str]:
    """Render every image through its own camera at its own size, the other images' collections hidden."""
    messages = []
    saved_camera, saved_render = scene.camera, {k: getattr(scene.render, k) for k in built[-1].render}
    hidden = {b.collection.name: b.collection.hide_render for b in built}
    try:
        for b, out in zip(built, preview_paths(path.resolve(), [b.name for b in built])):
            for other in built:
                other.collection.hide_render = other is not b
            scene.camera = b.camera
            for key, value in b.render.items():
                setattr(scene.render, key, value)
            if side:
                render_side_view(bpy, scene, out, mesh=b.mesh)
            else:
                render_preview(bpy, scene, out)
            messages.append(f"rendered {out}{' (side view)' if side else ''}")
    finally:
        for b in built:
            b.collection.hide_render = hidden[b.collection.name]
        scene.camera = saved_camera
        for key, value in saved_render.items():
            setattr(scene.render, key, value)
    return messages


def right_edge_m(scene) -> float:
    """World X (metres) of the right-most mesh corner in the scene."""
    from mathutils import Vector

    unit = scene.unit_settings.scale_length or 1.0
    xs = [(o.matrix_world @ Vector(corner)).x for o in scene.objects if o.type == "MESH" for corner in o.bound_box]
    return max(xs) * unit if xs else 0.0


def model_argument(model: str | None) -> str:
    """The operator's ``model_dir``: a local folder made absolute, a Hugging Face id as it is, "" for the default."""
    if not model:
        return ""
    from metricgold_engine.core.demo_model import is_hub_id

    return model if is_hub_id(model) else str(Path(model).expanduser().resolve())


def run(args: argparse.Namespace) -> list[str]:
    import bpy

    import metricgold_blender

    out = args.out.resolve()
    if out.suffix != ".blend":
        raise ScriptError(f"--out must end in .blend, got {out}")
    if not out.parent.is_dir():
        raise ScriptError(f"--out: the folder {out.parent} does not exist")
    if args.ply and not args.ply.is_dir():
        raise ScriptError(f"--ply: the folder {args.ply} does not exist")
    for image in args.images:
        if not image.is_file():
            raise ScriptError(f"image not found: {image}")

    bpy.ops.wm.read_factory_settings(use_empty=True)
    metricgold_blender.register()
    interrupt, previous_handler = interrupt_handler()  # after bpy is set up: it may have installed its own
    try:
        messages = []
        built: list[Built] = []
        x = 0.0
        jobs = [(None, args.images[0] if args.images else None)] if args.depth else [(im, im) for im in args.images]
        for source, photo in jobs:
            kw = geometry_kwargs(args)
            kw["location"] = (x, 0.0, 0.0)
            try:
                if args.depth:
                    result = bpy.ops.metricgold.depth_map_to_mesh(
                        filepath=str(args.depth.resolve()), image_path=str(photo.resolve()) if photo else "",
                        point_cloud=args.point_cloud, **kw)
                else:
                    op = (bpy.ops.metricgold.image_to_point_cloud if args.point_cloud
                          else bpy.ops.metricgold.image_to_depth_mesh)
                    result = op(
                        filepath=str(source.resolve()), worker_python=args.worker_python or sys.executable,
                        model_dir=model_argument(args.model), synchronous=True,
                        steps=args.steps, ensemble=args.ensemble, processing_resolution=args.processing_resolution,
                        device=args.device, depth_dir=str(out.with_name(out.stem + "_depth")), **kw)
            except RuntimeError as e:  # the operator's own report
                if interrupt["interrupted"]:
                    raise Interrupted() from None
                raise ScriptError(str(e).removeprefix("Error: ")) from None
            if interrupt["interrupted"]:  # the operator cancelled the worker's request
                raise Interrupted()
            if result != {"FINISHED"}:
                raise ScriptError(f"{photo or args.depth}: {result}")
            built.append(Built(bpy.context.scene, Path(photo or args.depth).stem))
            # The next image goes to the right of everything built so far.
            x = right_edge_m(bpy.context.scene) + GAP_M
            camera = bpy.context.scene.camera
            source = camera.get("metricgold_camera")
            messages.append(f"{Path(photo or args.depth).name}: {camera.name} and its "
                            f"{'points' if args.point_cloud else 'mesh'}"
                            + (f"; camera from {source}" if source else ""))
            if args.ply:
                stem = Path(photo or args.depth).stem
                depth_path = args.depth or out.with_name(out.stem + "_depth") / f"{stem}_depth.npy"
                ply_path = args.ply.resolve() / f"{stem}.ply"
                write_point_cloud(bpy, bpy.context.scene, ply_path, depth_path, photo)
                messages.append(f"wrote {ply_path}")
        bpy.ops.wm.save_as_mainfile(filepath=str(out), check_existing=False)  # Blender writes via a temp file
        messages.append(f"wrote {out}")
        if args.render:
            messages += render_each(bpy, bpy.context.scene, built, args.render, side=False)
        if args.render_side:
            messages += render_each(bpy, bpy.context.scene, built, args.render_side, side=True)
        return messages
    finally:
        if previous_handler is not None:  # None: a handler not set from Python, which cannot be put back
            signal.signal(signal.SIGINT, previous_handler)
        metricgold_blender.unregister()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(script_argv() if argv is None else argv)
    try:
        for line in run(args):
            print(f"image_to_mesh: {line}")
    except ScriptError as e:
        print(f"image_to_mesh: error: {e}", file=sys.stderr)
        return 1
    except (Interrupted, KeyboardInterrupt):
        print("image_to_mesh: cancelled (Ctrl-C)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    code = main()
    if code:
        sys.exit(code)
