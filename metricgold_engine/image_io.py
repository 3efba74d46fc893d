"""Loading input photographs as RGB, whatever their mode. Pillow and numpy only (ground floor)."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .core.errors import ImageLoadError, ImageTooLarge, InvalidParams

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")

#: Largest photo decoded by default: 40 megapixels (e.g. 7700 x 5200). A 10000 x 7000 photo costs ~5.5 GB and
#: minutes on a CPU before the model even sees it (resized to the processing resolution anyway), so larger ones are
#: refused from the file's header, before decoding. Raise it with the environment variable below.
DEFAULT_MAX_PIXELS = 40_000_000
MAX_PIXELS_ENV = "METRICGOLD_MAX_PIXELS"


def max_pixels_limit() -> int:
    """The pixel limit in force: ``$METRICGOLD_MAX_PIXELS`` when set (an integer >= 1), else DEFAULT_MAX_PIXELS."""
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(raw)  # "60000000", "60_000_000"
    except ValueError:
        try:
            number = float(raw)  # "6e7"
            value = int(number) if number.is_integer() else 0
        except ValueError:
            value = 0
    if value < 1:
        raise InvalidParams(f"environment variable {MAX_PIXELS_ENV}={raw!r}: must be an integer number of pixels >= 1")
    return value


def _too_large(name: object, size: str, pixels: int | None, max_pixels: int) -> ImageTooLarge:
    return ImageTooLarge(
        f"{name}: image too large: {size}, above the limit of {max_pixels / 1e6:.1f} megapixels ({max_pixels} "
        f"pixels). Downscale the photo, or raise the limit with the environment variable {MAX_PIXELS_ENV}=<pixels> "
        "(for the worker: in the environment it is started with)",
        data={"reason": ImageTooLarge.REASON, "pixels": pixels, "max_pixels": max_pixels},
    )


def _check_pixels(name: object, width: int, height: int, max_pixels: int) -> None:
    pixels = int(width) * int(height)
    if pixels > max_pixels:
        raise _too_large(name, f"{width} x {height} = {pixels / 1e6:.1f} megapixels", pixels, max_pixels)


def _array_to_pil(array: np.ndarray, name: str) -> Image.Image:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ImageLoadError(f"{name}: expected an HxW, HxWx3 or HxWx4 array, got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageLoadError(f"{name}: image has zero pixels (shape {array.shape})")
    if array.dtype == np.uint8:
        rgb = array
    elif array.dtype == np.uint16:
        rgb = (array.astype(np.float64) / 65535.0 * 255.0 + 0.5).astype(np.uint8)
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ImageLoadError(f"{name}: float image contains NaN or inf")
        rgb = (np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    else:
        raise ImageLoadError(f"{name}: unsupported array dtype {array.dtype} (use uint8, uint16 or float in [0, 1])")
    if rgb.ndim == 3 and rgb.shape[2] == 4:
        rgb = rgb[:, :, :3]
    image = Image.fromarray(np.ascontiguousarray(rgb))
    return image.convert("RGB")


def _to_rgb(image: Image.Image, name: str = "image input") -> Image.Image:
    """Any Pillow mode -> 8-bit RGB. 16-bit greyscale ("I;16", "I") is scaled from its full range, not truncated.
    A float image with NaN or inf pixels is refused: there is no colour to give the model there."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max(initial=0) > 255 else 255.0
        return Image.fromarray((np.clip(array / top, 0, 1) * 255 + 0.5).astype(np.uint8)).convert("RGB")
    if image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise ImageLoadError(f"{name}: float image has {bad} NaN or inf pixel(s); fill them before predicting")
        return Image.fromarray((np.clip(array, 0, 1) * 255 + 0.5).astype(np.uint8)).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Composite on white rather than dropping alpha, which would expose arbitrary colours under transparency.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_rgb_image(image: Any, max_pixels: int | None = None) -> Image.Image:
    """A path, PIL image or numpy array -> an RGB PIL image, EXIF orientation applied.

    Raises :class:`ImageLoadError` naming the file when it is missing, not a regular file (a FIFO would block the
    read forever), not an image, truncated or empty, and :class:`ImageTooLarge` when a file's header says it has
    more than ``max_pixels`` pixels (default: :func:`max_pixels_limit`), before anything is decoded.
    """
    if isinstance(image, np.ndarray):
        return _array_to_pil(image, "array input")
    if isinstance(image, Image.Image):
        if image.width == 0 or image.height == 0:
            raise ImageLoadError("image input has zero pixels")
        return _to_rgb(ImageOps.exif_transpose(image))
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        limit = max_pixels_limit() if max_pixels is None else int(max_pixels)
        try:
            mode = path.stat().st_mode  # before open(): opening a FIFO blocks until a writer comes
        except FileNotFoundError:
            raise ImageLoadError(f"{path}: file not found") from None
        except (OSError, ValueError) as exc:
            raise ImageLoadError(f"{path}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from None
        if stat.S_ISDIR(mode):
            raise ImageLoadError(f"{path}: is a directory, not an image")
        if not stat.S_ISREG(mode):
            raise ImageLoadError(f"{path}: not a regular file (a FIFO, socket or device), refused: reading it "
                                 "could block forever")
        try:
            with Image.open(path) as opened:
                _check_pixels(path, opened.width, opened.height, limit)  # from the header: nothing decoded yet
                opened.load()  # decode now: a truncated file fails here, not later
                if opened.width == 0 or opened.height == 0:
                    raise ImageLoadError(f"{path}: image has zero pixels")
                return _to_rgb(ImageOps.exif_transpose(opened), str(path))
        except ImageLoadError:
            raise
        except Image.DecompressionBombError:  # Pillow's own guard (at open, before our check): 2 x MAX_IMAGE_PIXELS
            guard = 2 * (Image.MAX_IMAGE_PIXELS or 0)
            size = f"more than {guard / 1e6:.1f} megapixels (Pillow refuses such files as decompression bombs)"
            raise _too_large(path, size, None, min(limit, guard)) from None
        except UnidentifiedImageError:
            raise ImageLoadError(f"{path}: not an image Pillow can read") from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImageLoadError(f"{path}: image is truncated or corrupt ({exc})") from None
    raise ImageLoadError(f"unsupported image input of type {type(image).__name__} (use a path, PIL image or array)")


def find_images(folder: str | os.PathLike[str]) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
