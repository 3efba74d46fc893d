"""Depth normalization (eqs. 1-3) against a float64 reference written out by hand."""

import math

import numpy as np
import pytest
import torch

from metricgold_engine.core.depth_codec import (
    check_depth_range,
    denormalize_depth,
    log_normalize_depth,
    normalize_depth,
    valid_depth_mask,
)

D_MIN, D_MAX = 0.25, 80.0


def reference(d: np.ndarray, mode: str) -> np.ndarray:
    d = d.astype(np.float64)
    if mode == "log":
        x = 2 * np.log(d / D_MIN) / np.log(D_MAX / D_MIN) - 1
    else:
        x = 2 * (d - D_MIN) / (D_MAX - D_MIN) - 1
    return np.clip(x, -1, 1)


@pytest.mark.parametrize("mode", ["log", "linear"])
def test_normalize_matches_float64_reference(mode):
    d = np.exp(np.random.default_rng(0).uniform(np.log(0.05), np.log(200), size=10_000))
    np.testing.assert_allclose(normalize_depth(d, D_MIN, D_MAX, mode), reference(d, mode), rtol=0, atol=1e-12)
    x32 = normalize_depth(d.astype(np.float32), D_MIN, D_MAX, mode)
    assert x32.dtype == np.float32
    np.testing.assert_allclose(x32, reference(d.astype(np.float32), mode), atol=2e-6)


def test_known_values_by_hand():
    # log: d_min -> -1, d_max -> +1, geometric mean -> 0
    d = np.array([D_MIN, D_MAX, math.sqrt(D_MIN * D_MAX)])
    np.testing.assert_allclose(normalize_depth(d, D_MIN, D_MAX, "log"), [-1, 1, 0], atol=1e-12)
    # linear: arithmetic mean -> 0
    np.testing.assert_allclose(normalize_depth(np.array([(D_MIN + D_MAX) / 2]), D_MIN, D_MAX, "linear"), [0], atol=1e-12)
    # eq. (3) with the default range 0.1..100: d = 1 m is a third of the way in log space -> 2/3 - 1
    np.testing.assert_allclose(log_normalize_depth(np.array([1.0])), [2 * (1 / 3) - 1], atol=1e-12)


@pytest.mark.parametrize("mode", ["log", "linear"])
def test_round_trip_inside_range(mode):
    d = np.exp(np.random.default_rng(1).uniform(np.log(D_MIN), np.log(D_MAX), size=1000))
    back = denormalize_depth(normalize_depth(d, D_MIN, D_MAX, mode), D_MIN, D_MAX, mode)
    np.testing.assert_allclose(back, d, rtol=1e-10)


@pytest.mark.parametrize("mode", ["log", "linear"])
def test_clipping_at_both_ends(mode):
    x = normalize_depth(np.array([0.01, 1e6]), D_MIN, D_MAX, mode)
    np.testing.assert_array_equal(x, [-1.0, 1.0])
    d = denormalize_depth(np.array([-3.0, 3.0]), D_MIN, D_MAX, mode)
    np.testing.assert_allclose(d, [D_MIN, D_MAX], rtol=1e-12)


def test_invalid_depth_never_poisons():
    d = np.array([0.0, -1.0, np.nan, np.inf, -np.inf, 2.0])
    mask = valid_depth_mask(d)
    np.testing.assert_array_equal(mask, [False, False, False, False, False, True])
    x = normalize_depth(d, D_MIN, D_MAX, "log", invalid_value=0.5)
    assert np.isfinite(x).all()
    np.testing.assert_allclose(x[:5], 0.5)
    np.testing.assert_allclose(x[5], reference(np.array([2.0]), "log")[0])
    # range-limited mask
    np.testing.assert_array_equal(valid_depth_mask(np.array([0.1, 1.0, 90.0]), 0.2, 80.0), [False, True, False])


@pytest.mark.parametrize("mode", ["log", "linear"])
def test_torch_and_numpy_agree_and_keep_type(mode):
    d = np.array([[0.0, 0.3, 5.0], [np.nan, 79.0, 1000.0]], dtype=np.float32)
    xt = normalize_depth(torch.from_numpy(d), D_MIN, D_MAX, mode)
    assert isinstance(xt, torch.Tensor) and xt.dtype == torch.float32
    np.testing.assert_allclose(xt.numpy(), normalize_depth(d, D_MIN, D_MAX, mode), atol=1e-6)
    dt = denormalize_depth(xt, D_MIN, D_MAX, mode)
    assert isinstance(dt, torch.Tensor)
    np.testing.assert_allclose(dt.numpy(), denormalize_depth(xt.numpy(), D_MIN, D_MAX, mode), rtol=1e-5)
    mt = valid_depth_mask(torch.from_numpy(d))
    assert isinstance(mt, torch.Tensor) and mt.tolist() == [[False, True, True], [False, True, True]]


def test_integer_input_gives_float32():
    assert normalize_depth(np.array([1, 2, 3], dtype=np.uint16), 1, 4).dtype == np.float32


@pytest.mark.parametrize("args, message", [
    ((0.0, 10.0, "log"), "d_min > 0"),
    ((5.0, 1.0, "log"), "d_max > d_min"),
    ((1.0, float("inf"), "log"), "finite"),
    ((1.0, 10.0, "sqrt"), "mode"),
])
def test_bad_range_is_a_clear_error(args, message):
    with pytest.raises(ValueError, match=message):
        check_depth_range(*args)
