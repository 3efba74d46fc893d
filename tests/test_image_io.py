"""Input images of any mode become RGB; broken ones give a message naming the file."""

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from metricgold_engine.image_io import ImageLoadError, load_rgb_image


def test_modes_become_rgb(tmp_path):
    grey16 = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000).astype(np.uint16)
    Image.fromarray(grey16).save(tmp_path / "g16.png")
    img = load_rgb_image(tmp_path / "g16.png")
    assert img.mode == "RGB" and img.size == (4, 3)
    expected = np.round(grey16 / 65535 * 255).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(img)[..., 0], expected)

    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[0, 0, 3] = 255  # one opaque red pixel, the rest transparent -> composited on white
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = np.asarray(load_rgb_image(tmp_path / "a.png"))
    assert tuple(out[0, 0]) == (200, 0, 0) and tuple(out[1, 1]) == (255, 255, 255)

    assert load_rgb_image(Image.new("L", (5, 4), 7)).getpixel((0, 0)) == (7, 7, 7)


def test_exif_rotation_is_applied(tmp_path):
    img = Image.new("RGB", (6, 2), (10, 20, 30))
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    img.save(tmp_path / "r.jpg", exif=exif)
    assert load_rgb_image(tmp_path / "r.jpg").size == (2, 6)


def test_arrays():
    f = np.full((3, 5, 3), 0.5, np.float32)
    assert np.asarray(load_rgb_image(f))[0, 0, 0] == 128
    assert load_rgb_image(np.zeros((4, 4, 4), np.uint8)).mode == "RGB"
    with pytest.raises(ImageLoadError, match="shape"):
        load_rgb_image(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(ImageLoadError, match="zero pixels"):
        load_rgb_image(np.zeros((0, 4, 3), np.uint8))
    with pytest.raises(ImageLoadError, match="NaN"):
        load_rgb_image(np.full((2, 2, 3), np.nan, np.float32))


def _png_with_size(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_bad_files_name_the_file(tmp_path):
    with pytest.raises(ImageLoadError, match=r"missing\.png: file not found"):
        load_rgb_image(tmp_path / "missing.png")
    (tmp_path / "text.jpg").write_text("not an image")
    with pytest.raises(ImageLoadError, match=r"text\.jpg: not an image"):
        load_rgb_image(tmp_path / "text.jpg")
    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match=r"cut\.png: .*(truncated|corrupt)"):
        load_rgb_image(tmp_path / "cut.png")
    (tmp_path / "zero.png").write_bytes(_png_with_size(0, 5))
    with pytest.raises(ImageLoadError, match=r"zero\.png"):
        load_rgb_image(tmp_path / "zero.png")
    with pytest.raises(ImageLoadError, match="directory"):
        load_rgb_image(tmp_path)
