"""`python -m trainer eval --model A --model B ...`: every model on the same images and protocol, one table; the
numbers checked against each model's own predictions scored independently here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fixtures_data import make_kitti, make_nyuv2

from metricgold_engine.metrics import METRIC_NAMES, compute_depth_metrics, eval_crop_mask
from trainer.data.evalsets import open_eval_set

OPTS = ["--steps", "1", "--ensemble", "1", "--resolution", "32", "--seed", "2"]


@pytest.fixture(scope="module")
def second_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another tiny random MetricGold checkpoint (seed 1): a second model that predicts differently."""
    from metricgold_engine.tiny_models import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("models") / "tiny-seed1", seed=1)


def reference_means(model: Path, dataset) -> dict[str, float]:
    """The protocol written out again: predict at full size, clip to the range, score inside range and crop,
    average over images (float64)."""
    from metricgold_engine.checkpoint import load_pipeline

    pipe = load_pipeline(model, device="cpu", dtype="float32")
    pipe.set_progress_bar_config(disable=True)
    rows = []
    for i in range(len(dataset)):
        s = dataset[i]
        gt = s.depth.astype(np.float64)
        pred = pipe(s.rgb, num_inference_steps=1, ensemble_size=1, processing_resolution=32, seed=2).depth
        assert pred.shape == gt.shape  # the pipeline answers at the photo's size: no resize in this reference
        lo, hi = dataset.min_depth, dataset.max_depth
        with np.errstate(invalid="ignore"):
            mask = (gt > lo) & (gt < hi) & eval_crop_mask(gt.shape, dataset.crop)
        rows.append(compute_depth_metrics(np.clip(pred, lo, hi), gt, mask))
    return {k: float(np.mean([r[k] for r in rows])) for k in METRIC_NAMES}


def run_eval(argv: list[str]) -> int:
    from trainer.__main__ import main as trainer_main  # `python -m trainer eval ...` dispatches here

    return trainer_main(["eval", *argv, "--device", "cpu", "--dtype", "float32", "--no-progress", *OPTS])


