"""Model backends: every kind loads from a folder, gives what transformers itself gives, and tells its licence.

The references are transformers' own calls on the same folder and photo (and, independently, transformers'
``pipeline("depth-estimation")``), never our code.
"""

from __future__ import annotations

import json
import math
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metricgold_engine.backends import (
    DepthEstimator,
    ModelLoadError,
    detect_kind,
    load_estimator,
    read_licence,
)
from metricgold_engine.backends.metricgold import MetricGoldEstimator
from metricgold_engine.backends.transformers_models import TransformersDepthEstimator

H, W = 45, 70
METRIC_KINDS = ("depth_pro", "depth_anything", "zoedepth")


def photo(seed: int = 0, h: int = H, w: int = W) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def transformers_depth(folder: Path, image: Image.Image, **processor_kwargs):
    """What transformers gives, called as its documentation does; ZoeDepth takes the photo's size as
    ``source_sizes`` (to remove its padding), as transformers' depth-estimation pipeline passes it."""
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    processor = AutoImageProcessor.from_pretrained(folder, **processor_kwargs)
    model = AutoModelForDepthEstimation.from_pretrained(folder).eval()
    with torch.no_grad():
        outputs = model(**processor(images=image, return_tensors="pt"))
    size = [(image.height, image.width)]
    if model.config.model_type == "zoedepth":
        result = processor.post_process_depth_estimation(outputs, source_sizes=size)[0]
    else:
        result = processor.post_process_depth_estimation(outputs, target_sizes=size)[0]
    return result, outputs


def max_rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b) / np.abs(b)))


@pytest.fixture(scope="module")
def estimators(tiny_depth_models):
    return {kind: load_estimator(tiny_depth_models[kind], device="cpu") for kind in METRIC_KINDS}


# ------------------------------------------------------------------------------------ equality with transformers


@pytest.mark.parametrize("kind", METRIC_KINDS)
def test_default_depth_equals_transformers(tiny_depth_models, estimators, kind):
    image = photo(1)
    est = estimators[kind]
    assert isinstance(est, TransformersDepthEstimator) and est.info().kind == kind
    prediction = est.predict(image)
    reference, _ = transformers_depth(tiny_depth_models[kind], image)
    ref = reference["predicted_depth"].numpy()
    assert prediction.depth.dtype == np.float32 and prediction.depth.shape == (H, W)
    assert np.all(prediction.depth > 0)
    assert max_rel(prediction.depth, ref) < 1e-4
    # The tiny models' depth varies with the photo (else the comparison above could not fail)
    assert ref.max() / ref.min() > 1.2
    assert max_rel(est.predict(photo(2)).depth, ref) > 1e-2


@pytest.mark.parametrize("kind", METRIC_KINDS)
def test_depth_equals_transformers_pipeline(tiny_depth_models, estimators, kind):
    """transformers' own pipeline, a second and independent call path, agrees too."""
    from transformers import pipeline

    image = photo(3)
    pipe = pipeline("depth-estimation", model=str(tiny_depth_models[kind]), device="cpu")
    ref = pipe(image)["predicted_depth"].numpy()
    assert max_rel(estimators[kind].predict(image).depth, ref) < 1e-4


@pytest.mark.parametrize("kind", ["depth_anything", "zoedepth"])
def test_other_image_processor_would_be_caught(tiny_depth_models, estimators, kind):
    """The PIL processor differs from AutoImageProcessor's default by more than the 1e-4 tolerance: using the
    wrong one would fail the equality test."""
    image = photo(1)
    pil, _ = transformers_depth(tiny_depth_models[kind], image, backend="pil")
    assert max_rel(estimators[kind].predict(image).depth, pil["predicted_depth"].numpy()) > 1e-4


def test_exif_orientation_is_applied_before_predicting(tmp_path, estimators):
    upright = photo(4, 40, 60)
    rotated = upright.transpose(Image.Transpose.ROTATE_90)  # stored sideways, EXIF says "rotate back"
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation 6: the stored image is rotated 90 degrees clockwise for display
    rotated.save(tmp_path / "sideways.jpg", exif=exif, quality=100)
    assert rotated.size == (40, 60)  # stored 40 wide, 60 high
    depth = estimators["depth_anything"].predict(tmp_path / "sideways.jpg").depth
    assert depth.shape == (40, 60)  # the displayed (upright) photo: 60 wide, 40 high


# ---------------------------------------------------------------------------------------- Depth Pro's focal


def test_depth_pro_focal_estimated_as_transformers_says(tiny_depth_models, estimators):
    image = photo(5)
    prediction = estimators["depth_pro"].predict(image)
    reference, outputs = transformers_depth(tiny_depth_models["depth_pro"], image)
    fov = float(outputs.field_of_view[0])
    assert prediction.focal_px == pytest.approx(float(reference["focal_length"]), rel=1e-5)
    # Hand formula: the field of view spans the photo's width
    assert prediction.focal_px == pytest.approx(0.5 * W / math.tan(math.radians(fov) / 2), rel=1e-5)
    assert prediction.settings["focal_px_used"] == pytest.approx(prediction.focal_px)


