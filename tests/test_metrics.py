"""metricgold_engine.metrics against hand-computed values and an independent pure-Python reference."""

from __future__ import annotations

import math

import numpy as np
import pytest

from metricgold_engine.metrics import (
    METRIC_NAMES,
    align_depth_least_squares,
    compute_depth_metrics,
    eval_crop_mask,
    format_metrics_markdown,
    kb_crop_box,
    mean_metrics,
)


def _reference_metrics(d: list[float], g: list[float]) -> dict[str, float]:
    """Pixel-by-pixel loops over Python floats: shares no code with the module under test."""
    n = len(d)
    e = [math.log(a) - math.log(b) for a, b in zip(d, g)]
    ratio = [max(a / b, b / a) for a, b in zip(d, g)]
    mean_e = sum(e) / n
    mean_e2 = sum(x * x for x in e) / n
    return {
        "abs_rel": sum(abs(a - b) / b for a, b in zip(d, g)) / n,
        "sq_rel": sum((a - b) ** 2 / b for a, b in zip(d, g)) / n,
        "rmse": math.sqrt(sum((a - b) ** 2 for a, b in zip(d, g)) / n),
        "rmse_log": math.sqrt(mean_e2),
        "log10": sum(abs(math.log10(a) - math.log10(b)) for a, b in zip(d, g)) / n,
        "delta1": sum(r < 1.25 for r in ratio) / n,
        "delta2": sum(r < 1.25**2 for r in ratio) / n,
        "delta3": sum(r < 1.25**3 for r in ratio) / n,
        "silog": 100.0 * math.sqrt(max(mean_e2 - mean_e**2, 0.0)),
    }


def test_published_test_vector_reproduces_exactly() -> None:
    g = np.array([[1.0, 2.0, 4.0, 8.0]])
    d = np.array([[1.1, 1.8, 5.0, 8.0]])
    m = compute_depth_metrics(d, g)
    expected = {
        "delta1": 0.75,
        "delta2": 1.0,
        "delta3": 1.0,
        "abs_rel": 0.1125,
        "sq_rel": 0.07,
        "rmse": 0.5123475383,
        "rmse_log": 0.1322666938,
        "log10": 0.0460150472,
        "silog": 12.1063757488,
    }
    assert set(m) == set(METRIC_NAMES)
    for k, v in expected.items():
        assert m[k] == pytest.approx(v, abs=1e-10), k


def test_hand_computed_two_pixels() -> None:
    # g = [2, 4], d = [4, 2]: |d-g|/g = [1, 0.5]; (d-g)^2/g = [2, 1]; e = [ln2, -ln2] -> mean 0.
    m = compute_depth_metrics(np.array([[4.0, 2.0]]), np.array([[2.0, 4.0]]))
    assert m["abs_rel"] == pytest.approx(0.75)
    assert m["sq_rel"] == pytest.approx(1.5)
    assert m["rmse"] == pytest.approx(2.0)
    assert m["rmse_log"] == pytest.approx(math.log(2))
    assert m["log10"] == pytest.approx(math.log10(2))
    assert m["delta1"] == 0.0 and m["delta2"] == 0.0 and m["delta3"] == 0.0  # ratio 2 > 1.25^3 = 1.953
    assert m["silog"] == pytest.approx(100 * math.log(2))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_inputs_match_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    g = rng.uniform(0.5, 20.0, size=(7, 9))
    d = g * np.exp(rng.normal(0.0, 0.3, size=g.shape))
    mask = rng.random(g.shape) > 0.3
    m = compute_depth_metrics(d.astype(np.float32), g.astype(np.float32), mask)
    ref = _reference_metrics(
        [float(x) for x in d.astype(np.float32)[mask]], [float(x) for x in g.astype(np.float32)[mask]]
    )
    for k in METRIC_NAMES:
        assert m[k] == pytest.approx(ref[k], rel=1e-9, abs=1e-12), k


def test_perfect_and_scaled_predictions() -> None:
    g = np.linspace(1.0, 10.0, 30).reshape(5, 6)
    perfect = compute_depth_metrics(g, g)
    assert perfect["abs_rel"] == 0.0 and perfect["rmse"] == 0.0 and perfect["delta1"] == 1.0
    assert perfect["silog"] == 0.0
    scaled = compute_depth_metrics(1.1 * g, g)
    assert scaled["abs_rel"] == pytest.approx(0.1)
    assert scaled["rmse_log"] == pytest.approx(math.log(1.1))
    # A global scale error is invisible to the scale-invariant log error.
    assert scaled["silog"] == pytest.approx(0.0, abs=1e-5)


