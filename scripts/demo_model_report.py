"""What a model can and cannot do, in numbers: metric depth on held-out synthetic frames, next to a trivial baseline.

    .venv/bin/python scripts/demo_model_report.py --model runs/demo-unet-onestep/final --data data/synth \
        --out REPORT_DIR

The baseline predicts, for every pixel of every image, the mean valid depth of the training split: a model that
does not beat it has learned nothing about the image. Both are scored with the project's metric protocol
(trainer.eval: no scale or shift alignment). Two more rows: the model fed the next frame's image (what it takes
from the image at all) and the model with a per-image scale and shift fitted to the truth (its shape alone).
Writes report.json and report.md into --out (atomically).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metricgold_engine.core.depth_io import atomic_write  # noqa: E402
from metricgold_engine.metrics import format_metrics_markdown  # noqa: E402
from trainer.data import FolderReader  # noqa: E402
from trainer.data.evalsets import open_eval_set  # noqa: E402
from trainer.eval import evaluate, make_predictor  # noqa: E402


def training_mean_depth(data: Path) -> float:
    reader = FolderReader(data, "train")
    total, count = 0.0, 0
    for name in reader.names():
        sample = reader.load(name)
        valid = sample.valid & (sample.depth > 0)
        total += float(sample.depth[valid].astype(np.float64).sum())
        count += int(valid.sum())
    if count == 0:
        raise SystemExit(f"error: {data}: no valid depth in the train split")
    return total / count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True, help="plain-folder data set with train.txt and val.txt")
    parser.add_argument("--out", required=True)
    parser.add_argument("--max-images", type=int, default=None)
    parser.add_argument("--max-depth", type=float, default=80.0)
    args = parser.parse_args()

    from metricgold_engine.checkpoint import load_pipeline

    data = Path(args.data)
    eval_set = open_eval_set("folder", data, split_file=data / "val.txt", max_depth=args.max_depth)
    pipe = load_pipeline(args.model, device="auto")
    pipe.set_progress_bar_config(disable=True)
    predict = make_predictor(pipe)
    model = evaluate(predict, eval_set, max_images=args.max_images, align=True)
    # image-use check: score frame i's ground truth against the prediction for frame i+1's image. A model that
    # ignores the image (predicts only the depth prior) scores the same here as above. evaluate() calls the
    # predictor once per frame, in order, so a counter knows which frame is being scored.
    n = len(eval_set) if args.max_images is None else min(len(eval_set), args.max_images)
    frame = iter(range(n))
    shuffled = evaluate(lambda rgb: predict(eval_set[(next(frame) + 1) % n].rgb), eval_set,
                        max_images=args.max_images, progress=False)
    mean_depth = training_mean_depth(data)
    baseline = evaluate(lambda rgb: np.full(rgb.shape[:2], mean_depth, np.float32), eval_set,
                        max_images=args.max_images, progress=False)
    c = pipe.config
    report = {
        "model": str(args.model),
        "data": str(data),
        "images": model["num_images"],
        "settings": {"num_inference_steps": c.default_num_inference_steps, "ensemble_size": c.default_ensemble_size,
                     "processing_resolution": c.default_processing_resolution},
        "model_metrics": model["metrics"],
        "model_metrics_affine_aligned": model["aligned_metrics"],
        "model_metrics_with_the_next_frames_image": shuffled["metrics"],
        "baseline_train_mean_depth_m": mean_depth,
        "baseline_metrics": baseline["metrics"],
    }
    rows = {
        "model": model["metrics"],
        f"baseline (train mean {mean_depth:.2f} m)": baseline["metrics"],
        "model, fed the next frame's image": shuffled["metrics"],
        "model, per-image scale and shift fitted to the truth": model["aligned_metrics"],
    }
    md = (f"Held-out synthetic frames ({report['images']} images of {data / 'val.txt'}), metric depth; "
          f"{c.default_num_inference_steps} steps x ensemble {c.default_ensemble_size} at "
          f"{c.default_processing_resolution} px.\n\n" + format_metrics_markdown(rows) + "\n\n"
          "The first two rows are the ones that matter: metres against metres, no alignment. The third scores each "
          "frame's truth against the prediction for another frame's image: the gap to the first row is what the "
          "model takes from the image. The last fits a scale and shift per image to the truth (least squares), so "
          "it shows the shape of the prediction without its metric scale (an upper bound, not a usable setting).\n")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "report.json") as tmp:
        Path(tmp).write_text(json.dumps(report, indent=2))
    with atomic_write(out / "report.md") as tmp:
        Path(tmp).write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
