"""The camera from the photo: EXIF focal length (35 mm equivalent, or focal length with the sensor's pixel density),
EXIF orientation, and the precedence user > EXIF > model > default. Expected values are worked out by hand."""

from __future__ import annotations

import json
import math

import pytest
from PIL import Image

from metricgold_engine.core.geometry import (
    DEFAULT_HORIZONTAL_FOV_DEG,
    FOCAL_SOURCES,
    Camera,
    ExifFocal,
    Intrinsics,
    exif_focal,
    focal_35mm_from_exif,
    focal_from_exif_tags,
    resolve_camera,
)

DIAG_35 = math.hypot(36.0, 24.0)  # 43.27 mm


def save_with_exif(path, size, camera_tags, orientation=None):
    exif = Image.Exif()
    exif[0x8769] = camera_tags  # the Exif sub-IFD
    if orientation is not None:
        exif[0x0112] = orientation
    Image.new("RGB", size, (90, 100, 110)).save(path, exif=exif, quality=95)
    return path


# A phone-like camera: 4000 x 3000 pixels on a 6.4 x 4.8 mm sensor (625 px/mm), a 4.0 mm lens.
# In pixels of the image the camera wrote: f = 4.0 mm x 625 px/mm = 2500 px; in an 80 x 60 copy: 2500 x 80/4000 = 50.
PHONE = {0x920A: 4.0, 0xA20E: 4000 / 6.4 * 25.4, 0xA20F: 3000 / 4.8 * 25.4, 0xA210: 2, 0xA002: 4000, 0xA003: 3000}


def test_35mm_equivalent_tag():
    found = focal_from_exif_tags({0xA405: 28}, 80, 60)
    assert (found.width, found.height) == (80, 60)
    assert found.fx == found.fy == pytest.approx(28 * 100 / DIAG_35)  # the diagonal of 80 x 60 is 100 px
    assert found.focal_35mm == 28.0 and "FocalLengthIn35mmFilm" in found.tags


def test_focal_length_with_sensor_density():
    found = focal_from_exif_tags(PHONE, 80, 60)
    assert (found.fx, found.fy) == pytest.approx((50.0, 50.0))
    # 35 mm equivalent of a 4 mm lens on a 6.4 x 4.8 mm sensor (diagonal 8 mm): 4 x 43.27 / 8
    assert found.focal_35mm == pytest.approx(4.0 * DIAG_35 / 8.0)
    assert "6.4 mm wide sensor" in found.tags
    # Centimetres instead of inches; no PixelX/YDimension: the density is taken as for this very image
    found = focal_from_exif_tags({0x920A: 4.0, 0xA20E: 80 / 0.64, 0xA210: 3}, 80, 60)
    assert (found.fx, found.fy) == pytest.approx((50.0, 50.0))
    # Non-square density: fy from FocalPlaneYResolution (700 px/mm): 4 x 700 x 60/3000 = 56
    found = focal_from_exif_tags({**PHONE, 0xA20F: 700 * 25.4}, 80, 60)
    assert (found.fx, found.fy) == pytest.approx((50.0, 56.0))


def test_orientation_swaps_axes():
    found = focal_from_exif_tags({**PHONE, 0xA20F: 700 * 25.4}, 80, 60, orientation=6)
    assert (found.width, found.height) == (60, 80)
    assert (found.fx, found.fy) == pytest.approx((56.0, 50.0))
    found = focal_from_exif_tags({0xA405: 28}, 80, 60, orientation=8)
    assert (found.width, found.height) == (60, 80) and found.fx == pytest.approx(28 * 100 / DIAG_35)
    found = focal_from_exif_tags(PHONE, 80, 60, orientation=3)  # 180 degrees: no swap
    assert (found.width, found.height) == (80, 60)


