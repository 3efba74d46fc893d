"""Per-request overhead of the worker process: the same prediction in-process and through WorkerClient.

    python bench/worker_overhead.py                      # tiny random model, 512 px, CPU
    python bench/worker_overhead.py --model CKPT --device cuda --steps 10 --repeats 5

Both sides have the model loaded before timing starts, and the runs alternate (in-process, worker, in-process, ...)
so that drift in machine load hits both alike. The overhead is the worker's wall time (request sent -> depth array
in the caller's hands, which includes writing and reading the .npy file) minus the in-process pipeline's, printed in
ms and as a fraction of the in-process prediction time, from the fastest run of each kind (on a shared machine the
minimum is the run least disturbed by other processes; medians are printed too). "Outside the worker" is measured
per request and needs no comparison between runs: the caller's wall time minus the worker's own `seconds`.
Target: overhead < 5 % of the prediction time at 512 px.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from metricgold_engine.core.client import WorkerClient  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint folder (default: a tiny random one made in a temp folder)")
    parser.add_argument("--size", default="small", help="size of the random model when --model is not given "
                        "('small' = the demo model's shape: VAE downsampling 4, three UNet levels)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--resolution", type=int, default=512, help="image side and processing resolution")
    parser.add_argument("--steps", type=int, default=4, help="num_inference_steps")
    parser.add_argument("--ensemble", type=int, default=1, help="ensemble_size")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each kind (after one warm-up)")
    parser.add_argument("--json", action="store_true", help="also print the numbers as one JSON line")
    args = parser.parse_args(argv)

    from metricgold_engine.core.depth_io import write_depth_npy
    from metricgold_engine.checkpoint import load_pipeline
    from metricgold_engine.tiny_models import make_tiny_checkpoint

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model = Path(args.model) if args.model else make_tiny_checkpoint(tmp / "model", seed=0, size=args.size)
        rng = np.random.default_rng(0)
        image = tmp / "bench.png"
        Image.fromarray((rng.random((args.resolution, args.resolution, 3)) * 255).astype(np.uint8)).save(image)
        options = dict(num_inference_steps=args.steps, ensemble_size=args.ensemble,
                       processing_resolution=args.resolution, seed=0)

        pipe: Any = load_pipeline(model, device=args.device, dtype=args.dtype)  # diffusers is untyped
        pipe.set_progress_bar_config(disable=True)

        def in_process() -> tuple[float, float]:
            t0 = time.perf_counter()
            out = pipe(str(image), **options)
            t1 = time.perf_counter()
            write_depth_npy(tmp / "inproc_depth.npy", out.depth)  # what the worker also does, timed apart
            return t1 - t0, time.perf_counter() - t0

        with WorkerClient(sys.executable, model=model, device=args.device, env={"PYTHONPATH": str(REPO_ROOT)},
                          dtype=args.dtype) as worker:

            def through_worker() -> tuple[float, float]:
                t0 = time.perf_counter()
                result = worker.predict(image, tmp / "worker", **options)
                result.depth  # noqa: B018 - the caller has the array only once it is read back
                return time.perf_counter() - t0, result.seconds

            in_process()  # warm-up: first-call allocations, lazy inits
            through_worker()
            pipeline_s, pipeline_write_s, worker_s, worker_inside_s = [], [], [], []
            for _ in range(args.repeats):
                a, b = in_process()
                pipeline_s.append(a)
                pipeline_write_s.append(b)
                c, d = through_worker()
                worker_s.append(c)
                worker_inside_s.append(d)
            info = worker.info

    base = min(pipeline_s)
    total = min(worker_s)
    overhead = total - base
    ipc = statistics.median(w - i for w, i in zip(worker_s, worker_inside_s))
    numbers = {
        "device": info.get("device"), "dtype": info.get("dtype"), "resolution": args.resolution, "steps": args.steps,
        "ensemble": args.ensemble, "repeats": args.repeats,
        "in_process_ms": 1000 * base, "in_process_with_npy_write_ms": 1000 * min(pipeline_write_s),
        "worker_ms": 1000 * total, "overhead_ms": 1000 * overhead, "overhead_ratio": overhead / base,
        "in_process_median_ms": 1000 * statistics.median(pipeline_s), "worker_median_ms": 1000 * statistics.median(worker_s),
        "transport_ms": 1000 * ipc,
    }
    print(f"model: {model if args.model else f'random {args.size!r}'} on {numbers['device']} ({numbers['dtype']}), "
          f"{args.resolution} px, {args.steps} steps, ensemble {args.ensemble}, fastest of {args.repeats} (median)")
    print(f"in-process pipeline          {numbers['in_process_ms']:9.1f} ms   ({numbers['in_process_median_ms']:.1f})")
    print(f"in-process + write .npy      {numbers['in_process_with_npy_write_ms']:9.1f} ms")
    print(f"through the worker           {numbers['worker_ms']:9.1f} ms   ({numbers['worker_median_ms']:.1f}; "
          "request -> array in the caller)")
    print(f"  of which outside the worker {numbers['transport_ms']:8.1f} ms   (pipes, JSON, reading the .npy)")
    print(f"overhead per request         {numbers['overhead_ms']:9.1f} ms = {100 * numbers['overhead_ratio']:.2f} % "
          f"of the in-process prediction (target < 5 %)")
    if args.json:
        print(json.dumps(numbers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
