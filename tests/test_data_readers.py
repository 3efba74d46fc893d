"""Data-set readers against fixtures in each data set's exact on-disk format, values checked by hand."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from fixtures_data import (
    make_folder,
    make_hypersim,
    make_tartanair,
    make_vkitti2,
    write_hypersim_frame,
    write_hypersim_split,
    write_png16,
)

from trainer.data import (
    DataError,
    DatasetSpec,
    FolderReader,
    HypersimReader,
    TartanAirReader,
    VKITTI2Reader,
    read_sample,
)
from trainer.data.hypersim import distance_to_planar_factor, focal_length_px, tonemap_hypersim

# ---------------------------------------------------------------------------------------------------------------
# Hypersim


def test_hypersim_focal_length_is_60_degree_fov() -> None:
    assert focal_length_px(1024) == pytest.approx(886.81, abs=1e-3)
    assert focal_length_px(512) == pytest.approx(886.81 / 2, abs=1e-3)


@pytest.mark.parametrize(
    ("u", "v", "ratio"),
    [(0, 0, 0.8111886), (1023, 767, 0.8111886), (511, 383, 0.9999997), (0, 383, 0.8662367)],
)
def test_hypersim_distance_to_planar_check_values(u: int, v: int, ratio: float) -> None:
    factor = distance_to_planar_factor(768, 1024)
    assert factor[v, u] == pytest.approx(ratio, abs=5e-7)


def test_hypersim_full_size_frame_reads_planar_depth(tmp_path: Path) -> None:
    # A real-sized 768 x 1024 frame at constant distance 4 m: planar depth = 4 * f / |ray| at the check pixels.
    distance = np.full((768, 1024), 4.0, dtype=np.float32)
    distance[100, 200] = np.nan
    color = np.full((768, 1024, 3), 0.5, dtype=np.float32)
    write_hypersim_frame(tmp_path, "ai_003_004", "cam_02", 17, color, distance)
    write_hypersim_split(tmp_path, [("ai_003_004", "cam_02", 17, True, "test")])
    reader = HypersimReader(tmp_path, "test")
    assert reader.names() == ["ai_003_004/cam_02/0017"]
    s = reader.load("ai_003_004/cam_02/0017")
    assert s.depth.dtype == np.float32 and s.depth.shape == (768, 1024)
    checks = {(0, 0): 0.8111886, (1023, 767): 0.8111886, (511, 383): 0.9999997, (0, 383): 0.8662367}
    for (u, v), ratio in checks.items():
        assert s.depth[v, u] == pytest.approx(4.0 * ratio, abs=1e-5)
    assert not s.valid[100, 200] and s.depth[100, 200] == 0.0
    assert s.valid.sum() == 768 * 1024 - 1
    assert s.intrinsics == pytest.approx({"fx": 886.81, "fy": 886.81, "cx": 511.5, "cy": 383.5}, abs=1e-3)
    # Constant grey 0.5: p90 = 0.5 -> scale = 0.8^2.2 / 0.5 -> (0.5 * scale)^(1/2.2) = 0.8 -> 204.
    assert np.all(s.rgb == 204)


def test_hypersim_tonemap_matches_hand_computation() -> None:
    rgb = np.array([[[1.0, 1.0, 1.0], [4.0, 0.0, 0.0]], [[0.0, 2.0, 0.0], [-1.0, 0.0, 0.0]]])
    valid = np.array([[True, True], [True, False]])
    y = np.array([1.0, 1.2, 1.18])  # 0.3 R + 0.59 G + 0.11 B of the valid pixels
    p90 = np.percentile(y, 90)  # linear interpolation, numpy's default as in Hypersim's tool
    scale = 0.8**2.2 / p90
    out = tonemap_hypersim(rgb, valid)
    assert out[0, 0, 0] == pytest.approx((scale * 1.0) ** (1 / 2.2), rel=1e-6)
    assert out[0, 1, 0] == pytest.approx(min((scale * 4.0) ** (1 / 2.2), 1.0), rel=1e-6)
    assert out[1, 1, 0] == 0.0  # negative radiance clamps to 0
    assert np.all(tonemap_hypersim(np.zeros((2, 2, 3)), valid) == 0.0)  # p90 < 1e-4 -> scale 0
    bright = np.full((2, 2, 3), 0.25)
    np.testing.assert_allclose(tonemap_hypersim(bright, np.zeros((2, 2), bool)), 0.25 ** (1 / 2.2), rtol=1e-6)


def test_hypersim_split_csv_decides_the_split(tmp_path: Path) -> None:
    frames = make_hypersim(tmp_path)
    train = HypersimReader(tmp_path, "train").names()
    assert train == ["ai_001_001/cam_00/0000", "ai_001_002/cam_01/0000"]  # not public / not on disk left out
    assert HypersimReader(tmp_path, "val").names() == ["ai_001_001/cam_00/0001"]
    assert HypersimReader(tmp_path, "test").names() == []
    name = "ai_001_002/cam_01/0000"
    s = read_sample(DatasetSpec("hypersim", str(tmp_path), "train"), name)
    color, distance = frames[name]
    planar = distance.astype(np.float64) * distance_to_planar_factor(*distance.shape)
    valid = np.isfinite(planar) & (planar < 65)
    np.testing.assert_allclose(s.depth[valid], planar[valid], rtol=1e-6)
    assert not s.valid[:2, :2].any() and np.array_equal(s.valid, valid)
    assert s.rgb.dtype == np.uint8 and s.rgb.shape == (12, 16, 3)


def test_hypersim_missing_and_corrupt_files_are_named(tmp_path: Path) -> None:
    make_hypersim(tmp_path)
    reader = HypersimReader(tmp_path, "train")
    color, depth = reader.paths("ai_001_001/cam_00/0000")
    depth.write_bytes(b"not an hdf5 file")
    with pytest.raises(DataError, match=str(depth).replace(".", r"\.")):
        reader.load("ai_001_001/cam_00/0000")
    color.unlink()
    with pytest.raises(DataError, match="no such Hypersim file"):
        reader.load("ai_001_001/cam_00/0000")
    with pytest.raises(DataError, match="split file not found"):
        HypersimReader(tmp_path / "elsewhere", "train").names()


# ---------------------------------------------------------------------------------------------------------------
# Virtual KITTI 2


def test_vkitti2_centimetres_to_metres_and_sky(tmp_path: Path) -> None:
    frames = make_vkitti2(tmp_path)
    reader = VKITTI2Reader(tmp_path, "train")
    assert reader.names() == [
        "Scene01/clone/Camera_0/00000",
        "Scene01/clone/Camera_0/00001",
        "Scene02/fog/Camera_1/00000",
    ]
    name = "Scene01/clone/Camera_0/00001"
    _, depth_cm = frames[name]
    s = reader.load(name)
    assert s.depth[5, 7] == pytest.approx(float(depth_cm[5, 7]) / 100.0, rel=1e-7)
    assert not s.valid[0].any() and np.all(s.depth[0] == 0.0)  # 65535 = sky
    assert not s.valid[1, 0]  # 90 m > 80 m
    assert s.valid[2:].all()
    assert s.intrinsics == {"fx": 700.5, "fy": 701.5, "cx": 610.25, "cy": 180.75}  # frame 1 of intrinsic.txt
    assert s.rgb.shape == (10, 20, 3)


def test_vkitti2_hand_value_and_default_intrinsics(tmp_path: Path) -> None:
    make_vkitti2(tmp_path, with_intrinsics=False)
    # Overwrite one depth map with known centimetres: 1234 cm = 12.34 m.
    reader = VKITTI2Reader(tmp_path, "train")
    _, depth_path = reader.paths("Scene02/fog/Camera_1/00000")
    cm = np.full((10, 20), 1234, dtype=np.uint16)
    cm[3, 3] = 65535
    write_png16(depth_path, cm)
    s = reader.load("Scene02/fog/Camera_1/00000")
    assert s.depth[4, 4] == pytest.approx(12.34, abs=1e-6)
    assert not s.valid[3, 3] and s.valid.sum() == 199
    # Even a user range past 655.35 m keeps the sky out.
    wide = VKITTI2Reader(tmp_path, "train", max_depth=1000.0).load("Scene02/fog/Camera_1/00000")
    assert not wide.valid[3, 3]
    assert s.intrinsics == {"fx": 725.0087, "fy": 725.0087, "cx": 620.5, "cy": 187.0}


def test_vkitti2_split_file_and_bad_png(tmp_path: Path) -> None:
    make_vkitti2(tmp_path)
    (tmp_path / "val.txt").write_text("Scene02/fog/Camera_1/00000\n")
    reader = VKITTI2Reader(tmp_path, "val")
    assert reader.names() == ["Scene02/fog/Camera_1/00000"]
    _, depth_path = reader.paths("Scene02/fog/Camera_1/00000")
    from PIL import Image

    Image.fromarray(np.zeros((10, 20), np.uint8)).save(depth_path)  # 8-bit: not a VKITTI depth map
    with pytest.raises(DataError, match="16-bit"):
        reader.load("Scene02/fog/Camera_1/00000")


# ---------------------------------------------------------------------------------------------------------------
# TartanAir


def test_tartanair_reads_npy_and_masks_sky(tmp_path: Path) -> None:
    frames = make_tartanair(tmp_path)
    reader = TartanAirReader(tmp_path, "train")
    assert reader.names() == [
        "abandonedfactory/Easy/P000/000000",
        "abandonedfactory/Easy/P000/000001",
        "abandonedfactory/Hard/P001/000000",
    ]
    name = "abandonedfactory/Hard/P001/000000"
    rgb, depth = frames[name]
    s = reader.load(name)
    np.testing.assert_array_equal(s.rgb, rgb)  # PNG is lossless
    assert not s.valid[0].any()  # 1e4 m sky
    np.testing.assert_array_equal(s.depth[1:], depth[1:])
    assert s.valid[1:].all()
    assert s.intrinsics == {"fx": 320.0, "fy": 320.0, "cx": 320.0, "cy": 240.0}
    # float16 storage is read as float32 too.
    _, depth_path = reader.paths(name)
    np.save(depth_path, np.full((8, 12), 2.5, dtype=np.float16))
    assert reader.load(name).depth.dtype == np.float32 and reader.load(name).depth[3, 3] == 2.5


def test_tartanair_mismatched_size_is_an_error(tmp_path: Path) -> None:
    make_tartanair(tmp_path)
    reader = TartanAirReader(tmp_path, "train")
    _, depth_path = reader.paths("abandonedfactory/Easy/P000/000000")
    np.save(depth_path, np.ones((4, 4), np.float32))
    with pytest.raises(DataError, match="000000_left_depth.npy"):
        reader.load("abandonedfactory/Easy/P000/000000")


# ---------------------------------------------------------------------------------------------------------------
# Plain folder format


def test_folder_png16_npy_exr_and_intrinsics(tmp_path: Path) -> None:
    intr = {"fx": 10.0, "fy": 11.0, "cx": 4.5, "cy": 3.5}
    frames = make_folder(
        tmp_path,
        {"a": "npy", "b": "png", "sub/c": "exr"},
        intrinsics={"b": intr},
        splits={"test": ["sub/c", "a"]},
    )
    train = FolderReader(tmp_path, "train")
    assert train.names() == ["a", "b", "sub/c"]  # no train.txt: every name
    assert FolderReader(tmp_path, "test").names() == ["sub/c", "a"]
    for name, (rgb, depth) in frames.items():
        s = train.load(name)
        np.testing.assert_array_equal(s.rgb, rgb)
        assert not s.valid[0, 0] and s.depth[0, 0] == 0.0
        np.testing.assert_allclose(s.depth[s.valid], depth[s.valid], rtol=1e-6)
        assert s.valid.sum() == depth.size - 1
    assert train.load("b").intrinsics == intr
    assert train.load("a").intrinsics is None
    # One millimetre resolution of the 16-bit PNG, by hand: 1500 mm -> 1.5 m.
    write_png16(tmp_path / "depth" / "b.png", np.full((8, 10), 1500, np.uint16))
    assert train.load("b").depth[2, 2] == pytest.approx(1.5)


def test_folder_errors_name_the_file(tmp_path: Path) -> None:
    make_folder(tmp_path, {"a": "npy", "b": "npy"}, intrinsics={"b": {"fx": 1.0, "fy": 1.0, "cx": 0.0}})
    reader = FolderReader(tmp_path, "train")
    with pytest.raises(DataError, match=r"b\.json.*'cy'"):
        reader.load("b")
    (tmp_path / "depth" / "a.npy").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"a\.npy"):
        reader.load("a")
    (tmp_path / "depth" / "a.npy").unlink()
    with pytest.raises(DataError, match="no depth file for sample 'a'"):
        reader.load("a")
    with pytest.raises(DataError, match="rgb"):
        FolderReader(tmp_path / "nothing", "train").names()
    rgb_path = tmp_path / "rgb" / "b.png"
    rgb_path.write_bytes(rgb_path.read_bytes()[:60])  # truncated PNG
    (tmp_path / "intrinsics" / "b.json").unlink()
    with pytest.raises(DataError, match=r"rgb/b\.png"):
        reader.load("b")


def test_spec_defaults_and_validation() -> None:
    assert (DatasetSpec("vkitti2", "/r").min_depth, DatasetSpec("vkitti2", "/r").max_depth) == (1e-5, 80.0)
    assert DatasetSpec("hypersim", "/r").max_depth == 65.0
    assert DatasetSpec("tartanair", "/r").max_depth == 80.0
    assert DatasetSpec("folder", "/r", max_depth=20).max_depth == 20.0
    with pytest.raises(ValueError, match="kind"):
        DatasetSpec("nyu", "/r")
    with pytest.raises(ValueError, match="split"):
        DatasetSpec("folder", "/r", split="training")
    with pytest.raises(ValueError, match="probability"):
        DatasetSpec("folder", "/r", probability=-1)
    with pytest.raises(ValueError, match="min_depth < max_depth"):
        DatasetSpec("folder", "/r", min_depth=5, max_depth=1)
    with pytest.raises(ValueError, match="unknown"):
        DatasetSpec.from_dict({"kind": "folder", "root": "/r", "probabilty": 0.5})
    assert math.isclose(DatasetSpec.from_dict({"kind": "folder", "root": "/r", "probability": 0.5}).probability, 0.5)
