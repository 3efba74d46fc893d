"""Command line: ``python -m metricgold_engine {predict, make-tiny-checkpoint, init-from-sd}`` (also ``metricgold``).

``predict`` writes, for each image NAME:

- ``NAME_depth.npy``        float32 metres, HxW
- ``NAME_depth.exr``        float32 metres, one channel ``Y``
- ``NAME_depth16.png``      uint16 millimetres (clipped to 1 mm .. 65.535 m; 0 = invalid)
- ``NAME_depth_color.png``  colour-mapped preview with a legend of the range in metres
- ``NAME_uncertainty.npy``  float32 metres (ensemble spread), with ``--uncertainty``
- ``NAME.ply``              with ``--formats ...,ply``: binary PLY point cloud in metres, camera looking down -Z,
  +Y up (Blender/OpenGL), coloured from the photo (see :mod:`metricgold_engine.core.pointcloud`)
- ``NAME_camera.json``      the camera of the depth: fx, fy, cx, cy (pixels), width, height, focal_source
                            (user, exif, model or default), focal_35mm, description

``--model`` takes any backend: a MetricGold checkpoint, Depth Pro, Depth Anything V2 metric or ZoeDepth, as a local
folder or a Hugging Face Hub id (downloaded once into the Hugging Face cache). The summary names its licence.

Every file is written to a temporary name and renamed into place. One bad image does not stop the others (and
leaves none of its own files); the summary names each failure, and the exit status is 1 if any image failed, 2 if
nothing could run at all. How NAME is chosen when inputs share a name: :mod:`metricgold_engine.batch`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .batch import check_output_dir, collect_images, output_names
from .core.errors import MetricGoldError, OutputNotWritable


#: Output formats of ``predict``; ``ply`` (a point cloud) is asked for explicitly.
FORMATS = ("npy", "exr", "png16", "color", "ply")
DEFAULT_FORMATS = ("npy", "exr", "png16", "color")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _nonnegative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


def _fov_degrees(text: str) -> float:
    value = float(text)
    if not 0 < value < 180:
        raise argparse.ArgumentTypeError(f"must be in (0, 180) degrees, got {text}")
    return value


#: predict's options for the model (the rest are for the CLI itself), each with the flag that sets it.
MODEL_OPTION_FLAGS = {
    "num_inference_steps": "--steps", "ensemble_size": "--ensemble", "processing_resolution": "--resolution",
    "seed": "--seed", "timestep_spacing": "--timestep-spacing", "ensemble_reduction": "--reduction",
    "batch_size": "--batch-size", "output_uncertainty": "--uncertainty", "flip_average": "--flip-average",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m metricgold_engine", description="MetricGold: monocular metric depth (metres) from one photo."
    )
    parser.add_argument("--version", action="version", version=f"metricgold {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("predict", help="predict metric depth for images or folders of images")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    p.add_argument("--model", default=None,
                   help="model folder or Hugging Face Hub id: MetricGold, Depth Pro, Depth Anything V2 metric or "
                        "ZoeDepth (default: the built-in demo model; see README 'Which model?')")
    p.add_argument("--out", required=True, help="output folder (created if missing)")
    p.add_argument("--steps", dest="num_inference_steps", type=_positive_int, default=None,
                   help="DDIM steps (default: the checkpoint's; the paper uses 50)")
    p.add_argument("--ensemble", dest="ensemble_size", type=_positive_int, default=None,
                   help="ensemble size (default: the checkpoint's; the paper uses 10)")
    p.add_argument("--resolution", dest="processing_resolution", type=_nonnegative_int, default=None,
                   help="long side the model sees, 0 = native (default: the checkpoint's)")
    p.add_argument("--seed", type=_nonnegative_int, default=0, help="noise seed (default 0: reproducible)")
    p.add_argument("--timestep-spacing", dest="timestep_spacing", choices=("leading", "trailing", "linspace"),
                   default=None, help="DDIM timestep spacing (default: the checkpoint's)")
    p.add_argument("--reduction", dest="ensemble_reduction", choices=("median", "mean"), default="median",
                   help="ensemble reduction in log depth (default median)")
    p.add_argument("--batch-size", dest="batch_size", type=_nonnegative_int, default=0,
                   help="ensemble members per UNet batch, 0 = all at once")
    p.add_argument("--uncertainty", dest="output_uncertainty", action="store_true",
                   help="also write NAME_uncertainty.npy (needs --ensemble > 1)")
    p.add_argument("--flip-average", dest="flip_average", action="store_true",
                   help="ZoeDepth only: average with the prediction for the mirrored photo")
    camera = p.add_mutually_exclusive_group()
    camera.add_argument("--focal-mm", dest="focal_35mm", type=_positive_float, default=None, metavar="MM",
                        help="the camera's focal length, 35 mm equivalent (default: the photo's EXIF, else the "
                             "model's estimate, else a 55 degree field of view)")
    camera.add_argument("--fov", dest="fov_deg", type=_fov_degrees, default=None, metavar="DEG",
                        help="the camera's horizontal field of view in degrees (instead of --focal-mm)")
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N, mps")
    p.add_argument("--dtype", default="auto", help="auto (fp16 on GPU, fp32 on CPU), float32, float16, bfloat16")
    p.add_argument("--formats", default=None,
                   help=f"comma-separated outputs among {', '.join(FORMATS)} (default: {','.join(DEFAULT_FORMATS)}; "
                        "for a video or sequence: exr); ply = coloured point cloud in metres")
    p.add_argument("--compile", action="store_true", help="torch.compile the UNet (first image pays the compile)")
    p.add_argument("--channels-last", dest="channels_last", action="store_true",
                   help="channels-last (NHWC) weights (already the CPU default; for GPUs)")
    add_sequence_arguments(p)

    t = sub.add_parser("make-tiny-checkpoint", help="write a tiny random MetricGold checkpoint (tests, CPU demos)")
    t.add_argument("dir")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--size", choices=("tiny", "small", "sd2"), default="tiny")

    i = sub.add_parser("init-from-sd", help="build an untrained MetricGold model from a Stable Diffusion v2 folder")
    i.add_argument("sd_path", help="Stable Diffusion v2 folder in diffusers layout (or a Marigold checkpoint)")
    i.add_argument("out", help="output checkpoint folder")
    i.add_argument("--depth-min", type=float, default=None, help="metres (default 0.1)")
    i.add_argument("--depth-max", type=float, default=None, help="metres (default 100)")
    i.add_argument("--normalization", choices=("log", "linear"), default="log")
    return parser


def write_prediction(
    out_dir: Path, name: str, output: Any, formats: Sequence[str], camera: Any = None, image: Any = None
) -> list[Path]:
    """Write one prediction's files (each atomically); returns their paths. ``camera``
    (:class:`~metricgold_engine.core.geometry.Camera`): also ``NAME_camera.json``, and the camera of ``ply``, which
    also needs the ``image`` (the photo, for colours)."""
    from .core import depth_io

    writers = {
        "npy": (f"{name}_depth.npy", depth_io.write_depth_npy),
        "exr": (f"{name}_depth.exr", depth_io.write_depth_exr),
        "png16": (f"{name}_depth16.png", depth_io.write_depth_png16),
        "color": (f"{name}_depth_color.png", depth_io.write_depth_color_png),
    }
    written: list[Path] = []
    try:
        for fmt in formats:
            if fmt == "ply":
                k = camera.intrinsics if camera is not None else None
                written.append(write_point_cloud(out_dir / f"{name}.ply", output, image, k))
                continue
            filename, writer = writers[fmt]
            writer(out_dir / filename, output.depth)
            written.append(out_dir / filename)
        if output.uncertainty is not None:
            depth_io.write_depth_npy(out_dir / f"{name}_uncertainty.npy", output.uncertainty)
            written.append(out_dir / f"{name}_uncertainty.npy")
        if camera is not None:
            path = out_dir / f"{name}_camera.json"
            with depth_io.atomic_write(path) as tmp:
                tmp.write_text(json.dumps(camera.as_json(), indent=2) + "\n", encoding="utf-8")
            written.append(path)
    except BaseException:
        for path in written:  # all of an image's files or none: a failed image leaves nothing half-done
            path.unlink(missing_ok=True)
        raise
    return written


def write_point_cloud(path: Path, output: Any, image: Any, intrinsics: Any = None) -> Path:
    """``NAME.ply``: the prediction unprojected through ``intrinsics`` (default: the photo's camera, EXIF focal length
    > the model's estimate > the default field of view), coloured by the photo, with the uncertainty when there is
    one."""
    import numpy as np

    from .core.geometry import exif_focal, resolve_camera
    from .core.pointcloud import write_depth_ply
    from .image_io import load_rgb_image

    depth = np.asarray(output.depth)
    h, w = depth.shape
    rgb = np.asarray(load_rgb_image(image), dtype=np.uint8)  # EXIF orientation applied, as for the depth
    if intrinsics is None:
        exif = exif_focal(image) if isinstance(image, (str, Path)) else None
        intrinsics = resolve_camera(w, h, exif=exif, model_focal_px=getattr(output, "focal_px", None)).intrinsics
    return write_depth_ply(path, depth, intrinsics, rgb=rgb, uncertainty=output.uncertainty)


def model_options(args: argparse.Namespace, parser_defaults: dict[str, Any], known: Sequence[str]) -> dict[str, Any]:
    """The options to hand the model: those it knows; a flag it does not know is refused when set by the user
    (the parser's defaults for MetricGold's flags are simply not passed to another kind of model)."""
    options, refused = {}, []
    for key, flag in MODEL_OPTION_FLAGS.items():
        value = getattr(args, key)
        if key in known:
            options[key] = value
        elif value != parser_defaults.get(key):
            refused.append(flag)
    if refused:
        raise ValueError(f"{', '.join(refused)}: not an option of this model (its options: "
                         f"{', '.join(MODEL_OPTION_FLAGS[k] for k in known if k in MODEL_OPTION_FLAGS) or 'none'})")
    return options


def _describe_failure(exc: BaseException) -> str:
    """One line for the summary: our own errors say what they are; anything else gets its type."""
    if isinstance(exc, MetricGoldError):
        return exc.message
    if isinstance(exc, MemoryError):
        return "out of memory (try a smaller --resolution, or fewer --ensemble members per --batch-size)"
    return f"{type(exc).__name__}: {exc}"


def _announce_model(info: Any, args: argparse.Namespace, show: bool) -> str:
    """Print (when ``show``) the model, its licence (several popular weights are non-commercial) and the demo-model
    label; returns the licence text for the summary."""
    from .core.demo_model import DEMO_MODEL_NOTE

    licence = info.licence or "unknown (no licence in the model card: check before use)"
    if show:
        print(f"model: {info.name} ({info.kind}); licence: {licence}", file=sys.stderr)
        if info.demo_model:
            print(f"using the built-in DEMO model ({DEMO_MODEL_NOTE}); pass --model PATH for a real checkpoint",
                  file=sys.stderr)
    return licence


def _prepare_pipeline(estimator: Any, args: argparse.Namespace) -> Any:
    """The diffusers pipeline behind a MetricGold estimator (None for other models), with --compile and
    --channels-last applied."""
    pipeline = getattr(estimator, "pipeline", None)
    if pipeline is not None and (args.compile or args.channels_last):
        from .speed import apply_speed_options

        apply_speed_options(pipeline, compile=args.compile, channels_last=args.channels_last)
    return pipeline


def cmd_predict(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from .backends import load_estimator
    from .backends.photo import predict_photo
    from .core.errors import CheckpointError
    from .sharding import ShardingError, current_shard, map_sharded

    if is_sequence_request(args):
        return cmd_predict_sequence(args)
    if sequence_flags_given(args):
        print(f"error: {', '.join(sequence_flags_given(args))}: only for a video, or with --sequence for a folder or "
              "pattern of frames", file=sys.stderr)
        return 2
    formats = [f.strip() for f in (args.formats or ",".join(DEFAULT_FORMATS)).split(",") if f.strip()]
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or not formats:
        print(f"error: --formats: unknown output format(s) {', '.join(unknown) or '(none given)'}; "
              f"choose among {', '.join(FORMATS)}", file=sys.stderr)
        return 2
    images, failures = collect_images(args.inputs)
    if not images:
        for item, problem in failures:
            print(f"error: {item}: {problem}", file=sys.stderr)
        print("error: no images to process", file=sys.stderr)
        return 2
    try:  # before the model loads: a bad --out costs milliseconds
        out_dir = check_output_dir(args.out, args.inputs)
    except OutputNotWritable as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    try:
        shard = current_shard()  # this process's part of the images under `accelerate launch`; all of them otherwise
        with shard.main_first():  # a Hub id is downloaded once
            estimator = load_estimator(args.model, device=shard.device(args.device), dtype=args.dtype)
        info = estimator.info()
        defaults = vars(build_parser().parse_args(["predict", "IMAGE", "--out", "OUT"]))
        options = model_options(args, defaults, list(info.default_options))
    except (CheckpointError, ValueError, ShardingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    licence = _announce_model(info, args, show=shard.is_main)
    pipeline = _prepare_pipeline(estimator, args)
    if pipeline is not None:
        pipeline.set_progress_bar_config(leave=False, desc="denoising", disable=shard.count > 1)  # one bar in all

    def predict_one(_: int, item: tuple[Path, str]) -> tuple[str, str] | None:
        image, name = item
        try:  # one bad image (unreadable, too large, out of memory while writing) never stops the others
            result = predict_photo(estimator, image, fov_deg=args.fov_deg, focal_35mm=args.focal_35mm, **options)
            write_prediction(out_dir, name, result.prediction, formats, camera=result.camera, image=image)
            return None
        except Exception as exc:
            problem = _describe_failure(exc)
            tqdm.write(f"error: {problem if problem.startswith(str(image)) else f'{image}: {problem}'}",
                       file=sys.stderr)
            return (str(image), problem)

    started = time.perf_counter()
    results = map_sharded(list(zip(images, output_names(images))), predict_one, shard)
    seconds = time.perf_counter() - started
    failed = [problem for _, problem in results if problem is not None]
    failures.extend(failed)
    if not shard.is_main:  # the main process reports for all
        return 1 if failures else 0
    done = len(results) - len(failed)
    on = f" by {shard.count} processes" if shard.count > 1 else ""
    if failures:
        print(f"{done} image(s) written to {out_dir}{on} in {seconds:.1f} s; {len(failures)} failed:",
              file=sys.stderr)
    else:
        print(f"{done} image(s) written to {out_dir}{on} in {seconds:.1f} s", file=sys.stderr)
    print(f"model: {info.name} ({info.kind}); licence: {licence}", file=sys.stderr)
    for item, problem in failures:
        print(f"  failed: {problem if problem.startswith(item) else f'{item}: {problem}'}", file=sys.stderr)
    return 1 if failures else 0


# ---------------------------------------------------------------------------------------------- video / sequences
# (issue 16; format in docs/sequences.md)


def _strength(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def add_sequence_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("video and image sequences (a video file is always one; see docs/sequences.md)")
    g.add_argument("--sequence", action="store_true",
                   help="treat each folder or printf pattern (frame_%%04d.png) as the frames of one sequence")
    g.add_argument("--temporal-strength", dest="denoise_strength", type=_strength, default=None, metavar="S",
                   help="MetricGold: start each frame from the previous frame's depth noised to S*T "
                        f"(1 = independent frames; default {DEFAULT_DENOISE_STRENGTH:g})")
    g.add_argument("--smooth", dest="smoothing_alpha", type=_strength, default=None, metavar="ALPHA",
                   help="any model: exponential moving average of log depth along the sequence with weight ALPHA "
                        "on the new frame (default: off)")
    g.add_argument("--fps", type=_positive_float, default=None, help="frames per second of an image sequence")
    g.add_argument("--name", default=None, help="output NAME of the sequence (default: the video's stem, the "
                                                "folder's name or the pattern's prefix)")


#: MetricGold's default warm-start strength for sequences (measured in docs/sequences.md).
DEFAULT_DENOISE_STRENGTH = 1.0


def is_sequence_request(args: argparse.Namespace) -> bool:
    from .sequence import is_sequence_pattern, is_video

    return bool(args.sequence) or any(is_video(item) or is_sequence_pattern(item) for item in args.inputs)


def sequence_flags_given(args: argparse.Namespace) -> list[str]:
    flags = {"denoise_strength": "--temporal-strength", "smoothing_alpha": "--smooth", "fps": "--fps", "name": "--name"}
    return [flag for key, flag in flags.items() if getattr(args, key) is not None]


def cmd_predict_sequence(args: argparse.Namespace) -> int:
    """``predict`` for videos and image sequences: each input is one sequence, written as numbered frames."""
    from tqdm.auto import tqdm

    from .backends import load_estimator
    from .core.errors import CheckpointError
    from .sequence import check_formats, open_sequence, predict_sequence

    try:
        formats = check_formats([f.strip() for f in (args.formats or "exr").split(",") if f.strip()])
        if args.name is not None and len(args.inputs) > 1:
            raise ValueError("--name: only with one input sequence")
        sources = [open_sequence(item, fps=args.fps, name=args.name) for item in args.inputs]
        out_dir = check_output_dir(args.out, args.inputs)
    except (MetricGoldError, ValueError) as exc:  # before the model loads: a bad input costs milliseconds
        print(f"error: {exc.message if isinstance(exc, MetricGoldError) else exc}", file=sys.stderr)
        return 2
    try:
        estimator = load_estimator(args.model, device=args.device, dtype=args.dtype)
        info = estimator.info()
        defaults = vars(build_parser().parse_args(["predict", "IMAGE", "--out", "OUT"]))
        options = model_options(args, defaults, list(info.default_options))
    except (CheckpointError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    strength = args.denoise_strength
    if strength is None:
        strength = DEFAULT_DENOISE_STRENGTH if info.kind == "metricgold" else 1.0
    elif strength < 1.0 and info.kind != "metricgold":
        print(f"error: --temporal-strength is for MetricGold models only ({info.name} is {info.kind}); use --smooth",
              file=sys.stderr)
        return 2
    _announce_model(info, args, show=True)
    pipeline = _prepare_pipeline(estimator, args)
    if pipeline is not None:
        pipeline.set_progress_bar_config(disable=True)
    failed = 0
    for frames in sources:
        bar = tqdm(total=len(frames), desc=frames.name, unit="frame")

        def progress(stage: str, step: int, total: int, bar: Any = bar) -> None:
            if stage == "frame":
                bar.update(step - bar.n)

        try:
            result = predict_sequence(estimator, frames, out_dir, formats=formats, denoise_strength=strength,
                                      smoothing_alpha=args.smoothing_alpha, fov_deg=args.fov_deg,
                                      focal_35mm=args.focal_35mm, progress=progress, **options)
        except Exception as exc:
            bar.close()
            failed += 1
            print(f"error: {frames.path}: {_describe_failure(exc)} (frames already written are kept; run again to "
                  "resume)", file=sys.stderr)
            continue
        bar.close()
        skipped = f", {len(result.skipped)} already done" if result.skipped else ""
        print(f"{frames.path}: {len(result.written)} frame(s) written{skipped} as {out_dir / result.depth_pattern} "
              f"in {result.seconds:.1f} s; camera {result.camera_path}", file=sys.stderr)
    return 1 if failed else 0


def cmd_make_tiny(args: argparse.Namespace) -> int:
    from .tiny_models import make_tiny_checkpoint

    path = make_tiny_checkpoint(args.dir, seed=args.seed, size=args.size)
    print(f"tiny random MetricGold checkpoint ({args.size}, seed {args.seed}) written to {path}", file=sys.stderr)
    return 0


def cmd_init_from_sd(args: argparse.Namespace) -> int:
    from .core.depth_codec import DEFAULT_DEPTH_MAX, DEFAULT_DEPTH_MIN
    from .core.errors import CheckpointError
    from .checkpoint import init_from_stable_diffusion, save_checkpoint

    try:
        pipe = init_from_stable_diffusion(
            args.sd_path,
            depth_min=DEFAULT_DEPTH_MIN if args.depth_min is None else args.depth_min,
            depth_max=DEFAULT_DEPTH_MAX if args.depth_max is None else args.depth_max,
            depth_normalization=args.normalization,
        )
    except (CheckpointError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    save_checkpoint(pipe, args.out)
    print(f"untrained MetricGold model written to {args.out}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"predict": cmd_predict, "make-tiny-checkpoint": cmd_make_tiny, "init-from-sd": cmd_init_from_sd}
    return handlers[args.command](args)
