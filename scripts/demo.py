"""`make demo`: the main job on the built-in sample, end to end.

    .venv/bin/python scripts/demo.py [--out demo_output] [--image assets/demo_room.png] [--model DIR]

1. predicts metric depth for the sample photo (a room rendered by the project's synthetic-data generator, whose exact
   depth is known) with the built-in demo model, writing .npy / .exr / 16-bit PNG / colour preview;
2. compares the prediction with the ground truth (AbsRel, delta1) — no alignment, metres against metres;
3. builds a .blend holding the metric depth mesh and the matching camera, renders a PNG preview through it and one
   from the side (where the depth shows as 3D).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from metricgold_engine import cli  # noqa: E402
from metricgold_engine.core.depth_io import atomic_write, read_depth  # noqa: E402
from metricgold_engine.metrics import compute_depth_metrics  # noqa: E402
from metricgold_engine.core.demo_model import DEMO_MODEL_PATH  # noqa: E402
from metricgold_engine.tiny_models import make_tiny_checkpoint  # noqa: E402

BANNER = "=" * 78


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo_output")
    parser.add_argument("--image", default=str(REPO / "assets" / "demo_room.png"))
    parser.add_argument("--model", default=None, help="a MetricGold checkpoint (default: the built-in demo model)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    image = Path(args.image)

    model = args.model
    random_model = False
    if model is None and not (DEMO_MODEL_PATH / "model_index.json").is_file():
        model = str(out / "tiny-random-model")
        random_model = True
        print(f"{BANNER}\nNOTE: the built-in demo model is not in this checkout ({DEMO_MODEL_PATH}).\n"
              "This demo runs on a TINY RANDOMLY INITIALISED model: the pipeline, files and Blender scene are real,\n"
              f"the depth values are meaningless. See README 'Demo model'.\n{BANNER}", flush=True)
        if not (Path(model) / "model_index.json").is_file():
            make_tiny_checkpoint(model, seed=0, default_processing_resolution=128, default_num_inference_steps=4,
                                 default_ensemble_size=2, default_timestep_spacing="trailing")

    # 1. photo -> metric depth files
    predict_args = ["predict", str(image), "--out", str(out), "--uncertainty"]
    if model is not None:
        predict_args += ["--model", str(model)]
    rc = cli.main(predict_args)
    if rc != 0:
        return rc
    depth_path = out / f"{image.stem}_depth.npy"
    depth = read_depth(depth_path)

    # 2. against the ground truth, when the sample has one
    gt_path = image.with_name(f"{image.stem}_depth.npy")
    summary: dict = {"image": str(image), "model": "tiny random" if random_model else str(model or DEMO_MODEL_PATH),
                     "depth_range_m": [float(np.nanmin(depth)), float(np.nanmax(depth))]}
    if gt_path.is_file():
        gt = read_depth(gt_path)
        metrics = compute_depth_metrics(depth, gt)
        summary["metrics_vs_ground_truth"] = metrics
        print(f"against the ground truth ({gt_path.name}): AbsRel {metrics['abs_rel']:.3f}, "
              f"delta1 {metrics['delta1']:.3f}, RMSE {metrics['rmse']:.3f} m")
    with atomic_write(out / "demo_summary.json") as tmp:
        Path(tmp).write_text(json.dumps(summary, indent=2))

    # 3. .blend with the metric mesh and the matching camera, plus a rendered preview (bpy in its own process)
    blend = out / f"{image.stem}.blend"
    preview = out / f"{image.stem}_preview.png"
    side = out / f"{image.stem}_preview_side.png"
    command = [sys.executable, str(REPO / "scripts" / "image_to_mesh.py"), str(image), "--depth", str(depth_path),
               "--out", str(blend), "--render", str(preview), "--render-side", str(side)]
    intrinsics_path = image.with_name(f"{image.stem}_intrinsics.json")
    if intrinsics_path.is_file():
        k = json.loads(intrinsics_path.read_text())
        command += ["--intrinsics", *(str(k[key]) for key in ("fx", "fy", "cx", "cy"))]
    result = subprocess.run(command)
    if result.returncode != 0:
        print(f"error: building the Blender scene failed (exit {result.returncode})", file=sys.stderr)
        return result.returncode
    print(f"\ndemo written to {out}/:\n  {depth_path.name} (+ .exr, 16-bit PNG, colour preview, uncertainty)\n"
          f"  {blend.name}: metric depth mesh + matching camera\n  {preview.name}: rendered through that camera\n"
          f"  {side.name}: the mesh from 30 degrees to the side, where the depth shows\n"
          f"  demo_summary.json")
    if random_model:
        print("(tiny random model: see the NOTE above)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
