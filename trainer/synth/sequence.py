"""Camera-path sequences: one scene, a smooth camera move, exact depth and the camera pose of every frame.

``python -m trainer.synth --sequence N --count S ...`` renders ``S`` sequences of ``N`` frames each. Sequence ``i``
is the scene :func:`~trainer.synth.scenes.sample_scene` draws for ``(seed, i)``; its camera starts where that scene's
camera is and moves along a path drawn from ``SeedSequence([seed, i, PATH_STREAM])``: an orbit about a vertical axis
through a point ahead of the camera, a dolly along the view direction and a small rise, eased in and out
(smoothstep), so that consecutive frames overlap as in a hand-held or slider shot. A path that would take the camera
into an object is shrunk (halved, up to five times) until every pose is in free space.

Layout (each sequence folder is also a plain folder, so ``eval --dataset folder`` and the trainer read it)::

    OUT/synth.json                 the run's settings (checked when resumed), "sequence": N
    OUT/SEQ/camera.json            intrinsics and camera_to_world of every frame (see below)
    OUT/SEQ/rgb/FFFFFF.png         8-bit RGB
    OUT/SEQ/depth/FFFFFF.exr|.npy  planar depth in metres, float32, 0 = sky
    OUT/SEQ/intrinsics/FFFFFF.json {"fx", "fy", "cx", "cy"}

``SEQ`` is the six-digit sequence index from 0; ``FFFFFF`` the six-digit frame number from 1 (as the engine numbers
a sequence's depth files, docs/sequences.md). ``camera.json`` has the fields of the engine's ``NAME_camera.json``
and the poses::

    {"format": "metricgold-sequence-camera", "version": 1,
     "fx", "fy", "cx", "cy", "width", "height",          OpenCV convention, pixels, the same for every frame
     "fps": null, "frame_count": N, "first_frame": 1, "depth_files": "depth/######.exr",
     "frames": [{"name": "000001", "camera_to_world": 4x4 row-major}, ...],
     "convention": "..."}

``camera_to_world`` is the Blender camera object's ``matrix_world``: it maps a point in Blender camera space (the
camera looks down its local -Z, +Y up, +X right; what :func:`metricgold_engine.core.geometry.unproject` returns)
to world space (Z up), in metres. The relative pose from frame a to frame b is ``inv(C_b) @ C_a``.

Pure numpy except :func:`render_sequence_to_files` (bpy, imported when rendering).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from metricgold_engine.core.depth_io import atomic_write
from metricgold_engine.core.geometry import Intrinsics

from .output import SynthOutputError, frame_done, frame_name, frame_paths
from .scenes import SceneSpec, ShapeSpec

__all__ = [
    "CAMERA_FILE",
    "CameraPath",
    "camera_to_world",
    "euler_xyz_matrix",
    "path_poses",
    "read_sequence_camera",
    "sample_camera_path",
    "sequence_camera_record",
    "sequence_done",
    "write_sequence_camera",
]

CAMERA_FILE = "camera.json"
CAMERA_FORMAT = "metricgold-sequence-camera"
#: The third entry of the path's SeedSequence: the path never shares random numbers with the scene.
PATH_STREAM = 0x5E0
#: Orbit-point distance (metres) by scene kind: about the middle of the kind's depth range.
_ORBIT_DISTANCE = {"tabletop": (0.4, 0.9), "room": (1.5, 3.5), "street": (6.0, 15.0)}
CONVENTION = (
    "camera_to_world = the Blender camera object's matrix_world (row-major 4x4): maps Blender camera space "
    "(camera looks down -Z, +Y up, +X right) to world space (Z up), metres; pixel (u, v) with planar depth d is "
    "the camera-space point d * ((u - cx) / fx, -(v - cy) / fy, -1)"
)


def euler_xyz_matrix(rx: float, ry: float, rz: float) -> np.ndarray:
    """Blender's XYZ Euler rotation as a 3x3 float64 matrix: R = Rz @ Ry @ Rx."""
    cx, sx, cy, sy, cz, sz = math.cos(rx), math.sin(rx), math.cos(ry), math.sin(ry), math.cos(rz), math.sin(rz)
    return (np.array([[cz, -sz, 0.0], [sz, cz, 0.0], [0.0, 0.0, 1.0]])
            @ np.array([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]])
            @ np.array([[1.0, 0.0, 0.0], [0.0, cx, -sx], [0.0, sx, cx]]))


