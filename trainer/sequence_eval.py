"""``python -m trainer eval --dataset sequence``: per-frame metrics and the temporal error of depth sequences.

The data are camera-path sequences with exact depth and poses (``python -m trainer.synth --sequence N``; layout in
:mod:`trainer.synth.sequence`): ``--data-root`` is one sequence folder (it holds ``camera.json``) or a folder of them.
Predictions come from a checkpoint (``--model DIR``, frame by frame with the same seed) or from depth files written
beforehand (``--predictions DIR``, e.g. by ``predict`` on each sequence's ``rgb/`` folder into ``DIR/SEQ/``, with or
without stabilisation; see :func:`predictions_from_folder`).

Reported: the usual metrics per frame (scored as predicted, averaged over frames), and per consecutive frame pair the
temporal error and flicker of :mod:`trainer.temporal`, averaged over pairs. See docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from metricgold_engine.core.geometry import Intrinsics

from .synth.sequence import CAMERA_FILE, read_sequence_camera
from .temporal import DEFAULT_REL_TOL, temporal_errors

__all__ = [
    "SequenceData",
    "evaluate_sequences",
    "find_sequences",
    "load_sequence",
    "main",
    "predictions_from_folder",
    "sequence_markdown",
]

#: Valid ground-truth range of the synthetic sequences (sky is 0, streets reach about 200 m).
DEFAULT_MIN_DEPTH, DEFAULT_MAX_DEPTH = 1e-3, 200.0
DEPTH_SUFFIXES = (".exr", ".npy", ".png")


@dataclass
class SequenceData:
    name: str
    folder: Path
    k: Intrinsics
    frames: list[str]
    poses: list[np.ndarray]

    def rgb(self, i: int) -> np.ndarray:
        from PIL import Image

        with Image.open(self.folder / "rgb" / f"{self.frames[i]}.png") as im:
            return np.asarray(im.convert("RGB"))

    def depth(self, i: int) -> np.ndarray:
        return _find_depth(self.folder / "depth", self.frames[i], what="ground-truth depth")


def _find_depth(folder: Path, frame: str, what: str) -> np.ndarray:
    from metricgold_engine.core.depth_io import read_depth

    for suffix in DEPTH_SUFFIXES:
        p = folder / f"{frame}{suffix}"
        if p.is_file():
            return read_depth(p)
    raise FileNotFoundError(f"{folder}: no {what} for frame {frame} ({'/'.join(DEPTH_SUFFIXES)})")


def find_sequences(root: str | Path) -> list[Path]:
    """``root`` itself when it holds ``camera.json``, else its sub-folders that do (sorted)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"--data-root {root}: not a folder")
    if (root / CAMERA_FILE).is_file():
        return [root]
    found = sorted(p for p in root.iterdir() if p.is_dir() and (p / CAMERA_FILE).is_file())
    if not found:
        raise FileNotFoundError(f"--data-root {root}: no sequence ({CAMERA_FILE}) in it or in its sub-folders; "
                                "render some with python -m trainer.synth --sequence N")
    return found


def load_sequence(folder: str | Path) -> SequenceData:
    folder = Path(folder)
    k, frames, poses = read_sequence_camera(folder / CAMERA_FILE)
    if len(frames) < 2:
        raise ValueError(f"{folder / CAMERA_FILE}: a sequence needs at least 2 frames, has {len(frames)}")
    return SequenceData(folder.name, folder, k, frames, poses)


