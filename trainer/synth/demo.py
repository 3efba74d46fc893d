"""``python -m trainer.synth.demo --out assets``: render the repository's demo photo with the generator.

One 640x480 frame of a furnished room (seed 2026, frame 3 of the ``room`` kind), rendered at 128 samples with
high-quality denoising, written as

    OUT/demo_room.png               8-bit RGB
    OUT/demo_room_depth.npy         ground-truth planar depth in metres, float16 (see below), H x W
    OUT/demo_room_intrinsics.json   {"fx", "fy", "cx", "cy"} in pixels of the PNG

The depth is stored as float16 to keep the three files under 1 MB together (float32 at 640x480 alone is 1.2 MB and
does not compress): the room's depths lie in [0.5, 4) m, where float16 keeps every value within 1 mm of the render.
``metricgold_engine.core.depth_io.read_depth`` (and ``np.load(...).astype(np.float32)``) read it as float32.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from metricgold_engine.core.depth_io import atomic_write

DEMO_SEED = 2026
DEMO_FRAME = 3
DEMO_RESOLUTION = (640, 480)
DEMO_SAMPLES = 128


def write_demo_assets(out: str | Path, samples: int = DEMO_SAMPLES, progress: bool = True) -> dict[str, Path]:
    """Render the demo frame and write the three asset files into ``out``; returns their paths."""
    from .generate import generate
    from .output import frame_name, frame_paths

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="metricgold-demo-") as tmp:
        generate(tmp, 1, width=DEMO_RESOLUTION[0], height=DEMO_RESOLUTION[1], seed=DEMO_SEED, start=DEMO_FRAME,
                 samples=samples, denoise="high", kinds=("room",), val_fraction=0.0, progress=progress)
        src = frame_paths(tmp, frame_name(DEMO_FRAME))
        depth = np.load(src["depth"])
        valid = depth > 0
        depth16 = depth.astype(np.float16)
        # float16 must keep the ground truth within 1 mm; refuse to write anything coarser.
        err = float(np.abs(depth16.astype(np.float64) - depth.astype(np.float64))[valid].max())
        if not np.isfinite(depth16).all() or err > 1e-3:
            raise RuntimeError(f"the demo depth does not fit float16 within 1 mm (max error {err:.4f} m)")
        paths = {
            "rgb": out / "demo_room.png",
            "depth": out / "demo_room_depth.npy",
            "intrinsics": out / "demo_room_intrinsics.json",
        }
        with Image.open(src["rgb"]) as im, atomic_write(paths["rgb"]) as tmp_png:
            im.convert("RGB").save(tmp_png, format="PNG", optimize=True)
        with atomic_write(paths["depth"]) as tmp_npy, open(tmp_npy, "wb") as f:
            np.save(f, depth16, allow_pickle=False)
        with atomic_write(paths["intrinsics"]) as tmp_json:
            shutil.copyfile(src["intrinsics"], tmp_json)
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m trainer.synth.demo",
        description="Render the demo photo (a furnished room, 640x480) with its ground-truth depth and intrinsics.",
    )
    p.add_argument("--out", default="assets", help="folder for the three demo files (default assets)")
    p.add_argument("--samples", type=int, default=DEMO_SAMPLES, help=f"Cycles samples (default {DEMO_SAMPLES})")
    args = p.parse_args(argv)
    paths = write_demo_assets(args.out, samples=args.samples)
    total = sum(path.stat().st_size for path in paths.values())
    for path in paths.values():
        print(f"{path} ({path.stat().st_size / 1024:.0f} KiB)")
    print(f"total {total / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
