"""Issue 14, trainer: config errors name the field, every missing data file is listed before step 0, and resuming a
finished run never deletes a checkpoint before its replacement is complete."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from trainer.config import ConfigError
from trainer.data import DataError

from test_trainer import fresh_accelerate_state, make_learnable_folder, tiny_config  # noqa: F401  (fixture too)


@pytest.mark.parametrize("field, value, message", [
    ("resolution", [32.5, 32], r"data\.resolution: expected \[H, W\], two integers of at least 8 pixels, got \[32\.5, 32\]"),
    ("resolution", ["a", 32], r"data\.resolution: expected \[H, W\], two integers .*got \['a', 32\]"),
    ("seed", -1, r"run\.seed: must be an integer >= 0, got -1"),
    ("output_dir", "FILE", r"run\.output_dir: .*/a-file is a file, not a folder"),
    ("output_dir", "FILE/sub", r"run\.output_dir: .*/a-file/sub cannot be created: .*/a-file is a file, not a folder"),
])
def test_config_errors_name_the_field(tmp_path, field, value, message):
    cfg = tiny_config(tmp_path / "data", tmp_path / "out")
    (tmp_path / "a-file").write_text("not a folder")
    if field == "resolution":
        cfg.data.resolution = value
    elif field == "seed":
        cfg.run.seed = value
    else:
        cfg.run.output_dir = str(value).replace("FILE", str(tmp_path / "a-file"))
    with pytest.raises(ConfigError, match=message):
        cfg.validate()


def test_every_missing_data_file_is_listed_before_step_0(tmp_path):
    from trainer.train import Trainer

    root = make_learnable_folder(tmp_path / "planes", n=6)
    (root / "train.txt").write_text("000\n001\n002\n003\n004\n005\nghost\n")
    (root / "depth" / "001.npy").unlink()
    (root / "depth" / "004.npy").unlink()
    (root / "rgb" / "002.png").unlink()
    (root / "depth" / "003.npy").unlink()
    (root / "depth" / "003.npy").mkdir()  # a folder where a file belongs
    cfg = tiny_config(root, tmp_path / "out")
    with pytest.raises(DataError) as info:
        Trainer(cfg, "unet")
    text = str(info.value)
    assert "folder data set" in text and "5 file(s) missing or unreadable" in text
    for name in ("001", "002", "003", "004", "ghost"):  # 003's depth is a folder: no depth file either
        assert f"sample '{name}'" in text or f"sample {name!r}" in text
    assert not (tmp_path / "out" / "checkpoints").exists()  # found before anything was trained or written


def test_resuming_a_finished_run_never_deletes_its_checkpoint(tmp_path, monkeypatch):
    from trainer.train import Trainer, list_checkpoints

    root = make_learnable_folder(tmp_path / "planes", n=4)
    out = tmp_path / "out"
    Trainer(tiny_config(root, out, max_steps=2, checkpoint_every=2), "unet").run()
    (checkpoint,) = list_checkpoints(out)
    before = sorted(p.relative_to(checkpoint) for p in checkpoint.rglob("*"))

    class Killed(Exception):
        pass

    real_replace, real_rmtree = os.replace, shutil.rmtree

    def replace(src, dst, *args, **kwargs):  # a kill at the moment the old checkpoint would be replaced
        if Path(dst) == checkpoint:
            raise Killed(dst)
        return real_replace(src, dst, *args, **kwargs)

    def rmtree(path, *args, **kwargs):
        assert Path(path) != checkpoint, "the checkpoint was deleted before its replacement was complete"
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(shutil, "rmtree", rmtree)
    fresh_accelerate_state_reset()
    try:
        final = Trainer(tiny_config(root, out, max_steps=2, checkpoint_every=2), "unet", resume="latest").run()
    except Killed:
        final = None
    assert list_checkpoints(out) == [checkpoint]
    assert sorted(p.relative_to(checkpoint) for p in checkpoint.rglob("*")) == before
    assert final == out / "final" and (final / "model_index.json").is_file()


def fresh_accelerate_state_reset() -> None:
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()


def test_a_replaced_checkpoint_is_set_aside_until_the_new_one_is_in_place(tmp_path, monkeypatch):
    from trainer.train import recover_interrupted_saves, replace_folder

    target = tmp_path / "checkpoints" / "step-000004"
    target.mkdir(parents=True)
    (target / "weights").write_text("old")
    new = tmp_path / "checkpoints" / ".step-000004.tmp"
    new.mkdir()
    (new / "weights").write_text("new")
    real_replace, calls = os.replace, []

    def replace(src, dst, *args, **kwargs):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("killed")
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="killed"):
        replace_folder(new, target)
    monkeypatch.setattr(os, "replace", real_replace)
    assert not target.exists()  # between the two renames: only the set-aside copy holds it
    recover_interrupted_saves(tmp_path)
    assert (target / "weights").read_text() == "old"
    replace_folder(new, target)
    assert (target / "weights").read_text() == "new" and not list((tmp_path / "checkpoints").glob(".*"))