def _engine_sequence_files(base: Path, seq_name: str, n_frames: int, any_name: bool) -> list[Path] | None:
    """The depth files of an engine sequence run in ``base`` (docs/sequences.md): ``NAME_camera.json`` names them by
    ``depth_files`` (``NAME_depth_######.exr``, numbered from ``first_frame``); the k-th ground-truth frame goes with
    the k-th file. ``NAME`` is the sequence's name, or (``any_name``) any when ``base`` holds one camera file.
    None: no such run."""
    if (base / f"{seq_name}_camera.json").is_file():
        cams = [base / f"{seq_name}_camera.json"]
    else:
        cams = sorted(base.glob("*_camera.json")) if any_name and base.is_dir() else []
    if len(cams) != 1:
        return None
    try:
        rec = json.loads(cams[0].read_text(encoding="utf-8"))
        pattern, first = str(rec["depth_files"]), int(rec.get("first_frame", 1))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{cams[0]}: not a sequence camera file with depth_files ({e})") from e
    m = re.search(r"#+", pattern)
    if m is None:
        raise ValueError(f"{cams[0]}: depth_files {pattern!r} has no ###### frame number")
    files = []
    for k in range(first, first + n_frames):
        name = pattern[: m.start()] + f"{k:0{len(m.group(0))}d}" + pattern[m.end():]
        exr = base / name
        # The pattern names the EXR; a run with --formats npy only has the .npy beside where it would be.
        files.append(exr if exr.is_file() or not exr.with_suffix(".npy").is_file() else exr.with_suffix(".npy"))
    return files


def predictions_from_folder(pred_root: str | Path, single: bool) -> Callable[[SequenceData], list[np.ndarray]]:
    """Depth files written beforehand, per sequence in ``PRED/SEQ/`` (or ``PRED/`` itself for one sequence): an
    engine sequence run (``NAME_camera.json`` + ``NAME_depth_######.exr``, matched to the frames in order), or files
    named like the frames, ``[depth/]FRAME.exr|.npy|.png``."""
    from metricgold_engine.core.depth_io import read_depth

    pred_root = Path(pred_root)

    def load(seq: SequenceData) -> list[np.ndarray]:
        bases = [pred_root / seq.name] + ([pred_root] if single else [])
        # PRED/SEQ/ (any NAME), PRED/ for one sequence (any NAME), PRED/SEQ_camera.json (a flat run per sequence).
        for base, any_name in [(b, True) for b in bases] + [(pred_root, False)]:
            files = _engine_sequence_files(base, seq.name, len(seq.frames), any_name) if base.is_dir() else None
            if files is not None:
                missing = [str(f) for f in files if not f.is_file()]
                if missing:
                    raise FileNotFoundError(f"--predictions {pred_root}: sequence {seq.name} has {len(seq.frames)} "
                                            f"frames but {missing[0]} is missing")
                return [read_depth(f) for f in files]
        bases = [b for base in bases for b in (base, base / "depth")]
        out = []
        for frame in seq.frames:
            for base in bases:
                if any((base / f"{frame}{s}").is_file() for s in DEPTH_SUFFIXES):
                    out.append(_find_depth(base, frame, what="predicted depth"))
                    break
            else:
                raise FileNotFoundError(f"--predictions {pred_root}: no depth file for sequence {seq.name} frame "
                                        f"{frame} (looked in {', '.join(str(b) for b in bases)})")
        return out

    return load


