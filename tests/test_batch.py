"""Many photos in one `predict` run: names, inputs, the output folder, and one bad image among good ones."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from metricgold_engine.batch import check_output_dir, collect_images, output_names
from metricgold_engine.cli import main
from metricgold_engine.core.errors import OutputNotWritable


def _photo(path: Path, seed: int = 0, size=(20, 28)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray((rng.random((*size, 3)) * 255).astype(np.uint8)).save(path)
    return path


def test_output_names_rules():
    p = Path
    assert output_names([p("x/room.jpg")]) == ["room"]
    assert output_names([p("a.jpg"), p("a.png"), p("b.png")]) == ["a_jpg", "a_png", "b"]
    # Same file name from two folders: numbered; an input a_2.png already owns "a_2", so the copy gets a_3.
    assert output_names([p("d1/a.png"), p("d2/a.png"), p("a_2.png")]) == ["a", "a_3", "a_2"]
    # a_jpg taken by an input of that stem: the extension rule falls back to the next free number.
    assert output_names([p("a.jpg"), p("a.png"), p("a_jpg.png")]) == ["a_2", "a_png", "a_jpg"]
    # Case-insensitive file systems: A.png and a.jpg would write the same files there.
    names = output_names([p("A.png"), p("a.jpg")])
    assert len({n.lower() for n in names}) == 2
    many = [p(f"d{i}/a.png") for i in range(5)] + [p("a_2.png"), p("a.jpg")]
    names = output_names(many)
    assert len({n.lower() for n in names}) == len(many)


def test_collect_images_reports_broken_links_and_dedupes(tmp_path):
    folder = tmp_path / "photos"
    good = _photo(folder / "good.png")
    os.symlink(tmp_path / "nowhere.png", folder / "dead.png")
    os.symlink(tmp_path / "nowhere.jpg", tmp_path / "dead_direct.jpg")
    images, problems = collect_images([folder, good, tmp_path / "dead_direct.jpg"])
    assert images == [good]  # the folder's good.png and good.png given again: once
    assert {Path(item).name for item, _ in problems} == {"dead.png", "dead_direct.jpg"}
    assert all("broken symbolic link" in problem for _, problem in problems)


def test_check_output_dir(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    with pytest.raises(OutputNotWritable, match="also an input folder"):
        check_output_dir(folder, [folder])
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputNotWritable, match="is a file"):
        check_output_dir(tmp_path / "file", [folder])
    assert check_output_dir(tmp_path / "new" / "out", [folder]).is_dir()
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(OutputNotWritable, match="cannot create"):
            check_output_dir(locked / "out", [folder])


def test_bad_out_is_refused_before_the_model_loads(tmp_path, capsys):
    folder = tmp_path / "photos"
    _photo(folder / "a.png")
    # The model folder does not exist either: the --out error comes first, so nothing was loaded.
    rc = main(["predict", str(folder), "--model", str(tmp_path / "no-model"), "--out", str(folder)])
    err = capsys.readouterr().err
    assert rc == 2 and "also an input folder" in err and "no-model" not in err


def test_colliding_names_are_all_written(tiny_checkpoint, tmp_path):
    _photo(tmp_path / "in" / "a.jpg", 1)
    _photo(tmp_path / "in" / "a.png", 2)
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "in"), "--model", str(tiny_checkpoint), "--out", str(out),
                 "--steps", "1", "--ensemble", "1", "--formats", "npy"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "a_jpg_camera.json", "a_jpg_depth.npy", "a_png_camera.json", "a_png_depth.npy"]


def test_one_bad_image_never_stops_the_batch(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "in"
    _photo(folder / "a_good.png", 1)
    _photo(folder / "c_good.png", 3)
    nan_tiff = np.full((20, 28), 0.5, dtype=np.float32)
    nan_tiff[3, 4] = np.nan
    Image.fromarray(nan_tiff, mode="F").save(folder / "b_nan.tif")
    _photo(folder / "d_bomb.png", 4, size=(60, 80))
    _photo(folder / "e_oom.png", 5)
    # Pillow refuses an image over twice MAX_IMAGE_PIXELS as a decompression bomb (the others are 560 pixels).
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    from metricgold_engine.core import depth_io

    real_color = depth_io.write_depth_color_png

    def color_png(path, depth, *args, **kwargs):
        if "e_oom" in str(path):
            raise MemoryError()
        return real_color(path, depth, *args, **kwargs)

    monkeypatch.setattr(depth_io, "write_depth_color_png", color_png)
    out = tmp_path / "out"
    rc = main(["predict", str(folder), "--model", str(tiny_checkpoint), "--out", str(out), "--steps", "1",
               "--ensemble", "1", "--formats", "npy,color"])
    err = capsys.readouterr().err
    assert rc == 1
    written = sorted(p.name for p in out.iterdir())
    assert written == ["a_good_camera.json", "a_good_depth.npy", "a_good_depth_color.png",
                       "c_good_camera.json", "c_good_depth.npy", "c_good_depth_color.png"]  # e_oom: no camera either
    assert "2 image(s) written" in err and "3 failed" in err
    assert "b_nan.tif: float image has 1 NaN or inf pixel(s)" in err
    assert "d_bomb.png" in err and "e_oom.png: out of memory" in err
