"""The pipeline's time against the bare model calls it cannot avoid, timed side by side in one run.

    .venv/bin/python bench/pipeline_limit.py [--sizes tiny small] [--resolutions 256 768] [--repeats 5]
                                             [--long-steps 50]

For one photo and each setting (1 step x 1 member, 4 steps x 1 trailing, 50 steps x 10 members), the limit is the
sum of: the image VAE encode (once), N UNet calls at the ensemble's batch size, one depth VAE decode of the batch and
the ensemble reduction (a float32 median over the members). The pipeline also loads and resizes the photo, steps the
scheduler, converts to metres and resizes back: the ratio pipeline / limit is what all of that costs (1.00 = none).
Pipeline and limit alternate within each repeat, so both see the same machine load; the medians of ``--repeats``
are printed, with the spread of the per-repeat ratios (a noisy, shared machine shows there). The default clock is
the process's CPU time, which other processes on a shared machine disturb far less than elapsed time.
``--long-steps 10`` makes the 50 x 10 setting 10 x 10, for a quicker run (0 skips it).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image  # noqa: E402

from metricgold_engine.checkpoint import load_pipeline  # noqa: E402
from metricgold_engine.tiny_models import make_tiny_checkpoint  # noqa: E402


def limit_runner(pipe, image: Image.Image, resolution: int, steps: int, ensemble: int, spacing: str):
    """The bare calls of one prediction, on the pipeline's own modules and at its shapes."""
    rgb, _, _ = pipe._prepare_image(image, resolution)
    scheduler = pipe._scheduler_for(spacing)
    scheduler.set_timesteps(steps)
    timesteps = list(scheduler.timesteps)
    unet, vae, depth_vae = pipe.unet, pipe.vae, pipe.depth_vae
    text = pipe.text_embedding.embedding.repeat(ensemble, 1, 1).to(unet.dtype)
    lat_shape = (ensemble, vae.config.latent_channels, rgb.shape[-2] // pipe.vae_scale_factor,
                 rgb.shape[-1] // pipe.vae_scale_factor)
    unet_input = torch.randn(lat_shape[0], 2 * lat_shape[1], *lat_shape[2:]).to(unet.dtype)
    depth_latent = torch.randn(lat_shape).to(depth_vae.dtype)

    @torch.no_grad()
    def run() -> None:
        vae.encode(rgb.to(vae.dtype)).latent_dist.mean
        for t in timesteps:
            unet(unet_input, t, encoder_hidden_states=text, return_dict=False)
        members = depth_vae.decode(depth_latent).sample.float().mean(dim=1)
        if ensemble > 1:
            members.median(dim=0)

    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small"], choices=["tiny", "small"])
    parser.add_argument("--resolutions", nargs="+", type=int, default=[256, 768])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--long-steps", type=int, default=50,
                        help="steps of the 'x 10' setting (50 as the paper; 0 skips it)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                        help="cpu: this process's CPU time (steadier on a shared machine; run with "
                             "OMP_NUM_THREADS=1 so that it equals the work done), wall: elapsed time")
    args = parser.parse_args()

    settings = [(1, 1, "trailing"), (4, 1, "trailing")]
    if args.long_steps:
        settings.append((args.long_steps, 10, "leading"))
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, dtype {args.dtype}, {args.clock} clock, "
          f"median of {args.repeats} interleaved repeats")
    print(f"{'model':>6} {'res':>5} {'setting':>16} {'pipeline/limit':>15} {'per-repeat min..max':>20}")
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            path = make_tiny_checkpoint(Path(tmp) / size, size=size)
            pipe = load_pipeline(path, device="cpu", dtype=args.dtype)
            pipe.set_progress_bar_config(disable=True)  # as the worker runs it
            for res in args.resolutions:
                image = Image.fromarray(
                    (np.random.default_rng(0).random((res * 3 // 4, res, 3)) * 255).astype(np.uint8))
                for steps, ensemble, spacing in settings:
                    limit = limit_runner(pipe, image, res, steps, ensemble, spacing)

                    def full() -> None:
                        pipe(image, num_inference_steps=steps, ensemble_size=ensemble, processing_resolution=res,
                             timestep_spacing=spacing, seed=0)

                    full(), limit()  # warm-up
                    reps = args.repeats * (3 if steps * ensemble < 10 else 1)  # quick settings: more repeats
                    t_full, t_limit = [], []
                    for _ in range(reps):
                        for fn, times in ((full, t_full), (limit, t_limit)):
                            start = clock()
                            fn()
                            times.append(clock() - start)
                    ratios = [a / b for a, b in zip(t_full, t_limit)]
                    ratio = statistics.median(t_full) / statistics.median(t_limit)
                    worst = max(worst, ratio)
                    label = f"{steps} x {ensemble} {spacing}"
                    print(f"{size:>6} {res:>5} {label:>16} {ratio:>15.3f} "
                          f"{min(ratios):>9.3f}..{max(ratios):<9.3f}", flush=True)
    print(f"worst ratio {worst:.3f} (target <= 1.03)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
