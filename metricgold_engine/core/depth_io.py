"""Depth files: ``.npy`` (float32 metres), OpenEXR (channel ``Y``, float32 metres), 16-bit PNG (millimetres) and
colour-mapped previews.

Ground floor: numpy at import; Pillow (PNG) and OpenEXR (EXR) are imported inside the functions that need them, so
Blender's Python (which has neither) imports this module and reads and writes ``.npy``.

Conventions shared by every reader and writer:

- depth is planar depth along the optical axis in metres, an ``H x W`` array;
- a depth that is 0, negative, NaN or inf is invalid; :func:`read_depth` returns invalid pixels as NaN;
- every write is atomic (:func:`atomic_write`): a reader never sees a half-written file, and a failed write leaves
  whatever was at the path before.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DepthFileError

__all__ = [
    "DepthFileError",
    "DEPTH_SUFFIXES",
    "PNG16_MIN_M",
    "PNG16_MAX_M",
    "atomic_write",
    "colorize_depth",
    "read_depth",
    "write_depth",
    "write_depth_color_png",
    "write_depth_exr",
    "write_depth_npy",
    "write_depth_png16",
]

#: File suffixes :func:`read_depth` understands.
DEPTH_SUFFIXES: tuple[str, ...] = (".npy", ".exr", ".png")

#: The range a uint16 millimetre PNG can hold: 1 mm (0 means invalid) to 65.535 m.
PNG16_MIN_M = 0.001
PNG16_MAX_M = 65.535

#: ColorBrewer "Spectral" (11 classes), the colour map of Marigold's depth previews; near is red, far is violet.
_SPECTRAL_HEX = (
    "9e0142", "d53e4f", "f46d43", "fdae61", "fee08b", "ffffbf", "e6f598", "abdda4", "66c2a5", "3288bd", "5e4fa2",
)
SPECTRAL_RGB = np.array([[int(h[i : i + 2], 16) for i in (0, 2, 4)] for h in _SPECTRAL_HEX], dtype=np.float64)


# --------------------------------------------------------------------------------------------------------------------
# Atomic writes


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path``, on failure removed.

    The temporary file keeps ``path``'s suffix, because writers (numpy, Pillow) pick the format from it. It lives in
    the same folder so that ``os.replace`` is a rename on one file system, which is atomic.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{path}: the folder {path.parent} does not exist")
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the result should look like any other new file
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


# --------------------------------------------------------------------------------------------------------------------
# Writers


def _as_depth(depth: Any, what: str = "depth") -> np.ndarray:
    """``depth`` as a float32 H x W array (an H x W x 1 array is squeezed); ValueError naming the problem."""
    arr = np.asarray(depth)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise ValueError(f"{what} must be an H x W array, got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{what} has no pixels (shape {arr.shape})")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)) or arr.dtype == np.bool_:
        raise ValueError(f"{what} must be real numbers in metres, got dtype {arr.dtype}")
    return arr.astype(np.float32, copy=False)


def _valid(depth: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return np.isfinite(depth) & (depth > 0)


def write_depth_npy(path: str | os.PathLike[str], depth: Any) -> Path:
    """Write ``depth`` (metres) as a float32 H x W ``.npy`` file; invalid pixels are stored as they are."""
    arr = _as_depth(depth)
    path = Path(path)
    with atomic_write(path) as tmp:
        with open(tmp, "wb") as f:  # a file object: np.save would append ".npy" to a name without it
            np.save(f, arr, allow_pickle=False)
    return path


def write_depth_exr(path: str | os.PathLike[str], depth: Any) -> Path:
    """Write ``depth`` (metres) as a single-channel (``Y``) float32 OpenEXR file, ZIP-compressed (lossless)."""
    arr = np.ascontiguousarray(_as_depth(depth))
    try:
        import OpenEXR  # type: ignore[import-not-found]  # no stubs; optional at runtime
    except ImportError as e:  # Blender's bundled Python, for instance
        raise DepthFileError(f"{path}: writing .exr needs the OpenEXR package (pip install OpenEXR)") from e
    path = Path(path)
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    with atomic_write(path) as tmp:
        with OpenEXR.File(header, {"Y": arr}) as f:
            f.write(str(tmp))
    return path


def depth_to_png16(depth: Any) -> np.ndarray:
    """Depth in metres -> uint16 millimetres: rounded, clipped to [1, 65535] mm, invalid pixels 0."""
    arr = _as_depth(depth).astype(np.float64)
    valid = _valid(arr)
    mm = np.zeros(arr.shape, dtype=np.uint16)
    mm[valid] = np.clip(np.rint(arr[valid] * 1000.0), 1, 65535).astype(np.uint16)
    return mm


def write_depth_png16(path: str | os.PathLike[str], depth: Any) -> Path:
    """Write ``depth`` as a 16-bit greyscale PNG in millimetres (clipped to [0.001, 65.535] m; invalid = 0)."""
    from PIL import Image

    mm = depth_to_png16(depth)
    path = Path(path)
    with atomic_write(path) as tmp:
        Image.fromarray(mm).save(tmp, format="PNG")
    return path


def colorize_depth(depth: Any, d_min: float, d_max: float) -> np.ndarray:
    """Depth -> uint8 H x W x 3 with the Spectral map over ``[d_min, d_max]`` (near red, far violet); invalid black.

    Depths outside the range take the end colours.
    """
    arr = _as_depth(depth).astype(np.float64)
    if not (np.isfinite(d_min) and np.isfinite(d_max) and d_max > d_min):
        raise ValueError(f"colour range needs finite d_max > d_min, got d_min={d_min}, d_max={d_max}")
    valid = _valid(arr)
    t = np.clip((np.where(valid, arr, d_min) - d_min) / (d_max - d_min), 0.0, 1.0)
    stops = np.linspace(0.0, 1.0, len(SPECTRAL_RGB))
    rgb = np.stack([np.interp(t, stops, SPECTRAL_RGB[:, c]) for c in range(3)], axis=-1)
    rgb[~valid] = 0.0
    return np.rint(rgb).astype(np.uint8)


def _format_metres(value: float) -> str:
    return f"{value:.3g} m" if value < 100 else f"{value:.0f} m"


def write_depth_color_png(
    path: str | os.PathLike[str], depth: Any, d_min: float | None = None, d_max: float | None = None
) -> tuple[float, float]:
    """Write a colour-mapped preview of ``depth`` with a legend strip below it; return the range used (metres).

    The range defaults to the minimum and maximum of the valid pixels. The legend is a colour bar from ``d_min``
    (left) to ``d_max`` (right) labelled in metres; the range is also stored in the PNG's text chunks
    ``depth_min_m`` and ``depth_max_m``, so that tools can read it back.
    """
    from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

    arr = _as_depth(depth)
    valid = _valid(arr)
    if d_min is None or d_max is None:
        if not valid.any():
            raise ValueError(f"{path}: depth has no valid pixel, so the preview needs d_min and d_max")
        d_min = float(arr[valid].min()) if d_min is None else d_min
        d_max = float(arr[valid].max()) if d_max is None else d_max
    d_min, d_max = float(d_min), float(d_max)
    if d_max <= d_min:  # a constant depth: widen so the colour map is defined
        d_max = d_min + max(abs(d_min) * 1e-3, 1e-3)
    h, w = arr.shape

    # Legend: a colour bar over the full width, labels at both ends.
    legend_h = max(20, h // 10)
    bar_h = legend_h // 2
    ramp = np.linspace(d_min, d_max, w, dtype=np.float64)[None, :].repeat(bar_h, axis=0)
    canvas = np.zeros((h + legend_h, w, 3), dtype=np.uint8)
    canvas[:h] = colorize_depth(arr, d_min, d_max)
    canvas[h : h + bar_h] = colorize_depth(ramp, d_min, d_max)
    image = Image.fromarray(canvas, mode="RGB")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=max(8, legend_h - bar_h - 2))
    y_text = h + bar_h + 1
    draw.text((2, y_text), _format_metres(d_min), fill=(255, 255, 255), font=font)
    right = _format_metres(d_max)
    draw.text((w - 2 - draw.textlength(right, font=font), y_text), right, fill=(255, 255, 255), font=font)

    info = PngImagePlugin.PngInfo()
    info.add_text("depth_min_m", repr(d_min))
    info.add_text("depth_max_m", repr(d_max))
    with atomic_write(Path(path)) as tmp:
        image.save(tmp, format="PNG", pnginfo=info)
    return d_min, d_max


def write_depth(path: str | os.PathLike[str], depth: Any) -> Path:
    """Write ``depth`` in the format its suffix names (``.npy``, ``.exr`` or 16-bit ``.png``)."""
    suffix = Path(path).suffix.lower()
    writers = {".npy": write_depth_npy, ".exr": write_depth_exr, ".png": write_depth_png16}
    if suffix not in writers:
        raise DepthFileError(f"{path}: unknown depth file type {suffix!r}; use one of {', '.join(DEPTH_SUFFIXES)}")
    return writers[suffix](path, depth)


# --------------------------------------------------------------------------------------------------------------------
# Reader


def _read_npy(path: Path) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise DepthFileError(f"{path}: not a readable .npy array ({e})") from e
    if not isinstance(arr, np.ndarray):  # an .npz archive saved under .npy
        raise DepthFileError(f"{path}: holds an archive of arrays, not one depth array")
    if np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_:
        raise DepthFileError(
            f"{path}: dtype {arr.dtype}; a .npy depth must be floating-point metres "
            "(integer millimetres belong in a 16-bit .png)"
        )
    if not np.issubdtype(arr.dtype, np.floating):
        raise DepthFileError(f"{path}: dtype {arr.dtype}; a .npy depth must be floating-point metres")
    return arr


def _read_exr(path: Path) -> np.ndarray:
    try:
        import OpenEXR  # type: ignore[import-not-found]  # no stubs; optional at runtime
    except ImportError as e:
        raise DepthFileError(f"{path}: reading .exr needs the OpenEXR package (pip install OpenEXR)") from e
    try:
        with OpenEXR.File(str(path), separate_channels=True) as f:
            channels = {name: ch.pixels for name, ch in f.channels().items()}
    except Exception as e:  # OpenEXR raises RuntimeError for unreadable files
        raise DepthFileError(f"{path}: not a readable OpenEXR file ({e})") from e
    # Y is what write_depth_exr writes; Z / depth are what renderers (Blender's Depth pass) write.
    for name in ("Y", "Z", "depth", "Depth"):
        if name in channels:
            return np.asarray(channels[name])
    depth_like = [n for n in channels if n.endswith((".Z", ".Depth", ".depth", ".Y"))]
    if len(depth_like) == 1:
        return np.asarray(channels[depth_like[0]])
    if len(channels) == 1:
        return np.asarray(next(iter(channels.values())))
    raise DepthFileError(
        f"{path}: no depth channel; expected one of Y, Z, depth, found {', '.join(sorted(channels))}"
    )


def _read_png16(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            mode = im.mode
            if mode not in ("I;16", "I;16B", "I;16L", "I"):
                raise DepthFileError(
                    f"{path}: PNG mode {mode!r}; a depth PNG must be 16-bit greyscale in millimetres"
                )
            mm = np.asarray(im)
    except DepthFileError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DepthFileError(f"{path}: not a readable PNG ({e})") from e
    if mm.dtype != np.uint16:
        if mm.size and (mm.min() < 0 or mm.max() > 65535):
            raise DepthFileError(f"{path}: values outside the 16-bit millimetre range [0, 65535]")
    mm = mm.astype(np.float64)
    depth = mm / 1000.0
    depth[mm == 0] = np.nan
    return depth


def read_depth(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a depth map as float32 metres, H x W, with invalid pixels (0, negative, NaN, inf) as NaN.

    ``.npy`` (float metres), ``.exr`` (channel ``Y``, or ``Z``/``depth``, or the only channel) and 16-bit ``.png``
    (millimetres, 0 = invalid). Raises :class:`DepthFileError` naming the file and the problem.
    """
    path = Path(path)
    if not path.exists():
        raise DepthFileError(f"{path}: no such depth file")
    if not path.is_file():
        raise DepthFileError(f"{path}: not a file")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        arr = _read_npy(path)
    elif suffix == ".exr":
        arr = _read_exr(path)
    elif suffix == ".png":
        arr = _read_png16(path)
    else:
        raise DepthFileError(f"{path}: unknown depth file type {suffix!r}; use one of {', '.join(DEPTH_SUFFIXES)}")
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise DepthFileError(f"{path}: depth must be H x W, got shape {arr.shape}")
    if arr.size == 0:
        raise DepthFileError(f"{path}: depth has no pixels (shape {arr.shape})")
    depth = arr.astype(np.float32)
    depth[~_valid(depth)] = np.nan
    return depth
