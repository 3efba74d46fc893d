"""The worker serves any backend: `hello` names the model's kind and licence, `predict` returns the camera from the
photo and the depth transformers gives. Driven through the torch-free client, worker in a real subprocess."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metricgold_engine.core.client import WorkerClient
from metricgold_engine.core.errors import CheckpointError

REPO_ROOT = Path(__file__).resolve().parents[1]
ENV = {"PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
DIAG_35 = math.hypot(36.0, 24.0)


def write_photo(path, h=30, w=40, seed=0, focal_35mm=None):
    image = Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))
    exif = Image.Exif()
    if focal_35mm is not None:
        exif[0x8769] = {0xA405: focal_35mm}
    image.save(path, exif=exif, quality=95)
    return path


def transformers_depth_pro(folder, photo):
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    image = Image.open(photo).convert("RGB")
    processor = AutoImageProcessor.from_pretrained(folder)
    model = AutoModelForDepthEstimation.from_pretrained(folder).eval()
    with torch.no_grad():
        outputs = model(**processor(images=image, return_tensors="pt"))
    result = processor.post_process_depth_estimation(outputs, target_sizes=[(image.height, image.width)])[0]
    return result["predicted_depth"].numpy().astype(np.float64), float(result["focal_length"])


def test_worker_serves_depth_pro_and_metricgold(tiny_checkpoint, tmp_path):
    from metricgold_engine.backends.tiny import make_tiny_depth_model

    folder = make_tiny_depth_model(tmp_path / "depth-pro", "depth_pro", licence="apple-amlr")
    phone = write_photo(tmp_path / "phone.jpg", focal_35mm=26)
    plain = write_photo(tmp_path / "plain.jpg", seed=1)
    with WorkerClient(sys.executable, model=folder, device="cpu", env=ENV) as worker:
        info = worker.hello()
        assert info["model"]["kind"] == "depth_pro" and info["model"]["licence"] == "apple-amlr"
        assert info["model_loaded"] and not info["demo_model"] and info["dtype"] == "float32"

        events = []
        result = worker.predict(phone, tmp_path / "out", on_progress=events.append, num_inference_steps=3)
        depth, f_model = transformers_depth_pro(folder, phone)
        f_exif = 26 * math.hypot(40, 30) / DIAG_35
        camera = result.get_camera()
        assert camera.focal_source == "exif" and camera.intrinsics.fx == pytest.approx(f_exif)
        assert (camera.intrinsics.width, camera.intrinsics.height) == (40, 30)
        # Depth Pro's depth with EXIF's focal: transformers' depth scaled by f_exif / f_model
        assert np.max(np.abs(result.depth / (depth * f_exif / f_model) - 1)) < 1e-4
        assert result.settings["focal_px_estimated"] == pytest.approx(f_model, rel=1e-5)
        assert result.ignored_options == ("num_inference_steps",)  # MetricGold's option: listed, not used
        assert result.model["kind"] == "depth_pro"
        assert ("predict", 1, 1) in [(e.stage, e.step, e.total) for e in events]

        result = worker.predict(plain, tmp_path / "out")
        depth, f_model = transformers_depth_pro(folder, plain)
        assert result.camera["focal_source"] == "model" and result.camera["fx"] == pytest.approx(f_model, rel=1e-5)
        assert np.max(np.abs(result.depth / depth - 1)) < 1e-4
        result = worker.predict(plain, tmp_path / "out", fov_deg=70.0)
        assert result.camera["focal_source"] == "user"
        assert result.camera["fx"] == pytest.approx(20 / math.tan(math.radians(35)))

        # Switch to a MetricGold checkpoint in the same worker: its options work as before
        info = worker.load_model(tiny_checkpoint)
        assert info["model"]["kind"] == "metricgold" and info["model"]["licence"] is None
        events.clear()
        result = worker.predict(plain, tmp_path / "out2", on_progress=events.append, num_inference_steps=2,
                                ensemble_size=2, seed=5, output_uncertainty=True)
        assert result.settings["num_inference_steps"] == 2 and result.uncertainty is not None
        assert result.ignored_options == () and result.camera["focal_source"] == "default"
        assert [(e.step, e.total) for e in events if e.stage == "denoise"] == [(1, 2), (2, 2)]


def test_worker_load_model_offline_hub_id(tmp_path):
    env = {**ENV, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    with WorkerClient(sys.executable, device="cpu", env=env) as worker:
        with pytest.raises(CheckpointError) as caught:
            worker.load_model("acme/not-cached")
        message = caught.value.message
        assert "\n" not in message and "acme/not-cached" in message and "HF_HUB_OFFLINE" in message
        assert worker.hello()["model_loaded"] is False