@pytest.mark.parametrize("tags", [
    {},
    {0x920A: 4.0},  # a focal length without the sensor size says nothing about the field of view
    {0x920A: 4.0, 0xA20E: 15875.0, 0xA210: 1},  # unit "none"
    {0x920A: 0, 0xA20E: 15875.0, 0xA210: 2},
    {0xA405: 0},
    {0xA405: "n/a"},
])
def test_no_usable_focal(tags):
    assert focal_from_exif_tags(tags, 80, 60) is None


def test_read_from_files(tmp_path):
    path = save_with_exif(tmp_path / "phone.jpg", (80, 60), PHONE, orientation=6)
    found = exif_focal(path)
    assert (found.width, found.height, found.fx) == (60, 80, pytest.approx(50.0, rel=1e-4))
    assert focal_35mm_from_exif(path) == pytest.approx(4.0 * DIAG_35 / 8.0, rel=1e-4)
    with Image.open(path) as opened:  # a PIL image works too
        assert exif_focal(opened).width == 60
    assert exif_focal(save_with_exif(tmp_path / "bare.jpg", (8, 6), {0x920A: 4.0})) is None
    Image.new("RGB", (8, 6)).save(tmp_path / "none.png")
    assert exif_focal(tmp_path / "none.png") is None
    assert exif_focal(tmp_path / "missing.jpg") is None


def test_precedence_user_exif_model_default():
    exif = ExifFocal.from_35mm(80, 60, 28.0)
    cam = resolve_camera(80, 60, fov_deg=90.0, exif=exif, model_focal_px=70.0)
    assert cam.focal_source == "user" and cam.intrinsics.fx == pytest.approx(40.0)  # 80 / (2 tan 45)
    cam = resolve_camera(80, 60, focal_35mm=50.0, exif=exif, model_focal_px=70.0)
    assert cam.focal_source == "user" and cam.intrinsics.fx == pytest.approx(50 * 100 / DIAG_35)
    cam = resolve_camera(80, 60, exif=exif, model_focal_px=70.0)
    assert cam.focal_source == "exif" and cam.intrinsics.fx == pytest.approx(28 * 100 / DIAG_35)
    cam = resolve_camera(80, 60, model_focal_px=70.0)
    assert cam.focal_source == "model" and (cam.intrinsics.fx, cam.intrinsics.fy) == (70.0, 70.0)
    cam = resolve_camera(80, 60)
    assert cam.focal_source == "default"
    assert cam.intrinsics.horizontal_fov_deg == pytest.approx(DEFAULT_HORIZONTAL_FOV_DEG)
    assert (cam.intrinsics.cx, cam.intrinsics.cy) == (39.5, 29.5)
    # An EXIF focal of the full photo applies, scaled, to a half-size depth
    cam = resolve_camera(40, 30, exif=exif)
    assert cam.intrinsics.fx == pytest.approx(28 * 50 / DIAG_35)


def test_camera_json_round_trip_and_errors():
    cam = resolve_camera(80, 60, model_focal_px=70.0)
    data = json.loads(json.dumps(cam.as_json()))
    assert set(data) >= {"fx", "fy", "cx", "cy", "width", "height", "focal_source"}
    back = Camera.from_json(data)
    assert back == cam and back.focal_source in FOCAL_SOURCES
    with pytest.raises(ValueError, match=r"camera\.fx: expected a number"):
        Camera.from_json({**data, "fx": "wide"})
    with pytest.raises(ValueError, match="focal_source must be one of"):
        Camera.from_json({**data, "focal_source": "guess"})
    with pytest.raises(ValueError, match=r"camera\.width: expected an integer"):
        Camera.from_json({**data, "width": 80.5})
    with pytest.raises(ValueError, match="fx > 0"):
        Camera.from_json({**data, "fx": -1.0})
    assert Camera(Intrinsics.from_fov(80, 60), "default", "").focal_35mm == pytest.approx(
        Intrinsics.from_fov(80, 60).fx * DIAG_35 / 100)
