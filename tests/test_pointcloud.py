"""PLY point clouds: read back with a reader written here from the PLY format's own rules (header lines, then packed
little-endian records), and the points checked against a float64 unprojection formula written out by hand.

(plyfile from PyPI would be the peer reader, but its releases need numpy >= 2 and bpy 5.0.1 pins numpy < 2.)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from metricgold_engine.core.geometry import Intrinsics
from metricgold_engine.core.pointcloud import depth_to_point_cloud, write_depth_ply

_PLY_SCALARS = {"char": "i1", "uchar": "u1", "short": "<i2", "ushort": "<u2", "int": "<i4", "uint": "<u4",
                "float": "<f4", "double": "<f8"}


def read_ply(path: Path) -> tuple[list[str], np.ndarray]:
    """(header lines, vertex records) of a binary little-endian PLY file with one vertex element."""
    data = path.read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode("ascii").splitlines()
    assert header[0] == "ply" and header[1] == "format binary_little_endian 1.0"
    count, fields = None, []
    for line in header[2:-1]:
        words = line.split()
        if words[0] == "element":
            assert words[1] == "vertex" and count is None
            count = int(words[2])
        elif words[0] == "property":
            fields.append((words[2], _PLY_SCALARS[words[1]]))
    dtype = np.dtype(fields)
    body = data[end:]
    assert len(body) == count * dtype.itemsize, "the body must hold exactly the declared records, no padding"
    return header, np.frombuffer(body, dtype=dtype, count=count)


def reference_points(depth: np.ndarray, fx: float, fy: float, cx: float, cy: float) -> tuple[np.ndarray, np.ndarray]:
    """Blender/OpenGL camera space by hand, pixel by pixel: looking down -Z, +Y up, +X right."""
    pts, where = [], []
    for v in range(depth.shape[0]):
        for u in range(depth.shape[1]):
            d = float(depth[v, u])
            if np.isfinite(d) and d > 0:
                pts.append(((u - cx) * d / fx, -(v - cy) * d / fy, -d))
                where.append((v, u))
    return np.array(pts, dtype=np.float64), np.array(where)


def test_ply_round_trip_matches_a_hand_unprojection(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    h, w = 7, 9
    depth = rng.uniform(0.5, 30.0, (h, w)).astype(np.float32)
    depth[0, 0], depth[2, 3], depth[4, 4], depth[6, 8] = np.nan, 0.0, -1.0, np.inf  # all four are left out
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    unc = rng.uniform(0.0, 2.0, (h, w)).astype(np.float32)
    k = Intrinsics(fx=11.0, fy=12.5, cx=4.2, cy=2.9, width=w, height=h)

    path = write_depth_ply(tmp_path / "cloud.ply", depth, k, rgb=rgb, uncertainty=unc)
    header, rec = read_ply(path)
    assert [line.split()[-1] for line in header if line.startswith("property")] == [
        "x", "y", "z", "red", "green", "blue", "uncertainty"]
    assert [line.split()[1] for line in header if line.startswith("property")] == ["float"] * 3 + ["uchar"] * 3 + [
        "float"]
    assert any("looking down -Z" in line for line in header if line.startswith("comment"))

    ref, where = reference_points(depth, 11.0, 12.5, 4.2, 2.9)
    assert len(rec) == h * w - 4 == len(ref)
    got = np.stack([rec["x"], rec["y"], rec["z"]], axis=1).astype(np.float64)
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)  # float32 storage of float64 values
    rows, cols = where[:, 0], where[:, 1]
    np.testing.assert_array_equal(np.stack([rec["red"], rec["green"], rec["blue"]], axis=1), rgb[rows, cols])
    np.testing.assert_array_equal(rec["uncertainty"], unc[rows, cols])
    # A point right of and above the principal point is at +X, +Y, in front of the camera (-Z).
    i = int(np.flatnonzero((where[:, 0] == 0) & (where[:, 1] == 8))[0])
    assert rec["x"][i] > 0 and rec["y"][i] > 0 and rec["z"][i] == pytest.approx(-depth[0, 8])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cloud.ply"]  # no temporary file left


def test_ply_without_colour_or_uncertainty_and_with_stride(tmp_path: Path) -> None:
    depth = np.arange(1, 21, dtype=np.float32).reshape(4, 5)
    k = Intrinsics.from_fov(5, 4, 60.0)
    _, rec = read_ply(write_depth_ply(tmp_path / "plain.ply", depth, k))
    assert rec.dtype.names == ("x", "y", "z") and len(rec) == 20
    cloud = depth_to_point_cloud(depth, k, stride=2)
    ref, _ = reference_points(depth[::2, ::2], k.fx / 2, k.fy / 2, k.cx / 2, k.cy / 2)
    np.testing.assert_allclose(cloud.points, ref, rtol=1e-6)


def test_ply_bad_inputs_name_the_problem(tmp_path: Path) -> None:
    depth = np.ones((4, 5), np.float32)
    k = Intrinsics.from_fov(5, 4)
    with pytest.raises(ValueError, match=r"rgb has shape \(4, 4, 3\)"):
        write_depth_ply(tmp_path / "a.ply", depth, k, rgb=np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="rgb must be uint8"):
        write_depth_ply(tmp_path / "a.ply", depth, k, rgb=np.zeros((4, 5, 3), np.float32))
    with pytest.raises(ValueError, match="intrinsics are for 6 x 4"):
        write_depth_ply(tmp_path / "a.ply", depth, Intrinsics.from_fov(6, 4))
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_cli_writes_a_coloured_cloud_through_the_photos_exif_focal(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """`predict --formats npy,ply`: the cloud is the written depth unprojected with the EXIF focal length (28 mm in
    35 mm terms), coloured with the photo's pixels, with the uncertainty."""
    from PIL import Image

    from metricgold_engine.cli import main

    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x8769] = {0xA405: 28}  # Exif sub-IFD: FocalLengthIn35mmFilm
    Image.fromarray(rgb).save(tmp_path / "photo.png", exif=exif)  # PNG: lossless colours
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "photo.png"), "--model", str(tiny_checkpoint), "--out", str(out),
                 "--steps", "1", "--ensemble", "2", "--resolution", "16", "--uncertainty", "--device", "cpu",
                 "--formats", "npy,ply"]) == 0
    depth = np.load(out / "photo_depth.npy")
    f = 28.0 * np.hypot(16, 12) / np.hypot(36, 24)  # pixels: the diagonal sees what a 36 x 24 mm frame's does
    ref, where = reference_points(depth, f, f, 7.5, 5.5)
    _, rec = read_ply(out / "photo.ply")
    assert len(rec) == len(ref) > 0
    np.testing.assert_allclose(np.stack([rec["x"], rec["y"], rec["z"]], axis=1), ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.stack([rec["red"], rec["green"], rec["blue"]], axis=1),
                                  rgb[where[:, 0], where[:, 1]])
    np.testing.assert_array_equal(rec["uncertainty"], np.load(out / "photo_uncertainty.npy")[where[:, 0], where[:, 1]])
    assert sorted(p.name for p in out.iterdir()) == [
        "photo.ply", "photo_camera.json", "photo_depth.npy", "photo_uncertainty.npy"]
    # The cloud's camera is the one the CLI reports.
    cam = json.loads((out / "photo_camera.json").read_text())
    assert cam["focal_source"] == "exif" and cam["fx"] == pytest.approx(f) and cam["cx"] == pytest.approx(7.5)
