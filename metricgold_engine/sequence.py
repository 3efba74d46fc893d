"""Video and image sequences: one metric depth file per frame, temporally stabilised (``docs/sequences.md``).

- Input (:func:`open_sequence`): a video file (PyAV), a folder of images (natural order) or a printf pattern
  (``frame_%04d.png``). A :class:`FrameSource` enumerates the frames, reads frame i as RGB and knows the fps.
- Output: ``OUT/NAME_depth_000001.exr`` ... (1-based, 6 digits: Blender reads ``NAME_depth_######.exr`` as an image
  sequence) and ``OUT/NAME_camera.json``. Frames whose files all exist are skipped (resume).
- Stability: the same seed for every frame; for MetricGold a warm start from the previous frame's depth latent
  (``denoise_strength``, see :class:`~metricgold_engine.pipeline.MetricGoldPipeline`); for every backend an
  exponential moving average of log depth (:func:`ema_log_depth`).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .core.errors import ImageLoadError, InvalidParams, OutputNotWritable
from .core.protocol import STAGE_FRAME  # progress after each frame (done or skipped), step = frames handled
from .image_io import IMAGE_SUFFIXES

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg")
#: Digits of the frame number in output names (up to 999,999 frames).
FRAME_DIGITS = 6
#: Output formats of a sequence and their per-frame file names (``{name}``, ``{n}`` = the zero-padded number).
SEQUENCE_FORMATS = {
    "exr": "{name}_depth_{n}.exr",
    "npy": "{name}_depth_{n}.npy",
    "png16": "{name}_depth16_{n}.png",
    "color": "{name}_depth_color_{n}.png",
}
UNCERTAINTY_FILE = "{name}_uncertainty_{n}.npy"
DEFAULT_SEQUENCE_FORMATS = ("exr",)

_PATTERN = re.compile(r"%0?(\d*)d")
_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> list[Any]:
    """Sort key that orders embedded numbers by value: ``f2.png`` before ``f10.png``."""
    return [int(part) if part.isdigit() else part.lower() for part in _DIGITS.split(name)]


def is_video(path: str | os.PathLike[str]) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def is_sequence_pattern(text: str | os.PathLike[str]) -> bool:
    """A printf pattern for numbered files, such as ``frames/frame_%04d.png``."""
    return bool(_PATTERN.search(Path(text).name))


# ------------------------------------------------------------------------------------------------- frame sources


class FrameSource:
    """The frames of a sequence, in order. ``len()`` is the frame count, ``frames()`` yields (index from 0, RGB PIL
    image), ``read_frame(i)`` reads one; ``fps`` is None when the input does not say (image sequences)."""

    name: str
    path: Path
    fps: float | None

    def __len__(self) -> int:
        raise NotImplementedError

    def frames(self) -> Iterator[tuple[int, Any]]:
        raise NotImplementedError

    def read_frame(self, index: int) -> Any:
        if not 0 <= index < len(self):
            raise IndexError(f"{self.path}: frame {index} out of range (the sequence has {len(self)} frames)")
        for i, image in self.frames():
            if i == index:
                return image
        raise ImageLoadError(f"{self.path}: frame {index} could not be decoded")

    def frame_files(self) -> list[Path] | None:
        """The image file of each frame (an image sequence), or None (a video)."""
        return None


class ImageSequence(FrameSource):
    """Numbered images or a folder of images (each read with EXIF orientation applied, as a photo is)."""

    def __init__(self, files: Sequence[Path], name: str, path: Path, fps: float | None = None):
        if not files:
            raise ImageLoadError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)})")
        self.files, self.name, self.path, self.fps = list(files), name, path, fps

    def __len__(self) -> int:
        return len(self.files)

    def frame_files(self) -> list[Path]:
        return list(self.files)

    def read_frame(self, index: int) -> Any:
        from .image_io import load_rgb_image

        if not 0 <= index < len(self):
            raise IndexError(f"{self.path}: frame {index} out of range (the sequence has {len(self)} frames)")
        return load_rgb_image(self.files[index])

    def frames(self) -> Iterator[tuple[int, Any]]:
        for i in range(len(self.files)):
            yield i, self.read_frame(i)


class VideoSequence(FrameSource):
    """A video file decoded with PyAV: every frame of its first video stream, in presentation order."""

    def __init__(self, path: Path, name: str):
        av = _import_av()
        self.path, self.name = path, name
        try:
            with av.open(os.fspath(path)) as container:
                if not container.streams.video:
                    raise ImageLoadError(f"{path}: the file has no video stream")
                stream = container.streams.video[0]
                rate = stream.average_rate or stream.guessed_rate
                self.fps = float(rate) if rate else None
                count = int(stream.frames or 0)
                if count <= 0:  # some containers do not store it: count the decoded frames once
                    count = sum(1 for _ in container.decode(stream))
        except ImageLoadError:
            raise
        except (av.FFmpegError, OSError) as exc:
            raise ImageLoadError(f"{path}: not a readable video ({exc})") from None
        if count <= 0:
            raise ImageLoadError(f"{path}: the video has no frames")
        self.count = count

    def __len__(self) -> int:
        return self.count

    def frames(self) -> Iterator[tuple[int, Any]]:
        av = _import_av()
        try:
            with av.open(os.fspath(self.path)) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                for i, frame in enumerate(container.decode(stream)):
                    if i >= self.count:
                        break
                    yield i, frame.to_image()  # RGB PIL image
        except av.FFmpegError as exc:
            raise ImageLoadError(f"{self.path}: decoding failed ({exc})") from None


def _import_av() -> Any:
    try:
        import av
    except ImportError:
        raise ImageLoadError("reading video needs PyAV: pip install 'metricgold[video]' (or pip install av)") from None
    return av


def sequence_name(source: str | os.PathLike[str]) -> str:
    """Default output NAME: a video's stem, a folder's name, or a pattern's prefix without trailing ``_-. ``."""
    p = Path(source)
    if is_sequence_pattern(p):
        prefix = p.name[: _PATTERN.search(p.name).start()].rstrip("_-. ")  # type: ignore[union-attr]
        return prefix or p.parent.resolve().name or "sequence"
    if p.is_dir():
        return p.resolve().name or "sequence"
    return p.stem


