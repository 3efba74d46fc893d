"""Depth files: round trips, PNG millimetre clipping, EXR exactness, preview legend, clear errors, atomicity."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from metricgold_engine.core import depth_io
from metricgold_engine.core.depth_io import (
    DepthFileError,
    atomic_write,
    colorize_depth,
    read_depth,
    write_depth,
    write_depth_color_png,
    write_depth_exr,
    write_depth_npy,
    write_depth_png16,
)


@pytest.fixture
def depth() -> np.ndarray:
    rng = np.random.default_rng(0)
    d = rng.uniform(0.2, 60.0, size=(7, 9)).astype(np.float32)
    d[0, 0] = 0.0
    d[1, 2] = np.nan
    d[3, 3] = -1.0
    d[4, 5] = np.inf
    return d


def _expected(d: np.ndarray) -> np.ndarray:
    out = d.astype(np.float32).copy()
    out[~(np.isfinite(out) & (out > 0))] = np.nan
    return out


def test_npy_round_trip_exact_and_invalid_nan(tmp_path, depth):
    path = write_depth_npy(tmp_path / "d.npy", depth)
    back = read_depth(path)
    assert back.dtype == np.float32 and back.shape == depth.shape
    np.testing.assert_array_equal(back, _expected(depth))  # NaN == NaN for assert_array_equal
    assert np.isnan(back[0, 0]) and np.isnan(back[3, 3]) and np.isnan(back[4, 5])


def test_npy_float64_is_read_as_float32(tmp_path):
    d = np.array([[1.0 + 1e-12, 2.5]], dtype=np.float64)
    np.save(tmp_path / "d.npy", d)
    back = read_depth(tmp_path / "d.npy")
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, d.astype(np.float32))


def test_exr_float32_exact(tmp_path, depth):
    # Values that float16 could not hold: the EXR must store full float32.
    d = np.array([[1.0001, 2.0 ** -10 + 1e-7], [33.333333, 0.123456789]], dtype=np.float32)
    back = read_depth(write_depth_exr(tmp_path / "d.exr", d))
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, d)
    back = read_depth(write_depth_exr(tmp_path / "e.exr", depth))
    np.testing.assert_array_equal(back, _expected(depth))


def test_exr_channel_is_Y(tmp_path):
    import OpenEXR

    write_depth_exr(tmp_path / "d.exr", np.ones((2, 3), np.float32))
    with OpenEXR.File(str(tmp_path / "d.exr"), separate_channels=True) as f:
        chans = f.channels()
        assert list(chans) == ["Y"]
        assert chans["Y"].pixels.dtype == np.float32


def test_exr_reads_blender_style_Z_channel(tmp_path):
    import OpenEXR

    z = np.full((3, 4), 2.5, np.float32)
    rgb = np.zeros((3, 4), np.float32)
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    with OpenEXR.File(header, {"R": rgb, "G": rgb, "B": rgb, "Z": z}) as f:
        f.write(str(tmp_path / "z.exr"))
    np.testing.assert_array_equal(read_depth(tmp_path / "z.exr"), z)


def test_png16_millimetres_clipping_and_invalid(tmp_path):
    d = np.array([[0.0, 0.0004, 0.0006, 1.2344], [1.2346, 65.535, 70.0, np.nan]], dtype=np.float32)
    write_depth_png16(tmp_path / "d.png", d)
    with Image.open(tmp_path / "d.png") as im:
        assert im.mode.startswith("I;16")
        mm = np.asarray(im).astype(np.int64)
    # Hand-computed: invalid -> 0; 0.4 mm rounds to 0 but is valid, so it is clipped up to 1 mm; 70 m -> 65535.
    np.testing.assert_array_equal(mm, [[0, 1, 1, 1234], [1235, 65535, 65535, 0]])
    back = read_depth(tmp_path / "d.png")
    np.testing.assert_allclose(
        back, np.array([[np.nan, 0.001, 0.001, 1.234], [1.235, 65.535, 65.535, np.nan]], np.float32), rtol=1e-7
    )


def test_png16_round_trip_within_half_millimetre(tmp_path):
    d = np.random.default_rng(1).uniform(0.01, 65.0, size=(16, 12))
    back = read_depth(write_depth_png16(tmp_path / "d.png", d))
    assert np.max(np.abs(back - d)) <= 0.0005 + 1e-6


def test_write_depth_dispatches_on_suffix(tmp_path):
    d = np.full((2, 2), 3.0, np.float32)
    for name in ("a.npy", "a.exr", "a.png"):
        np.testing.assert_allclose(read_depth(write_depth(tmp_path / name, d)), d)
    with pytest.raises(DepthFileError, match=r"a\.tiff.*unknown depth file type"):
        write_depth(tmp_path / "a.tiff", d)


def test_colorize_hand_values():
    # Spectral stops: t=0 -> #9e0142, t=0.5 -> #ffffbf, t=1 -> #5e4fa2; halfway between stops 0 and 1 by hand.
    rgb = colorize_depth(np.array([[1.0, 3.0, 5.0, 0.0]]), 1.0, 5.0)
    np.testing.assert_array_equal(rgb[0, 0], [0x9E, 0x01, 0x42])
    np.testing.assert_array_equal(rgb[0, 1], [0xFF, 0xFF, 0xBF])
    np.testing.assert_array_equal(rgb[0, 2], [0x5E, 0x4F, 0xA2])
    np.testing.assert_array_equal(rgb[0, 3], [0, 0, 0])  # invalid
    # 1 m over [0, 40] m is t = 0.025, a quarter of the way from stop 0 (t=0) to stop 1 (t=0.1):
    # 0x9e + (0xd5 - 0x9e) / 4 = 171.75, 0x01 + (0x3e - 0x01) / 4 = 16.25, 0x42 + (0x4f - 0x42) / 4 = 69.25
    np.testing.assert_array_equal(colorize_depth(np.array([[1.0]]), 0.0, 40.0)[0, 0], [172, 16, 69])


def test_color_png_legend_range(tmp_path, depth):
    d_min, d_max = write_depth_color_png(tmp_path / "c.png", depth)
    valid = depth[np.isfinite(depth) & (depth > 0)]
    assert (d_min, d_max) == (float(valid.min()), float(valid.max()))
    with Image.open(tmp_path / "c.png") as im:
        assert float(im.text["depth_min_m"]) == d_min and float(im.text["depth_max_m"]) == d_max
        arr = np.asarray(im.convert("RGB"))
    h, w = depth.shape
    assert arr.shape[0] > h and arr.shape[1] == w  # legend strip below the picture
    np.testing.assert_array_equal(arr[:h], colorize_depth(depth, d_min, d_max))
    # The legend bar runs from the colour of d_min (left) to the colour of d_max (right).
    np.testing.assert_array_equal(arr[h, 0], colorize_depth(np.array([[d_min]]), d_min, d_max)[0, 0])
    np.testing.assert_array_equal(arr[h, -1], colorize_depth(np.array([[d_max]]), d_min, d_max)[0, 0])


def test_color_png_explicit_range(tmp_path):
    d = np.linspace(0.5, 20, 64 * 48).reshape(48, 64)
    assert write_depth_color_png(tmp_path / "c.png", d, d_min=1.0, d_max=10.0) == (1.0, 10.0)
    with pytest.raises(ValueError, match="no valid pixel"):
        write_depth_color_png(tmp_path / "n.png", np.zeros((4, 4)))


# ---- errors ----------------------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(DepthFileError, match=r"nope\.npy: no such depth file"):
        read_depth(tmp_path / "nope.npy")


@pytest.mark.parametrize("name", ["bad.npy", "bad.exr", "bad.png"])
def test_corrupt_files(tmp_path, name):
    (tmp_path / name).write_bytes(b"this is not a depth map at all")
    with pytest.raises(DepthFileError, match=rf"{name}: not a readable"):
        read_depth(tmp_path / name)


def test_truncated_npy(tmp_path):
    write_depth_npy(tmp_path / "t.npy", np.ones((50, 50), np.float32))
    data = (tmp_path / "t.npy").read_bytes()
    (tmp_path / "t.npy").write_bytes(data[: len(data) // 2])
    with pytest.raises(DepthFileError, match=r"t\.npy: not a readable"):
        read_depth(tmp_path / "t.npy")


def test_wrong_dtype_and_shape(tmp_path):
    np.save(tmp_path / "i.npy", np.ones((3, 3), np.uint16))
    with pytest.raises(DepthFileError, match=r"i\.npy: dtype uint16.*floating-point metres"):
        read_depth(tmp_path / "i.npy")
    np.save(tmp_path / "s.npy", np.array([["a", "b"]]))
    with pytest.raises(DepthFileError, match=r"s\.npy: dtype"):
        read_depth(tmp_path / "s.npy")
    np.save(tmp_path / "rgb.npy", np.ones((3, 3, 3), np.float32))
    with pytest.raises(DepthFileError, match=r"rgb\.npy: depth must be H x W, got shape \(3, 3, 3\)"):
        read_depth(tmp_path / "rgb.npy")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "rgb8.png")
    with pytest.raises(DepthFileError, match=r"rgb8\.png: PNG mode 'RGB'.*16-bit"):
        read_depth(tmp_path / "rgb8.png")
    (tmp_path / "d.jpg").write_bytes(b"x")
    with pytest.raises(DepthFileError, match=r"d\.jpg: unknown depth file type"):
        read_depth(tmp_path / "d.jpg")


def test_writer_rejects_bad_arrays(tmp_path):
    with pytest.raises(ValueError, match=r"H x W.*\(2, 2, 3\)"):
        write_depth_npy(tmp_path / "x.npy", np.ones((2, 2, 3)))
    with pytest.raises(ValueError, match="dtype bool"):
        write_depth_png16(tmp_path / "x.png", np.ones((2, 2), bool))
    assert not list(tmp_path.iterdir())  # nothing written, no temp file left


def test_exr_without_openexr_is_a_clear_error(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_openexr(name, *a, **k):
        if name == "OpenEXR":
            raise ImportError("No module named 'OpenEXR'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_openexr)
    with pytest.raises(DepthFileError, match=r"d\.exr: .*needs the OpenEXR package"):
        write_depth_exr(tmp_path / "d.exr", np.ones((2, 2)))
    (tmp_path / "r.exr").write_bytes(b"x")
    with pytest.raises(DepthFileError, match=r"r\.exr: .*needs the OpenEXR package"):
        read_depth(tmp_path / "r.exr")


# ---- atomicity ------------------------------------------------------------------------------------------------


def test_atomic_write_failure_keeps_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "d.npy"
    write_depth_npy(target, np.full((2, 2), 1.0))
    before = target.read_bytes()
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(target) as tmp:
            tmp.write_bytes(b"half written")
            assert tmp.parent == target.parent and tmp.suffix == ".npy"
            raise RuntimeError("boom")
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.npy"]


def test_atomic_write_replaces_on_success(tmp_path):
    target = tmp_path / "x.txt"
    with atomic_write(target) as tmp:
        tmp.write_text("new")
        assert not target.exists()  # nothing visible until the block succeeds
    assert target.read_text() == "new"
    assert os.listdir(tmp_path) == ["x.txt"]
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask  # permissions of an ordinary new file


def test_atomic_write_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        with atomic_write(tmp_path / "no" / "d.npy"):
            pass


def test_module_is_torch_free():
    import subprocess
    import sys

    code = (
        "import sys, metricgold_engine.core.depth_io; "
        "assert 'torch' not in sys.modules and 'OpenEXR' not in sys.modules, sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert depth_io.PNG16_MAX_M == 65.535
