"""The built-in demo model (metricgold_engine/demo_model): what the README and issue promise about it.

It is small (at most 20 MB of safetensors), safetensors only, the default of the CLI and the worker, labelled as a
demo model, and it beats the training set's mean depth on the sample photo (held out: another generator seed).
"""

import json
from pathlib import Path

import numpy as np
import pytest

from metricgold_engine.cli import main
from metricgold_engine.core.depth_io import read_depth
from metricgold_engine.metrics import compute_depth_metrics
from metricgold_engine.core.demo_model import DEMO_MODEL_NOTE, DEMO_MODEL_PATH
from metricgold_engine.checkpoint import load_pipeline

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "assets" / "demo_room.png"

@pytest.fixture(scope="module")
def report() -> dict:
    return json.loads((DEMO_MODEL_PATH / "report.json").read_text())


def test_demo_model_is_small_and_safetensors_only():
    weights = sorted(DEMO_MODEL_PATH.rglob("*.safetensors"))
    assert {p.parent.name for p in weights} == {"unet", "vae", "depth_vae", "text_embedding"}
    assert sum(p.stat().st_size for p in weights) <= 20 * 2**20
    pickles = [p for p in DEMO_MODEL_PATH.rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl")]
    assert pickles == []


def test_demo_model_defaults_and_report_agree(report):
    pipe = load_pipeline(None, device="cpu")
    c = pipe.config
    # the shipped defaults are the ones the report was measured with
    assert report["settings"] == {"num_inference_steps": c.default_num_inference_steps,
                                  "ensemble_size": c.default_ensemble_size,
                                  "processing_resolution": c.default_processing_resolution}
    assert (c.depth_min, c.depth_max) == (0.1, 100.0)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    # what REPORT.md shows is report.json, and the model beats the constant baseline on held-out frames
    md = (DEMO_MODEL_PATH / "REPORT.md").read_text()
    assert f"| model | {report['model_metrics']['abs_rel']:.4f} |" in md
    assert report["model_metrics"]["abs_rel"] < report["baseline_metrics"]["abs_rel"]
    assert report["model_metrics"]["delta1"] > report["baseline_metrics"]["delta1"]
    # ... and it uses the image: fed another frame's image, it scores worse
    assert report["model_metrics"]["delta1"] > report["model_metrics_with_the_next_frames_image"]["delta1"]


def test_cli_uses_and_labels_the_demo_model_and_beats_the_baseline_on_the_sample(report, tmp_path, capsys):
    rc = main(["predict", str(SAMPLE), "--out", str(tmp_path)])
    assert rc == 0
    assert DEMO_MODEL_NOTE in capsys.readouterr().err
    depth = read_depth(tmp_path / "demo_room_depth.npy")
    truth = read_depth(REPO / "assets" / "demo_room_depth.npy")
    assert depth.shape == truth.shape and np.isfinite(depth).all()
    model = compute_depth_metrics(depth, truth)
    baseline = compute_depth_metrics(np.full_like(truth, report["baseline_train_mean_depth_m"]), truth)
    assert model["abs_rel"] < baseline["abs_rel"] and model["delta1"] > baseline["delta1"], (model, baseline)