def open_sequence(source: str | os.PathLike[str], *, fps: float | None = None,
                  name: str | None = None) -> FrameSource:
    """A video file (by suffix), a folder of images or a printf pattern. ``fps`` overrides the input's.
    Raises ImageLoadError naming the input when it is missing, empty or unreadable."""
    p = Path(source)
    default_name = name or sequence_name(p)
    if is_sequence_pattern(p):
        folder = p.parent if str(p.parent) else Path(".")
        match = _PATTERN.search(p.name)
        assert match is not None
        width = match.group(1)
        prefix, suffix = p.name[: match.start()], p.name[match.end():]
        digits = rf"\d{{{int(width)},}}" if width else r"\d+"
        regex = re.compile(re.escape(prefix) + f"({digits})" + re.escape(suffix) + "$")
        if not folder.is_dir():
            raise ImageLoadError(f"{p}: folder {folder} not found")
        numbered = sorted((int(m.group(1)), f) for f in folder.iterdir()
                          if f.is_file() and (m := regex.match(f.name)))
        if not numbered:
            raise ImageLoadError(f"{p}: no file matches the pattern")
        source_seq: FrameSource = ImageSequence([f for _, f in numbered], default_name, p)
    elif p.is_dir():
        files = sorted((f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES),
                       key=lambda f: natural_key(f.name))
        source_seq = ImageSequence(files, default_name, p)
    elif not p.exists():
        raise ImageLoadError(f"{p}: file not found")
    elif is_video(p):
        source_seq = VideoSequence(p, default_name)
    else:
        raise ImageLoadError(f"{p}: not a video ({', '.join(VIDEO_SUFFIXES)}), a folder of images or a pattern "
                             "such as frame_%04d.png")
    if fps is not None:
        if not fps > 0:
            raise InvalidParams(f"fps must be > 0, got {fps!r}")
        source_seq.fps = float(fps)
    return source_seq


# ------------------------------------------------------------------------------------------------- smoothing


