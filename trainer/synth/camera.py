"""Pinhole intrinsics of a Blender camera, in the OpenCV convention the trainer reads.

Pure functions (no bpy): the generator calls them with the values it gave the camera, and the tests check them
against the rendered depth.

Convention (``docs/architecture.md``): integer pixel coordinates sit at pixel centres, ``u`` to the right and ``v``
down, so the image spans ``[-0.5, W - 0.5] x [-0.5, H - 0.5]``; a ray through pixel ``(u, v)`` has the camera-space
direction ``((u - cx) / fx, (v - cy) / fy, 1)`` (OpenCV axes: x right, y down, z forward). Blender's camera looks
down its local -Z with +Y up, so the same ray in Blender camera space is ``((u - cx) / fx, -(v - cy) / fy, -1)``.
"""

from __future__ import annotations

import math

from metricgold_engine.core.geometry import Intrinsics

__all__ = [
    "blender_camera_intrinsics",
    "lens_from_horizontal_fov",
    "horizontal_fov_from_lens",
]


def _sensor_fit_axis(sensor_fit: str, width_px: float, height_px: float) -> str:
    """Which image axis the sensor size spans: Blender's AUTO fits the larger one (``BKE_camera_sensor_fit``)."""
    if sensor_fit == "AUTO":
        return "HORIZONTAL" if width_px >= height_px else "VERTICAL"
    if sensor_fit in ("HORIZONTAL", "VERTICAL"):
        return sensor_fit
    raise ValueError(f"sensor_fit must be AUTO, HORIZONTAL or VERTICAL, got {sensor_fit!r}")


def blender_camera_intrinsics(
    *,
    lens_mm: float,
    width: int,
    height: int,
    sensor_width_mm: float = 36.0,
    sensor_height_mm: float = 24.0,
    sensor_fit: str = "AUTO",
    shift_x: float = 0.0,
    shift_y: float = 0.0,
) -> Intrinsics:
    """Intrinsics of a Blender perspective camera rendered at ``width x height`` with square pixels.

    Blender maps the sensor onto one image axis (``sensor_fit``; AUTO = the larger axis, measured by
    ``sensor_width``, VERTICAL = the height, measured by ``sensor_height``), so the focal length in pixels is
    ``lens / sensor * pixels_on_that_axis`` on both axes. The optical axis hits the image centre, which in
    pixel-centre coordinates is ``(W / 2 - 0.5, H / 2 - 0.5)``; a lens shift moves the view by ``shift`` times the
    fitted axis's size in pixels (shifting the view right moves the principal point left, and shifting it up moves
    the principal point down in the y-down image).
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if lens_mm <= 0:
        raise ValueError(f"lens_mm must be positive, got {lens_mm}")
    axis = _sensor_fit_axis(sensor_fit, width, height)
    if axis == "HORIZONTAL":
        sensor_mm = sensor_width_mm
        fitted_px = float(width)
    else:
        # AUTO with a portrait image still measures the (now vertical) larger axis by sensor_width.
        sensor_mm = sensor_height_mm if sensor_fit == "VERTICAL" else sensor_width_mm
        fitted_px = float(height)
    if sensor_mm <= 0:
        raise ValueError(f"sensor size must be positive, got {sensor_mm} mm")
    f_px = lens_mm / sensor_mm * fitted_px
    cx = width / 2.0 - 0.5 - shift_x * fitted_px
    cy = height / 2.0 - 0.5 + shift_y * fitted_px
    return Intrinsics(fx=f_px, fy=f_px, cx=cx, cy=cy, width=int(width), height=int(height))


def lens_from_horizontal_fov(fov_deg: float, sensor_width_mm: float = 36.0) -> float:
    """Focal length in mm that gives a horizontal field of view of ``fov_deg`` on a horizontally fitted sensor."""
    if not 0.0 < fov_deg < 180.0:
        raise ValueError(f"field of view must be in (0, 180) degrees, got {fov_deg}")
    return sensor_width_mm / (2.0 * math.tan(math.radians(fov_deg) / 2.0))


def horizontal_fov_from_lens(lens_mm: float, sensor_width_mm: float = 36.0) -> float:
    """Inverse of :func:`lens_from_horizontal_fov`, in degrees."""
    return math.degrees(2.0 * math.atan(sensor_width_mm / (2.0 * lens_mm)))
