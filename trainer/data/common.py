"""What every data-set reader shares: the sample record, the error type, file readers, valid masks and the
resize/crop/flip that turns a sample into a training item.

Conventions (docs/datasets.md):

- ``rgb`` is uint8 H x W x 3 (sRGB); ``depth`` is float32 H x W *planar* depth in metres with invalid pixels set
  to 0; ``valid`` is a bool H x W mask; intrinsics are ``{"fx", "fy", "cx", "cy"}`` in pixels of that RGB image
  (OpenCV convention: integer pixel coordinates at pixel centres).
- A pixel is valid when its depth is finite and ``min_depth < depth < max_depth`` (strict, as the reference
  training filters ``1e-5 < d < 80`` are written).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class DataError(ValueError):
    """A data-set file that is missing, unreadable or malformed; the message names the file and the problem."""


@dataclass
class Sample:
    """One RGB-D frame as read from disk, at its own resolution."""

    name: str
    rgb: np.ndarray  # uint8 H x W x 3
    depth: np.ndarray  # float32 H x W, planar metres, invalid = 0
    valid: np.ndarray  # bool H x W
    intrinsics: dict[str, float] | None = None


def valid_range_mask(depth: np.ndarray, min_depth: float, max_depth: float) -> np.ndarray:
    """Finite and strictly inside (min_depth, max_depth)."""
    with np.errstate(invalid="ignore"):
        return np.isfinite(depth) & (depth > min_depth) & (depth < max_depth)


def make_sample(
    name: str,
    rgb: np.ndarray,
    depth: np.ndarray,
    min_depth: float,
    max_depth: float,
    intrinsics: dict[str, float] | None = None,
    extra_invalid: np.ndarray | None = None,
    source: Path | None = None,
) -> Sample:
    """Check that RGB and depth agree in size, apply the valid range, zero the invalid depth."""
    if rgb.shape[:2] != depth.shape:
        where = f"{source}: " if source is not None else f"{name}: "
        raise DataError(f"{where}RGB is {rgb.shape[1]}x{rgb.shape[0]} but depth is {depth.shape[1]}x{depth.shape[0]}")
    depth = np.asarray(depth, dtype=np.float32)
    valid = valid_range_mask(depth, min_depth, max_depth)
    if extra_invalid is not None:
        valid &= ~extra_invalid
    depth = np.where(valid, depth, np.float32(0.0)).astype(np.float32)
    return Sample(name=name, rgb=rgb, depth=depth, valid=valid, intrinsics=intrinsics)


def read_rgb(path: Path) -> np.ndarray:
    """An image file as uint8 H x W x 3 (EXIF orientation applied); DataError naming the file otherwise."""
    from metricgold_engine.image_io import ImageLoadError, load_rgb_image

    try:
        return np.asarray(load_rgb_image(path), dtype=np.uint8)
    except ImageLoadError as e:
        raise DataError(str(e)) from e


def read_png_uint16(path: Path) -> np.ndarray:
    """A 16-bit greyscale PNG as a uint16 H x W array; DataError naming the file if it is anything else."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise DataError(f"{path}: no such depth file")
    try:
        with Image.open(path) as im:
            if im.mode not in ("I;16", "I;16B", "I;16L", "I"):
                raise DataError(f"{path}: PNG mode {im.mode!r}; expected a 16-bit greyscale depth PNG")
            arr = np.asarray(im)
    except DataError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: not a readable PNG ({e})") from e
    if arr.ndim != 2:
        raise DataError(f"{path}: expected a single-channel depth PNG, got shape {arr.shape}")
    if arr.dtype != np.uint16:
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise DataError(f"{path}: values outside the 16-bit range [0, 65535]")
        arr = arr.astype(np.uint16)
    return arr