def test_invalid_ground_truth_is_ignored() -> None:
    g = np.array([[1.0, 0.0, np.nan, 2.0]])
    d = np.array([[1.0, 5.0, 5.0, 2.0]])
    m = compute_depth_metrics(d, g)
    assert m["abs_rel"] == 0.0 and m["delta1"] == 1.0


def test_errors_are_clear() -> None:
    g = np.ones((2, 2))
    with pytest.raises(ValueError, match="no valid"):
        compute_depth_metrics(g, g, np.zeros((2, 2), bool))
    with pytest.raises(ValueError, match="shape"):
        compute_depth_metrics(np.ones((2, 3)), g)
    with pytest.raises(ValueError, match="non-positive"):
        compute_depth_metrics(np.array([[0.0, 1.0], [1.0, 1.0]]), g)


def test_mean_metrics_averages_over_images_not_pixels() -> None:
    a = compute_depth_metrics(np.full((1, 1), 2.0), np.full((1, 1), 1.0))  # abs_rel 1 from one pixel
    b = compute_depth_metrics(np.ones((10, 10)), np.ones((10, 10)))  # abs_rel 0 from 100 pixels
    assert mean_metrics([a, b])["abs_rel"] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        mean_metrics([])


def test_affine_alignment_recovers_scale_and_shift() -> None:
    rng = np.random.default_rng(3)
    g = rng.uniform(1, 5, size=(6, 6))
    pred = (g - 0.7) / 2.5  # gt = 2.5 * pred + 0.7
    mask = np.ones_like(g, bool)
    mask[0, 0] = False
    pred[0, 0] = 1e6  # outside the mask: must not affect the fit
    aligned, s, t = align_depth_least_squares(pred, g, mask)
    assert s == pytest.approx(2.5) and t == pytest.approx(0.7)
    np.testing.assert_allclose(aligned[mask], g[mask], rtol=1e-10)


def test_affine_alignment_matches_normal_equations() -> None:
    rng = np.random.default_rng(4)
    p = rng.uniform(0, 1, 50)
    g = rng.uniform(1, 3, 50)
    # Closed form of the 1-D linear regression.
    s_ref = np.sum((p - p.mean()) * (g - g.mean())) / np.sum((p - p.mean()) ** 2)
    t_ref = g.mean() - s_ref * p.mean()
    _, s, t = align_depth_least_squares(p.reshape(5, 10), g.reshape(5, 10))
    assert s == pytest.approx(s_ref, rel=1e-10) and t == pytest.approx(t_ref, rel=1e-10)


def test_crop_masks() -> None:
    nyu = eval_crop_mask((480, 640), "nyu_eigen")
    rows, cols = np.nonzero(nyu)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (45, 470, 41, 600)
    garg = eval_crop_mask((352, 1216), "garg")
    rows, cols = np.nonzero(garg)
    # int(0.40810811*352)=143, int(0.99189189*352)=349, int(0.03594771*1216)=43, int(0.96405229*1216)=1172
    assert (rows.min(), rows.max() + 1, cols.min(), cols.max() + 1) == (143, 349, 43, 1172)
    eigen = eval_crop_mask((352, 1216), "eigen")
    rows, _ = np.nonzero(eigen)
    assert (rows.min(), rows.max() + 1) == (117, 321)  # int(0.3324324*352)=117, int(0.91351351*352)=321
    assert eval_crop_mask((3, 4), None).all()
    with pytest.raises(ValueError, match="unknown"):
        eval_crop_mask((3, 4), "bogus")


def test_kb_crop_box() -> None:
    assert kb_crop_box(375, 1242) == (23, 13, 375, 1229)
    with pytest.raises(ValueError):
        kb_crop_box(300, 1242)


def test_markdown_table_has_every_metric() -> None:
    m = compute_depth_metrics(np.array([[1.1, 1.8, 5.0, 8.0]]), np.array([[1.0, 2.0, 4.0, 8.0]]))
    md = format_metrics_markdown({"metric": m}, title="t")
    assert "| metric | 0.1125 | 0.0700 |" in md
    for n in METRIC_NAMES:
        assert n in md
