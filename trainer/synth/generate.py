"""The generator: sample a scene per frame, render it with Blender, write the plain folder format.

``generate(...)`` is what ``python -m trainer.synth`` runs. Frame ``i`` of a run with seed ``s`` depends on
``(s, i)`` and the frame-defining settings only, so frames can be rendered in any order, by several processes
(``--start``), and a killed run resumes where it stopped: frames whose files all exist are skipped.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Sequence
from typing import Any

from metricgold_engine.core.depth_io import atomic_write, write_depth_exr, write_depth_npy
from metricgold_engine.core.geometry import Intrinsics

from .camera import blender_camera_intrinsics
from .output import (
    DEPTH_FORMATS,
    check_or_write_manifest,
    frame_done,
    frame_name,
    frame_paths,
    write_intrinsics_json,
    write_splits,
)
from .scenes import SCENE_KINDS, SceneSpec, mesh_files_in, sample_scene

__all__ = ["GenerateStats", "camera_intrinsics", "generate", "parse_resolution", "render_scene_to_files"]

#: Bumped when a change to the sampler or the renderer changes what a frame looks like (checked on resume).
GENERATOR_VERSION = 1


@dataclass
class GenerateStats:
    rendered: int
    skipped: int
    seconds: float
    device: str

    @property
    def seconds_per_frame(self) -> float:
        return self.seconds / self.rendered if self.rendered else 0.0


def parse_resolution(text: str) -> tuple[int, int]:
    """``"256x192"`` -> ``(256, 192)`` (width, height)."""
    parts = text.lower().split("x")
    try:
        if len(parts) != 2:
            raise ValueError
        w, h = int(parts[0]), int(parts[1])
    except ValueError:
        raise ValueError(f"--resolution must look like WIDTHxHEIGHT (e.g. 256x192), got {text!r}") from None
    if w < 8 or h < 8 or w > 8192 or h > 8192:
        raise ValueError(f"--resolution {text}: width and height must be between 8 and 8192 pixels")
    return w, h


def camera_intrinsics(spec: SceneSpec, width: int, height: int) -> Intrinsics:
    """The intrinsics of the camera :func:`~trainer.synth.blender_scene.build_scene` makes for ``spec``."""
    return blender_camera_intrinsics(
        lens_mm=spec.camera.lens_mm,
        width=width,
        height=height,
        sensor_width_mm=spec.camera.sensor_width_mm,
        sensor_fit="HORIZONTAL",
    )


def render_scene_to_files(
    spec: SceneSpec,
    paths: dict[str, Path],
    settings: Any,
    device_type: str = "CPU",
    depth_format: str = "npy",
) -> None:
    """Build and render ``spec``, then write depth, intrinsics and (last) RGB to ``paths`` atomically."""
    from . import blender_scene  # bpy: imported only when rendering

    for p in paths.values():
        p.parent.mkdir(parents=True, exist_ok=True)
    scene = blender_scene.build_scene(spec, settings, device_type)
    intrinsics = camera_intrinsics(spec, settings.width, settings.height)
    # The RGB file stays a hidden temporary file until depth and intrinsics are in place: its rename marks the
    # frame complete.
    with atomic_write(paths["rgb"]) as tmp_rgb:
        depth = blender_scene.render_frame(scene, tmp_rgb, scratch_dir=paths["depth"].parent)
        if depth.shape != (settings.height, settings.width):
            raise RuntimeError(f"{paths['depth']}: Blender rendered depth of shape {depth.shape}, expected "
                               f"{(settings.height, settings.width)}")
        if not (depth > 0).any():
            # Every generated scene has a floor or ground in view; no surface at all means the render failed.
            raise RuntimeError(f"{paths['depth']}: the render saw no surface at all; see Blender's log above")
        (write_depth_npy if depth_format == "npy" else write_depth_exr)(paths["depth"], depth)
        write_intrinsics_json(paths["intrinsics"], intrinsics.as_json())


def _remove_stale_temporaries(out: Path, names: set[str], scratch_age_s: float = 600.0) -> None:
    """Temporary files of a killed run are never renamed: remove those of this run's frames (``.NAME.*.tmp.*``,
    leaving other processes' frames alone) and render scratch files (``.zpass.*``, ``.combined.*``, alive for
    seconds) older than ``scratch_age_s``."""
    now = time.time()
    for sub in ("rgb", "depth", "intrinsics"):
        folder = out / sub
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            if not p.name.startswith("."):
                continue
            stem = p.name[1:].split(".", 1)[0]
            try:
                if stem in names and ".tmp" in p.name:
                    p.unlink(missing_ok=True)
                elif stem in ("zpass", "combined") and now - p.stat().st_mtime > scratch_age_s:
                    p.unlink(missing_ok=True)
            except FileNotFoundError:
                pass  # another process finished with it


def prepare_render(
    out: str | os.PathLike[str], *, count: int, start: int, seed: int, depth_format: str, kinds: Sequence[str],
    width: int, height: int, samples: int, denoise: bool, device: str, threads: int,
    mesh_dir: str | os.PathLike[str] | None,
) -> tuple[Any, Any, tuple[str, ...], Path]:
    """What every render run (frames or sequences) checks first and sets up: bpy, the arguments, the render settings,
    the mesh files, the output folder. Returns (blender_scene module, render settings, mesh files, out)."""
    try:
        from . import blender_scene  # bpy: imported only when rendering
    except ImportError as e:
        raise RuntimeError(
            f"rendering needs Blender's Python module (bpy==5.0.1, Python 3.11): {e}; "
            "install it with: .venv/bin/python -m pip install -e '.[blender]'"
        ) from e
    if count < 0 or start < 0 or seed < 0:
        raise ValueError(f"--count, --start and --seed must be non-negative, got {count}, {start}, {seed}")
    if depth_format not in DEPTH_FORMATS:
        raise ValueError(f"--depth-format must be one of {', '.join(DEPTH_FORMATS)}, got {depth_format!r}")
    for k in kinds:
        if k not in SCENE_KINDS:
            raise ValueError(f"--kinds: unknown scene kind {k!r}; expected some of {', '.join(SCENE_KINDS)}")
    settings = blender_scene.RenderSettings(width, height, samples=samples, denoise=denoise, device=device,
                                            threads=threads)
    mesh_files = mesh_files_in(Path(mesh_dir)) if mesh_dir is not None else ()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out}: exists and is not a folder")
    return blender_scene, settings, mesh_files, out


def generate(
    out: str | os.PathLike[str],
    count: int,
    *,
    width: int = 256,
    height: int = 192,
    seed: int = 0,
    start: int = 0,
    samples: int = 8,
    denoise: str = "fast",
    kinds: tuple[str, ...] = SCENE_KINDS,
    mesh_dir: str | os.PathLike[str] | None = None,
    depth_format: str = "npy",
    val_fraction: float = 0.05,
    device: str = "auto",
    threads: int = 0,
    progress: bool = True,
) -> GenerateStats:
    """Render frames ``start .. start + count - 1`` into ``out`` (skipping complete ones) and rewrite the splits
    over every complete frame in ``out``."""
    from tqdm.auto import tqdm  # type: ignore[import-untyped]

    blender_scene, settings, mesh_files, out = prepare_render(
        out, count=count, start=start, seed=seed, depth_format=depth_format, kinds=kinds, width=width, height=height,
        samples=samples, denoise=denoise, device=device, threads=threads, mesh_dir=mesh_dir)
    if not 0.0 <= val_fraction <= 1.0:
        raise ValueError(f"--val-fraction must be in [0, 1], got {val_fraction}")
    out.mkdir(parents=True, exist_ok=True)
    check_or_write_manifest(out, {
        "version": GENERATOR_VERSION,
        "seed": seed,
        "width": width,
        "height": height,
        "samples": samples,
        "denoise": denoise,
        "kinds": list(kinds),
        "mesh_files": [str(Path(m).resolve()) for m in mesh_files],
        "depth_format": depth_format,
        "val_fraction": val_fraction,
    })
    indices = range(start, start + count)
    _remove_stale_temporaries(out, {frame_name(i) for i in indices})
    device_type = blender_scene.select_device(device)

    todo = [i for i in indices if not frame_done(out, frame_name(i), depth_format)]
    skipped = count - len(todo)
    # Ctrl+C stops the run after the frame being rendered: an exception raised inside Blender's render callback
    # would be caught and logged by Blender, leaving a half-rendered image, so the signal only sets a flag.
    stop = threading.Event()
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous_handler = signal.signal(signal.SIGINT, lambda signum, frame: stop.set()) if on_main_thread else None
    t0 = time.perf_counter()
    rendered = 0
    bar = tqdm(total=count, initial=skipped, unit="frame", desc=f"synth {out.name}", disable=not progress)
    try:
        for i in todo:
            name = frame_name(i)
            spec = sample_scene(seed, i, kinds=kinds, mesh_files=mesh_files)
            render_scene_to_files(spec, frame_paths(out, name, depth_format), settings, device_type, depth_format)
            rendered += 1
            bar.update(1)
            bar.set_postfix(kind=spec.kind, refresh=False)
            if stop.is_set():
                break
    finally:
        bar.close()
        if on_main_thread:
            signal.signal(signal.SIGINT, previous_handler)
    seconds = time.perf_counter() - t0

    done = sorted(
        p.stem for p in (out / "rgb").glob("*.png")
        if not p.name.startswith(".") and frame_done(out, p.stem, depth_format)
    ) if (out / "rgb").is_dir() else []
    write_splits(out, done, val_fraction)
    if stop.is_set():
        raise KeyboardInterrupt(f"stopped after {rendered} frames")
    return GenerateStats(rendered=rendered, skipped=skipped, seconds=seconds, device=device_type)
