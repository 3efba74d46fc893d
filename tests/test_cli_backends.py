"""`predict --model` with every backend: the depth is transformers' own, the camera comes from the photo, and the
summary names the model's licence."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from metricgold_engine.cli import main

DIAG_35 = math.hypot(36.0, 24.0)


def write_photo(path, h=36, w=52, seed=0, focal_35mm=None):
    image = Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))
    exif = Image.Exif()
    if focal_35mm is not None:
        exif[0x8769] = {0xA405: focal_35mm}
    image.save(path, exif=exif, quality=95)
    return path


def transformers_reference(folder, photo_path, focal_px=None):
    """transformers' depth for the photo (Depth Pro with a known focal: its field of view set from that focal, which
    is how transformers' post-processing takes the focal), and transformers' focal length."""
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    image = Image.open(photo_path).convert("RGB")
    processor = AutoImageProcessor.from_pretrained(folder)
    model = AutoModelForDepthEstimation.from_pretrained(folder).eval()
    with torch.no_grad():
        outputs = model(**processor(images=image, return_tensors="pt"))
    size = [(image.height, image.width)]
    result = processor.post_process_depth_estimation(outputs, target_sizes=size)[0]
    return result["predicted_depth"].numpy(), result.get("focal_length")


def max_rel(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) / np.asarray(b, np.float64) - 1)))


def test_depth_pro_without_exif_uses_its_own_focal(tiny_depth_models, tmp_path, capsys):
    photo = write_photo(tmp_path / "plain.jpg")
    out = tmp_path / "out"
    rc = main(["predict", str(photo), "--model", str(tiny_depth_models["depth_pro"]), "--out", str(out),
               "--formats", "npy"])
    assert rc == 0
    depth, focal = transformers_reference(tiny_depth_models["depth_pro"], photo)
    assert max_rel(np.load(out / "plain_depth.npy"), depth) < 1e-4
    camera = json.loads((out / "plain_camera.json").read_text())
    assert camera["focal_source"] == "model"
    assert camera["fx"] == pytest.approx(float(focal), rel=1e-5) and camera["fy"] == camera["fx"]
    assert (camera["width"], camera["height"], camera["cx"], camera["cy"]) == (52, 36, 25.5, 17.5)
    err = capsys.readouterr().err
    assert "(depth_pro); licence: unknown" in err


def test_depth_pro_uses_the_exif_focal_for_depth_and_camera(tiny_depth_models, tmp_path):
    photo = write_photo(tmp_path / "phone.jpg", focal_35mm=26)
    out = tmp_path / "out"
    assert main(["predict", str(photo), "--model", str(tiny_depth_models["depth_pro"]), "--out", str(out),
                 "--formats", "npy"]) == 0
    f_exif = 26 * math.hypot(52, 36) / DIAG_35  # hand formula: the diagonal sees what 43.27 mm does at 26 mm
    camera = json.loads((out / "phone_camera.json").read_text())
    assert camera["focal_source"] == "exif" and camera["fx"] == pytest.approx(f_exif)
    assert camera["focal_35mm"] == pytest.approx(26.0)
    # transformers' Depth Pro depth is proportional to the focal length: scaled from its own estimate to EXIF's
    depth, f_model = transformers_reference(tiny_depth_models["depth_pro"], photo)
    expected = depth.astype(np.float64) * f_exif / float(f_model)
    assert max_rel(np.load(out / "phone_depth.npy"), expected) < 1e-4
    # ... and the user's value wins over EXIF, for the depth too
    assert main(["predict", str(photo), "--model", str(tiny_depth_models["depth_pro"]), "--out", str(out),
                 "--formats", "npy", "--fov", "60"]) == 0
    f_user = 52 / (2 * math.tan(math.radians(30)))
    camera = json.loads((out / "phone_camera.json").read_text())
    assert camera["focal_source"] == "user" and camera["fx"] == pytest.approx(f_user)
    assert max_rel(np.load(out / "phone_depth.npy"), depth.astype(np.float64) * f_user / float(f_model)) < 1e-4


@pytest.mark.parametrize("kind", ["depth_anything", "zoedepth"])
def test_other_kinds_through_the_cli(tiny_depth_models, tmp_path, kind):
    photo = write_photo(tmp_path / "room.jpg", focal_35mm=30)
    out = tmp_path / "out"
    assert main(["predict", str(photo), "--model", str(tiny_depth_models[kind]), "--out", str(out),
                 "--formats", "npy,png16", "--focal-mm", "35"]) == 0
    from transformers import pipeline

    reference = pipeline("depth-estimation", model=str(tiny_depth_models[kind]), device="cpu")(
        Image.open(photo))["predicted_depth"].numpy()
    assert max_rel(np.load(out / "room_depth.npy"), reference) < 1e-4
    camera = json.loads((out / "room_camera.json").read_text())
    assert camera["focal_source"] == "user" and camera["fx"] == pytest.approx(35 * math.hypot(52, 36) / DIAG_35)


def test_metricgold_flags_refused_for_other_models(tiny_depth_models, tmp_path, capsys):
    photo = write_photo(tmp_path / "a.jpg")
    rc = main(["predict", str(photo), "--model", str(tiny_depth_models["zoedepth"]), "--out", str(tmp_path / "o"),
               "--steps", "3", "--uncertainty"])
    assert rc == 2
    assert "--steps, --uncertainty: not an option of this model (its options: --flip-average)" in capsys.readouterr().err
    rc = main(["predict", str(photo), "--model", str(tiny_depth_models["zoedepth"]), "--out", str(tmp_path / "o"),
               "--flip-average", "--formats", "npy"])
    assert rc == 0


def test_metricgold_camera_and_licence(tiny_checkpoint, tmp_path, capsys):
    photo = write_photo(tmp_path / "room.jpg", focal_35mm=24)
    out = tmp_path / "out"
    assert main(["predict", str(photo), "--model", str(tiny_checkpoint), "--out", str(out), "--steps", "1",
                 "--ensemble", "1", "--formats", "npy"]) == 0
    camera = json.loads((out / "room_camera.json").read_text())
    assert camera["focal_source"] == "exif" and camera["fx"] == pytest.approx(24 * math.hypot(52, 36) / DIAG_35)
    photo2 = write_photo(tmp_path / "plain.png")
    assert main(["predict", str(photo2), "--model", str(tiny_checkpoint), "--out", str(out), "--steps", "1",
                 "--ensemble", "1", "--formats", "npy", "--flip-average"]) == 2
    assert main(["predict", str(photo2), "--model", str(tiny_checkpoint), "--out", str(out), "--steps", "1",
                 "--ensemble", "1", "--formats", "npy"]) == 0
    camera = json.loads((out / "plain_camera.json").read_text())
    assert camera["focal_source"] == "default"
    assert "(metricgold); licence: unknown" in capsys.readouterr().err


def test_demo_model_summary_names_its_licence(tmp_path, capsys):
    photo = write_photo(tmp_path / "room.png")
    assert main(["predict", str(photo), "--out", str(tmp_path / "out"), "--formats", "npy"]) == 0
    err = capsys.readouterr().err
    assert "model: demo model (metricgold); licence: GPL-3.0-or-later" in err and "DEMO model" in err


def test_offline_hub_id_one_line_no_network(tmp_path):
    """A real process with HF_HUB_OFFLINE=1 and an empty cache: exit 2 and one line naming the id and what to do."""
    photo = write_photo(tmp_path / "a.png")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    proc = subprocess.run([sys.executable, "-m", "metricgold_engine", "predict", str(photo), "--model",
                           "apple/DepthPro-hf", "--out", str(tmp_path / "out")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert lines == [lines[0]] and lines[0].startswith("error: apple/DepthPro-hf: not a local folder")
    assert "HF_HUB_OFFLINE" in lines[0] and "local model folder" in lines[0]
    assert not (tmp_path / "hf" / "hub" / "models--apple--DepthPro-hf" / "blobs").exists()
