"""`python -m metricgold_engine predict`: files, values, partial failures and exit codes."""

import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from metricgold_engine.cli import main
from metricgold_engine.core.depth_io import read_depth


@pytest.fixture()
def images(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((30, 44, 3)) * 255).astype(np.uint8)).save(folder / "room.png")
    Image.fromarray((rng.random((20, 20, 3)) * 255).astype(np.uint8)).save(folder / "street.jpg")
    return folder


def test_predict_writes_every_format(tiny_checkpoint, tiny_pipeline, images, tmp_path):
    out = tmp_path / "out"
    rc = main(["predict", str(images / "room.png"), "--model", str(tiny_checkpoint), "--out", str(out),
               "--steps", "2", "--ensemble", "3", "--seed", "4", "--uncertainty"])
    assert rc == 0
    expected = tiny_pipeline(images / "room.png", num_inference_steps=2, ensemble_size=3, seed=4,
                             output_uncertainty=True)
    depth = np.load(out / "room_depth.npy")
    assert depth.dtype == np.float32 and depth.shape == (30, 44)
    np.testing.assert_allclose(depth, expected.depth, rtol=1e-6)
    np.testing.assert_array_equal(read_depth(out / "room_depth.exr"), depth)
    png = np.asarray(Image.open(out / "room_depth16.png"))
    assert png.dtype == np.uint16
    np.testing.assert_array_equal(png, np.clip(np.rint(depth.astype(np.float64) * 1000), 1, 65535).astype(np.uint16))
    assert Image.open(out / "room_depth_color.png").mode == "RGB"
    np.testing.assert_allclose(np.load(out / "room_uncertainty.npy"), expected.uncertainty, rtol=1e-6)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left


def test_folder_input_bad_files_and_summary(tiny_checkpoint, images, tmp_path, capsys):
    (images / "notes.png").write_text("this is text")
    out = tmp_path / "out"
    rc = main(["predict", str(images), str(tmp_path / "gone.jpg"), "--model", str(tiny_checkpoint),
               "--out", str(out), "--formats", "npy"])
    err = capsys.readouterr().err
    assert rc == 1
    assert (out / "room_depth.npy").exists() and (out / "street_depth.npy").exists()
    assert not (out / "room_depth.exr").exists()
    assert "2 image(s) written" in err and "2 failed" in err
    assert "gone.jpg: file not found" in err and "notes.png: not an image" in err


def test_same_names_do_not_overwrite(tiny_checkpoint, images, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(images / "room.png", other / "room.png")
    out = tmp_path / "out"
    assert main(["predict", str(images / "room.png"), str(other / "room.png"), "--model", str(tiny_checkpoint),
                 "--out", str(out), "--formats", "npy"]) == 0
    assert (out / "room_depth.npy").exists() and (out / "room_2_depth.npy").exists()


@pytest.mark.parametrize("setup, message", [
    (lambda ck, tmp: tmp / "missing-model", "missing-model: model folder not found"),
    (lambda ck, tmp: (shutil.copytree(ck, tmp / "m"), shutil.rmtree(tmp / "m" / "scheduler"))[0],
     "scheduler: missing component"),
])
def test_bad_model_exits_2_with_one_line(tiny_checkpoint, images, tmp_path, capsys, setup, message):
    model = setup(tiny_checkpoint, tmp_path)
    rc = main(["predict", str(images), "--model", str(model), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and message in err[0]


def test_empty_folder_and_bad_formats(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["predict", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "folder has no images" in capsys.readouterr().err
    assert main(["predict", str(tmp_path), "--out", str(tmp_path / "o"), "--formats", "npy,tiff"]) == 2
    assert "unknown output format(s) tiff" in capsys.readouterr().err


def test_module_entry_point_runs(tiny_checkpoint, images, tmp_path):
    """The documented command as a user types it, in a fresh interpreter."""
    result = subprocess.run(
        [sys.executable, "-m", "metricgold_engine", "predict", str(images / "street.jpg"), "--model",
         str(tiny_checkpoint), "--out", str(tmp_path / "o"), "--formats", "npy"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "o" / "street_depth.npy").exists()