def camera_to_world(location: tuple[float, float, float] | np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """4x4 float64 camera-to-world from a location and a 3x3 rotation."""
    m = np.eye(4)
    m[:3, :3] = rotation
    m[:3, 3] = np.asarray(location, dtype=np.float64)
    return m


@dataclass(frozen=True)
class CameraPath:
    """A smooth move starting at the scene's camera: ``orbit_deg`` about the vertical axis through the point
    ``orbit_distance`` metres ahead, then ``dolly`` metres along the (new) view direction and ``rise`` metres up,
    each scaled by the eased path parameter."""

    orbit_distance: float
    orbit_deg: float
    dolly: float
    rise: float

    def scaled(self, f: float) -> CameraPath:
        return CameraPath(self.orbit_distance, self.orbit_deg * f, self.dolly * f, self.rise * f)


def _ease(s: float) -> float:
    """Smoothstep: zero velocity at both ends, as a real camera move starts and stops."""
    return s * s * (3.0 - 2.0 * s)


def path_poses(spec: SceneSpec, path: CameraPath, n_frames: int) -> list[np.ndarray]:
    """camera_to_world (4x4 float64) of frames ``0 .. n_frames - 1``; frame 0 is the scene's own camera."""
    if n_frames < 1:
        raise ValueError(f"a sequence needs at least one frame, got {n_frames}")
    r0 = euler_xyz_matrix(*spec.camera.rotation)
    p0 = np.asarray(spec.camera.location, dtype=np.float64)
    view0 = -r0[:, 2]  # the camera looks down its local -Z
    target = p0 + path.orbit_distance * view0
    poses = []
    for j in range(n_frames):
        e = _ease(j / (n_frames - 1)) if n_frames > 1 else 0.0
        a = math.radians(path.orbit_deg) * e
        rz = np.array([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]])
        r = rz @ r0
        p = target + rz @ (p0 - target) + path.dolly * e * (-r[:, 2]) + np.array([0.0, 0.0, path.rise * e])
        poses.append(camera_to_world(p, r))
    return poses


def _in_free_space(shapes: tuple[ShapeSpec, ...], poses: list[np.ndarray], margin: float) -> bool:
    from .scenes import _box_contains  # the sampler's own oriented-box test

    return not any(_box_contains(s, pose[:3, 3], margin) for pose in poses for s in shapes)


def sample_camera_path(spec: SceneSpec, seed: int, index: int, n_frames: int, margin: float = 0.05) -> CameraPath:
    """The camera path of sequence ``index`` (deterministic in ``(seed, index)``), shrunk until every one of the
    ``n_frames`` poses keeps ``margin`` metres from every object's bounding box."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(index), PATH_STREAM]))
    lo, hi = _ORBIT_DISTANCE.get(spec.kind, (1.0, 3.0))
    distance = float(rng.uniform(lo, hi))
    path = CameraPath(
        orbit_distance=distance,
        orbit_deg=float(rng.choice((-1.0, 1.0)) * rng.uniform(3.0, 10.0)),
        dolly=float(rng.uniform(-0.05, 0.12) * distance),
        rise=float(rng.uniform(-0.03, 0.03) * distance),
    )
    for k in range(6):
        candidate = path.scaled(0.5**k)
        if _in_free_space(spec.shapes, path_poses(spec, candidate, n_frames), margin):
            return candidate
    return path.scaled(0.0)  # the scene's own camera is in free space (the sampler guarantees it)


def sequence_camera_record(k: Intrinsics, poses: list[np.ndarray], names: list[str], depth_format: str = "exr",
                           extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The camera file of a rendered sequence: the fields of the engine's ``NAME_camera.json`` (docs/sequences.md)
    plus ``frames``, the true pose of every frame."""
    if len(poses) != len(names):
        raise ValueError(f"{len(poses)} poses for {len(names)} frames")
    record: dict[str, Any] = {
        "format": CAMERA_FORMAT,
        "version": 1,
        **k.as_json(),
        "width": int(k.width),
        "height": int(k.height),
        "focal_source": "synthetic",
        "fps": None,
        "frame_count": len(names),
        "first_frame": int(names[0]) if names else 1,
        "depth_files": f"depth/{'#' * 6}.{depth_format}",
        "convention": CONVENTION,
        "frames": [{"name": n, "camera_to_world": [[float(x) for x in row] for row in p]} for n, p in zip(names, poses)],
    }
    if extra:
        record.update(extra)
    return record