def test_depth_pro_uses_a_known_focal(estimators):
    """Depth Pro's metric depth is its canonical inverse depth scaled by width / focal; a known focal f replaces the
    estimate, so the depth scales by f / f_estimated everywhere (and the estimate is still reported)."""
    image = photo(5)
    est = estimators["depth_pro"]
    default = est.predict(image)
    known = 1.7 * default.focal_px
    given = est.predict(image, focal_px=known)
    ratio = given.depth.astype(np.float64) / default.depth
    assert np.allclose(ratio, known / default.focal_px, rtol=1e-4)
    assert given.focal_px == pytest.approx(default.focal_px)
    assert given.settings["focal_px_used"] == pytest.approx(known)
    with pytest.raises(ValueError, match="focal_px"):
        est.predict(image, focal_px=-3.0)


def test_other_kinds_ignore_focal(estimators):
    image = photo(6)
    for kind in ("depth_anything", "zoedepth"):
        a = estimators[kind].predict(image)
        b = estimators[kind].predict(image, focal_px=10.0)
        assert a.focal_px is None and np.array_equal(a.depth, b.depth)


# ------------------------------------------------------------------------------------------------- options


def test_unknown_options_refused(estimators):
    with pytest.raises(ValueError, match="unknown option.*ensemble_size"):
        estimators["depth_pro"].predict(photo(), ensemble_size=3)


def test_zoedepth_flip_average_is_transformers_outputs_flipped(tiny_depth_models, estimators):
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    image = photo(7)
    folder = tiny_depth_models["zoedepth"]
    processor = AutoImageProcessor.from_pretrained(folder)
    model = AutoModelForDepthEstimation.from_pretrained(folder).eval()
    inputs = processor(images=image, return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs)
        flipped = model(pixel_values=torch.flip(inputs["pixel_values"], dims=[3]))
    ref = processor.post_process_depth_estimation(outputs, source_sizes=[(H, W)], outputs_flipped=flipped)[0]
    prediction = estimators["zoedepth"].predict(image, flip_average=True)
    assert max_rel(prediction.depth, ref["predicted_depth"].numpy()) < 1e-4
    assert prediction.settings["flip_average"] is True
    assert max_rel(prediction.depth, estimators["zoedepth"].predict(image).depth) > 1e-3


def test_progress_reported(estimators):
    events = []
    estimators["depth_anything"].predict(photo(), progress=lambda *e: events.append(e))
    assert events == [("predict", 0, 1), ("predict", 1, 1)]


# ---------------------------------------------------------------------------------------------- MetricGold


def test_metricgold_estimator_equals_its_pipeline(tiny_checkpoint, tiny_pipeline):
    est = load_estimator(tiny_checkpoint, device="cpu", dtype="float32")
    assert isinstance(est, MetricGoldEstimator) and isinstance(est, DepthEstimator)
    est.pipeline.set_progress_bar_config(disable=True)
    image = photo(8, 24, 40)
    options = dict(num_inference_steps=2, ensemble_size=3, seed=4, output_uncertainty=True)
    events = []
    prediction = est.predict(image, progress=lambda *e: events.append(e), **options)
    reference = tiny_pipeline(image, **options)
    np.testing.assert_array_equal(prediction.depth, reference.depth)
    np.testing.assert_array_equal(prediction.uncertainty, reference.uncertainty)
    assert prediction.settings == reference.settings and prediction.focal_px is None
    assert events == [("denoise", 1, 2), ("denoise", 2, 2)]
    info = est.info()
    assert info.kind == "metricgold" and not info.demo_model and info.licence is None
    assert info.default_options["num_inference_steps"] == 4  # the checkpoint's own default
    with pytest.raises(ValueError, match="unknown option.*flip_average"):
        est.predict(image, flip_average=True)


def test_no_model_is_the_demo_model():
    est = load_estimator(None, device="cpu")
    info = est.info()
    assert info.kind == "metricgold" and info.demo_model and info.licence == "GPL-3.0-or-later"
    assert json.loads(json.dumps(info.as_json()))["demo_model"] is True


# ----------------------------------------------------------------------------------------- kind detection


def test_kind_detection(tiny_depth_models, tiny_checkpoint):
    for kind in METRIC_KINDS:
        assert detect_kind(tiny_depth_models[kind]) == kind
    assert detect_kind(tiny_checkpoint) == "metricgold"


def test_relative_depth_anything_refused(tiny_depth_models):
    with pytest.raises(ModelLoadError, match="relative depth.*depth_estimation_type 'relative'.*Metric"):
        load_estimator(tiny_depth_models["depth_anything_relative"])


