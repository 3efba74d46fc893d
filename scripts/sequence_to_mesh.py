#!/usr/bin/env python3
"""A depth sequence (numbered EXRs) to a .blend whose one mesh plays it back with the timeline (Geometry Nodes).

    blender -b -P scripts/sequence_to_mesh.py -- DEPTH --out scene.blend [--texture PHOTOS|MOVIE]
        [--camera-file camera.json | --fov DEG | --intrinsics FX FY CX CY] [--stride N] [--max-jump F]
        [--start-frame N]
    blender -b -P scripts/sequence_to_mesh.py -- clip.mp4 --predict --out scene.blend [--model M] [--python PY]
        [--device auto] [--smooth ALPHA]

With ``--predict`` the input is a video, a folder of photos or a printf pattern: the worker (``--python``, default
this Python) predicts its depth sequence into ``OUT_depth/`` (resumable: frames already there are kept), then the
mesh is built from it with the frames as its texture.

or the same with ``python scripts/sequence_to_mesh.py ...`` where ``bpy`` (Blender as a Python module) is installed.
DEPTH is the folder of numbered depth EXRs (``predict clip.mp4``, ``trainer.synth --sequence``), one of them, or the
sequence's camera file (``NAME_camera.json`` of ``predict``, ``camera.json`` of a synthetic sequence), which names
the depth files and gives the camera. The camera comes from ``--camera-file`` (``{"width", "height", "intrinsics": {"fx", "fy", "cx", "cy"}}``,
e.g. a synthetic sequence's ``camera.json``), else ``--intrinsics`` / ``--fov`` in pixels of the photos (or of the
depth without photos), else a 55 degree horizontal field of view. Prints one line: the object, frames, vertices.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # a repository script: the add-on and engine are its siblings
    sys.path.insert(0, str(REPO_ROOT))


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="sequence_to_mesh.py",
                                description="A depth EXR sequence to one timeline-driven mesh in a .blend file.")
    p.add_argument("depth", type=Path,
                   help="folder of numbered depth EXRs, one of them, or the sequence's NAME_camera.json")
    p.add_argument("--out", required=True, type=Path, help="the .blend file to write")
    p.add_argument("--predict", action="store_true",
                   help="the input is a video, folder of photos or pattern: predict its depth through the worker first")
    p.add_argument("--model", help="with --predict: model folder or Hub id (default: the built-in demo model)")
    p.add_argument("--python", help="with --predict: the worker's Python (default: this Python)")
    p.add_argument("--device", default="auto", help="with --predict: auto, cpu, cuda, cuda:N, mps")
    p.add_argument("--smooth", type=float, metavar="ALPHA",
                   help="with --predict: temporal smoothing of the log depth (docs/sequences.md)")
    p.add_argument("--texture", type=Path, help="numbered photos (folder or one of them) or a movie file")
    cam = p.add_mutually_exclusive_group()
    cam.add_argument("--camera-file", type=Path, help="JSON with width, height and intrinsics fx, fy, cx, cy")
    cam.add_argument("--fov", type=float, metavar="DEG", help="horizontal field of view in degrees")
    cam.add_argument("--intrinsics", type=float, nargs=4, metavar=("FX", "FY", "CX", "CY"),
                     help="pinhole intrinsics in pixels of the photos (OpenCV convention)")
    p.add_argument("--stride", type=int, default=1, help="use every N-th pixel (default 1)")
    p.add_argument("--max-jump", type=float, default=0.05,
                   help="cut edges across relative depth jumps above this (default 0.05; 0 keeps all)")
    p.add_argument("--start-frame", type=int, default=1, help="scene frame of the first depth file (default 1)")
    p.add_argument("--shading", choices=("EMISSION", "PRINCIPLED"), default="EMISSION")
    args = p.parse_args(argv)
    if args.stride < 1:
        p.error("--stride must be at least 1")
    return args


def script_argv() -> list[str]:
    """Arguments after ``--`` under ``blender -b -P``, else all of them."""
    return sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else sys.argv[1:]


def predict_depth_sequence(args: argparse.Namespace) -> None:
    """The worker's predict_sequence on ``args.depth`` (the video or photos) into ``OUT_depth/``; afterwards
    ``args.depth`` is the sequence's camera file and the frames are the texture (unless one was given)."""
    from metricgold_blender.engine import client as worker_client

    source = args.depth
    out_dir = args.out.with_name(args.out.stem + "_depth")
    options = {} if args.smooth is None else {"smoothing_alpha": args.smooth}
    # The worker's own Python must not inherit Blender's PYTHONHOME/PYTHONPATH.

    def report(progress: Any) -> None:
        if progress.stage == "frame":
            print(f"frame {progress.step}/{progress.total}", file=sys.stderr, flush=True)

    with worker_client.WorkerClient(args.python or sys.executable, model=args.model, device=args.device,
                                    env={"PYTHONHOME": None, "PYTHONPATH": None}) as worker:
        result = worker.predict_sequence(source, out_dir, on_progress=report, **options)
    print(f"{source}: {result['written']} frame(s) predicted, {result['skipped']} already there, in {out_dir}",
          file=sys.stderr)
    args.depth = Path(result["camera_path"])
    if args.texture is None:
        args.texture = source


def run(args: argparse.Namespace) -> str:
    import bpy

    from metricgold_blender import sequence_mesh
    from metricgold_blender.engine import geometry

    bpy.ops.wm.read_homefile(use_empty=True)
    if args.predict:
        predict_depth_sequence(args)
    texture = str(args.texture) if args.texture else None
    if args.depth.suffix.lower() == ".json":  # a sequence camera file: its intrinsics and the depth files it names
        args.camera_file = args.camera_file or args.depth
        args.depth = sequence_mesh.depth_files_of_camera_file(args.depth)
    if args.camera_file:
        k = sequence_mesh.read_camera_file(args.camera_file)
    else:
        from_photos = texture is not None and not texture.lower().endswith(sequence_mesh.MOVIE_SUFFIXES)
        first = (sequence_mesh.numbered_files(texture, sequence_mesh.IMAGE_SUFFIXES) if from_photos
                 else sequence_mesh.numbered_files(args.depth, (".exr",))).paths[0]
        width, height = sequence_mesh.image_file_size(first)
        k, _ = geometry.resolve_intrinsics(width, height, intrinsics=args.intrinsics, fov_deg=args.fov)
    result = sequence_mesh.build_sequence_mesh(
        bpy.context, args.depth, k, name=sequence_mesh.sequence_name(str(args.depth)),
        texture_path=texture, stride=args.stride, max_relative_jump=args.max_jump or None, shading=args.shading,
        start_frame=args.start_frame)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    bpy.ops.wm.save_as_mainfile(filepath=str(args.out.resolve()))
    return (f"{args.out}: {result.object.name}: {result.frame_count} frames (scene frames {result.frame_start}-"
            f"{result.frame_start + result.frame_count - 1}), {result.vertex_count} vertices")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(script_argv() if argv is None else argv)
    from metricgold_blender.mesh_builder import BuildError

    from metricgold_blender.engine import client as worker_client

    try:
        print(run(args))
    except (BuildError, ValueError, OSError, worker_client.MetricGoldError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
