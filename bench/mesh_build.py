#!/usr/bin/env python3
"""Mesh building speed: a 1024 x 768 depth map to a finished Blender mesh, against ``Mesh.from_pydata``.

    python bench/mesh_build.py [--width 1024] [--height 768] [--repeat 3]

(in the project's .venv, where ``bpy`` is Blender as a Python module; or ``blender -b -P bench/mesh_build.py --``).

- MetricGold: ``mesh_builder.build_depth_scene`` does everything the operator does after the prediction: unprojection,
  faces with discontinuity cuts, vertices/loops/polygons/UVs/attributes/colours with ``foreach_set``, the photo
  material and the camera.
- Baseline: ``Mesh.from_pydata`` with Python lists of the SAME vertices and faces (what most add-ons do), and
  nothing else: no UVs, attributes, material or camera. The comparison flatters the baseline.

The target is under 1 s and at least 3x faster than the baseline. Times are the best of ``--repeat`` interleaved runs after a warm-up.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def scene_depth(width: int, height: int):
    """A room-like depth: a tilted floor-to-wall plane with a box in front (so cuts happen), in metres."""
    import numpy as np

    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    depth = 2.0 + 3.0 * (1.0 - v / height) + 0.5 * u / width
    box = (np.abs(u - width / 2) < width / 6) & (np.abs(v - height * 0.6) < height / 6)
    depth[box] = 1.5
    return depth.astype(np.float32)


def purge(bpy) -> None:
    """Remove what a run made, so every run starts from the same (empty) scene and memory."""
    for kind in ("objects", "meshes", "materials", "cameras", "collections"):
        coll = getattr(bpy.data, kind)
        for block in list(coll):
            coll.remove(block)


def best_of(bpy, runs, repeat: int) -> list[float]:
    """Best wall time of each function, runs interleaved (ours, baseline, ours, ...) so drift hits both alike."""
    best = [float("inf")] * len(runs)
    for _ in range(repeat):
        for i, fn in enumerate(runs):
            purge(bpy)
            t0 = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[sys.argv.index("--") + 1:] if argv is None and "--" in sys.argv else argv
    p = argparse.ArgumentParser(description="MetricGold mesh building vs Mesh.from_pydata")
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--height", type=int, default=768)
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args(argv)

    import bpy
    import numpy as np

    from metricgold_blender import mesh_builder
    from metricgold_engine.core import geometry

    bpy.ops.wm.read_factory_settings(use_empty=True)
    w, h = args.width, args.height
    depth = scene_depth(w, h)
    k = geometry.Intrinsics.from_fov(w, h, 60.0)
    image = bpy.data.images.new("photo", w, h)
    image.pixels.foreach_set(np.random.default_rng(0).random(w * h * 4, dtype=np.float32))

    def ours():
        mesh_builder.build_depth_scene(bpy.context, depth, k, name="bench", image=image)

    gm = geometry.build_grid_mesh(depth, k, max_relative_jump=0.05)
    verts = [tuple(v) for v in gm.vertices.tolist()]
    faces = [tuple(f) for f in gm.faces.tolist()]

    def from_pydata():
        mesh = bpy.data.meshes.new("baseline")
        mesh.from_pydata(verts, [], faces)
        mesh.update()

    # Warm-up (first-touch memory, lazy initialisation); reported, but not what the ratio uses.
    cold = best_of(bpy, [ours, from_pydata], 1)
    ours()
    from_pydata()
    obj = bpy.data.objects["bench"]
    assert len(obj.data.vertices) == len(verts) and len(obj.data.polygons) == len(faces)
    assert len(bpy.data.meshes["baseline"].polygons) == len(faces)
    assert not obj.data.validate()  # nothing for Blender to fix: the foreach_set mesh is well-formed
    t_ours, t_base = best_of(bpy, [ours, from_pydata], args.repeat)
    print(f"depth {w} x {h}: {len(verts)} vertices, {len(faces)} faces")
    print(f"MetricGold build_depth_scene (mesh + UVs + attributes + material + camera): {t_ours:.3f} s")
    print(f"Mesh.from_pydata with Python lists (vertices + faces only):                {t_base:.3f} s")
    print(f"ratio from_pydata / MetricGold: {t_base / t_ours:.1f}x   (first, cold runs: {cold[0]:.3f} s vs "
          f"{cold[1]:.3f} s)")
    ok = t_ours < 1.0 and t_base / t_ours >= 3.0
    print("target (< 1 s and >= 3x):", "met" if ok else "NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
