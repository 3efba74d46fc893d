"""Tiled depth-VAE decode against an untiled one: difference in log depth, time and peak memory of each.

    .venv/bin/python bench/tiled_decode.py [--size small] [--pixels 1024x768] [--tile 256] [--no-diffusers]

A random depth latent of the given output size is decoded (1) whole, (2) by our tiles with whole-image GroupNorm
statistics, (3) by the same tiles with each tile's own statistics, (4) by diffusers' ``enable_tiling()`` at the same
tile size. Each decoded map becomes normalized depth (mean of 3 channels, clipped) and then log depth with the demo
model's range (0.1-100 m, log normalization: log depth = (n + 1) / 2 x log(1000) + log(0.1)); the maximum and median
|difference| in log depth against (1) are printed (target for (2): < 1e-2 everywhere). Times are CPU times, their
ratio to (1) printed. Random weights: the real depth VAE is SD2's shape (``--size sd2``, slow on a CPU).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffusers import AutoencoderKL  # noqa: E402

from metricgold_engine.tiny_models import make_tiny_stable_diffusion  # noqa: E402
from metricgold_engine.tiled_decode import tiled_decode  # noqa: E402

LOG_RANGE = math.log(100.0 / 0.1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("tiny", "small", "sd2"), default="small")
    parser.add_argument("--pixels", default="1024x768", help="output WxH")
    parser.add_argument("--tile", type=int, default=256, help="tile size in output pixels")
    parser.add_argument("--whole-max-elements", type=int, default=2**22)
    parser.add_argument("--no-diffusers", action="store_true")
    args = parser.parse_args()
    w, h = (int(v) for v in args.pixels.split("x"))

    with tempfile.TemporaryDirectory() as tmp:
        vae = AutoencoderKL.from_pretrained(make_tiny_stable_diffusion(Path(tmp) / "sd", size=args.size),
                                            subfolder="vae").eval()
    f = 2 ** (len(vae.config.block_out_channels) - 1)
    latent = torch.randn(1, 4, h // f, w // f, generator=torch.Generator().manual_seed(0))

    def log_depth(decoded: torch.Tensor) -> torch.Tensor:
        return (decoded.double().mean(dim=1).clamp(-1, 1) + 1) / 2 * LOG_RANGE

    runs = {
        "untiled": lambda: vae.decode(latent).sample,
        "tiled, global stats": lambda: tiled_decode(vae, latent, args.tile, args.whole_max_elements),
        "tiled, per-tile stats": lambda: tiled_decode(vae, latent, args.tile, statistics="tile"),
    }
    if not args.no_diffusers:
        def diffusers_tiled() -> torch.Tensor:
            vae.enable_tiling()
            vae.tile_sample_min_size, vae.tile_latent_min_size = args.tile, args.tile // f
            try:
                return vae.decode(latent).sample
            finally:
                vae.disable_tiling()
        runs["diffusers enable_tiling"] = diffusers_tiled

    print(f"VAE {args.size} (x{f}), output {w} x {h}, tile {args.tile} px, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}")
    print(f"{'decode':>24} {'max |d log depth|':>18} {'median':>10} {'CPU time / untiled':>19}")
    ref, base = None, None
    with torch.no_grad():
        for name, fn in runs.items():
            start = time.process_time()
            out = log_depth(fn())
            seconds = time.process_time() - start
            if ref is None:
                ref, base = out, seconds
            diff = (out - ref).abs()
            print(f"{name:>24} {diff.max().item():>18.2e} {diff.median().item():>10.2e} {seconds / base:>19.2f}",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
