"""Fast mode and the expected-time estimate of the add-on (pure module, no Blender needed)."""

import json

import pytest

from metricgold_blender import timing


def test_fast_checkpoint_defaults_are_kept():
    demo = {"default_num_inference_steps": 1, "default_timestep_spacing": "trailing", "default_ensemble_size": 4}
    options = {"num_inference_steps": None, "ensemble_size": None}
    assert timing.apply_fast_mode(options, demo) == options
    assert timing.apply_fast_mode(options, {}) == options  # built-in model
    assert timing.apply_fast_mode(options, {"_class_name": "DepthProModel"}) == options  # not a diffusion model


def test_paper_defaults_become_fast_mode_unless_user_set():
    paper = {"default_num_inference_steps": 50, "default_timestep_spacing": "leading", "default_ensemble_size": 10}
    out = timing.apply_fast_mode({"num_inference_steps": None, "ensemble_size": None}, paper)
    assert out == {"num_inference_steps": 4, "ensemble_size": 1, "timestep_spacing": "trailing"}
    user_set = {"num_inference_steps": 20, "ensemble_size": 3}
    out = timing.apply_fast_mode(user_set, {**paper, "fast_num_inference_steps": 2})
    assert out["num_inference_steps"] == 20 and out["ensemble_size"] == 3
    out = timing.apply_fast_mode({"num_inference_steps": None}, {**paper, "fast_num_inference_steps": 2})
    assert out["num_inference_steps"] == 2


def test_read_model_defaults(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"default_num_inference_steps": 3}))
    assert timing.read_model_defaults(str(tmp_path)) == {"default_num_inference_steps": 3}
    assert timing.read_model_defaults(str(tmp_path / "missing")) == {}
    assert timing.read_model_defaults(None) == {}


def test_expected_seconds_fits_a_line():
    # seconds = 2 + 1e-5 * work, exactly
    runs = [[w, 2 + 1e-5 * w] for w in (1e5, 4e5, 1e6)]
    assert timing.expected_seconds(runs, 2e6) == pytest.approx(22.0)
    assert timing.expected_seconds([[1e5, 3.0]], 2e5) == pytest.approx(6.0)  # one size: proportional
    assert timing.expected_seconds([], 1e5) is None


def test_remember_and_expected_text(tmp_path):
    path = tmp_path / "sub" / "timing.json"
    opts = {"num_inference_steps": 2, "ensemble_size": 1, "processing_resolution": 768}
    assert "first run" in timing.expected_text(path, None, "auto", opts)
    settings = {"num_inference_steps": 1, "ensemble_size": 1, "padded_size": [576, 768], "device": "cpu"}
    timing.remember_run(path, None, "auto", settings, 12.0)
    assert timing.expected_text(path, None, "auto", opts) == "Expected time: about 24 s"
    # left to the model: its defaults, else the last run's work
    assert timing.expected_text(path, None, "auto", {"num_inference_steps": None}) == "Expected time: about 12 s"
    defaults = {"default_num_inference_steps": 4, "default_ensemble_size": 1, "default_processing_resolution": 768}
    assert timing.expected_text(path, None, "auto", {}, defaults) == "Expected time: about 48 s"
    assert "first run" in timing.expected_text(path, None, "cuda", opts)  # per device
    assert [p.name for p in path.parent.iterdir()] == ["timing.json"]  # no temp files left
    for _ in range(30):
        timing.remember_run(path, None, "auto", settings, 12.0)
    assert len(timing.load_runs(path)["<built-in>|auto"]) == timing.MAX_REMEMBERED
