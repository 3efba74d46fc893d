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
