"""Metric depth -> coloured point cloud, written as a binary little-endian PLY file.

Ground floor: numpy only (no torch, no Pillow), so Blender's Python can use it too.

Coordinates are metres in camera space as Blender and OpenGL use it: the camera sits at the origin looking down
``-Z``, ``+Y`` is up and ``+X`` is right (:func:`metricgold_engine.core.geometry.unproject`). Pixel ``(u, v)`` with depth
``d`` becomes ``((u - cx) / fx * d, -(v - cy) / fy * d, -d)``.

The file holds one ``vertex`` element with, in this order, ``float x, y, z`` (metres), ``uchar red, green, blue``
(the photo's colour, when given) and ``float uncertainty`` (metres, when given). Pixels whose depth is not finite or
not positive are left out; points are in row-major pixel order.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .depth_io import atomic_write
from .geometry import Intrinsics, subsample_indices, unproject

__all__ = ["PointCloud", "depth_to_point_cloud", "ply_bytes", "write_ply", "write_depth_ply"]


@dataclass
class PointCloud:
    """``points``: float32 (N, 3) metres; ``colors``: uint8 (N, 3) or None; ``uncertainty``: float32 (N,) or None."""

    points: np.ndarray
    colors: np.ndarray | None = None
    uncertainty: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.points.shape[0])


def _check_image_shaped(name: str, arr: Any, shape: tuple[int, int], channels: int | None) -> np.ndarray:
    a = np.asarray(arr)
    want = shape if channels is None else (*shape, channels)
    if a.shape != want:
        raise ValueError(f"{name} has shape {a.shape}; expected {want} to match the depth map")
    return a


def depth_to_point_cloud(
    depth: Any,
    intrinsics: Intrinsics,
    *,
    rgb: Any | None = None,
    uncertainty: Any | None = None,
    stride: int = 1,
) -> PointCloud:
    """Unproject every ``stride``-th valid pixel of ``depth`` (metres, H x W) through ``intrinsics``.

    ``rgb`` is the photo as a uint8 H x W x 3 array at the depth's size; ``uncertainty`` float metres, H x W.
    """
    depth = np.asarray(depth)
    if depth.ndim != 2:
        raise ValueError(f"depth must be an H x W array, got shape {depth.shape}")
    shape = (depth.shape[0], depth.shape[1])
    xyz = unproject(depth, intrinsics, stride)  # float64, NaN where the depth is invalid
    keep = np.isfinite(xyz).all(axis=-1)
    rows, cols = subsample_indices(shape[0], stride), subsample_indices(shape[1], stride)
    grid = np.ix_(rows, cols)
    colors = None
    if rgb is not None:
        rgb_arr = _check_image_shaped("rgb", rgb, shape, 3)
        if rgb_arr.dtype != np.uint8:
            raise ValueError(f"rgb must be uint8 (0..255), got dtype {rgb_arr.dtype}")
        colors = np.ascontiguousarray(rgb_arr[grid][keep])
    unc = None
    if uncertainty is not None:
        unc = _check_image_shaped("uncertainty", uncertainty, shape, None)[grid][keep].astype(np.float32)
    return PointCloud(xyz[keep].astype(np.float32), colors, unc)


def _vertex_dtype(cloud: PointCloud) -> np.dtype:
    fields: list[tuple[str, str]] = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if cloud.colors is not None:
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    if cloud.uncertainty is not None:
        fields.append(("uncertainty", "<f4"))
    return np.dtype(fields)  # packed: PLY binary records have no padding


_PLY_TYPE = {"f": "float", "u": "uchar"}  # by numpy dtype kind: only float32 and uint8 are written


def ply_bytes(cloud: PointCloud, comment: str | None = None) -> bytes:
    """The whole binary little-endian PLY file of ``cloud`` as bytes."""
    n = len(cloud)
    points = np.asarray(cloud.points)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points must be N x 3, got shape {points.shape}")
    if cloud.colors is not None and np.shape(cloud.colors) != (n, 3):
        raise ValueError(f"colors has shape {np.shape(cloud.colors)}; expected ({n}, 3), one row per point")
    if cloud.uncertainty is not None and np.shape(cloud.uncertainty) != (n,):
        raise ValueError(f"uncertainty has shape {np.shape(cloud.uncertainty)}; expected ({n},), one per point")
    dtype = _vertex_dtype(cloud)
    records = np.empty(n, dtype=dtype)
    for i, axis in enumerate("xyz"):
        records[axis] = points[:, i]
    if cloud.colors is not None:
        for i, channel in enumerate(("red", "green", "blue")):
            records[channel] = cloud.colors[:, i]
    if cloud.uncertainty is not None:
        records["uncertainty"] = cloud.uncertainty
    header = ["ply", "format binary_little_endian 1.0"]
    if comment:
        header += [f"comment {line}" for line in comment.splitlines()]
    header.append(f"element vertex {n}")
    header += [f"property {_PLY_TYPE[dtype[name].kind]} {name}" for name in dtype.names or ()]
    header.append("end_header")
    return ("\n".join(header) + "\n").encode("ascii") + records.tobytes()


def write_ply(path: str | os.PathLike[str], cloud: PointCloud, comment: str | None = None) -> Path:
    """Write ``cloud`` as a binary little-endian PLY file, atomically (temporary file, then rename)."""
    data = ply_bytes(cloud, comment)
    path = Path(path)
    with atomic_write(path) as tmp:
        tmp.write_bytes(data)
    return path


#: The comment every point cloud written by :func:`write_depth_ply` carries, so a reader knows the axes.
PLY_COMMENT = "MetricGold point cloud: metres, camera at origin looking down -Z, +Y up, +X right (Blender/OpenGL)"


def write_depth_ply(
    path: str | os.PathLike[str],
    depth: Any,
    intrinsics: Intrinsics,
    *,
    rgb: Any | None = None,
    uncertainty: Any | None = None,
    stride: int = 1,
) -> Path:
    """Unproject ``depth`` (see :func:`depth_to_point_cloud`) and write it as a PLY file at ``path``."""
    cloud = depth_to_point_cloud(depth, intrinsics, rgb=rgb, uncertainty=uncertainty, stride=stride)
    k = intrinsics
    comment = (f"{PLY_COMMENT}\n"
               f"intrinsics fx={k.fx:.6g} fy={k.fy:.6g} cx={k.cx:.6g} cy={k.cy:.6g} size={k.width}x{k.height}")
    return write_ply(path, cloud, comment)
