"""Zero-shot metric-depth evaluation of one or several models: ``python -m trainer eval --model A [--model B ...]
--dataset nyuv2|kitti|folder --data-root PATH``.

Every model (any backend :func:`metricgold_engine.backends.load_estimator` loads: MetricGold, Depth Pro, Depth
Anything V2 metric, ZoeDepth) is run on the same images with the same protocol, one model after the other, and the
results go into one comparison table with each model's seconds per image. For each image of the evaluation set
(:mod:`trainer.data.evalsets`):

1. predict metric depth from the RGB image (any ``predict(rgb_uint8) -> depth`` callable; a checkpoint is wrapped
   by :func:`make_predictor`, a loaded backend by :func:`estimator_predictor`);
2. resize the prediction to the ground truth's size (bilinear) and clip it to the protocol's range;
3. score it with :func:`metricgold_engine.metrics.compute_depth_metrics` over the valid pixels: ground truth
   inside the range, inside the protocol's crop. No median or least-squares scaling: metric depth is scored as
   predicted. With ``align=True`` an affine least-squares fit to the ground truth is scored too, reported apart;
4. average each metric over images.

Under ``accelerate launch`` each process scores a disjoint shard of the images and the per-image rows are gathered
on every process (:mod:`metricgold_engine.sharding`), so the means equal a single-process run's; only the main
process prints and writes.

See docs/evaluation.md for the protocols and the commands.
"""

from __future__ import annotations

import argparse
import gc
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
from metricgold_engine.sharding import Shard, ShardingError, current_shard, map_sharded
from trainer.data.common import DataError
from trainer.data.evalsets import DATASETS, EvalSample, open_eval_set

logger = logging.getLogger(__name__)

Predictor = Callable[..., Any]  # predict(rgb) or, with known_focal, predict(rgb, focal_px=...)


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
    known_focal: bool = False,
    shard: Shard | None = None,
    desc: str | None = None,
) -> dict[str, Any]:
    """Run the protocol of ``dataset`` with ``predict`` and return the results as a JSON-able dict.

    ``predict`` is any callable taking an RGB uint8 H x W x 3 array and returning depth in metres (an array, a
    tensor, or an object with ``.depth`` such as a MetricGoldPipeline output); with ``known_focal`` it is called as
    ``predict(rgb, focal_px=...)`` with the set's focal length where it has one. The result holds ``metrics`` (mean
    over images), ``aligned_metrics`` when ``align``, ``per_image`` rows (each with the prediction's ``seconds``),
    ``seconds_per_image`` (mean prediction time) and the protocol used. ``shard``: this process's part of the images
    (default: the whole set, or the shard of ``accelerate launch``); every process gets the whole result back.
    """
    n = len(dataset) if max_images is None else min(len(dataset), int(max_images))
    if n <= 0:
        raise ValueError("nothing to evaluate: the evaluation set is empty or --max-images is 0")
    lo, hi = float(dataset.min_depth), float(dataset.max_depth)
    shard = shard or current_shard()

    def score(i: int, _: int) -> dict[str, Any]:
        sample = dataset[i]
        gt = np.asarray(sample.depth, dtype=np.float32)
        gt_shape = (gt.shape[0], gt.shape[1])
        start = time.perf_counter()
        raw = predict(sample.rgb, focal_px=sample.focal) if known_focal else predict(sample.rgb)
        pred = _as_depth(raw, sample.name)
        seconds = time.perf_counter() - start
        pred = np.clip(resize_prediction(pred, gt_shape), lo, hi)
        with np.errstate(invalid="ignore"):
            valid = np.isfinite(gt) & (gt > lo) & (gt < hi)
        valid &= eval_crop_mask(gt_shape, dataset.crop)
        if not valid.any():
            logger.warning("%s: no valid ground-truth pixel inside the range and crop; image skipped", sample.name)
            return {"name": sample.name, "skipped": True, "seconds": seconds}
        row: dict[str, Any] = {"name": sample.name, "metrics": compute_depth_metrics(pred, gt, valid),
                               "seconds": seconds}
        if align:
            aligned, scale, shift = align_depth_least_squares(pred, gt, valid)
            row["aligned_metrics"] = compute_depth_metrics(np.clip(aligned, lo, hi), gt, valid)
            row["scale"], row["shift"] = scale, shift
        return row

    start = time.perf_counter()
    rows = [row for _, row in map_sharded(range(n), score, shard, desc=desc or f"eval {dataset.name}",
                                          progress=progress)]
    wall = time.perf_counter() - start
    per_image = [r for r in rows if not r.get("skipped")]
    skipped = [r["name"] for r in rows if r.get("skipped")]
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
    # Model time per image, whichever process ran it; the wall time also holds reading and scoring, over all
    # processes at once.
    result["seconds_per_image"] = float(sum(r["seconds"] for r in rows) / n)
    result["wall_seconds"] = wall
    result["processes"] = shard.count
    result["per_image"] = per_image
    return result


