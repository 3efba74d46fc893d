#!/usr/bin/env python3
"""Depth-sequence mesh speed: build time, and Geometry Nodes evaluation time per frame while the timeline plays.

    python bench/sequence_mesh.py [--width 512] [--height 384] [--frames 8]

(in the project's .venv, where ``bpy`` is Blender as a Python module). Writes ``--frames`` depth EXRs (a wavy
slanted wall) to a temporary folder, builds the sequence mesh (``sequence_mesh.build_sequence_mesh``, a vertex per
pixel) and times ``scene.frame_set(f)`` followed by reading the evaluated mesh (the modifier re-runs because its
Scene Time node changed), for every frame twice: the first pass loads each EXR from disk (cold), the second finds
it in Blender's image cache (warm). Prints median seconds per frame for both passes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--height", type=int, default=384)
    p.add_argument("--frames", type=int, default=8)
    args = p.parse_args(sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else sys.argv[1:])

    import bpy
    import numpy as np

    from metricgold_blender import sequence_mesh
    from metricgold_engine.core.depth_io import write_depth_exr
    from metricgold_engine.core.geometry import Intrinsics

    w, h = args.width, args.height
    with tempfile.TemporaryDirectory() as tmp:
        v, u = np.mgrid[0:h, 0:w].astype(np.float64)
        for f in range(args.frames):
            write_depth_exr(Path(tmp) / f"{f:06d}.exr",
                            (2.0 + 0.1 * f + 2.0 * u / w + 0.3 * np.sin(u / 20.0 + f)).astype(np.float32))
        bpy.ops.wm.read_homefile(use_empty=True)
        t0 = time.perf_counter()
        result = sequence_mesh.build_sequence_mesh(bpy.context, tmp, Intrinsics.from_fov(w, h, 55.0), name="bench",
                                                   start_frame=1)
        build = time.perf_counter() - t0
        scene = bpy.context.scene
        passes = []
        for _ in range(2):
            times = []
            for f in range(1, args.frames + 1):
                t0 = time.perf_counter()
                scene.frame_set(f)
                ev = result.object.evaluated_get(bpy.context.evaluated_depsgraph_get())
                n = len(ev.to_mesh().vertices)
                ev.to_mesh_clear()
                times.append(time.perf_counter() - t0)
            passes.append(statistics.median(times))
    print(f"{w} x {h}: {result.vertex_count} vertices ({n} evaluated); build {build:.3f} s; per frame "
          f"{passes[0]:.3f} s cold (EXR from disk), {passes[1]:.3f} s warm (median of {args.frames})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
