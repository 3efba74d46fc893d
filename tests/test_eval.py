"""Evaluation end to end: evaluation-set readers, the protocol with fake predictors, and the CLI on a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fixtures_data import make_folder, make_kitti, make_nyuv2

from metricgold_engine.metrics import compute_depth_metrics, eval_crop_mask
from trainer.data import DataError
from trainer.data.evalsets import FolderEvalSet, KittiEigenTestSet, NYUv2TestSet, open_eval_set
from trainer.eval import evaluate, main, resize_prediction, write_results


def lookup_predictor(gt_by_rgb: dict[bytes, np.ndarray], scale: float = 1.0, shift: float = 0.0, fill: float = 5.0):
    """A fake model that knows the answer: scale * ground truth + shift (``fill`` where there is none)."""

    def predict(rgb: np.ndarray) -> np.ndarray:
        gt = gt_by_rgb[rgb.tobytes()]
        with np.errstate(invalid="ignore"):
            known = np.isfinite(gt) & (gt > 0)
        return np.where(known, scale * gt + shift, fill).astype(np.float32)

    return predict


def _answers(dataset) -> dict[bytes, np.ndarray]:
    return {s.rgb.tobytes(): s.depth for s in (dataset[i] for i in range(len(dataset)))}


def test_nyuv2_reader_layout_and_values(tmp_path: Path) -> None:
    frames = make_nyuv2(tmp_path, n=2)
    ds = NYUv2TestSet(tmp_path)
    assert len(ds) == 2 and ds.crop == "nyu_eigen" and (ds.min_depth, ds.max_depth) == (1e-3, 10.0)
    s = ds[1]
    rgb, depth = frames[s.name]
    np.testing.assert_array_equal(s.rgb, rgb)
    # uint16 / 1000 by hand: the last column is 8 m * 1.1 = 8800 mm
    assert s.depth[100, 639] == pytest.approx(8.8, abs=1e-6)
    assert s.depth[0, 0] == 0.0
    split = tmp_path / "list.txt"
    split.write_text(f"{s.name} {s.name.replace('rgb_', 'depth_')} unused_filled.png\n")
    assert len(NYUv2TestSet(tmp_path, split)) == 1
    with pytest.raises(DataError, match="nowhere.*not found"):
        NYUv2TestSet(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no NYUv2"):
        NYUv2TestSet(tmp_path / "empty")


def test_nyuv2_perfect_and_scaled_predictors(tmp_path: Path) -> None:
    make_nyuv2(tmp_path, n=2)
    ds = NYUv2TestSet(tmp_path)
    answers = _answers(ds)
    perfect = evaluate(lookup_predictor(answers), ds, progress=False)
    assert perfect["num_images"] == 2
    assert perfect["metrics"]["abs_rel"] == pytest.approx(0.0, abs=1e-7)
    assert perfect["metrics"]["delta1"] == 1.0 and perfect["metrics"]["rmse"] == pytest.approx(0.0, abs=1e-6)
    scaled = evaluate(lookup_predictor(answers, scale=1.1), ds, progress=False)
    assert scaled["metrics"]["abs_rel"] == pytest.approx(0.1, rel=1e-5)
    assert scaled["metrics"]["delta1"] == 1.0  # 1.1 < 1.25
    assert scaled["protocol"] == {"min_depth": 1e-3, "max_depth": 10.0, "crop": "nyu_eigen", "alignment": "none"}
    # --align: an affine-wrong prediction is perfect after alignment, reported apart from the metric numbers.
    affine = evaluate(lookup_predictor(answers, scale=0.5, shift=0.3), ds, align=True, progress=False)
    assert affine["metrics"]["abs_rel"] > 0.2
    assert affine["aligned_metrics"]["abs_rel"] == pytest.approx(0.0, abs=1e-5)
    assert affine["per_image"][0]["scale"] == pytest.approx(2.0, rel=1e-4)


def test_metrics_use_the_eigen_crop_and_the_range(tmp_path: Path) -> None:
    make_nyuv2(tmp_path, n=1)
    ds = NYUv2TestSet(tmp_path)
    gt = ds[0].depth

    def predict(rgb: np.ndarray) -> np.ndarray:
        pred = gt.copy()
        pred[:45] = 100.0  # wrong only outside the Eigen crop (rows 45:471)
        pred[gt == 0] = 3.0
        return pred

    r = evaluate(predict, ds, progress=False)
    assert r["metrics"]["abs_rel"] == pytest.approx(0.0, abs=1e-7)
    # An independent recomputation over the crop agrees for a prediction that is off everywhere.
    off = evaluate(lambda rgb: gt * 1.2 + 0.1, ds, progress=False)
    mask = eval_crop_mask(gt.shape, "nyu_eigen") & (gt > 1e-3) & (gt < 10)
    ref = compute_depth_metrics(np.clip(gt * 1.2 + 0.1, 1e-3, 10), gt, mask)
    assert off["metrics"] == pytest.approx(ref, rel=1e-12)


def test_low_resolution_prediction_is_resized_to_the_ground_truth(tmp_path: Path) -> None:
    make_nyuv2(tmp_path, n=1)
    ds = NYUv2TestSet(tmp_path)
    r = evaluate(lambda rgb: np.full((48, 64), 2.0, np.float32), ds, progress=False)
    gt = ds[0].depth
    mask = eval_crop_mask(gt.shape, "nyu_eigen") & (gt > 1e-3)
    assert r["metrics"]["abs_rel"] == pytest.approx(np.mean(np.abs(2.0 - gt[mask].astype(np.float64)) / gt[mask]))
    ramp = np.tile(np.arange(4, dtype=np.float32), (2, 1))
    up = resize_prediction(ramp, (2, 8))
    assert up.shape == (2, 8) and up[0, 0] == 0.0 and up[0, -1] == 3.0 and np.all(np.diff(up[0]) >= 0)


def test_kitti_eigen_split_kb_crop_and_garg(tmp_path: Path) -> None:
    split, full_gt = make_kitti(tmp_path, n=2)
    ds = KittiEigenTestSet(tmp_path)  # finds eigen_test_files_with_gt.txt in the root
    assert len(ds) == 2  # the "None" line is skipped
    s = ds[0]
    assert s.rgb.shape == (352, 1216, 3) and s.depth.shape == (352, 1216) and s.focal == pytest.approx(721.5377)
    # KB crop of a 375 x 1242 frame: top = 23, left = 13; GT / 256 by hand at one pixel.
    full = full_gt[s.name]
    np.testing.assert_array_equal(s.depth, full[23:375, 13:1229])
    r = evaluate(lookup_predictor(_answers(ds), fill=1e6), ds, progress=False)  # fill is clipped to 80
    assert r["metrics"]["abs_rel"] == pytest.approx(0.0, abs=1e-7) and r["protocol"]["crop"] == "garg"
    eigen = open_eval_set("kitti", tmp_path, split_file=split, crop="eigen")
    assert eigen.crop == "eigen"
    scaled = evaluate(lookup_predictor(_answers(eigen), scale=0.9), eigen, progress=False)
    assert scaled["metrics"]["abs_rel"] == pytest.approx(0.1, rel=1e-5)
    with pytest.raises(DataError, match="pass --split-file"):
        KittiEigenTestSet(tmp_path / "2011_09_26")


def test_folder_eval_and_outputs_written_atomically(tmp_path: Path) -> None:
    make_folder(tmp_path / "data", {"a": "png", "b": "npy"}, h=16, w=20, splits={"test": ["b"]})
    ds = FolderEvalSet(tmp_path / "data")
    assert len(ds) == 1 and ds.crop is None
    r = evaluate(lookup_predictor(_answers(ds)), ds, progress=False)
    paths = write_results(r, tmp_path / "out" / "nested")
    data = json.loads(paths[0].read_text())
    assert data["metrics"]["delta1"] == 1.0 and data["num_images"] == 1 and data["per_image"][0]["name"] == "b"
    md = paths[1].read_text()
    assert "| metric (no alignment) | 0.0000 |" in md
    assert sorted(p.name for p in paths[0].parent.iterdir()) == ["metrics.json", "metrics.md"]  # no temp files


def test_cli_bad_input_gives_one_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no_such_nyu"
    rc = main(["--model", str(tmp_path), "--dataset", "nyuv2", "--data-root", str(missing), "--no-progress"])
    assert rc == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(missing) in err and "Traceback" not in err
    assert main(["--model", "m", "--dataset", "nyuv2", "--data-root", "r", "--steps", "0"]) == 2
    with pytest.raises(SystemExit):
        main(["--model", "m", "--dataset", "cityscapes", "--data-root", "r"])


@pytest.mark.slow
def test_cli_end_to_end_with_tiny_checkpoint(tiny_checkpoint: Path, tmp_path: Path) -> None:
    make_folder(tmp_path / "data", {"a": "png", "b": "exr"}, h=24, w=32)
    from trainer.__main__ import main as trainer_main  # `python -m trainer eval ...` dispatches here

    out = tmp_path / "results"
    rc = trainer_main(
        [
            "eval",
            "--model", str(tiny_checkpoint),
            "--dataset", "folder",
            "--data-root", str(tmp_path / "data"),
            "--steps", "2", "--ensemble", "1", "--resolution", "32",
            "--seed", "3", "--align", "--device", "cpu", "--dtype", "float32",
            "--out", str(out), "--no-progress",
        ]
    )  # fmt: skip
    assert rc == 0
    data = json.loads((out / "metrics.json").read_text())
    assert data["num_images"] == 2 and data["settings"]["num_inference_steps"] == 2
    (model,) = data["models"]
    assert model["model"] == str(tiny_checkpoint) and model["kind"] == "metricgold"
    for table in ("metrics", "aligned_metrics"):
        for v in model[table].values():
            assert np.isfinite(v)
    # A random tiny model is far from right (the next test checks the numbers against its own predictions).
    assert 0.0 <= model["metrics"]["delta1"] <= 1.0 and model["metrics"]["abs_rel"] > 0
    assert "Affine-aligned" in (out / "metrics.md").read_text()


@pytest.mark.slow
def test_evaluate_takes_a_pipeline_or_a_seeded_predictor(tiny_pipeline, tmp_path: Path) -> None:
    from trainer.eval import make_predictor

    make_folder(tmp_path, {"a": "npy"}, h=24, w=32)
    ds = FolderEvalSet(tmp_path)
    direct = evaluate(tiny_pipeline, ds, progress=False)  # a pipeline is a predictor: its output has .depth
    assert 0.0 <= direct["metrics"]["delta1"] <= 1.0
    predict = make_predictor(tiny_pipeline, num_inference_steps=2, ensemble_size=1, processing_resolution=32, seed=5)
    first = evaluate(predict, ds, progress=False)
    # The numbers are those of a fresh prediction with the same seed, scored independently here.
    pred = np.clip(tiny_pipeline(ds[0].rgb, num_inference_steps=2, ensemble_size=1, processing_resolution=32,
                                 seed=5).depth, 1e-3, 80.0)
    gt = ds[0].depth
    ref = compute_depth_metrics(pred, gt, (gt > 1e-3) & (gt < 80))
    assert first["metrics"] == pytest.approx(ref, rel=1e-9)
