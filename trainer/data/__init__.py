"""Training and evaluation data: readers for Hypersim, Virtual KITTI 2, TartanAir and MetricGold's plain folder
format, the mixed training data set, and the NYUv2 / KITTI evaluation sets. See docs/datasets.md."""

from __future__ import annotations

from trainer.data.common import DataError, Sample, resize_cover_crop, valid_range_mask
from trainer.data.folder import FolderReader
from trainer.data.hypersim import HypersimReader
from trainer.data.mixing import (
    KINDS,
    SPLITS,
    DatasetSpec,
    MixedDepthDataset,
    build_training_dataset,
    make_reader,
    read_sample,
)
from trainer.data.tartanair import TartanAirReader
from trainer.data.vkitti2 import VKITTI2Reader

__all__ = [
    "KINDS",
    "SPLITS",
    "DataError",
    "DatasetSpec",
    "FolderReader",
    "HypersimReader",
    "MixedDepthDataset",
    "Sample",
    "TartanAirReader",
    "VKITTI2Reader",
    "build_training_dataset",
    "make_reader",
    "read_sample",
    "resize_cover_crop",
    "valid_range_mask",
]
