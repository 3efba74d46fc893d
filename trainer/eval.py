"""Zero-shot metric-depth evaluation: ``python -m trainer eval --model DIR --dataset nyuv2|kitti|folder
--data-root PATH``.

For each image of the evaluation set (:mod:`trainer.data.evalsets`):

1. predict metric depth from the RGB image (any ``predict(rgb_uint8) -> depth`` callable; a checkpoint is wrapped
   by :func:`make_predictor`);
2. resize the prediction to the ground truth's size (bilinear) and clip it to the protocol's range;
3. score it with :func:`metricgold_engine.metrics.compute_depth_metrics` over the valid pixels: ground truth
   inside the range, inside the protocol's crop. No median or least-squares scaling: metric depth is scored as
   predicted. With ``align=True`` an affine least-squares fit to the ground truth is scored too, reported apart;
4. average each metric over images.

See docs/evaluation.md for the protocols and the commands.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from metricgold_engine.metrics import (
    align_depth_least_squares,
    compute_depth_metrics,
    eval_crop_mask,
    format_metrics_markdown,
    mean_metrics,
)
from trainer.data.common import DataError
from trainer.data.evalsets import DATASETS, EvalSample, open_eval_set

logger = logging.getLogger(__name__)

Predictor = Callable[[np.ndarray], Any]


class EvalSet(Protocol):
    name: str
    min_depth: float
    max_depth: float
    crop: str | None

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> EvalSample: ...


def make_predictor(
    pipe: Any,
    num_inference_steps: int | None = None,
    ensemble_size: int | None = None,
    processing_resolution: int | None = None,
    seed: int | None = 0,
) -> Callable[[np.ndarray], np.ndarray]:
    """A ``predict(rgb_uint8) -> depth`` callable around a MetricGoldPipeline (same seed for every image, so a
    run is reproducible image by image)."""
    from PIL import Image

    def predict(rgb: np.ndarray) -> np.ndarray:
        out = pipe(
            Image.fromarray(rgb),
            num_inference_steps=num_inference_steps,
            ensemble_size=ensemble_size,
            processing_resolution=processing_resolution,
            seed=seed,
        )
        return np.asarray(out.depth, dtype=np.float32)

    return predict


def resize_prediction(pred: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float depth map to ``shape`` (H, W); unchanged when it already has that size."""
    if pred.shape == tuple(shape):
        return pred
    from PIL import Image

    im = Image.fromarray(np.ascontiguousarray(pred, dtype=np.float32))  # mode "F"
    return np.asarray(im.resize((shape[1], shape[0]), Image.Resampling.BILINEAR), dtype=np.float32)


def _as_depth(result: Any, name: str) -> np.ndarray:
    depth = getattr(result, "depth", result)  # a pipeline output or a bare array
    if hasattr(depth, "detach"):
        depth = depth.detach().cpu().numpy()
    depth = np.asarray(depth, dtype=np.float32)
    depth = np.squeeze(depth)
    if depth.ndim != 2:
        raise ValueError(f"{name}: the predictor returned shape {np.shape(depth)}, expected an H x W depth map")
    return depth