def ema_log_depth(previous_log: np.ndarray | None, depth: np.ndarray, alpha: float) -> np.ndarray:
    """One step of the exponential moving average of log depth: ``a log D_t + (1 - a) S_{t-1}``.

    ``previous_log``: S_{t-1} (natural log of metres; None for the first frame, or NaN where unknown); ``depth``:
    D_t in metres (0, negative or non-finite = invalid). Where only one term is valid, it is the result; where
    neither is, NaN. Returns S_t (float64).
    """
    if not 0.0 < alpha <= 1.0:
        raise InvalidParams(f"smoothing_alpha must be in (0, 1], got {alpha!r}")
    depth = np.asarray(depth, dtype=np.float64)
    valid = np.isfinite(depth) & (depth > 0)
    current = np.full(depth.shape, np.nan)
    current[valid] = np.log(depth[valid])
    if previous_log is None:
        return current
    previous_log = np.asarray(previous_log, dtype=np.float64)
    if previous_log.shape != depth.shape:
        raise InvalidParams(f"smoothing: frame of shape {depth.shape} after one of shape {previous_log.shape}")
    both = valid & np.isfinite(previous_log)
    out = np.where(valid, current, previous_log)
    out[both] = alpha * current[both] + (1.0 - alpha) * previous_log[both]
    return out


def smooth_log_depth(depths: Sequence[np.ndarray] | np.ndarray, alpha: float) -> np.ndarray:
    """The whole sequence through :func:`ema_log_depth`; returns the smoothed depths in metres [T,H,W] (NaN where
    no frame so far was valid)."""
    state: np.ndarray | None = None
    out = []
    for depth in depths:
        state = ema_log_depth(state, depth, alpha)
        out.append(np.exp(state))
    return np.stack(out)


# ------------------------------------------------------------------------------------------------- output names


def frame_number(index: int) -> str:
    """Zero-padded 1-based number of the frame at ``index`` (from 0)."""
    return f"{index + 1:0{FRAME_DIGITS}d}"


def frame_paths(out_dir: Path, name: str, index: int, formats: Sequence[str]) -> dict[str, Path]:
    n = frame_number(index)
    return {fmt: out_dir / SEQUENCE_FORMATS[fmt].format(name=name, n=n) for fmt in formats}


def depth_pattern(name: str) -> str:
    """The depth EXR files in Blender's notation (``#`` = one digit)."""
    return SEQUENCE_FORMATS["exr"].format(name=name, n="#" * FRAME_DIGITS)


def camera_path(out_dir: Path, name: str) -> Path:
    return out_dir / f"{name}_camera.json"


def state_path(out_dir: Path, name: str) -> Path:
    return out_dir / f".{name}_sequence_state.npz"


def check_formats(formats: Sequence[str]) -> list[str]:
    formats = list(dict.fromkeys(formats))
    unknown = sorted(set(formats) - set(SEQUENCE_FORMATS))
    if unknown or not formats:
        raise InvalidParams(f"formats: unknown output format(s) {', '.join(unknown) or '(none given)'}; "
                            f"choose among {', '.join(SEQUENCE_FORMATS)}")
    return formats


# ------------------------------------------------------------------------------------------------- the run


@dataclass
class SequenceResult:
    """What a sequence run did: ``written`` and ``skipped`` are frame numbers (1-based)."""

    name: str
    out_dir: Path
    camera_path: Path
    depth_pattern: str
    frame_count: int
    fps: float | None
    written: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    seconds: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "output_dir": str(self.out_dir.resolve()),
                "camera_path": str(self.camera_path.resolve()), "depth_pattern": self.depth_pattern,
                "frame_count": self.frame_count, "fps": self.fps, "written": len(self.written),
                "skipped": len(self.skipped), "seconds": self.seconds, "settings": self.settings}


def _is_metricgold(estimator: Any) -> bool:
    return getattr(estimator, "kind", None) == "metricgold" and hasattr(estimator, "pipeline")


def _write_frame(out_dir: Path, name: str, index: int, formats: Sequence[str], depth: np.ndarray,
                 uncertainty: np.ndarray | None) -> list[Path]:
    """All of a frame's files (each atomically) or none."""
    from .core import depth_io

    writers = {"npy": depth_io.write_depth_npy, "exr": depth_io.write_depth_exr,
               "png16": depth_io.write_depth_png16, "color": depth_io.write_depth_color_png}
    written: list[Path] = []
    try:
        if uncertainty is not None:
            path = out_dir / UNCERTAINTY_FILE.format(name=name, n=frame_number(index))
            depth_io.write_depth_npy(path, uncertainty)
            written.append(path)
        # The depth files last: a frame counts as done when they exist, so its uncertainty is already there.
        for fmt, path in frame_paths(out_dir, name, index, formats).items():
            writers[fmt](path, depth)
            written.append(path)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return written