def read_npy_depth(path: Path) -> np.ndarray:
    """A .npy depth array as float32 H x W (whatever float width it was stored in); DataError otherwise."""
    if not path.is_file():
        raise DataError(f"{path}: no such depth file")
    try:
        arr = np.load(path, allow_pickle=False)  # never unpickle data-set files
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"{path}: not a readable .npy array ({e})") from e
    if not isinstance(arr, np.ndarray) or arr.ndim != 2:
        raise DataError(f"{path}: expected an H x W depth array, got shape {getattr(arr, 'shape', None)}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise DataError(f"{path}: dtype {arr.dtype}; expected floating-point metres")
    return arr.astype(np.float32)


def read_name_list(path: Path) -> list[str]:
    """One name per line; blank lines and ``#`` comments ignored."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise DataError(f"{path}: cannot read the split file ({e})") from e
    names = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(line)
    return names


class DepthReader:
    """Base of the data-set readers: a root folder, a split and a valid depth range.

    Subclasses set ``kind`` and the default range, and implement ``names()`` (the split's sample names) and
    ``load(name) -> Sample``. ``split_file`` overrides where the split comes from; by default it is
    ``root/{split}.txt`` (Hypersim overrides this with its CSV).
    """

    kind = ""
    default_min_depth = 1e-5
    default_max_depth = 80.0

    def __init__(
        self,
        root: str | Path,
        split: str,
        min_depth: float | None = None,
        max_depth: float | None = None,
        split_file: str | Path | None = None,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.min_depth = self.default_min_depth if min_depth is None else float(min_depth)
        self.max_depth = self.default_max_depth if max_depth is None else float(max_depth)
        self.split_file = Path(split_file) if split_file else self.default_split_file()
        self._names: list[str] | None = None

    def default_split_file(self) -> Path:
        return self.root / f"{self.split}.txt"

    def names(self) -> list[str]:
        """Sample names of the split (listed once, then cached)."""
        if self._names is None:
            self._names = read_name_list(self.split_file) if self.split_file.is_file() else self.list_names()
        return self._names

    def list_names(self) -> list[str]:
        """Every sample on disk, for data sets without a split file."""
        raise NotImplementedError

    def load(self, name: str) -> Sample:
        raise NotImplementedError

    def paths(self, name: str) -> tuple[Path, ...]:
        """The files sample ``name`` is read from (DataError when the name itself is malformed or not found)."""
        raise NotImplementedError

    def file_problems(self, names: list[str] | None = None) -> list[str]:
        """One line per sample file of the split that is missing, not a regular file or not readable (stat and
        access only, nothing opened): checked before training starts, rather than found when first drawn."""
        problems = []
        for name in self.names() if names is None else names:
            try:
                paths = self.paths(name)
            except DataError as e:
                problems.append(str(e))
                continue
            for path in paths:
                problem = file_problem(path)
                if problem:
                    problems.append(f"{path}: {problem} (sample {name!r})")
        return problems


def file_problem(path: Path) -> str | None:
    """Why ``path`` cannot be read as a data file, or None when it can."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "missing"
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    if not stat.S_ISREG(mode):
        return "not a regular file"
    if not os.access(path, os.R_OK):
        return "not readable (permission denied)"
    return None


# --------------------------------------------------------------------------------------------------------------------
# Training-resolution transform


def cover_crop_geometry(
    height: int, width: int, resolution: tuple[int, int]
) -> tuple[int, int, int, int]:
    """Scale so that (height, width) covers ``resolution`` = (H, W), keeping the aspect ratio, then centre-crop.

    Returns (scaled_height, scaled_width, top, left) of the crop window in the scaled image.
    """
    out_h, out_w = resolution
    if out_h <= 0 or out_w <= 0:
        raise ValueError(f"training resolution must be positive, got {resolution}")
    scale = max(out_h / height, out_w / width)
    # max(): rounding must never leave the scaled image a pixel short of the crop.
    new_h = max(out_h, int(round(height * scale)))
    new_w = max(out_w, int(round(width * scale)))
    return new_h, new_w, (new_h - out_h) // 2, (new_w - out_w) // 2


def _nearest_indices(n_src: int, n_dst: int, start: int, count: int) -> np.ndarray:
    """Source index of each destination pixel centre: floor((i + 0.5) * n_src / n_dst), same convention as PIL."""
    i = np.arange(start, start + count, dtype=np.float64)
    return np.minimum(np.floor((i + 0.5) * n_src / n_dst).astype(np.int64), n_src - 1)


def resize_cover_crop(
    sample: Sample, resolution: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RGB, depth and valid mask at ``resolution``: scale to cover, then centre crop.

    RGB is resampled bilinearly (Pillow, with its antialiasing support when shrinking). Depth and the mask use
    nearest neighbour with the same pixel-centre mapping: a depth value is never interpolated across an edge or an
    invalid pixel, so every output depth is one the data set actually measured.
    """
    from PIL import Image

    h, w = sample.depth.shape
    out_h, out_w = resolution
    new_h, new_w, top, left = cover_crop_geometry(h, w, resolution)
    if (new_h, new_w) == (h, w):
        rgb = sample.rgb[top : top + out_h, left : left + out_w]
    else:
        im = Image.fromarray(sample.rgb).resize((new_w, new_h), Image.Resampling.BILINEAR)
        rgb = np.asarray(im.crop((left, top, left + out_w, top + out_h)))
    rows = _nearest_indices(h, new_h, top, out_h)
    cols = _nearest_indices(w, new_w, left, out_w)
    depth = sample.depth[np.ix_(rows, cols)]
    valid = sample.valid[np.ix_(rows, cols)]
    return np.ascontiguousarray(rgb), np.ascontiguousarray(depth), np.ascontiguousarray(valid)


def scale_intrinsics(
    intrinsics: dict[str, float], height: int, width: int, resolution: tuple[int, int]
) -> dict[str, float]:
    """Intrinsics after :func:`resize_cover_crop` (pixel-centre convention: c' = (c + 0.5) * s - 0.5 - offset)."""
    new_h, new_w, top, left = cover_crop_geometry(height, width, resolution)
    sy, sx = new_h / height, new_w / width
    return {
        "fx": intrinsics["fx"] * sx,
        "fy": intrinsics["fy"] * sy,
        "cx": (intrinsics["cx"] + 0.5) * sx - 0.5 - left,
        "cy": (intrinsics["cy"] + 0.5) * sy - 0.5 - top,
    }