def estimator_predictor(estimator: Any, options: dict[str, Any]) -> Callable[..., np.ndarray]:
    """``predict(rgb, focal_px=None) -> depth`` around a loaded :class:`DepthEstimator` with fixed ``options``."""

    def predict(rgb: np.ndarray, focal_px: float | None = None) -> np.ndarray:
        return np.asarray(estimator.predict(rgb, focal_px=focal_px, **options).depth, dtype=np.float32)

    return predict


def _load_estimator(model: str, device: str, dtype: str) -> Any:
    from metricgold_engine.backends import load_estimator

    return load_estimator(model, device=device, dtype=dtype)


#: The options ``eval`` passes to MetricGold models (other backends run with their own defaults).
METRICGOLD_EVAL_OPTIONS = {"steps": "num_inference_steps", "ensemble": "ensemble_size",
                           "resolution": "processing_resolution", "seed": "seed"}

def check_model_names(models: Sequence[str]) -> None:
    """Fail before hours of evaluation, not at the third model: each ``--model`` is an existing folder or looks
    like a Hub id (``org/name``); the same model twice is refused."""
    from metricgold_engine.backends.loading import is_hub_id

    seen = set()
    for model in models:
        if model in seen:
            raise ValueError(f"--model {model} is given twice")
        seen.add(model)
        if not Path(model).exists() and not is_hub_id(model):
            raise ValueError(f"--model {model}: no such folder (and not a Hub id of the form org/name)")


def evaluate_models(
    models: Sequence[str],
    dataset: EvalSet,
    *,
    options: dict[str, Any] | None = None,
    device: str = "auto",
    dtype: str = "auto",
    align: bool = False,
    max_images: int | None = None,
    progress: bool = True,
    known_focal: bool = False,
    shard: Shard | None = None,
    on_model_done: Callable[[dict[str, Any]], None] | None = None,
    loader: Callable[[str, str, str], Any] = _load_estimator,
) -> dict[str, Any]:
    """Evaluate every model of ``models`` (folders or Hub ids) on ``dataset`` with one protocol; returns the
    comparison: the protocol once, then one entry per model under ``models``. ``options`` (MetricGold's steps,
    ensemble, resolution, seed) go to MetricGold models only. ``on_model_done(comparison)`` is called after each
    model (to save what is done so far). One model is loaded at a time."""
    shard = shard or current_shard()
    comparison: dict[str, Any] = {"dataset": dataset.name, "models": []}
    for model in models:
        start = time.perf_counter()
        with shard.main_first():  # a Hub id is downloaded once
            estimator = loader(model, shard.device(device), dtype)
        load_seconds = time.perf_counter() - start
        info = estimator.info()
        pipeline = getattr(estimator, "pipeline", None)
        if pipeline is not None and hasattr(pipeline, "set_progress_bar_config"):
            pipeline.set_progress_bar_config(disable=True)  # one bar over images, not one per image
        model_options = {k: v for k, v in (options or {}).items() if v is not None} if info.kind == "metricgold" else {}
        result = evaluate(estimator_predictor(estimator, model_options), dataset, align=align, max_images=max_images,
                          progress=progress, known_focal=known_focal, shard=shard, desc=f"eval {dataset.name}: {model}")
        entry = {"model": model, "kind": info.kind, "licence": info.licence, "demo_model": info.demo_model,
                 "options": model_options, "load_seconds": load_seconds}
        entry.update({k: result[k] for k in ("metrics", "aligned_metrics", "seconds_per_image", "wall_seconds",
                                             "per_image") if k in result})
        for key in ("num_images", "skipped_images", "protocol", "processes"):
            comparison[key] = result[key]  # the same for every model: same images, same protocol
        comparison["models"].append(entry)
        del estimator, pipeline
        gc.collect()
        _empty_device_cache()
        if on_model_done is not None:
            on_model_done(comparison)
    return comparison


def _empty_device_cache() -> None:
    try:
        import torch
    except ImportError:
        return
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _protocol_title(result: dict[str, Any]) -> str:
    p = result["protocol"]
    return (
        f"{result['dataset']}: {result['num_images']} images, valid {p['min_depth']:g} < d < {p['max_depth']:g} m, "
        f"crop {p['crop'] or 'none'}"
    )


def results_markdown(result: dict[str, Any]) -> str:
    """The results as Markdown: a comparison (one row per model, see :func:`comparison_markdown`) or one model's
    results (metric row, plus an affine-aligned row when present)."""
    if "models" in result:
        return comparison_markdown(result)
    rows = {"metric (no alignment)": result["metrics"]}
    if "aligned_metrics" in result:
        rows["affine-aligned (least squares)"] = result["aligned_metrics"]
    return format_metrics_markdown(rows, title=_protocol_title(result))


