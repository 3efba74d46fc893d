"""trainer.temporal: the temporal error of a depth sequence against hand-built two-frame cases with exact answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from metricgold_engine.core.geometry import Intrinsics
from trainer.synth.sequence import camera_to_world, euler_xyz_matrix
from trainer.temporal import covisible_mask, sample_log_depth, temporal_errors, warp_depth

W, H = 64, 48
K = Intrinsics(100.0, 100.0, 31.5, 23.5, W, H)
# A common world placement of both cameras: the errors depend only on the relative pose.
G = camera_to_world((1.0, -2.0, 0.5), euler_xyz_matrix(0.3, -0.2, 1.1))


def _translate(x: float, y: float, z: float) -> np.ndarray:
    return camera_to_world((x, y, z), np.eye(3))


def _const(value: float) -> np.ndarray:
    return np.full((H, W), value)


def test_lateral_translation_over_a_fronto_parallel_plane_gives_exact_values() -> None:
    # Plane at 4 m, camera 1 is 0.4 m to the right of camera 0: the true image moves 100 * 0.4 / 4 = 10 px left.
    c0, c1 = G, G @ _translate(0.4, 0.0, 0.0)
    true = _const(4.0)
    u, v, z = warp_depth(true, K, c0, c1)
    uu, vv = np.meshgrid(np.arange(W, dtype=np.float64), np.arange(H, dtype=np.float64))
    np.testing.assert_allclose(u, uu - 10.0, atol=1e-9)
    np.testing.assert_allclose(v, vv, atol=1e-9)
    np.testing.assert_allclose(z, 4.0, atol=1e-12)
    covis, *_ = covisible_mask(true, true, K, c0, c1)
    expected = np.zeros((H, W), dtype=bool)
    expected[:, 10:] = True  # columns 0..9 land left of the image
    assert np.array_equal(covis, expected)

    # Prediction of frame 0: 2 m everywhere (lands 20 px left, at 2 m); frame 1's prediction: log depth = 0.01 u.
    alpha = 0.01
    pred1 = np.exp(alpha * uu)
    r = temporal_errors(_const(2.0), pred1, true, true, K, c0, c1)
    cols = np.arange(20, W)  # pixels whose predicted landing point (u - 20) is inside frame 1
    assert r["pixels"] == len(cols) * H
    assert r["temporal_error"] == pytest.approx(np.mean(math.log(2.0) - alpha * (cols - 20)), abs=1e-12)
    assert r["temporal_error"] == pytest.approx(math.log(2.0) - 0.215, abs=1e-12)
    # Flicker, along the true correspondence (u - 10): |(alpha (u - 10) - log 2) - (log 4 - log 4)|.
    assert r["flicker"] == pytest.approx(math.log(2.0) - alpha * 26.5, abs=1e-12)
    assert r["covisible_fraction"] == pytest.approx(54 / 64, abs=1e-12)


def test_perfect_prediction_has_zero_error() -> None:
    c0, c1 = G, G @ _translate(0.4, 0.1, -0.3)
    true0, true1 = _const(4.0), _const(3.7)  # camera 1 is 0.3 m closer to the plane
    r = temporal_errors(true0, true1, true0, true1, K, c0, c1)
    assert r["temporal_error"] == pytest.approx(0.0, abs=1e-12) and r["flicker"] == pytest.approx(0.0, abs=1e-12)
    assert r["pixels"] > 0.5 * W * H


def test_consistent_scale_error_is_flicker_free_but_not_parallax_free() -> None:
    # Dolly 1 m towards a plane at 4 m with a prediction twice the truth in both frames: carried over, 8 m becomes
    # 7 m where frame 1 predicts 6 m (temporal error log 7/6); the prediction's error is the same in both frames
    # (flicker 0).
    c0, c1 = G, G @ _translate(0.0, 0.0, -1.0)
    r = temporal_errors(_const(8.0), _const(6.0), _const(4.0), _const(3.0), K, c0, c1)
    assert r["temporal_error"] == pytest.approx(math.log(7.0 / 6.0), abs=1e-12)
    assert r["flicker"] == pytest.approx(0.0, abs=1e-12)
    # A prediction that flickers by 10 % in frame 1 (scale 2 in frame 0, 2.2 in frame 1).
    r = temporal_errors(_const(8.0), _const(6.6), _const(4.0), _const(3.0), K, c0, c1)
    assert r["flicker"] == pytest.approx(math.log(1.1), abs=1e-12)


def test_occluded_pixels_do_not_count() -> None:
    # Frame 1 sees a box 1 m away over columns 40..63 that frame 0 did not: those landing points are occluded.
    c0, c1 = G, G @ _translate(0.4, 0.0, 0.0)
    true0, true1 = _const(4.0), _const(4.0)
    true1[:, 40:] = 1.0
    covis, *_ = covisible_mask(true0, true1, K, c0, c1)
    # Pixel u lands at u - 10 (on a pixel centre): it counts while u - 10 < 40.
    assert covis[:, 10:50].all() and not covis[:, 50:].any() and not covis[:, :10].any()
    # Sky (invalid depth) never counts.
    true0[:5] = 0.0
    covis, *_ = covisible_mask(true0, true1, K, c0, c1)
    assert not covis[:5].any()


def test_sample_log_depth_is_bilinear_in_log_and_checks_bounds() -> None:
    d = np.exp(np.add.outer(0.1 * np.arange(4), 0.02 * np.arange(5)))  # log d = 0.1 v + 0.02 u
    val, ok = sample_log_depth(d, np.array([0.0, 3.5, 4.0, 4.01, -0.01]), np.array([0.0, 2.25, 3.0, 1.0, 1.0]))
    assert ok.tolist() == [True, True, True, False, False]
    np.testing.assert_allclose(val[:3], [0.0, 0.1 * 2.25 + 0.02 * 3.5, 0.3 + 0.08], atol=1e-12)
    d[1, 1] = np.nan
    _, ok = sample_log_depth(d, np.array([0.5, 2.5]), np.array([0.5, 2.5]))
    assert ok.tolist() == [False, True]


def test_shape_mismatch_is_refused() -> None:
    with pytest.raises(ValueError, match="pred_to has shape"):
        temporal_errors(_const(1.0), np.ones((2, 2)), _const(1.0), _const(1.0), K, G, G)
