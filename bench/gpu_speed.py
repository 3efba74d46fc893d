"""Seconds per image and peak GPU memory for one checkpoint on a CUDA GPU, for one dtype / setting / compile choice.
Run by bench/gpu_check.sh (all combinations, one process each so that peaks and compile caches do not mix).

    python bench/gpu_speed.py CHECKPOINT --dtype float16 --steps 1 --ensemble 1 [--compile] [--resolution 768]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image  # noqa: E402

from metricgold_engine.checkpoint import load_pipeline  # noqa: E402
from metricgold_engine.speed import apply_speed_options  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), default="float16")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--ensemble", type=int, default=1)
    parser.add_argument("--resolution", type=int, default=768)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA GPU visible", file=sys.stderr)
        return 2

    pipe = load_pipeline(args.checkpoint, device="cuda", dtype=args.dtype)
    pipe.set_progress_bar_config(disable=True)
    apply_speed_options(pipe, compile=args.compile)
    spacing = "trailing" if args.steps <= 4 else "leading"
    image = Image.fromarray((np.random.default_rng(0).random((args.resolution * 3 // 4, args.resolution, 3))
                             * 255).astype(np.uint8))

    def run() -> np.ndarray:
        out = pipe(image, num_inference_steps=args.steps, ensemble_size=args.ensemble,
                   processing_resolution=args.resolution, timestep_spacing=spacing, seed=0)
        torch.cuda.synchronize()
        return out.depth

    start = time.perf_counter()
    depth = run()  # warm-up: cuDNN autotune, and the compile when --compile
    warm = time.perf_counter() - start
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        depth = run()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**30
    finite = bool(np.isfinite(depth).all())
    print(f"{args.dtype:>9} {args.steps:>3} x {args.ensemble:<3} compile={'yes' if args.compile else 'no ':<3} "
          f"{statistics.median(times):8.3f} s/image  peak {peak:6.2f} GiB  first call {warm:6.1f} s  "
          f"depth finite: {finite}  depth VAE dtype: {str(pipe.depth_vae.dtype).replace('torch.', '')}", flush=True)
    return 0 if finite else 1


if __name__ == "__main__":
    raise SystemExit(main())