def evaluate_sequences(
    predict: Callable[[SequenceData], list[np.ndarray]],
    sequences: Sequence[SequenceData],
    *,
    min_depth: float = DEFAULT_MIN_DEPTH,
    max_depth: float = DEFAULT_MAX_DEPTH,
    rel_tol: float = DEFAULT_REL_TOL,
    progress: bool = True,
) -> dict[str, Any]:
    """Score ``predict(sequence) -> [depth per frame]`` on every sequence: per-frame metrics (mean over frames) and
    temporal error / flicker (mean over consecutive pairs). Predictions are resized to the ground truth and clipped
    to ``[min_depth, max_depth]`` as in :func:`trainer.eval.evaluate`."""
    from tqdm.auto import tqdm  # type: ignore[import-untyped]

    from metricgold_engine.metrics import compute_depth_metrics, mean_metrics

    from .eval import _as_depth, resize_prediction

    if not sequences:
        raise ValueError("no sequence to evaluate")
    rows, frame_metrics, pair_rows = [], [], []
    start = time.perf_counter()
    n_frames = 0
    for seq in tqdm(sequences, desc="eval sequence", unit="seq", disable=not progress, file=sys.stderr):
        preds_raw = list(predict(seq))
        if len(preds_raw) != len(seq.frames):
            raise ValueError(f"{seq.folder}: {len(preds_raw)} predictions for {len(seq.frames)} frames")
        gts = [np.asarray(seq.depth(i), dtype=np.float64) for i in range(len(seq.frames))]
        preds = []
        for i, (p, gt) in enumerate(zip(preds_raw, gts)):
            p = resize_prediction(_as_depth(p, f"{seq.name}/{seq.frames[i]}"), gt.shape)
            preds.append(np.clip(p.astype(np.float64), min_depth, max_depth))
            with np.errstate(invalid="ignore"):
                valid = np.isfinite(gt) & (gt > min_depth) & (gt < max_depth)
            if valid.any():
                frame_metrics.append(compute_depth_metrics(preds[-1], gt, valid))
        n_frames += len(seq.frames)
        seq_pairs = []
        for i in range(len(seq.frames) - 1):
            gt0 = np.where((gts[i] > min_depth) & (gts[i] < max_depth), gts[i], np.nan)
            gt1 = np.where((gts[i + 1] > min_depth) & (gts[i + 1] < max_depth), gts[i + 1], np.nan)
            r = temporal_errors(preds[i], preds[i + 1], gt0, gt1, seq.k, seq.poses[i], seq.poses[i + 1], rel_tol)
            r["pair"] = [seq.frames[i], seq.frames[i + 1]]
            seq_pairs.append(r)
        counted = [r for r in seq_pairs if r["pixels"] > 0]
        pair_rows.extend(counted)
        rows.append({
            "sequence": seq.name,
            "frames": len(seq.frames),
            "temporal_error": float(np.mean([r["temporal_error"] for r in counted])) if counted else math.nan,
            "flicker": float(np.mean([r["flicker"] for r in counted])) if counted else math.nan,
            "pairs": seq_pairs,
        })
    if not frame_metrics:
        raise ValueError("no frame had a valid ground-truth pixel")
    if not pair_rows:
        raise ValueError("no frame pair had a pixel seen in both frames")
    return {
        "dataset": "sequence",
        "num_sequences": len(rows),
        "num_frames": n_frames,
        "num_pairs": len(pair_rows),
        "protocol": {"min_depth": min_depth, "max_depth": max_depth, "alignment": "none", "rel_tol": rel_tol},
        "metrics": mean_metrics(frame_metrics),
        "temporal": {
            "temporal_error": float(np.mean([r["temporal_error"] for r in pair_rows])),
            "flicker": float(np.mean([r["flicker"] for r in pair_rows])),
            "covisible_fraction": float(np.mean([r["covisible_fraction"] for r in pair_rows])),
        },
        "seconds_per_frame": (time.perf_counter() - start) / max(n_frames, 1),
        "per_sequence": rows,
    }


