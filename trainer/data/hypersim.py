"""Hypersim (Roberts et al. 2021), read from the data set's own HDF5 files.

Layout under ``root`` (as the official download scripts unpack it)::

    metadata_images_split_scene_v1.csv
    ai_VVV_NNN/images/scene_cam_XX_final_hdf5/frame.IIII.color.hdf5          HDR linear radiance, 768x1024x3
    ai_VVV_NNN/images/scene_cam_XX_geometry_hdf5/frame.IIII.depth_meters.hdf5 distance to the camera centre, 768x1024

Each HDF5 file holds one dataset named ``"dataset"``. Sample names are ``ai_VVV_NNN/cam_XX/IIII``.

- Colour is tone-mapped to sRGB the way Hypersim's own ``scene_generate_images_tonemap.py`` does it.
- ``depth_meters`` is the Euclidean distance to the optical centre, NaN where no geometry was hit. It is
  converted to planar depth with the ray length of each pixel (:func:`distance_to_planar_factor`).
- The official split CSV decides train/val/test: rows with ``included_in_public_release`` True whose
  ``split_partition_name`` is the split. Rows of scenes that are not on disk (a partial download) are left out and
  counted in the log; a file missing inside a scene that is on disk is an error.
"""

from __future__ import annotations

import csv
import functools
import logging
import math
from pathlib import Path

import numpy as np

from trainer.data.common import DataError, DepthReader, Sample, make_sample

logger = logging.getLogger(__name__)

SPLIT_CSV_NAME = "metadata_images_split_scene_v1.csv"
SPLIT_CSV_COLUMNS = (
    "scene_name",
    "camera_name",
    "frame_id",
    "included_in_public_release",
    "split_partition_name",
)
#: 60 degrees horizontal field of view: f = (W / 2) / tan(30 deg) = 886.81 px at 1024 x 768.
HORIZONTAL_FOV_DEG = 60.0

# Hypersim's tone mapper: the 90th percentile of luminance is mapped to 0.8 after gamma 2.2.
_GAMMA = 1.0 / 2.2
_PERCENTILE = 90
_BRIGHTNESS_TARGET = 0.8
_EPS = 1e-4


def focal_length_px(width: int) -> float:
    """Hypersim's focal length in pixels for an image ``width`` pixels wide (886.81 at 1024)."""
    return (width / 2.0) / math.tan(math.radians(HORIZONTAL_FOV_DEG / 2.0))


@functools.lru_cache(maxsize=4)  # every frame of the data set has the same size: compute the rays once
def distance_to_planar_factor(height: int, width: int, focal: float | None = None) -> np.ndarray:
    """planar depth / distance = f / sqrt(x^2 + y^2 + f^2) per pixel, x = u + 0.5 - W/2, y = v + 0.5 - H/2.

    The returned float64 array is shared between calls and read-only."""
    f = focal_length_px(width) if focal is None else focal
    x = np.arange(width, dtype=np.float64) + 0.5 - width / 2.0
    y = np.arange(height, dtype=np.float64) + 0.5 - height / 2.0
    factor = f / np.sqrt(x[None, :] ** 2 + y[:, None] ** 2 + f**2)
    factor.flags.writeable = False
    return factor


def tonemap_hypersim(rgb_linear: np.ndarray, valid_geometry: np.ndarray | None = None) -> np.ndarray:
    """HDR linear radiance -> sRGB in [0, 1] (float32), as Hypersim's tone mapper does it.

    scale = 0.8^2.2 / p90(Y) with Y = 0.3 R + 0.59 G + 0.11 B over pixels that hit geometry (scale 1 when there
    is none, 0 when p90 < 1e-4); rgb = clip(max(scale * rgb, 0)^(1/2.2), 0, 1).
    """
    rgb = np.asarray(rgb_linear, dtype=np.float64)
    if valid_geometry is None:
        valid_geometry = np.ones(rgb.shape[:2], dtype=bool)
    if not valid_geometry.any():
        scale = 1.0
    else:
        luminance = 0.3 * rgb[..., 0] + 0.59 * rgb[..., 1] + 0.11 * rgb[..., 2]
        p90 = float(np.percentile(luminance[valid_geometry], _PERCENTILE))
        scale = 0.0 if p90 < _EPS else _BRIGHTNESS_TARGET ** (1.0 / _GAMMA) / p90
    out = np.clip(np.power(np.maximum(scale * rgb, 0.0), _GAMMA), 0.0, 1.0)
    return out.astype(np.float32)


