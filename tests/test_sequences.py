"""Camera-path sequences (trainer.synth --sequence) and their evaluation (trainer eval --dataset sequence).

The rendered sequence is checked against itself through the poses: frame t's true depth carried into frame t+1 with
the written camera_to_world matrices must land on frame t+1's true depth (which fails for wrong poses or a wrong
convention), and a perfect prediction must score a temporal error of about 0.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from trainer.synth.scenes import sample_scene
from trainer.synth.sequence import (
    CameraPath,
    camera_to_world,
    euler_xyz_matrix,
    path_poses,
    read_sequence_camera,
    sample_camera_path,
)

W, H = 64, 48


def test_camera_path_is_deterministic_starts_at_the_scene_camera_and_stays_in_free_space() -> None:
    from trainer.synth.scenes import _box_contains

    for i in range(60):
        spec = sample_scene(3, i)
        path = sample_camera_path(spec, 3, i, 8)
        assert path == sample_camera_path(spec, 3, i, 8)
        poses = path_poses(spec, path, 8)
        np.testing.assert_allclose(poses[0], camera_to_world(spec.camera.location,
                                                             euler_xyz_matrix(*spec.camera.rotation)), atol=1e-12)
        for p in poses:
            np.testing.assert_allclose(p[:3, :3] @ p[:3, :3].T, np.eye(3), atol=1e-12)  # rigid
            assert not any(_box_contains(s, p[:3, 3], 0.05) for s in spec.shapes), (i, spec.kind)
    assert sample_camera_path(sample_scene(3, 0), 3, 0, 8) != sample_camera_path(sample_scene(3, 0), 4, 0, 8)


def test_path_poses_hand_computed() -> None:
    # Camera at the origin looking along +Y (Euler x = 90 deg); orbit 90 deg about the vertical axis through the
    # point 2 m ahead, (0, 2, 0): the last pose sits at (2, 2, 0) looking along -X; dolly 0.5 m moves it to (1.5, 2, 0).
    spec = sample_scene(0, 0)
    from dataclasses import replace

    spec = replace(spec, camera=replace(spec.camera, location=(0.0, 0.0, 0.0), rotation=(math.pi / 2, 0.0, 0.0)))
    poses = path_poses(spec, CameraPath(orbit_distance=2.0, orbit_deg=90.0, dolly=0.5, rise=0.25), 3)
    np.testing.assert_allclose(poses[-1][:3, 3], (1.5, 2.0, 0.25), atol=1e-12)
    np.testing.assert_allclose(-poses[-1][:3, 2], (-1.0, 0.0, 0.0), atol=1e-12)  # view direction
    # Halfway in time, smoothstep gives half the move: 45 deg about (0, 2, 0).
    # The orbit puts it at (2 sin 45, 2 - 2 cos 45), looking along (-sin 45, cos 45); then a 0.25 m dolly.
    r = math.sqrt(2.0)
    np.testing.assert_allclose(poses[1][:3, 3], (r - 0.25 / r, 2 - r + 0.25 / r, 0.125), atol=1e-12)


bpy = pytest.importorskip("bpy")

from trainer.synth.sequence import generate_sequences  # noqa: E402
from trainer.temporal import temporal_errors  # noqa: E402


@pytest.fixture(scope="module")
def sequences(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("seq")
    stats = generate_sequences(out, 2, 3, width=W, height=H, seed=2, samples=2, denoise="off", device="cpu",
                               progress=False)
    assert (stats.rendered, stats.skipped) == (6, 0)
    return out


def test_sequence_files_and_resume(sequences: Path, tmp_path: Path) -> None:
    from metricgold_engine.core.depth_io import read_depth

    out = tmp_path / "copy"
    shutil.copytree(sequences, out)
    for seq in ("000000", "000001"):
        k, names, poses = read_sequence_camera(out / seq / "camera.json")
        assert names == ["000001", "000002", "000003"] and (k.width, k.height) == (W, H)  # numbered from 1
        assert json.loads((out / seq / "intrinsics/000001.json").read_text()) == k.as_json()
        rec = json.loads((out / seq / "camera.json").read_text())  # the engine's NAME_camera.json fields
        assert (rec["frame_count"], rec["first_frame"], rec["depth_files"]) == (3, 1, "depth/######.exr")
        for n in names:
            assert read_depth(out / seq / "depth" / f"{n}.exr").shape == (H, W)
        assert not np.allclose(poses[0], poses[2])  # the camera moved
    depth = (out / "000001/depth/000002.exr").read_bytes()
    (out / "000001/rgb/000002.png").unlink()
    stats = generate_sequences(out, 2, 3, width=W, height=H, seed=2, samples=2, denoise="off", device="cpu",
                               progress=False)
    assert (stats.rendered, stats.skipped) == (1, 5)
    assert (out / "000001/depth/000002.exr").read_bytes() == depth  # re-rendered identically
    with pytest.raises(ValueError, match="sequence: folder has 3, this run 4"):
        generate_sequences(out, 2, 4, width=W, height=H, seed=2, samples=2, denoise="off", device="cpu",
                           progress=False)


def test_true_depth_warps_onto_the_next_frame_with_the_written_poses(sequences: Path) -> None:
    from metricgold_engine.core.depth_io import read_depth

    for seq in ("000000", "000001"):
        k, names, poses = read_sequence_camera(sequences / seq / "camera.json")
        d = [np.where(read_depth(sequences / seq / "depth" / f"{n}.exr") > 0,
                      read_depth(sequences / seq / "depth" / f"{n}.exr"), np.nan) for n in names]
        for t in range(2):
            r = temporal_errors(d[t], d[t + 1], d[t], d[t + 1], k, poses[t], poses[t + 1])
            assert r["covisible_fraction"] > 0.5 and r["temporal_error"] < 3e-3, (seq, t, r)
            # The poses matter: pretending the camera stood still (or moved the other way) loses agreement.
            wrong = temporal_errors(d[t], d[t + 1], d[t], d[t + 1], k, poses[t + 1], poses[t])
            assert wrong["covisible_fraction"] < r["covisible_fraction"] - 0.1, (seq, t, r, wrong)


def test_eval_sequence_cli(sequences: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from metricgold_engine.core.depth_io import read_depth, write_depth_npy
    from trainer.eval import main

    # Perfect predictions (the ground truth itself): metrics 0, temporal error ~0.
    assert main(["--dataset", "sequence", "--data-root", str(sequences), "--predictions", str(sequences),
                 "--out", str(tmp_path / "perfect"), "--no-progress"]) == 0
    r = json.loads((tmp_path / "perfect/metrics.json").read_text())
    assert r["num_sequences"] == 2 and r["num_frames"] == 6 and r["num_pairs"] == 4
    assert r["metrics"]["abs_rel"] < 1e-6 and r["temporal"]["temporal_error"] < 3e-3
    assert "temporal error" in capsys.readouterr().out

    # A prediction 10 % too deep in frame 1 only: flicker log(1.1) on both pairs, up to the sampling floor.
    pred = tmp_path / "pred"
    for seq in ("000000", "000001"):
        (pred / seq).mkdir(parents=True)
        for n, f in (("000001", 1.0), ("000002", 1.1), ("000003", 1.0)):
            gt = read_depth(sequences / seq / "depth" / f"{n}.exr")
            write_depth_npy(pred / seq / f"{n}.npy", np.where(gt > 0, gt * f, 50.0).astype(np.float32))
    assert main(["--dataset", "sequence", "--data-root", str(sequences), "--predictions", str(pred),
                 "--out", str(tmp_path / "flicker"), "--no-progress"]) == 0
    r = json.loads((tmp_path / "flicker/metrics.json").read_text())
    assert r["temporal"]["flicker"] == pytest.approx(math.log(1.1), abs=3e-3)
    assert r["temporal"]["temporal_error"] > 0.05

    # The engine's sequence output (docs/sequences.md): NAME_camera.json + NAME_depth_######.exr numbered from 1,
    # in PRED/SEQ/ (any NAME) or flat in PRED/ with NAME = the sequence (here .npy only, beside the EXR pattern).
    from metricgold_engine.core.depth_io import write_depth_exr

    engine = tmp_path / "engine"
    (engine / "000000").mkdir(parents=True)
    for seq, folder, name in (("000000", engine / "000000", "rgb"), ("000001", engine, "000001")):
        (folder / f"{name}_camera.json").write_text(json.dumps(
            {"fx": 1.0, "fy": 1.0, "cx": 0.0, "cy": 0.0, "width": W, "height": H, "frame_count": 3,
             "first_frame": 1, "depth_files": f"{name}_depth_######.exr"}))
        for k, f in ((1, 1.0), (2, 1.0), (3, 1.2)):
            gt = read_depth(sequences / seq / "depth" / f"{k:06d}.exr")
            d = np.where(gt > 0, gt * f, 50.0).astype(np.float32)
            if seq == "000000":
                write_depth_exr(folder / f"{name}_depth_{k:06d}.exr", d)
            else:
                write_depth_npy(folder / f"{name}_depth_{k:06d}.npy", d)
    assert main(["--dataset", "sequence", "--data-root", str(sequences), "--predictions", str(engine),
                 "--out", str(tmp_path / "engine_out"), "--no-progress"]) == 0
    r = json.loads((tmp_path / "engine_out/metrics.json").read_text())
    for row in r["per_sequence"]:  # pair 1-2 perfect, pair 2-3 flickers by log 1.2
        assert [p["flicker"] for p in row["pairs"]] == pytest.approx([0.0, math.log(1.2)], abs=3e-3)

    # A missing prediction is named.
    (pred / "000001/000003.npy").unlink()
    assert main(["--dataset", "sequence", "--data-root", str(sequences), "--predictions", str(pred),
                 "--no-progress"]) == 1
    assert "sequence 000001 frame 000003" in capsys.readouterr().err


def test_eval_sequence_with_a_model(sequences: Path, tmp_path: Path) -> None:
    from metricgold_engine.tiny_models import make_tiny_checkpoint
    from trainer.eval import main

    make_tiny_checkpoint(tmp_path / "tiny")
    assert main(["--dataset", "sequence", "--data-root", str(sequences / "000001"), "--model", str(tmp_path / "tiny"),
                 "--steps", "1", "--resolution", "32", "--device", "cpu", "--known-focal", "--out",
                 str(tmp_path / "m"), "--no-progress"]) == 0
    r = json.loads((tmp_path / "m/metrics.json").read_text())
    assert (r["num_sequences"], r["num_frames"], r["num_pairs"]) == (1, 3, 2)
    assert math.isfinite(r["temporal"]["temporal_error"]) and r["temporal"]["temporal_error"] > 0