@pytest.mark.slow
def test_two_models_on_nyuv2_one_table(tiny_checkpoint: Path, second_checkpoint: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    make_nyuv2(tmp_path / "nyu", n=2)
    out = tmp_path / "results"
    rc = run_eval(["--model", str(tiny_checkpoint), "--model", str(second_checkpoint), "--dataset", "nyuv2",
                   "--data-root", str(tmp_path / "nyu"), "--align", "--out", str(out)])
    assert rc == 0
    data = json.loads((out / "metrics.json").read_text())
    assert [m["model"] for m in data["models"]] == [str(tiny_checkpoint), str(second_checkpoint)]
    assert data["num_images"] == 2 and data["protocol"]["crop"] == "nyu_eigen" and data["processes"] == 1
    dataset = open_eval_set("nyuv2", tmp_path / "nyu")
    for entry, model in zip(data["models"], (tiny_checkpoint, second_checkpoint)):
        assert entry["kind"] == "metricgold" and entry["options"]["num_inference_steps"] == 1
        assert entry["metrics"] == pytest.approx(reference_means(model, dataset), rel=1e-9)
        assert [r["name"] for r in entry["per_image"]] == [dataset[i].name for i in range(2)]  # the same images
        assert entry["seconds_per_image"] > 0 and "aligned_metrics" in entry
    assert data["models"][0]["metrics"] != data["models"][1]["metrics"]  # two different models
    md = (out / "metrics.md").read_text()
    assert md == capsys.readouterr().out.strip() + "\n"  # the table printed is the table written
    rows = [line for line in md.splitlines() if line.startswith(f"| {tiny_checkpoint} |")]
    assert len(rows) == 2  # metric and affine-aligned tables
    assert rows[0].split("|")[4].strip() == f"{data['models'][0]['metrics']['abs_rel']:.4f}"
    assert "s/image" in md and md.count(f"| {second_checkpoint} |") == 2


@pytest.mark.slow
def test_two_models_on_kitti_with_the_garg_crop(tiny_checkpoint: Path, second_checkpoint: Path,
                                               tmp_path: Path) -> None:
    make_kitti(tmp_path / "kitti", n=2)
    out = tmp_path / "results"
    rc = run_eval(["--model", str(tiny_checkpoint), "--model", str(second_checkpoint), "--dataset", "kitti",
                   "--data-root", str(tmp_path / "kitti"), "--known-focal", "--out", str(out)])
    assert rc == 0
    data = json.loads((out / "metrics.json").read_text())
    dataset = open_eval_set("kitti", tmp_path / "kitti")
    assert data["protocol"] == {"min_depth": 1e-3, "max_depth": 80.0, "crop": "garg", "alignment": "none"}
    assert data["settings"]["known_focal"] is True
    for entry, model in zip(data["models"], (tiny_checkpoint, second_checkpoint)):
        assert entry["metrics"] == pytest.approx(reference_means(model, dataset), rel=1e-9)


def test_bad_model_names_fail_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_nyuv2(tmp_path / "nyu", n=1)
    rc = run_eval(["--model", str(tmp_path / "nyu"), "--model", str(tmp_path / "typo"), "--dataset", "nyuv2",
                   "--data-root", str(tmp_path / "nyu")])
    assert rc == 2
    err = capsys.readouterr().err
    assert f"--model {tmp_path / 'typo'}: no such folder" in err and "Traceback" not in err
    assert run_eval(["--model", str(tmp_path), "--model", str(tmp_path), "--dataset", "nyuv2",
                     "--data-root", str(tmp_path / "nyu")]) == 2
    assert "given twice" in capsys.readouterr().err


@pytest.mark.slow
def test_metricgold_and_a_transformers_model_in_one_table(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """A tiny random Depth Anything V2 metric model beside a MetricGold one: its row equals transformers' own
    depth (processor -> model -> post_process_depth_estimation at the photo's size), scored here."""
    import torch
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    from metricgold_engine.backends.tiny import make_tiny_depth_model

    da = make_tiny_depth_model(tmp_path / "tiny-da", "depth_anything", seed=0, licence="apache-2.0")
    make_nyuv2(tmp_path / "nyu", n=2)
    out = tmp_path / "results"
    assert run_eval(["--model", str(tiny_checkpoint), "--model", str(da), "--dataset", "nyuv2", "--data-root",
                     str(tmp_path / "nyu"), "--out", str(out)]) == 0
    data = json.loads((out / "metrics.json").read_text())
    mg, other = data["models"]
    assert (mg["kind"], other["kind"], other["licence"]) == ("metricgold", "depth_anything", "apache-2.0")
    assert other["options"] == {}  # MetricGold's --steps etc. are not given to other backends

    processor = AutoImageProcessor.from_pretrained(da)
    model = AutoModelForDepthEstimation.from_pretrained(da).eval()
    dataset = open_eval_set("nyuv2", tmp_path / "nyu")
    rows = []
    for i in range(len(dataset)):
        s = dataset[i]
        with torch.no_grad():
            outputs = model(**processor(images=s.rgb, return_tensors="pt"))
        pred = processor.post_process_depth_estimation(outputs, target_sizes=[s.depth.shape])[0]["predicted_depth"]
        gt = s.depth.astype(np.float64)
        mask = (gt > 1e-3) & (gt < 10.0) & eval_crop_mask(gt.shape, "nyu_eigen")
        rows.append(compute_depth_metrics(np.clip(pred.numpy(), 1e-3, 10.0), gt, mask))
    reference = {k: float(np.mean([r[k] for r in rows])) for k in METRIC_NAMES}
    assert other["metrics"] == pytest.approx(reference, rel=1e-4)  # float32 resampling paths may differ slightly
    md = (out / "metrics.md").read_text()
    assert f"| {da} | depth_anything | apache-2.0 |" in md


def test_known_focal_reaches_the_model_and_options_only_metricgold(tmp_path: Path) -> None:
    """--known-focal passes the split file's focal length; MetricGold options go to MetricGold models only."""
    from metricgold_engine.backends.base import DepthPrediction, ModelInfo
    from trainer.eval import evaluate_models

    make_kitti(tmp_path / "kitti", n=2)
    dataset = open_eval_set("kitti", tmp_path / "kitti")
    calls: list[tuple[str, float | None, dict]] = []

    class Fake:
        def __init__(self, name: str, kind: str) -> None:
            self.name, self.kind = name, kind

        def predict(self, image, *, focal_px=None, **options):
            calls.append((self.name, focal_px, options))
            return DepthPrediction(depth=np.full(image.shape[:2], 10.0, np.float32))

        def info(self) -> ModelInfo:
            return ModelInfo(name=self.name, kind=self.kind)

    def loader(model: str, device: str, dtype: str):
        return Fake(model, "metricgold" if model == "mg" else "depth_pro")

    result = evaluate_models(["mg", "pro"], dataset, options={"num_inference_steps": 3, "seed": 0,
                                                                "ensemble_size": None},
                             known_focal=True, progress=False, loader=loader)
    assert calls == [("mg", 721.5377, {"num_inference_steps": 3, "seed": 0})] * 2 + [("pro", 721.5377, {})] * 2
    assert result["models"][0]["metrics"] == result["models"][1]["metrics"]  # same constant answer, same score
    calls.clear()
    evaluate_models(["pro"], dataset, progress=False, loader=loader)
    assert [focal for _, focal, _ in calls] == [None, None]  # without --known-focal the model estimates it
