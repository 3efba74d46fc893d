"""Temporal stability of sequence prediction (docs/sequences.md, *Measurements*).

    python bench/sequence_stability.py SEQ_ROOT OUT [--model PATH]

``SEQ_ROOT`` holds synthetic sequences (``python -m trainer.synth --sequence N``: ``SEQ/rgb/*.png`` and
``SEQ/depth/*``). For each configuration (independent frames, warm start at a few strengths, log-depth smoothing) it
writes the engine's sequence output to ``OUT/CONFIG/SEQ/`` (score the moving sequences with
``python -m trainer eval --dataset sequence --data-root SEQ_ROOT --predictions OUT/CONFIG``), and it measures on a
*static-camera* clip made from each sequence's first frame repeated with fresh sensor noise (Gaussian, sigma 3/255),
where the true depth does not change at all: the flicker is the mean |log D_t+1 - log D_t| over consecutive frames,
and AbsRel against the true depth shows whether stabilising costs accuracy.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

CONFIGS = {  # name: (denoise_strength, smoothing_alpha)
    "independent": (1.0, None),
    "warm0.75": (0.75, None),
    "warm0.5": (0.5, None),
    "warm0.25": (0.25, None),
    "smooth0.5": (1.0, 0.5),
    "smooth0.8": (1.0, 0.8),
    "warm0.5+smooth0.5": (0.5, 0.5),
}


def static_clip(rgb: Path, out: Path, frames: int, sigma: float, seed: int) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    base = np.asarray(Image.open(rgb).convert("RGB"), dtype=np.float64)
    rng = np.random.default_rng(seed)
    for i in range(frames):
        noisy = np.clip(base + rng.normal(0.0, sigma, base.shape), 0, 255).round().astype(np.uint8)
        Image.fromarray(noisy).save(out / f"{i + 1:06d}.png")
    return out


def main() -> int:
    from metricgold_engine.backends import load_estimator
    from metricgold_engine.core.depth_io import read_depth
    from metricgold_engine.sequence import predict_sequence

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("seq_root")
    p.add_argument("out")
    p.add_argument("--model", default=None, help="default: the built-in demo model")
    p.add_argument("--static-frames", type=int, default=8)
    p.add_argument("--sigma", type=float, default=3.0, help="sensor noise of the static clip, in 8-bit levels")
    args = p.parse_args()
    root, out = Path(args.seq_root), Path(args.out)
    seqs = sorted(d for d in root.iterdir() if (d / "rgb").is_dir())
    est = load_estimator(args.model, device="cpu", dtype="float32")
    est.pipeline.set_progress_bar_config(disable=True)
    rows = {}
    for config, (strength, alpha) in CONFIGS.items():
        started = time.perf_counter()
        flicker, absrel = [], []
        for i, seq in enumerate(seqs):
            predict_sequence(est, seq / "rgb", out / config / seq.name, name="pred", denoise_strength=strength,
                             smoothing_alpha=alpha, formats=["exr"])
            first = sorted((seq / "rgb").glob("*.png"))[0]
            clip = static_clip(first, out / "static_rgb" / seq.name, args.static_frames, args.sigma, seed=i)
            pred_dir = out / "static" / config / seq.name
            predict_sequence(est, clip, pred_dir, name="pred", denoise_strength=strength, smoothing_alpha=alpha,
                             formats=["npy"])
            logs = np.log(np.stack([np.load(f) for f in sorted(pred_dir.glob("pred_depth_*.npy"))]))
            flicker.append(float(np.abs(np.diff(logs, axis=0)).mean()))
            gt = read_depth(sorted((seq / "depth").glob("*"))[0])
            valid = np.isfinite(gt) & (gt > 1e-3) & (gt < 200)
            absrel.append(float(np.mean([np.mean(np.abs(np.exp(lg)[valid] - gt[valid]) / gt[valid]) for lg in logs])))
        rows[config] = {"denoise_strength": strength, "smoothing_alpha": alpha,
                        "static_flicker": float(np.mean(flicker)), "static_absrel": float(np.mean(absrel)),
                        "seconds": time.perf_counter() - started}
        print(config, json.dumps(rows[config]), file=sys.stderr, flush=True)
    (out / "static_results.json").write_text(json.dumps(rows, indent=2) + "\n")
    print("| configuration | static-camera flicker (mean abs. change of log depth) | AbsRel |")
    print("|---|---:|---:|")
    for config, r in rows.items():
        print(f"| {config} | {r['static_flicker']:.4f} | {r['static_absrel']:.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