def test_unusable_folders_refused_clearly(tmp_path, tiny_checkpoint):
    marigold = tmp_path / "marigold"
    marigold.mkdir()
    (marigold / "model_index.json").write_text(json.dumps({"_class_name": "MarigoldDepthPipeline"}))
    with pytest.raises(ModelLoadError, match=r"marigold: Marigold depth is affine-invariant \(relative\)"):
        load_estimator(marigold)
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelLoadError, match="model_type 'bert' is not a metric depth model"):
        detect_kind(bert)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="empty: neither model_index.json"):
        detect_kind(tmp_path / "empty")
    with pytest.raises(ModelLoadError, match="nowhere: model folder not found"):
        load_estimator(tmp_path / "nowhere")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="config.json: not valid JSON"):
        detect_kind(tmp_path / "broken")


def test_pickled_weights_refused(tiny_depth_models, tmp_path):
    folder = tmp_path / "pickled"
    shutil.copytree(tiny_depth_models["zoedepth"], folder)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="no .safetensors weights.*convert them"):
        load_estimator(folder)


# -------------------------------------------------------------------------------------------------- licence


def test_licence_from_model_card(tiny_depth_models, tmp_path):
    from metricgold_engine.backends.tiny import make_tiny_depth_model

    folder = make_tiny_depth_model(tmp_path / "licensed", "depth_anything", licence="cc-by-nc-4.0")
    assert read_licence(folder) == "cc-by-nc-4.0"
    est = load_estimator(folder)
    assert est.info().licence == "cc-by-nc-4.0"
    assert est.info().as_json()["licence"] == "cc-by-nc-4.0"
    assert read_licence(tiny_depth_models["depth_pro"]) is None  # no model card
    (folder / "README.md").write_text("---\nlicense: other\nlicense_name: apple-amlr\n---\n# card\n")
    assert read_licence(folder) == "apple-amlr"
    (folder / "README.md").write_text("# a card without metadata\n")
    assert read_licence(folder) is None
    (folder / "README.md").write_text("---\nlicense: [unclosed\n---\n")
    assert read_licence(folder) is None


# ------------------------------------------------------------------------------------------------- the Hub


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test at once (instead of hanging on a closed network)."""
    def refuse(*args, **kwargs):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_offline_hub_id_gives_one_clear_line(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.chdir(tmp_path)  # "someorg/nomodel" is not a local path here
    with pytest.raises(ModelLoadError) as caught:
        load_estimator("someorg/nomodel")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("someorg/nomodel: ") and "HF_HUB_OFFLINE" in message and "local model folder" in message


def test_hub_id_fetches_configs_first_then_safetensors(tiny_depth_models, tmp_path, monkeypatch, no_network):
    """The download is huggingface_hub's snapshot_download (stood in for here: no network in tests): configs and the
    model card first, then only safetensors weights, and a relative model is refused before any weights."""
    calls = []
    served = {"acme/metric": tiny_depth_models["depth_anything"],
              "acme/relative": tiny_depth_models["depth_anything_relative"]}

    def fake_snapshot_download(repo_id, allow_patterns=None, local_files_only=False, **kwargs):
        calls.append((repo_id, tuple(allow_patterns), local_files_only))
        return str(served[repo_id])

    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_snapshot_download)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.chdir(tmp_path)
    est = load_estimator("acme/metric")
    assert est.info().name == "acme/metric" and est.info().kind == "depth_anything"
    assert calls == [("acme/metric", ("*.json", "README.md"), False),
                     ("acme/metric", ("*.json", "README.md", "*.safetensors"), False)]
    calls.clear()
    with pytest.raises(ModelLoadError, match="relative depth"):
        load_estimator("acme/relative")
    assert calls == [("acme/relative", ("*.json", "README.md"), False)]


def test_wrong_hub_id_named(tmp_path, monkeypatch, no_network):
    import httpx2  # huggingface_hub's HTTP client
    from huggingface_hub.errors import RepositoryNotFoundError

    def not_found(repo_id, **kwargs):
        url = f"https://huggingface.co/api/models/{repo_id}"
        raise RepositoryNotFoundError(f"404 for {repo_id}", response=httpx2.Response(404, request=httpx2.Request(
            "GET", url)))

    monkeypatch.setattr("huggingface_hub.snapshot_download", not_found)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelLoadError, match=r"^acme/typo: no such model on the Hugging Face Hub"):
        load_estimator("acme/typo")


def test_local_folder_never_downloads(tiny_depth_models, monkeypatch, no_network):
    def refuse(*args, **kwargs):
        raise AssertionError("snapshot_download called for a local folder")

    monkeypatch.setattr("huggingface_hub.snapshot_download", refuse)
    monkeypatch.chdir(tiny_depth_models["zoedepth"].parent)
    # "zoedepth" relative to the cwd, and an org/name-shaped local path, are both local
    assert load_estimator("zoedepth").info().kind == "zoedepth"
    (tiny_depth_models["zoedepth"].parent / "acme").mkdir(exist_ok=True)
    link = tiny_depth_models["zoedepth"].parent / "acme" / "zoe"
    if not link.exists():
        link.symlink_to(tiny_depth_models["zoedepth"])
    assert load_estimator("acme/zoe").info().kind == "zoedepth"