def write_sequence_camera(path: str | os.PathLike[str], record: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return path


def read_sequence_camera(path: str | os.PathLike[str]) -> tuple[Intrinsics, list[str], list[np.ndarray]]:
    """``camera.json`` -> (intrinsics, frame names, camera_to_world 4x4 float64 each); errors name the file."""
    path = Path(path)
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SynthOutputError(f"{path}: no sequence camera file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SynthOutputError(f"{path}: not a readable JSON file ({e})") from e
    try:
        if rec.get("format") != CAMERA_FORMAT:
            raise ValueError(f"format is {rec.get('format')!r}, expected {CAMERA_FORMAT!r}")
        k = Intrinsics(float(rec["fx"]), float(rec["fy"]), float(rec["cx"]), float(rec["cy"]),
                       int(rec["width"]), int(rec["height"]))
        names, poses = [], []
        for i, fr in enumerate(rec["frames"]):
            m = np.asarray(fr["camera_to_world"], dtype=np.float64)
            if m.shape != (4, 4) or not np.isfinite(m).all() or not np.allclose(m[3], (0, 0, 0, 1)):
                raise ValueError(f"frames[{i}].camera_to_world must be a finite 4x4 rigid transform")
            names.append(str(fr["name"]))
            poses.append(m)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise SynthOutputError(f"{path}: malformed sequence camera file: {e}") from e
    return k, names, poses


def sequence_frame_name(j: int) -> str:
    """File name of frame ``j`` (0-based index) of a sequence: numbered from 1 like the engine's sequence output
    (docs/sequences.md) and Blender's default start frame."""
    return frame_name(j + 1)


def sequence_done(seq_dir: Path, n_frames: int, depth_format: str) -> bool:
    return (seq_dir / CAMERA_FILE).is_file() and all(
        frame_done(seq_dir, sequence_frame_name(j), depth_format) for j in range(n_frames))


def render_sequence_to_files(
    spec: SceneSpec,
    poses: list[np.ndarray],
    seq_dir: Path,
    settings: Any,
    device_type: str = "CPU",
    depth_format: str = "exr",
) -> int:
    """Build ``spec`` once and render each pose whose frame is not complete yet; returns frames rendered."""
    from metricgold_engine.core.depth_io import write_depth_exr, write_depth_npy

    from . import blender_scene  # bpy
    from .generate import camera_intrinsics
    from .output import write_intrinsics_json

    import mathutils  # type: ignore[import-not-found]

    todo = [j for j in range(len(poses)) if not frame_done(seq_dir, sequence_frame_name(j), depth_format)]
    if not todo:
        return 0
    scene = blender_scene.build_scene(spec, settings, device_type)
    k = camera_intrinsics(spec, settings.width, settings.height)
    cam = scene.camera
    for j in todo:
        paths = frame_paths(seq_dir, sequence_frame_name(j), depth_format)
        for p in paths.values():
            p.parent.mkdir(parents=True, exist_ok=True)
        cam.matrix_world = mathutils.Matrix([list(row) for row in poses[j]])
        # Each frame its own sampling seed, as a real camera's noise changes from frame to frame.
        scene.cycles.seed = (spec.cycles_seed + j) % (2**31 - 1)
        with atomic_write(paths["rgb"]) as tmp_rgb:
            depth = blender_scene.render_frame(scene, tmp_rgb, scratch_dir=paths["depth"].parent)
            if depth.shape != (settings.height, settings.width) or not (depth > 0).any():
                raise RuntimeError(f"{paths['depth']}: Blender rendered no usable depth (shape {depth.shape})")
            (write_depth_npy if depth_format == "npy" else write_depth_exr)(paths["depth"], depth)
            write_intrinsics_json(paths["intrinsics"], k.as_json())
    return len(todo)


def generate_sequences(
    out: str | os.PathLike[str],
    count: int,
    n_frames: int,
    *,
    width: int = 256,
    height: int = 192,
    seed: int = 0,
    start: int = 0,
    samples: int = 8,
    denoise: str = "fast",
    kinds: tuple[str, ...] | None = None,
    mesh_dir: str | os.PathLike[str] | None = None,
    depth_format: str = "exr",
    device: str = "auto",
    threads: int = 0,
    progress: bool = True,
) -> Any:
    """Render sequences ``start .. start + count - 1`` of ``n_frames`` frames into ``out``, skipping complete
    frames (a killed run resumes where it stopped). Returns :class:`~trainer.synth.generate.GenerateStats`
    counted in frames."""
    import signal
    import threading
    import time

    from tqdm.auto import tqdm  # type: ignore[import-untyped]

    from .generate import (
        GENERATOR_VERSION,
        GenerateStats,
        _remove_stale_temporaries,
        camera_intrinsics,
        prepare_render,
    )
    from .output import check_or_write_manifest
    from .scenes import SCENE_KINDS, sample_scene

    kinds = tuple(kinds) if kinds else SCENE_KINDS
    blender_scene, settings, mesh_files, out = prepare_render(
        out, count=count, start=start, seed=seed, depth_format=depth_format, kinds=kinds, width=width, height=height,
        samples=samples, denoise=denoise, device=device, threads=threads, mesh_dir=mesh_dir)
    if n_frames < 1:
        raise ValueError(f"--sequence must be at least 1 frame, got {n_frames}")
    out.mkdir(parents=True, exist_ok=True)
    check_or_write_manifest(out, {
        "version": GENERATOR_VERSION, "seed": seed, "width": width, "height": height, "samples": samples,
        "denoise": denoise, "kinds": list(kinds), "mesh_files": [str(Path(m).resolve()) for m in mesh_files],
        "depth_format": depth_format, "sequence": n_frames, "count": start + count,
    })
    names = {sequence_frame_name(j) for j in range(n_frames)}
    device_type = blender_scene.select_device(device)
    stop = threading.Event()
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous_handler = signal.signal(signal.SIGINT, lambda signum, frame: stop.set()) if on_main_thread else None
    t0 = time.perf_counter()
    rendered = skipped = 0
    bar = tqdm(total=count * n_frames, unit="frame", desc=f"synth {out.name}", disable=not progress)
    try:
        for i in range(start, start + count):
            seq_dir = out / frame_name(i)
            _remove_stale_temporaries(seq_dir, names)
            if sequence_done(seq_dir, n_frames, depth_format):
                skipped += n_frames
                bar.update(n_frames)
                continue
            spec = sample_scene(seed, i, kinds=kinds, mesh_files=mesh_files)
            poses = path_poses(spec, sample_camera_path(spec, seed, i, n_frames), n_frames)
            k = camera_intrinsics(spec, width, height)
            # The camera file holds only what the sampler decided, so it is written first and identically on resume.
            write_sequence_camera(seq_dir / CAMERA_FILE, sequence_camera_record(
                k, poses, [sequence_frame_name(j) for j in range(n_frames)], depth_format=depth_format,
                extra={"scene": {"kind": spec.kind, "seed": seed, "index": i}}))
            n = render_sequence_to_files(spec, poses, seq_dir, settings, device_type, depth_format)
            rendered += n
            skipped += n_frames - n
            bar.update(n_frames)
            if stop.is_set():
                break
    finally:
        bar.close()
        if on_main_thread:
            signal.signal(signal.SIGINT, previous_handler)
    if stop.is_set():
        raise KeyboardInterrupt(f"stopped after {rendered} frames")
    return GenerateStats(rendered=rendered, skipped=skipped, seconds=time.perf_counter() - t0, device=device_type)
