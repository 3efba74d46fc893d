"""CPU speed options against float32 eager, with the depth difference each one causes, in one run.

    .venv/bin/python bench/cpu_options.py [--model PATH] [--resolution 256] [--steps 1] [--ensemble 1]
                                          [--repeats 5] [--options f32 bf16 f32-compile bf16-compile f32-cl]

Default model: the built-in demo model (trained weights, so the depth difference means something). Each option
loads its own pipeline; one warm-up call (this is where torch.compile compiles) is left out. Calls of all options
alternate within each repeat; the median time is kept. Prints the speed-up over float32 eager and the difference
in depth against it: median and maximum of |relative difference| (same seed, so the same noise).
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
from metricgold_engine.core.demo_model import resolve_model_path  # noqa: E402
from metricgold_engine.speed import apply_speed_options  # noqa: E402

OPTIONS = {
    "f32": dict(dtype="float32"),
    "bf16": dict(dtype="bfloat16"),
    "f32-compile": dict(dtype="float32", compile=True),
    "bf16-compile": dict(dtype="bfloat16", compile=True),
    "f32-cl": dict(dtype="float32", channels_last=True),
    "bf16-cl": dict(dtype="bfloat16", channels_last=True),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="checkpoint folder (default: the built-in demo model)")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--ensemble", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--options", nargs="+", default=list(OPTIONS), choices=list(OPTIONS))
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                        help="cpu: this process's CPU time (steadier on a shared machine; run with OMP_NUM_THREADS=1)")
    args = parser.parse_args()
    if args.options[0] != "f32":
        args.options.insert(0, "f32")

    path = resolve_model_path(args.model)
    rng = np.random.default_rng(0)
    # A smooth image with some structure (a random-pixel image gives the model nothing to see)
    yy, xx = np.mgrid[0:args.resolution * 3 // 4, 0:args.resolution]
    rgb = np.stack([128 + 100 * np.sin(xx / 17.0), 128 + 100 * np.cos(yy / 23.0), (xx + yy) % 256], -1)
    image = Image.fromarray(np.clip(rgb + rng.normal(0, 8, rgb.shape), 0, 255).astype(np.uint8))

    pipes, depth = {}, {}
    for name in args.options:
        opt = dict(OPTIONS[name])
        pipe = load_pipeline(path, device="cpu", dtype=opt.pop("dtype"))
        pipe.set_progress_bar_config(disable=True)
        apply_speed_options(pipe, **opt)
        pipes[name] = pipe

    def call(name: str) -> np.ndarray:
        return pipes[name](image, num_inference_steps=args.steps, ensemble_size=args.ensemble,
                           processing_resolution=args.resolution, timestep_spacing="trailing", seed=0).depth

    for name in args.options:  # warm-up (compiles)
        start = time.perf_counter()
        depth[name] = call(name)
        print(f"warm-up {name}: {time.perf_counter() - start:.1f} s", flush=True)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    times: dict[str, list[float]] = {name: [] for name in args.options}
    for _ in range(args.repeats):
        for name in args.options:
            start = clock()
            call(name)
            times[name].append(clock() - start)
    base = statistics.median(times["f32"])
    print(f"model {path.name}, {args.resolution} px, {args.steps} step(s) x {args.ensemble}, torch "
          f"{torch.__version__}, threads {torch.get_num_threads()}, {args.clock} clock, median of {args.repeats}")
    print(f"{'option':>13} {'speed-up':>9} {'per-repeat':>16} {'median |rel diff|':>18} {'max |rel diff|':>15}")
    for name in args.options:
        per = [b / t for b, t in zip(times["f32"], times[name])]
        rel = np.abs(depth[name] / depth["f32"] - 1.0)
        print(f"{name:>13} {base / statistics.median(times[name]):>9.2f} {min(per):>7.2f}..{max(per):<7.2f} "
              f"{np.median(rel):>18.2%} {rel.max():>15.2%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