def evaluate(
    predict: Predictor,
    dataset: EvalSet,
    *,
    align: bool = False,
    max_images: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the protocol of ``dataset`` with ``predict`` and return the results as a JSON-able dict.

    ``predict`` is any callable taking an RGB uint8 H x W x 3 array and returning depth in metres (an array, a
    tensor, or an object with ``.depth`` such as a MetricGoldPipeline output). The result holds ``metrics`` (mean
    over images), ``aligned_metrics`` when ``align``, ``per_image`` rows and the protocol used.
    """
    from tqdm.auto import tqdm  # type: ignore[import-untyped]

    n = len(dataset) if max_images is None else min(len(dataset), int(max_images))
    if n <= 0:
        raise ValueError("nothing to evaluate: the evaluation set is empty or --max-images is 0")
    lo, hi = float(dataset.min_depth), float(dataset.max_depth)
    per_image: list[dict[str, Any]] = []
    skipped: list[str] = []
    start = time.perf_counter()
    for i in tqdm(range(n), desc=f"eval {dataset.name}", unit="img", disable=not progress, file=sys.stderr):
        sample = dataset[i]
        gt = np.asarray(sample.depth, dtype=np.float32)
        gt_shape = (gt.shape[0], gt.shape[1])
        pred = resize_prediction(_as_depth(predict(sample.rgb), sample.name), gt_shape)
        pred = np.clip(pred, lo, hi)
        with np.errstate(invalid="ignore"):
            valid = np.isfinite(gt) & (gt > lo) & (gt < hi)
        valid &= eval_crop_mask(gt_shape, dataset.crop)
        if not valid.any():
            logger.warning("%s: no valid ground-truth pixel inside the range and crop; image skipped", sample.name)
            skipped.append(sample.name)
            continue
        row: dict[str, Any] = {"name": sample.name, "metrics": compute_depth_metrics(pred, gt, valid)}
        if align:
            aligned, scale, shift = align_depth_least_squares(pred, gt, valid)
            row["aligned_metrics"] = compute_depth_metrics(np.clip(aligned, lo, hi), gt, valid)
            row["scale"], row["shift"] = scale, shift
        per_image.append(row)
    if not per_image:
        raise ValueError(f"{dataset.name}: no image had a valid ground-truth pixel")
    result: dict[str, Any] = {
        "dataset": dataset.name,
        "num_images": len(per_image),
        "skipped_images": skipped,
        "protocol": {"min_depth": lo, "max_depth": hi, "crop": dataset.crop, "alignment": "none"},
        "metrics": mean_metrics(r["metrics"] for r in per_image),
    }
    if align:
        result["aligned_metrics"] = mean_metrics(r["aligned_metrics"] for r in per_image)
    result["seconds_per_image"] = (time.perf_counter() - start) / n
    result["per_image"] = per_image
    return result


def results_markdown(result: dict[str, Any]) -> str:
    """The results as a Markdown table (metric row, plus an affine-aligned row when present)."""
    rows = {"metric (no alignment)": result["metrics"]}
    if "aligned_metrics" in result:
        rows["affine-aligned (least squares)"] = result["aligned_metrics"]
    p = result["protocol"]
    title = (
        f"{result['dataset']}: {result['num_images']} images, valid {p['min_depth']:g} < d < {p['max_depth']:g} m, "
        f"crop {p['crop'] or 'none'}"
    )
    return format_metrics_markdown(rows, title=title)


def write_results(result: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``metrics.json`` and ``metrics.md`` into ``out_dir`` (created), each atomically."""
    from metricgold_engine.core.depth_io import atomic_write

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "metrics.json", out / "metrics.md"
    with atomic_write(json_path) as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    with atomic_write(md_path) as tmp:
        tmp.write_text(results_markdown(result), encoding="utf-8")
    return json_path, md_path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m trainer eval",
        description="Zero-shot metric-depth evaluation of a MetricGold checkpoint (NYUv2, KITTI Eigen, folder).",
    )
    p.add_argument("--model", required=True, help="checkpoint folder (diffusers layout)")
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--data-root", required=True, help="root folder of the evaluation set")
    p.add_argument("--split-file", help="list of test pairs (NYUv2), Eigen split file (KITTI), names (folder)")
    p.add_argument("--gt-root", help="KITTI: root of the ground-truth PNGs (default: --data-root)")
    p.add_argument("--crop", choices=("garg", "eigen"), help="KITTI evaluation crop (default garg)")
    p.add_argument("--steps", type=int, help="denoising steps (default: the checkpoint's)")
    p.add_argument("--ensemble", type=int, help="ensemble size (default: the checkpoint's)")
    p.add_argument("--resolution", type=int, help="processing resolution (default: the checkpoint's)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the denoising noise (default 0)")
    p.add_argument("--max-images", type=int, help="evaluate only the first N images")
    p.add_argument("--align", action="store_true", help="also report affine-aligned (least squares) metrics")
    p.add_argument("--min-depth", type=float, help="override the protocol's valid minimum (folder: 1e-3)")
    p.add_argument("--max-depth", type=float, help="override the protocol's valid maximum (folder: 80)")
    p.add_argument("--out", help="folder to write metrics.json and metrics.md into")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--dtype", default="auto", help="auto | float32 | float16 | bfloat16")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    for flag in ("steps", "ensemble", "resolution", "max_images"):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            print(f"error: --{flag.replace('_', '-')} must be positive, got {value}", file=sys.stderr)
            return 2
    try:
        dataset = open_eval_set(
            args.dataset,
            args.data_root,
            split_file=args.split_file,
            crop=args.crop,
            gt_root=args.gt_root,
            min_depth=args.min_depth,
            max_depth=args.max_depth,
        )
        from metricgold_engine.checkpoint import load_pipeline

        pipe: Any = load_pipeline(args.model, device=args.device, dtype=args.dtype)
        pipe.set_progress_bar_config(disable=True)  # one bar over images, not one per image
        predict = make_predictor(pipe, args.steps, args.ensemble, args.resolution, args.seed)
        result = evaluate(
            predict, dataset, align=args.align, max_images=args.max_images, progress=not args.no_progress
        )
    except (DataError, ValueError, FileNotFoundError) as e:  # CheckpointError is a ValueError too
        print(f"error: {e}", file=sys.stderr)
        return 1
    result["model"] = str(args.model)
    result["settings"] = {
        "num_inference_steps": args.steps,
        "ensemble_size": args.ensemble,
        "processing_resolution": args.resolution,
        "seed": args.seed,
        "device": args.device,
        "dtype": args.dtype,
    }
    print(results_markdown(result))
    if args.out:
        json_path, md_path = write_results(result, args.out)
        print(f"wrote {json_path} and {md_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
