"""The mixed training data set: item format, determinism in (seed, i), flip, resize/crop, mixing, corrupt files."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_data import make_folder, make_hypersim, make_tartanair, make_vkitti2

from trainer.data import DataError, DatasetSpec, Sample, build_training_dataset, resize_cover_crop
from trainer.data.common import cover_crop_geometry, scale_intrinsics


@pytest.fixture()
def three_sets(tmp_path: Path) -> list[DatasetSpec]:
    make_hypersim(tmp_path / "hypersim")
    make_vkitti2(tmp_path / "vkitti2")
    make_tartanair(tmp_path / "tartanair")
    return [
        DatasetSpec("hypersim", str(tmp_path / "hypersim"), probability=0.6),
        DatasetSpec("vkitti2", str(tmp_path / "vkitti2"), probability=0.3),
        DatasetSpec("tartanair", str(tmp_path / "tartanair"), probability=0.1),
    ]


def test_item_format(three_sets: list[DatasetSpec]) -> None:
    ds = build_training_dataset(three_sets, (8, 12), hflip=True, seed=0, length=20)
    assert len(ds) == 20
    for i in range(6):
        item = ds[i]
        assert item["rgb"].dtype == torch.float32 and item["rgb"].shape == (3, 8, 12)
        assert item["rgb"].min() >= -1.0 and item["rgb"].max() <= 1.0
        assert item["depth"].dtype == torch.float32 and item["depth"].shape == (1, 8, 12)
        assert item["valid"].dtype == torch.bool and item["valid"].shape == (1, 8, 12)
        assert torch.all(item["depth"][~item["valid"]] == 0) and torch.all(item["depth"][item["valid"]] > 0)
        assert isinstance(item["name"], str)
    with pytest.raises(IndexError):
        ds[20]
    # Data-loader workers started by "spawn" (macOS, Windows) receive the data set pickled.
    clone = pickle.loads(pickle.dumps(ds))
    assert torch.equal(clone[3]["depth"], ds[3]["depth"])
    # Default length: every sample once (2 + 3 + 3).
    assert len(build_training_dataset(three_sets, (8, 12), hflip=False, seed=0)) == 8


def test_items_are_a_function_of_seed_and_index(three_sets: list[DatasetSpec]) -> None:
    a = build_training_dataset(three_sets, (8, 12), hflip=True, seed=7, length=50)
    b = build_training_dataset(three_sets, (8, 12), hflip=True, seed=7, length=50)
    # A "resumed" data set reading from item 30 on sees the same items, in any order of access.
    for i in [30, 31, 5, 49, 30]:
        x, y = a[i], b[i]
        assert x["name"] == y["name"]
        assert torch.equal(x["rgb"], y["rgb"]) and torch.equal(x["depth"], y["depth"])
    c = build_training_dataset(three_sets, (8, 12), hflip=True, seed=8, length=50)
    assert [a.draw(i) for i in range(50)] != [c.draw(i) for i in range(50)]


def test_hflip_flips_rgb_and_depth_together(tmp_path: Path) -> None:
    make_folder(tmp_path, {"x": "npy"}, h=8, w=10)
    spec = DatasetSpec("folder", str(tmp_path))
    plain = build_training_dataset([spec], (8, 10), hflip=False, seed=0, length=1)[0]
    flipping = build_training_dataset([spec], (8, 10), hflip=True, seed=0, length=64)
    flips = [flipping.draw(i)[2] for i in range(64)]
    assert 16 < sum(flips) < 48  # about half of the items are flipped
    i = flips.index(True)
    flipped = flipping[i]
    assert torch.equal(flipped["rgb"], plain["rgb"].flip(-1))
    assert torch.equal(flipped["depth"], plain["depth"].flip(-1))
    assert torch.equal(flipped["valid"], plain["valid"].flip(-1))
    assert not flipped["valid"][0, 0, -1]  # the invalid (0, 0) pixel moved to the right edge
    j = flips.index(False)
    assert torch.equal(flipping[j]["depth"], plain["depth"])


def test_mixing_probabilities_are_respected(three_sets: list[DatasetSpec]) -> None:
    ds = build_training_dataset(three_sets, (8, 12), hflip=False, seed=123, length=4000)
    counts = np.bincount([ds.draw(i)[0] for i in range(4000)], minlength=3) / 4000
    # Binomial standard deviation at n = 4000 is <= 0.008; allow ~4 sigma.
    np.testing.assert_allclose(counts, [0.6, 0.3, 0.1], atol=0.03)
    zero = [*three_sets[:2], DatasetSpec("tartanair", three_sets[2].root, probability=0.0)]
    ds0 = build_training_dataset(zero, (8, 12), hflip=False, seed=1, length=500)
    assert all(ds0.draw(i)[0] != 2 for i in range(500))


def test_resize_covers_then_centre_crops_with_nearest_depth() -> None:
    # 4 x 6 sample to 6 x 6: scale 1.5 -> 6 x 9, crop columns 1..6 of the scaled image.
    assert cover_crop_geometry(4, 6, (6, 6)) == (6, 9, 0, 1)
    depth = np.arange(1, 25, dtype=np.float32).reshape(4, 6)
    valid = np.ones((4, 6), bool)
    valid[1, 2] = False
    depth[1, 2] = 0.0
    rgb = np.zeros((4, 6, 3), np.uint8)
    s = Sample("t", rgb, depth, valid)
    out_rgb, out_depth, out_valid = resize_cover_crop(s, (6, 6))
    assert out_rgb.shape == (6, 6, 3) and out_depth.shape == (6, 6)
    # Output pixel (r, c) takes source (floor((r + .5) * 4 / 6), floor((c + 1 + .5) * 6 / 9)) by hand:
    rows = [0, 1, 1, 2, 3, 3]
    cols = [1, 1, 2, 3, 3, 4]
    np.testing.assert_array_equal(out_depth, depth[np.ix_(rows, cols)])
    assert set(np.unique(out_depth)) <= set(np.unique(depth))  # nothing interpolated
    np.testing.assert_array_equal(out_valid, out_depth > 0)
    # Intrinsics follow the same geometry: centre 2.5 -> (2.5 + .5) * 1.5 - .5 = 4 in the 9-wide image, minus the
    # crop's left offset 1 -> 3 (the crop drops 1 column left, 2 right); rows: (1.5 + .5) * 1.5 - .5 = 2.5.
    k = scale_intrinsics({"fx": 5.0, "fy": 5.0, "cx": 2.5, "cy": 1.5}, 4, 6, (6, 6))
    assert k == pytest.approx({"fx": 7.5, "fy": 7.5, "cx": 3.0, "cy": 2.5})


def test_training_resolution_of_real_aspect_ratios(three_sets: list[DatasetSpec]) -> None:
    ds = build_training_dataset(three_sets, (6, 6), hflip=False, seed=0, length=30)
    for i in range(30):
        item = ds[i]
        assert item["rgb"].shape == (3, 6, 6) and item["depth"].shape == (1, 6, 6)


def test_corrupt_file_raises_naming_it_or_is_skipped_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make_folder(tmp_path, {"good": "npy", "bad": "npy"})
    bad = tmp_path / "depth" / "bad.npy"
    bad.write_bytes(b"\x93NUMPY garbage")
    strict = build_training_dataset([DatasetSpec("folder", str(tmp_path))], (8, 10), False, seed=0, length=40)
    bad_items = [i for i in range(40) if strict.names[0][strict.draw(i)[1]] == "bad"]
    assert bad_items
    with pytest.raises(DataError, match=r"bad\.npy"):
        strict[bad_items[0]]
    lenient = build_training_dataset(
        [DatasetSpec("folder", str(tmp_path), skip_corrupt=True)], (8, 10), False, seed=0, length=40
    )
    with caplog.at_level(logging.WARNING, logger="trainer.data"):
        item = lenient[bad_items[0]]
    assert item["name"] == "good"
    assert lenient.num_skipped >= 1
    assert "bad.npy" in caplog.text and "skipped so far" in caplog.text
    # The replacement is deterministic too.
    again = build_training_dataset(
        [DatasetSpec("folder", str(tmp_path), skip_corrupt=True)], (8, 10), False, seed=0, length=40
    )
    assert torch.equal(again[bad_items[0]]["rgb"], item["rgb"])
    # Every sample corrupt: a clear error instead of an endless loop.
    (tmp_path / "depth" / "good.npy").write_bytes(b"garbage")
    with pytest.raises(DataError, match="corrupt folder samples in a row"):
        lenient[0]


def test_empty_split_is_an_error(tmp_path: Path) -> None:
    make_hypersim(tmp_path)
    with pytest.raises(DataError, match="no hypersim samples found for split 'test'"):
        build_training_dataset([DatasetSpec("hypersim", str(tmp_path), split="test")], (8, 8), False, 0)