def comparison_markdown(comparison: dict[str, Any], decimals: int = 4) -> str:
    """One row per model: kind, licence, every metric, seconds per image; a second table of affine-aligned
    numbers when they were computed."""
    from metricgold_engine.metrics import METRIC_NAMES

    def table(key: str) -> list[str]:
        lines = ["| model | kind | licence | " + " | ".join(METRIC_NAMES) + " | s/image |",
                 "|---|---|---|" + "---:|" * (len(METRIC_NAMES) + 1)]
        for m in comparison["models"]:
            cells = [f"{float(m[key][n]):.{decimals}f}" for n in METRIC_NAMES]
            kind = m["kind"] + (" (demo)" if m.get("demo_model") else "")
            lines.append(f"| {m['model']} | {kind} | {m['licence'] or 'unknown'} | " + " | ".join(cells)
                         + f" | {m['seconds_per_image']:.3f} |")
        return lines

    lines = [f"## {_protocol_title(comparison)}", "", "Metric depth as predicted (no alignment):", "", *table("metrics")]
    if comparison["models"] and all("aligned_metrics" in m for m in comparison["models"]):
        lines += ["", "Affine-aligned (least-squares scale and shift per image, reported apart):", "",
                  *table("aligned_metrics")]
    processes = comparison.get("processes", 1)
    lines += ["", f"s/image: the model's prediction time per image (mean over images; {processes} process"
                  f"{'es' if processes != 1 else ''})."]
    return "\n".join(lines) + "\n"


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
        description="Zero-shot metric-depth evaluation of one or more models on one protocol (NYUv2, KITTI Eigen, "
                    "folder), with one comparison table. Under `accelerate launch` the images are sharded.",
    )
    p.add_argument("--model", required=True, action="append", dest="models", metavar="MODEL",
                   help="model folder (MetricGold checkpoint or transformers metric depth model) or Hub id; "
                        "repeat to compare several models on the same images")
    p.add_argument("--dataset", required=True, choices=(*DATASETS, "sequence"),
                   help="sequence: see python -m trainer eval --dataset sequence --help")
    p.add_argument("--data-root", required=True, help="root folder of the evaluation set")
    p.add_argument("--split-file", help="list of test pairs (NYUv2), Eigen split file (KITTI), names (folder)")
    p.add_argument("--gt-root", help="KITTI: root of the ground-truth PNGs (default: --data-root)")
    p.add_argument("--crop", choices=("garg", "eigen"), help="KITTI evaluation crop (default garg)")
    p.add_argument("--steps", type=int, help="MetricGold models: denoising steps (default: the checkpoint's)")
    p.add_argument("--ensemble", type=int, help="MetricGold models: ensemble size (default: the checkpoint's)")
    p.add_argument("--resolution", type=int, help="MetricGold models: processing resolution (default: checkpoint's)")
    p.add_argument("--seed", type=int, default=0, help="MetricGold models: seed of the denoising noise (default 0)")
    p.add_argument("--known-focal", action="store_true",
                   help="give models the data set's focal length where it has one (KITTI, folder intrinsics); "
                        "only models whose scale uses it (Depth Pro) change")
    p.add_argument("--max-images", type=int, help="evaluate only the first N images")
    p.add_argument("--align", action="store_true", help="also report affine-aligned (least squares) metrics")
    p.add_argument("--min-depth", type=float, help="override the protocol's valid minimum (folder: 1e-3)")
    p.add_argument("--max-depth", type=float, help="override the protocol's valid maximum (folder: 80)")
    p.add_argument("--out", help="folder to write metrics.json and metrics.md into (updated after each model)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--dtype", default="auto", help="auto | float32 | float16 | bfloat16")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(argv) if argv is not None else sys.argv[1:]
    if "sequence" in argv and argv[argv.index("sequence") - 1] == "--dataset" or "--dataset=sequence" in argv:
        from trainer.sequence_eval import main as sequence_main  # sequences have their own options

        return sequence_main(argv)
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    for flag in ("steps", "ensemble", "resolution", "max_images"):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            print(f"error: --{flag.replace('_', '-')} must be positive, got {value}", file=sys.stderr)
            return 2
    options = {name: getattr(args, flag) for flag, name in METRICGOLD_EVAL_OPTIONS.items()}
    try:
        check_model_names(args.models)
        shard = current_shard()
    except (ValueError, ShardingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    settings = {**options, "device": args.device, "dtype": args.dtype, "known_focal": args.known_focal}

    def save(comparison: dict[str, Any]) -> None:
        if args.out and shard.is_main:
            comparison["settings"] = settings
            write_results(comparison, args.out)

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
        comparison = evaluate_models(
            args.models, dataset, options=options, device=args.device, dtype=args.dtype, align=args.align,
            max_images=args.max_images, progress=not args.no_progress, known_focal=args.known_focal, shard=shard,
            on_model_done=save,
        )
    except (DataError, ValueError, FileNotFoundError, OSError) as e:  # CheckpointError is a ValueError too
        print(f"error: {e}", file=sys.stderr)
        return 1
    if not shard.is_main:
        return 0
    comparison["settings"] = settings
    print(results_markdown(comparison))
    if args.out:
        json_path, md_path = write_results(comparison, args.out)
        print(f"wrote {json_path} and {md_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
