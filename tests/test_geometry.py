"""Pinhole geometry against hand-computed values and independent float64 projections."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from metricgold_engine.core.geometry import (
    DEFAULT_HORIZONTAL_FOV_DEG,
    Intrinsics,
    build_grid_mesh,
    discontinuity_face_mask,
    focal_35mm_from_exif,
    grid_edges,
    grid_faces,
    pixel_uvs,
    resolve_intrinsics,
    subsample_indices,
    unproject,
)


def project(points: np.ndarray, k: Intrinsics) -> np.ndarray:
    """Independent reference: Blender camera space -> OpenCV pixel coordinates (u, v), float64."""
    x, y, z = (points[..., i].astype(np.float64) for i in range(3))
    depth = -z
    return np.stack([k.fx * x / depth + k.cx, k.fy * (-y) / depth + k.cy], axis=-1)


def test_from_fov_hand_values():
    k = Intrinsics.from_fov(640, 480, 90.0)
    assert (k.fx, k.fy, k.cx, k.cy) == pytest.approx((320.0, 320.0, 319.5, 239.5))
    assert k.horizontal_fov_deg == pytest.approx(90.0)
    k = Intrinsics.from_fov(640, 480, 60.0, axis="vertical")
    assert k.fy == pytest.approx(240.0 / math.tan(math.radians(30.0)))
    np.testing.assert_allclose(k.matrix, [[k.fx, 0, 319.5], [0, k.fy, 239.5], [0, 0, 1]])


def test_from_focal_35mm_hand_values():
    # An image whose pixels are as many as a full frame's millimetres: f in px equals f in mm.
    k = Intrinsics.from_focal_35mm(36, 24, 50.0)
    assert k.fx == pytest.approx(50.0) and k.fy == pytest.approx(50.0)
    # 4000 x 3000 (diagonal 5000 px) at 26 mm eq.: 26 * 5000 / 43.2666...
    k = Intrinsics.from_focal_35mm(4000, 3000, 26.0)
    assert k.fx == pytest.approx(26.0 * 5000.0 / math.sqrt(36**2 + 24**2))


def test_invalid_intrinsics_are_rejected():
    with pytest.raises(ValueError, match="fx > 0"):
        Intrinsics(0.0, 1.0, 0.0, 0.0, 4, 4)
    with pytest.raises(ValueError, match="field of view"):
        Intrinsics.from_fov(4, 4, 180.0)
    with pytest.raises(ValueError, match="image size"):
        Intrinsics(1.0, 1.0, 0.0, 0.0, 0, 4)


def test_scaled_keeps_pixel_centres_and_edges():
    k = Intrinsics.from_fov(4, 2, 70.0)
    k2 = k.scaled(8, 4)
    assert (k2.cx, k2.cy) == pytest.approx((3.5, 1.5))  # centre stays the centre
    assert k2.fx == pytest.approx(2 * k.fx)
    # A ray through the left image edge (u = -0.5) stays the left edge after resizing.
    assert (-0.5 - k.cx) / k.fx == pytest.approx((-0.5 - k2.cx) / k2.fx)


def test_subsampled_intrinsics_match_subsampled_unprojection():
    k = Intrinsics(50.0, 55.0, 4.2, 3.1, 10, 7)
    depth = np.random.default_rng(0).uniform(1, 3, size=(7, 10))
    pts = unproject(depth, k, stride=3)
    ks = k.subsampled(3)
    assert (ks.width, ks.height) == (4, 3)
    np.testing.assert_allclose(unproject(depth[::3, ::3], ks), pts, rtol=1e-12)


def test_resolve_intrinsics_priority():
    k, why = resolve_intrinsics(100, 50)
    assert k.horizontal_fov_deg == pytest.approx(DEFAULT_HORIZONTAL_FOV_DEG) and "default" in why
    k, why = resolve_intrinsics(100, 50, focal_35mm=26.0)
    assert k.fx == pytest.approx(26.0 * math.hypot(100, 50) / math.hypot(36, 24)) and "EXIF" in why
    k, why = resolve_intrinsics(100, 50, fov_deg=90.0, focal_35mm=26.0)
    assert k.fx == pytest.approx(50.0)
    k, _ = resolve_intrinsics(100, 50, intrinsics=(80, 81, 40, 20), fov_deg=90.0)
    assert (k.fx, k.fy, k.cx, k.cy, k.width, k.height) == (80, 81, 40, 20, 100, 50)
    k, _ = resolve_intrinsics(200, 100, intrinsics=Intrinsics(80, 80, 49.5, 24.5, 100, 50))
    assert (k.fx, k.cx, k.cy) == pytest.approx((160, 99.5, 49.5))


def test_exif_focal_length(tmp_path):
    img = Image.new("RGB", (8, 6), (10, 20, 30))
    exif = Image.Exif()
    exif[0x8769] = {0xA405: 28}  # Exif sub-IFD: FocalLengthIn35mmFilm
    img.save(tmp_path / "with.jpg", exif=exif)
    img.save(tmp_path / "without.jpg")
    assert focal_35mm_from_exif(tmp_path / "with.jpg") == 28.0
    assert focal_35mm_from_exif(tmp_path / "without.jpg") is None
    assert focal_35mm_from_exif(tmp_path / "missing.jpg") is None


def test_unproject_hand_values():
    k = Intrinsics(100.0, 200.0, 1.0, 0.0, 3, 2)
    depth = np.array([[2.0, 4.0, 1.0], [0.5, 0.0, np.nan]])
    pts = unproject(depth, k)
    np.testing.assert_allclose(pts[0, 1], [0.0, 0.0, -4.0])  # the principal point looks straight down -Z
    np.testing.assert_allclose(pts[0, 0], [-0.02, 0.0, -2.0])  # (0 - 1) / 100 * 2
    np.testing.assert_allclose(pts[1, 0], [-0.005, -0.0025, -0.5])  # row 1 is below: -Y; (1 - 0) / 200 * 0.5
    assert np.isnan(pts[1, 1]).all() and np.isnan(pts[1, 2]).all()


def test_unproject_reprojects_to_pixel_centres():
    k = Intrinsics(420.0, 410.0, 30.7, 21.2, 64, 48)
    depth = np.random.default_rng(1).uniform(0.3, 50.0, size=(48, 64))
    pts = unproject(depth, k)
    vv, uu = np.mgrid[0:48, 0:64]
    np.testing.assert_allclose(project(pts, k), np.stack([uu, vv], axis=-1), atol=1e-9)
    np.testing.assert_allclose(-pts[..., 2], depth, rtol=1e-12)


def test_unproject_size_mismatch():
    with pytest.raises(ValueError, match="intrinsics are for 4 x 4 pixels but the depth is 5 x 4"):
        unproject(np.ones((4, 5)), Intrinsics.from_fov(4, 4, 60.0))


def test_tilted_plane_points_lie_on_plane():
    # Plane n . X = c in camera space; the depth of each pixel's ray t * r (r_z = -1) is t = c / (n . r).
    k = Intrinsics.from_fov(40, 30, 60.0)
    n = np.array([0.0, 0.4, 1.0]) / np.linalg.norm([0.0, 0.4, 1.0])
    c = -3.0
    vv, uu = np.mgrid[0:30, 0:40].astype(np.float64)
    rays = np.stack([(uu - k.cx) / k.fx, -(vv - k.cy) / k.fy, -np.ones_like(uu)], axis=-1)
    depth = c / (rays @ n)
    assert (depth > 0).all()
    pts = unproject(depth, k)
    np.testing.assert_allclose(pts @ n, c, atol=1e-12)


def test_grid_faces_hand_values_and_winding():
    np.testing.assert_array_equal(grid_faces(2, 3), [[0, 3, 4, 1], [1, 4, 5, 2]])
    assert grid_faces(1, 5).shape == (0, 4)
    # Normals of a fronto-parallel plane point back at the camera (+Z in camera space).
    k = Intrinsics.from_fov(5, 4, 50.0)
    pts = unproject(np.full((4, 5), 2.0), k).reshape(-1, 3)
    f = grid_faces(4, 5)
    normals = np.cross(pts[f[:, 1]] - pts[f[:, 0]], pts[f[:, 3]] - pts[f[:, 0]])
    assert (normals[:, 2] > 0).all()


def test_discontinuity_mask_step():
    depth = np.ones((3, 6))
    depth[:, 3:] = 2.0  # a step between columns 2 and 3
    faces = grid_faces(3, 6)
    keep = discontinuity_face_mask(depth, faces, 0.5)
    # Faces of column 2 (between grid columns 2 and 3) cross the step: 2 of 10 faces cut.
    assert keep.sum() == 8
    assert not keep.reshape(2, 5)[:, 2].any()
    assert discontinuity_face_mask(depth, faces, 1.0).all()  # jump 1 m at 1 m: ratio exactly 1 is kept
    assert discontinuity_face_mask(depth, faces, None).all()
    depth[0, 0] = np.nan
    assert discontinuity_face_mask(depth, faces, None).sum() == 9


def test_subsample_indices():
    np.testing.assert_array_equal(subsample_indices(10, 3), [0, 3, 6, 9])
    np.testing.assert_array_equal(subsample_indices(9, 3), [0, 3, 6])
    with pytest.raises(ValueError, match="stride"):
        subsample_indices(10, 0)


def test_pixel_uvs_hand_values():
    uv = pixel_uvs(np.array([0, 1]), np.array([0, 3]), 4, 2)
    np.testing.assert_allclose(uv[0, 0], [0.125, 0.75])
    np.testing.assert_allclose(uv[1, 1], [0.875, 0.25])


def test_build_grid_mesh_drops_invalid_and_renumbers():
    k = Intrinsics.from_fov(4, 3, 60.0)
    depth = np.full((3, 4), 2.0)
    depth[1, 1] = 0.0
    m = build_grid_mesh(depth, k)
    assert m.vertices.shape == (11, 3) and m.grid_shape == (3, 4)
    # 6 grid quads, the 4 around pixel (1, 1) need it: 2 remain.
    assert m.faces.shape == (2, 4)
    assert m.faces.max() < 11
    ref = unproject(depth, k)
    np.testing.assert_allclose(m.vertices, ref[m.pixels[:, 1], m.pixels[:, 0]])
    np.testing.assert_allclose(m.depth, 2.0)
    for face in m.faces:  # every face still joins 4 grid neighbours
        px = m.pixels[face]
        assert np.abs(np.diff(px, axis=0)).sum(axis=1).max() == 1


def test_build_grid_mesh_stride_point_cloud_and_cut():
    k = Intrinsics.from_fov(10, 7, 60.0)
    depth = np.full((7, 10), 1.0)
    depth[:, 5:] = 3.0
    m = build_grid_mesh(depth, k, stride=3, faces=False)
    assert m.vertices.shape == (12, 3) and m.faces.shape == (0, 4)
    np.testing.assert_array_equal(np.unique(m.pixels[:, 0]), [0, 3, 6, 9])
    m = build_grid_mesh(depth, k, stride=1, max_relative_jump=0.1)
    assert m.faces.shape == ((6 * 9) - 6, 4)  # the column of faces across the step is cut
    colours = np.arange(7 * 10).reshape(7, 10)
    np.testing.assert_array_equal(m.vertex_values(colours), m.pixels[:, 1] * 10 + m.pixels[:, 0])


def _edges_by_search(faces: np.ndarray) -> set[tuple[int, int]]:
    """Independent reference: every face's consecutive corner pairs, as sorted tuples."""
    return {tuple(sorted((int(f[i]), int(f[(i + 1) % 4])))) for f in faces for i in range(4)}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grid_edges_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    rows, cols = 6, 9
    keep = rng.random((rows - 1, cols - 1)) < 0.6
    faces = grid_faces(rows, cols)[keep.ravel()]
    edges, face_edges = grid_edges(keep)
    as_set = {tuple(sorted(map(int, e))) for e in edges}
    assert len(as_set) == len(edges)  # each edge once
    assert as_set == _edges_by_search(faces)
    # corner i's edge joins corner i and corner i + 1
    for f, fe in zip(faces, face_edges):
        for i in range(4):
            assert set(edges[fe[i]]) == {f[i], f[(i + 1) % 4]}