def read_hdf5_dataset(path: Path) -> np.ndarray:
    """The array stored as ``"dataset"`` in a Hypersim HDF5 file; DataError naming the file otherwise."""
    import h5py  # type: ignore[import-untyped]

    if not path.is_file():
        raise DataError(f"{path}: no such Hypersim file")
    try:
        with h5py.File(path, "r") as f:
            if "dataset" not in f:
                raise DataError(f"{path}: no HDF5 dataset named 'dataset' (found {sorted(f.keys())})")
            return np.asarray(f["dataset"][()])
    except DataError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise DataError(f"{path}: not a readable HDF5 file ({e})") from e


class HypersimReader(DepthReader):
    kind = "hypersim"
    default_min_depth = 1e-5
    default_max_depth = 65.0

    def default_split_file(self) -> Path:
        return self.root / SPLIT_CSV_NAME

    def names(self) -> list[str]:
        """Sample names of this split, in the CSV's order."""
        if self._names is None:
            self._names = self._read_split()
        return self._names

    def _read_split(self) -> list[str]:
        path = self.split_file
        if not path.is_file():
            raise DataError(f"{path}: Hypersim split file not found (download {SPLIT_CSV_NAME} from Hypersim)")
        try:
            with path.open(newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                missing = [c for c in SPLIT_CSV_COLUMNS if c not in (reader.fieldnames or [])]
                if missing:
                    raise DataError(f"{path}: split CSV lacks column(s) {missing}")
                rows = list(reader)
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            raise DataError(f"{path}: cannot read the split CSV ({e})") from e
        names: list[str] = []
        absent_scenes: set[str] = set()
        present: dict[str, bool] = {}
        for line_no, row in enumerate(rows, start=2):
            if row["included_in_public_release"].strip().lower() != "true":
                continue
            if row["split_partition_name"].strip() != self.split:
                continue
            scene = row["scene_name"].strip()
            try:
                frame = int(row["frame_id"])
            except ValueError:
                raise DataError(f"{path}, line {line_no}: frame_id {row['frame_id']!r} is not an integer") from None
            if scene not in present:
                present[scene] = (self.root / scene).is_dir()
            if not present[scene]:
                absent_scenes.add(scene)
                continue
            names.append(f"{scene}/{row['camera_name'].strip()}/{frame:04d}")
        if absent_scenes:
            logger.info(
                "Hypersim %s: %d scene(s) of the split CSV are not under %s; their frames are left out",
                self.split,
                len(absent_scenes),
                self.root,
            )
        return names

    def paths(self, name: str) -> tuple[Path, Path]:
        """(colour HDF5, depth_meters HDF5) of a sample name ``scene/cam_XX/IIII``."""
        try:
            scene, camera, frame = name.split("/")
            frame_no = int(frame)
        except ValueError:
            raise DataError(f"Hypersim sample name {name!r} is not 'ai_VVV_NNN/cam_XX/IIII'") from None
        images = self.root / scene / "images"
        color = images / f"scene_{camera}_final_hdf5" / f"frame.{frame_no:04d}.color.hdf5"
        depth = images / f"scene_{camera}_geometry_hdf5" / f"frame.{frame_no:04d}.depth_meters.hdf5"
        return color, depth

    def load(self, name: str) -> Sample:
        color_path, depth_path = self.paths(name)
        hdr = read_hdf5_dataset(color_path)
        if hdr.ndim != 3 or hdr.shape[2] != 3:
            raise DataError(f"{color_path}: expected H x W x 3 colour, got shape {hdr.shape}")
        distance = read_hdf5_dataset(depth_path).astype(np.float32)
        if distance.ndim != 2:
            raise DataError(f"{depth_path}: expected H x W distances, got shape {distance.shape}")
        if distance.shape != hdr.shape[:2]:
            raise DataError(f"{depth_path}: shape {distance.shape} differs from the colour's {hdr.shape[:2]}")
        h, w = distance.shape
        geometry = np.isfinite(distance)  # NaN exactly where render_entity_id == -1 (no geometry)
        rgb = np.round(tonemap_hypersim(hdr, geometry) * 255.0).astype(np.uint8)
        planar = (distance.astype(np.float64) * distance_to_planar_factor(h, w)).astype(np.float32)
        f = focal_length_px(w)
        intrinsics = {"fx": f, "fy": f, "cx": w / 2.0 - 0.5, "cy": h / 2.0 - 0.5}
        return make_sample(
            name, rgb, planar, self.min_depth, self.max_depth, intrinsics=intrinsics, source=depth_path
        )
