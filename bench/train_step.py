"""Seconds per optimizer step and peak memory of the UNet stage, through the real trainer (`python -m trainer unet`).

    .venv/bin/python bench/train_step.py                       # tiny model on the CPU
    .venv/bin/python bench/train_step.py --size sd2 --resolution 480 640 --mixed-precision bf16   # on a GPU

Always runs the tiny model on the CPU; when a CUDA GPU is present it also runs the UNet with Stable Diffusion v2's
real shapes (random weights) at the paper's batch of 2, which is what memory and speed on real data depend on.
The first two steps (start-up, allocator warm-up) are not counted; the median of the rest is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def make_data(root: Path, n: int, size: tuple[int, int]) -> None:
    """n random photos with tilted-plane depths in the plain folder format (content does not matter for timing)."""
    rng = np.random.default_rng(0)
    (root / "rgb").mkdir(parents=True)
    (root / "depth").mkdir()
    h, w = size
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "rgb" / f"{i:03d}.png")
        depth = np.linspace(1.0, 20.0, h * w, dtype=np.float32).reshape(h, w) * rng.uniform(0.5, 2)
        np.save(root / "depth" / f"{i:03d}.npy", depth)


def run(size: str, resolution: tuple[int, int], batch: int, steps: int, mixed: str, checkpointing: bool,
        cpu: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        make_data(tmp_path / "data", 8, resolution)
        config = {
            "model": {"tiny": size},
            "data": {"datasets": [{"kind": "folder", "root": str(tmp_path / "data")}], "resolution": list(resolution),
                     "num_workers": 1},
            "run": {"output_dir": str(tmp_path / "run"), "batch_size": batch, "gradient_accumulation_steps": 1,
                    "max_steps": steps + 2, "checkpoint_every": 10**6, "preview_every": 0, "tensorboard": False,
                    "mixed_precision": mixed, "gradient_checkpointing": checkpointing},
        }
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
        env = {**os.environ, **({"CUDA_VISIBLE_DEVICES": ""} if cpu else {})}
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        result = subprocess.run([sys.executable, "-m", "trainer", "unet", "--config", str(tmp_path / "c.yaml")],
                                cwd=REPO, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"training failed:\n{result.stderr[-3000:]}")
        peak_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        log = [json.loads(line) for line in (tmp_path / "run" / "loss_log.jsonl").read_text().splitlines()]
    timed = [r["seconds"] for r in log[2:]]
    return {
        "seconds_per_step": float(np.median(timed)),
        "peak_gpu_gib": max((r.get("peak_memory_gib", 0.0) for r in log), default=0.0),
        "peak_rss_gib": (peak_rss if peak_rss > before else before) / 2**20,  # ru_maxrss is in KiB on Linux
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5, help="timed optimizer steps (after 2 warm-up steps)")
    parser.add_argument("--size", choices=("tiny", "small", "sd2"), default="sd2", help="model on the GPU run")
    parser.add_argument("--resolution", type=int, nargs=2, default=(480, 640), metavar=("H", "W"),
                        help="GPU run's training crop (the paper's 480 x 640)")
    parser.add_argument("--mixed-precision", default="bf16", choices=("no", "fp16", "bf16"))
    parser.add_argument("--gradient-checkpointing", action="store_true")
    args = parser.parse_args()

    import torch

    rows = [("tiny", (64, 64), 2, "no", False, True)]
    if torch.cuda.is_available():
        rows.append((args.size, tuple(args.resolution), 2, args.mixed_precision, args.gradient_checkpointing, False))
    else:
        print("no CUDA GPU here: only the CPU row (run on a GPU machine for the SD2-sized UNet)")
    print(f"{'model':>6} {'device':>6} {'crop':>9} {'batch':>5} {'precision':>9} {'ckpt':>5} "
          f"{'s/step':>8} {'peak GPU GiB':>12} {'peak RSS GiB':>12}")
    for size, res, batch, mixed, ckpt, cpu in rows:
        r = run(size, res, batch, args.steps, mixed, ckpt, cpu)
        print(f"{size:>6} {'cpu' if cpu else 'cuda':>6} {f'{res[0]}x{res[1]}':>9} {batch:>5} {mixed:>9} "
              f"{str(ckpt):>5} {r['seconds_per_step']:8.3f} {r['peak_gpu_gib']:12.2f} {r['peak_rss_gib']:12.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
