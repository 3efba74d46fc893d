"""Peak resident memory of one prediction, each case in its own process (ru_maxrss of the child).

    .venv/bin/python bench/memory.py [--model PATH] [--cases 768 1536 1536-untiled 24mp]

Cases: a 4:3 photo at 768 and at 1536 px processing resolution; the same 1536 with the tiled depth decode switched
off (its threshold raised), to show what tiling saves; a 24-megapixel photo (6000 x 4000) at 768 px processing
resolution, output at the photo's size. 1 step x 1 member, trailing (the fast mode), float32 on the CPU. A first
line gives the process with the model loaded and no prediction, as the base.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CASES = {
    "load-only": dict(size=None, resolution=0, tiled=True),
    "768": dict(size=(768, 576), resolution=768, tiled=True),
    "1536": dict(size=(1536, 1152), resolution=1536, tiled=True),
    "1536-untiled": dict(size=(1536, 1152), resolution=1536, tiled=False),
    "24mp": dict(size=(6000, 4000), resolution=768, tiled=True),
}


def child(model: str | None, case: str) -> None:
    import time

    import numpy as np
    from PIL import Image

    from metricgold_engine.checkpoint import load_pipeline

    spec = CASES[case]
    pipe = load_pipeline(model, device="cpu", dtype="float32")
    pipe.set_progress_bar_config(disable=True)
    if not spec["tiled"]:
        pipe.decode_tile_threshold = 1 << 60
    seconds = 0.0
    if spec["size"] is not None:
        w, h = spec["size"]
        # Built row band by row band so that making the test photo does not set the peak
        image = Image.new("RGB", (w, h))
        rng = np.random.default_rng(0)
        for top in range(0, h, 500):
            band = (rng.random((min(500, h - top), w, 3)) * 255).astype(np.uint8)
            image.paste(Image.fromarray(band), (0, top))
        start = time.perf_counter()
        out = pipe(image, num_inference_steps=1, ensemble_size=1, processing_resolution=spec["resolution"],
                   timestep_spacing="trailing", seed=0)
        seconds = time.perf_counter() - start
        assert out.depth.shape == (h, w)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"case": case, "peak_mib": peak_kib / 1024, "seconds": seconds}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="checkpoint folder (default: the built-in demo model)")
    parser.add_argument("--cases", nargs="+", default=list(CASES)[1:], choices=list(CASES)[1:])
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.model, args.child)
        return 0
    print(f"{'case':>13} {'peak RSS MiB':>13} {'over load-only':>15}")
    base = None
    for case in ["load-only", *args.cases]:
        cmd = [sys.executable, __file__, "--child", case] + (["--model", args.model] if args.model else [])
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            print(f"{case:>13} failed: {result.stderr.strip().splitlines()[-1:]}")
            continue
        row = json.loads(result.stdout.strip().splitlines()[-1])
        base = row["peak_mib"] if base is None else base
        print(f"{case:>13} {row['peak_mib']:>13.0f} {row['peak_mib'] - base:>15.0f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