def _write_json(path: Path, data: dict[str, Any]) -> None:
    from .core.depth_io import atomic_write

    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _load_state(path: Path, key: str, index: int) -> dict[str, np.ndarray] | None:
    """The chain state left after frame ``index - 1`` by a run with the same settings, else None."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["key"]) != key or int(data["frame"]) != index - 1:
                return None
            return {k: data[k] for k in data.files}
    except (OSError, KeyError, ValueError):
        return None


def _save_state(path: Path, key: str, index: int, log_depth: np.ndarray | None, latent: Any) -> None:
    from .core.depth_io import atomic_write

    arrays: dict[str, Any] = {"key": np.array(key), "frame": np.array(index)}
    if log_depth is not None:
        arrays["log_depth"] = log_depth  # float64: a resumed chain equals an uninterrupted one exactly
    if latent is not None:
        arrays["depth_latent"] = latent.float().cpu().numpy()
    with atomic_write(path.with_suffix(".npz")) as tmp:
        with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to the temporary name
            np.savez(f, **arrays)


def predict_sequence(
    estimator: Any,
    source: str | os.PathLike[str] | FrameSource,
    out_dir: str | os.PathLike[str],
    *,
    name: str | None = None,
    formats: Sequence[str] = DEFAULT_SEQUENCE_FORMATS,
    denoise_strength: float = 1.0,
    smoothing_alpha: float | None = None,
    fps: float | None = None,
    fov_deg: float | None = None,
    focal_35mm: float | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    **options: Any,
) -> SequenceResult:
    """Depth for every frame of ``source`` into ``out_dir`` (layout in ``docs/sequences.md``).

    ``estimator``: a :class:`~metricgold_engine.backends.base.DepthEstimator`. ``denoise_strength`` < 1: warm
    start of each frame from the previous one (MetricGold only). ``smoothing_alpha``: EMA of log depth (any
    backend; None = off). ``options`` go to the backend; ``seed`` defaults to 0 so every frame gets the same noise.
    ``progress(stage, step, total)``: the backend's stages within a frame, then ``("frame", k, N)`` after each
    frame; raising in it stops the run between or within frames (done frames stay written).
    Frames whose files all exist are skipped.
    """
    from .core.geometry import Camera, exif_focal, resolve_camera

    started = time.perf_counter()
    formats = check_formats(formats)
    if smoothing_alpha is not None and not 0.0 < smoothing_alpha <= 1.0:
        raise InvalidParams(f"smoothing_alpha must be in (0, 1], got {smoothing_alpha!r}")
    if isinstance(denoise_strength, bool) or not isinstance(denoise_strength, (int, float)) or not (
            0.0 < denoise_strength <= 1.0):
        raise InvalidParams(f"denoise_strength must be a number in (0, 1], got {denoise_strength!r}")
    warm = denoise_strength < 1.0
    if warm and not _is_metricgold(estimator):
        raise InvalidParams("denoise_strength < 1 (warm start) is for MetricGold models only; use smoothing_alpha "
                            "for this model")
    options = dict(options)
    if options.get("seed") is None:
        options["seed"] = 0  # the same initial noise for every frame
    frames = source if isinstance(source, FrameSource) else open_sequence(source, fps=fps, name=name)
    if fps is not None and isinstance(source, FrameSource):
        frames.fps = float(fps)
    name = name or frames.name
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputNotWritable(f"{out}: cannot create the output folder ({exc.strerror or exc})") from None
    total = len(frames)
    temporal = {"denoise_strength": float(denoise_strength) if warm else None, "smoothing_alpha": smoothing_alpha}
    # The chain state is reused on resume only by a run with the same settings and input.
    key = json.dumps({"source": str(frames.path), "temporal": temporal,
                      "options": {k: options[k] for k in sorted(options)}}, sort_keys=True, default=str)
    files = frames.frame_files()
    exif = exif_focal(files[0]) if files else None
    result = SequenceResult(name, out, camera_path(out, name), depth_pattern(name), total, frames.fps,
                            settings={"temporal": temporal, "options": options})

    def camera_json(camera: Camera) -> dict[str, Any]:
        return {**camera.as_json(), "fps": frames.fps, "frame_count": total, "first_frame": 1,
                "depth_files": result.depth_pattern, "source": str(Path(frames.path).resolve()),
                "temporal": temporal}

    log_state: np.ndarray | None = None  # smoothed log depth of the previous frame (None: chain (re)starts)
    latent_state: Any = None  # previous frame's final depth latent (MetricGold warm start)
    have_state = False  # the two above belong to the frame just before the current one
    camera_done = result.camera_path.exists()
    size: tuple[int, int] | None = None
    for index, image in frames.frames():
        if size is None:
            size = image.size
        elif image.size != size:
            raise ImageLoadError(f"{frames.path}: frame {index + 1} is {image.size[0]} x {image.size[1]}, but the "
                                 f"first frame is {size[0]} x {size[1]}; all frames must have one size")
        paths = frame_paths(out, name, index, formats)
        if all(p.exists() for p in paths.values()):
            result.skipped.append(index + 1)
            have_state = False
            if progress is not None:
                progress(STAGE_FRAME, index + 1, total)
            continue
        if not have_state and index > 0:  # resuming after a skipped frame: continue its chain if it was saved
            saved = _load_state(state_path(out, name), key, index)
            if saved is not None:
                log_state = saved.get("log_depth")
                if "depth_latent" in saved:
                    import torch

                    latent_state = torch.from_numpy(saved["depth_latent"])
                have_state = True
        if not have_state:
            log_state, latent_state = None, None
        width, height = image.size
        known = resolve_camera(width, height, fov_deg=fov_deg, focal_35mm=focal_35mm, exif=exif)
        known_focal = known.intrinsics.fx if known.focal_source in ("user", "exif") else None
        latent = None
        if _is_metricgold(estimator) and warm:
            from .backends.metricgold import METRICGOLD_OPTIONS

            unknown = sorted(set(options) - set(METRICGOLD_OPTIONS))
            if unknown:
                raise InvalidParams(f"unknown option(s) for a MetricGold model: {', '.join(unknown)}")
            callback = None
            if progress is not None:
                def callback(step: int, steps: int) -> None:
                    progress("denoise", step, steps)
            strength = denoise_strength if latent_state is not None else 1.0
            output = estimator.pipeline(
                image, step_callback=callback, depth_latent_init=latent_state if strength < 1.0 else None,
                denoise_strength=strength, **{k: v for k, v in options.items() if v is not None})
            depth, uncertainty, focal_px, latent = output.depth, output.uncertainty, None, output.depth_latent
        else:
            prediction = estimator.predict(image, focal_px=known_focal, progress=progress, **options)
            depth, uncertainty, focal_px = prediction.depth, prediction.uncertainty, prediction.focal_px
        h, w = depth.shape
        if not camera_done or index == 0:
            model_focal = None if focal_px is None else focal_px * w / width
            camera = resolve_camera(w, h, fov_deg=fov_deg, focal_35mm=focal_35mm, exif=exif,
                                    model_focal_px=model_focal)
            _write_json(result.camera_path, camera_json(camera))
            camera_done = True
        if smoothing_alpha is not None:
            if log_state is not None and log_state.shape != depth.shape:
                log_state = None  # resumed with another processing size: the chain restarts
            log_state = ema_log_depth(log_state, depth, smoothing_alpha)
            depth = np.exp(log_state).astype(np.float32)  # NaN where no frame so far was valid
        _write_frame(out, name, index, formats, depth, uncertainty)
        if smoothing_alpha is not None or warm:
            _save_state(state_path(out, name), key, index, log_state, latent)
        latent_state, have_state = latent, True
        result.written.append(index + 1)
        if progress is not None:
            progress(STAGE_FRAME, index + 1, total)
    if not camera_done:  # every frame skipped and no camera file: the camera without a model estimate
        first = frames.read_frame(0)
        _write_json(result.camera_path, camera_json(resolve_camera(
            first.width, first.height, fov_deg=fov_deg, focal_35mm=focal_35mm, exif=exif)))
    result.seconds = time.perf_counter() - started
    return result