def sequence_markdown(result: dict[str, Any]) -> str:
    from metricgold_engine.metrics import format_metrics_markdown

    p, t = result["protocol"], result["temporal"]
    title = (f"sequence: {result['num_sequences']} sequences, {result['num_frames']} frames, valid "
             f"{p['min_depth']:g} < d < {p['max_depth']:g} m")
    table = format_metrics_markdown({"metric (no alignment), per frame": result["metrics"]}, title=title)
    return (table.rstrip("\n") + "\n\n| temporal error | flicker | seen in both | pairs |\n|---:|---:|---:|---:|\n"
            f"| {t['temporal_error']:.4f} | {t['flicker']:.4f} | {t['covisible_fraction']:.3f} | "
            f"{result['num_pairs']} |\n")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m trainer eval --dataset sequence",
        description="Per-frame metrics and temporal error of depth sequences with known geometry and poses.",
    )
    p.add_argument("--dataset", choices=("sequence",), required=True)
    p.add_argument("--data-root", required=True, help="a sequence folder (camera.json) or a folder of them")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="model folder or Hub id (any backend): predict every frame, frame by frame "
                     "(MetricGold: the same seed for every frame)")
    src.add_argument("--predictions", help="folder of predicted depth: per sequence DIR/SEQ/ (DIR/ for one sequence) holding an engine "
                     "sequence run (NAME_camera.json, NAME_depth_######.exr) or [depth/]FRAME.exr|.npy|.png")
    p.add_argument("--steps", type=int, help="denoising steps (default: the checkpoint's)")
    p.add_argument("--ensemble", type=int, help="ensemble size (default: the checkpoint's)")
    p.add_argument("--resolution", type=int, help="processing resolution (default: the checkpoint's)")
    p.add_argument("--seed", type=int, default=0, help="noise seed, the same for every frame (default 0)")
    p.add_argument("--known-focal", action="store_true",
                   help="give models the true focal length (camera.json's fx) instead of letting them estimate it")
    p.add_argument("--max-sequences", type=int, help="evaluate only the first N sequences")
    p.add_argument("--min-depth", type=float, default=DEFAULT_MIN_DEPTH, help=f"default {DEFAULT_MIN_DEPTH:g}")
    p.add_argument("--max-depth", type=float, default=DEFAULT_MAX_DEPTH, help=f"default {DEFAULT_MAX_DEPTH:g}")
    p.add_argument("--rel-tol", type=float, default=DEFAULT_REL_TOL,
                   help=f"true-depth agreement for 'seen in both frames' (default {DEFAULT_REL_TOL})")
    p.add_argument("--out", help="folder to write metrics.json and metrics.md into")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--dtype", default="auto", help="auto | float32 | float16 | bfloat16")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    for flag in ("steps", "ensemble", "resolution", "max_sequences", "rel_tol"):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            print(f"error: --{flag.replace('_', '-')} must be positive, got {value}", file=sys.stderr)
            return 2
    try:
        folders = find_sequences(args.data_root)[: args.max_sequences]
        sequences = [load_sequence(f) for f in folders]
        if args.predictions:
            predict = predictions_from_folder(args.predictions, single=len(sequences) == 1)
        else:
            from .eval import _load_estimator, estimator_predictor

            estimator: Any = _load_estimator(args.model, args.device, args.dtype)  # any backend
            info = estimator.info()
            pipeline = getattr(estimator, "pipeline", None)
            if pipeline is not None and hasattr(pipeline, "set_progress_bar_config"):
                pipeline.set_progress_bar_config(disable=True)
            options = {"num_inference_steps": args.steps, "ensemble_size": args.ensemble,
                       "processing_resolution": args.resolution, "seed": args.seed}
            options = {k: v for k, v in options.items() if v is not None} if info.kind == "metricgold" else {}
            frame_predict = estimator_predictor(estimator, options)

            def predict(seq: SequenceData) -> list[np.ndarray]:
                focal = seq.k.fx if args.known_focal else None
                return [frame_predict(seq.rgb(i), focal_px=focal) for i in range(len(seq.frames))]

        result = evaluate_sequences(predict, sequences, min_depth=args.min_depth, max_depth=args.max_depth,
                                    rel_tol=args.rel_tol, progress=not args.no_progress)
    except (ValueError, FileNotFoundError, OSError) as e:  # DataError, CheckpointError, DepthFileError: ValueErrors
        print(f"error: {e}", file=sys.stderr)
        return 1
    result["model"] = args.model
    result["predictions"] = args.predictions
    result["settings"] = {"num_inference_steps": args.steps, "ensemble_size": args.ensemble,
                          "processing_resolution": args.resolution, "seed": args.seed, "device": args.device,
                          "dtype": args.dtype}
    text = sequence_markdown(result)
    print(text)
    if args.out:
        from metricgold_engine.core.depth_io import atomic_write

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        with atomic_write(out / "metrics.json") as tmp:
            tmp.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        with atomic_write(out / "metrics.md") as tmp:
            tmp.write_text(text, encoding="utf-8")
        print(f"wrote {out / 'metrics.json'} and {out / 'metrics.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