def test_grid_edges_hand_values():
    # 2 x 3 vertices, both quads kept: 2 + 2 horizontal edges, 3 vertical edges.
    edges, face_edges = grid_edges(np.ones((1, 2), bool))
    np.testing.assert_array_equal(edges, [[0, 1], [1, 2], [3, 4], [4, 5], [0, 3], [1, 4], [2, 5]])
    np.testing.assert_array_equal(face_edges, [[4, 2, 5, 0], [5, 3, 6, 1]])


def test_build_grid_mesh_edges_after_renumbering():
    k = Intrinsics.from_fov(5, 4, 60.0)
    depth = np.full((4, 5), 2.0)
    depth[2, 3] = np.nan
    depth[:, 0] = 5.0
    m = build_grid_mesh(depth, k, max_relative_jump=0.1)
    assert _edges_by_search(m.faces) == {tuple(sorted(map(int, e))) for e in m.edges}
    assert m.edges.max() < len(m.vertices)
    for f, fe in zip(m.faces, m.face_edges):
        for i in range(4):
            assert set(m.edges[fe[i]]) == {f[i], f[(i + 1) % 4]}


@pytest.mark.parametrize("jump", [None, 0.0, 0.1, 1.0])
def test_grid_face_keep_matches_face_mask(jump):
    from metricgold_engine.core.geometry import _grid_face_keep

    rng = np.random.default_rng(3)
    d = rng.uniform(1.0, 1.3, size=(7, 9))
    d[rng.random(d.shape) < 0.1] = np.nan
    np.testing.assert_array_equal(
        _grid_face_keep(d, jump).ravel(), discontinuity_face_mask(d, grid_faces(7, 9), jump))


def test_same_aspect():
    from metricgold_engine.core.geometry import same_aspect

    assert same_aspect(640, 480, (240, 320))  # another resolution, same shape
    assert same_aspect(640, 480, (241, 320))  # within 1 %
    assert not same_aspect(480, 640, (240, 320))  # rotated (EXIF orientation Blender ignores)
    assert not same_aspect(640, 480, (250, 320))
