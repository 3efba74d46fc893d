"""Data-set specs, reader construction and the mixed training data set.

Item ``i`` of :func:`build_training_dataset` is a pure function of ``(seed, i)``: a generator seeded with
``[seed, i]`` draws, in this order, the data set (by the specs' probabilities), the sample in it (uniformly, with
replacement) and whether to flip. A run resumed at item ``k`` therefore sees exactly the data an uninterrupted run
would have seen, whatever the number of data-loader workers.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from trainer.data.common import DataError, DepthReader, Sample, resize_cover_crop
from trainer.data.folder import FolderReader
from trainer.data.hypersim import HypersimReader
from trainer.data.tartanair import TartanAirReader
from trainer.data.vkitti2 import VKITTI2Reader

logger = logging.getLogger(__name__)

KINDS: tuple[str, ...] = ("hypersim", "vkitti2", "tartanair", "folder")
SPLITS: tuple[str, ...] = ("train", "val", "test")
READERS: dict[str, type[DepthReader]] = {
    "hypersim": HypersimReader,
    "vkitti2": VKITTI2Reader,
    "tartanair": TartanAirReader,
    "folder": FolderReader,
}
#: How many corrupt samples in a row ``skip_corrupt`` tolerates for one item before giving up.
MAX_CONSECUTIVE_SKIPS = 100


@dataclass
class DatasetSpec:
    """One training data set: where it is, which split, how often to draw from it, which depths are valid.

    ``min_depth``/``max_depth`` left as None take the kind's defaults (hypersim 1e-5..65, vkitti2 1e-5..80,
    tartanair 1e-5..80, folder 1e-5..1000 m). ``split_file`` overrides the split list (Hypersim's CSV, or a
    name-per-line file for the others).
    """

    kind: str
    root: str
    split: str = "train"
    probability: float = 1.0
    min_depth: float | None = None
    max_depth: float | None = None
    skip_corrupt: bool = False
    split_file: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"data set kind must be one of {KINDS}, got {self.kind!r}")
        if self.split not in SPLITS:
            raise ValueError(f"{self.kind}: split must be one of {SPLITS}, got {self.split!r}")
        p = float(self.probability)
        if not (math.isfinite(p) and p >= 0):
            raise ValueError(f"{self.kind}: probability must be a finite number >= 0, got {self.probability!r}")
        self.probability = p
        reader = READERS[self.kind]
        self.min_depth = float(reader.default_min_depth if self.min_depth is None else self.min_depth)
        self.max_depth = float(reader.default_max_depth if self.max_depth is None else self.max_depth)
        lo, hi = self.min_depth, self.max_depth
        if not (math.isfinite(lo) and math.isfinite(hi) and 0 <= lo < hi):
            raise ValueError(
                f"{self.kind}: valid depth range needs 0 <= min_depth < max_depth, "
                f"got {self.min_depth}..{self.max_depth}"
            )
        self.root = str(self.root)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DatasetSpec:
        """From a config mapping (e.g. one entry of a YAML ``datasets:`` list); unknown keys are an error."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown data set field(s) {unknown}; known: {sorted(known)}")
        return cls(**data)


def make_reader(spec: DatasetSpec) -> DepthReader:
    """The reader of a spec's data set and split."""
    return READERS[spec.kind](
        spec.root, spec.split, min_depth=spec.min_depth, max_depth=spec.max_depth, split_file=spec.split_file
    )


def read_sample(spec: DatasetSpec, name: str) -> Sample:
    """Load one sample of a spec's data set at its own resolution (rgb uint8, depth float32 m, valid, intrinsics)."""
    return make_reader(spec).load(name)


def sample_to_item(
    sample: Sample, resolution: tuple[int, int], flip: bool
) -> dict[str, Any]:
    """A sample as a training item: resize to cover, centre crop, optional horizontal flip, tensors."""
    import torch

    rgb, depth, valid = resize_cover_crop(sample, resolution)
    if flip:
        rgb, depth, valid = rgb[:, ::-1], depth[:, ::-1], valid[:, ::-1]
    rgb_t = torch.from_numpy(np.ascontiguousarray(rgb).transpose(2, 0, 1).astype(np.float32))
    valid = np.ascontiguousarray(valid) & (depth > 0)
    return {
        "rgb": rgb_t / 127.5 - 1.0,  # uint8 [0, 255] -> [-1, 1], as the image VAE expects
        "depth": torch.from_numpy(np.where(valid, depth, 0).astype(np.float32)[None]),
        "valid": torch.from_numpy(valid[None]),
        "name": sample.name,
    }


def _torch_dataset_base() -> type:
    import torch.utils.data

    return torch.utils.data.Dataset


class MixedDepthDataset(_torch_dataset_base()):  # type: ignore[misc]
    """Several data sets mixed by probability; see the module docstring for the determinism contract."""

    def __init__(
        self,
        specs: list[DatasetSpec],
        resolution: tuple[int, int],
        hflip: bool,
        seed: int,
        length: int | None = None,
    ) -> None:
        if not specs:
            raise ValueError("build_training_dataset needs at least one DatasetSpec")
        if len(resolution) != 2 or min(int(resolution[0]), int(resolution[1])) <= 0:
            raise ValueError(f"resolution must be (H, W) with positive sizes, got {resolution!r}")
        self.specs = list(specs)
        self.resolution = (int(resolution[0]), int(resolution[1]))
        self.hflip = bool(hflip)
        self.seed = int(seed)
        self.readers = [make_reader(s) for s in self.specs]
        self.names: list[list[str]] = []
        for spec, reader in zip(self.specs, self.readers):
            names = reader.names()
            if not names:
                raise DataError(f"{spec.root}: no {spec.kind} samples found for split {spec.split!r}")
            self.names.append(names)
        weights = np.array([s.probability for s in self.specs], dtype=np.float64)
        if weights.sum() <= 0:
            raise ValueError("at least one data set needs a probability > 0")
        self.probabilities = weights / weights.sum()
        self.length = sum(len(n) for n in self.names) if length is None else int(length)
        if self.length <= 0:
            raise ValueError(f"length must be positive, got {self.length}")
        self.num_skipped = 0

    def check_files(self, shown: int = 20) -> None:
        """Every file of every split exists and is readable; else one DataError listing all of them (the first
        ``shown`` by name, then a count). A spec with ``skip_corrupt`` only logs its missing files."""
        lines: list[str] = []
        for spec, reader, names in zip(self.specs, self.readers, self.names):
            problems = reader.file_problems(names)
            if not problems:
                continue
            if spec.skip_corrupt:
                logger.warning("%s %s: %d of the split's files are missing or unreadable (skip_corrupt: those samples "
                               "are skipped when drawn), e.g. %s", spec.kind, spec.root, len(problems), problems[0])
                continue
            lines.append(f"{spec.kind} data set {spec.root} (split {spec.split!r}): {len(problems)} file(s) missing or "
                         "unreadable:")
            lines.extend(f"  {p}" for p in problems[:shown])
            if len(problems) > shown:
                lines.append(f"  ... and {len(problems) - shown} more")
        if lines:
            raise DataError("\n".join(lines + ["Fix the data set or its split file (or set skip_corrupt: true on the "
                                                "data set to skip such samples)."]))

    def __len__(self) -> int:
        return self.length

    def _draw(self, index: int) -> tuple[np.random.Generator, int, int, bool]:
        rng = np.random.default_rng([self.seed, index])
        k = int(rng.choice(len(self.specs), p=self.probabilities))
        j = int(rng.integers(len(self.names[k])))
        flip = bool(rng.random() < 0.5) if self.hflip else False
        return rng, k, j, flip

    def draw(self, index: int) -> tuple[int, int, bool]:
        """(data set index, sample index, flip) of item ``index``, without loading it."""
        _, k, j, flip = self._draw(int(index))
        return k, j, flip

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if not 0 <= index < self.length:
            raise IndexError(f"item {index} out of range for a data set of length {self.length}")
        rng, k, j, flip = self._draw(index)
        spec, reader = self.specs[k], self.readers[k]
        for _ in range(MAX_CONSECUTIVE_SKIPS):
            name = self.names[k][j]
            try:
                sample = reader.load(name)
            except DataError as e:
                if not spec.skip_corrupt:
                    raise
                self.num_skipped += 1
                logger.warning(
                    "skipping corrupt %s sample %s: %s (%d skipped so far)", spec.kind, name, e, self.num_skipped
                )
                # The replacement comes from the same generator, so the item stays a function of (seed, index).
                j = int(rng.integers(len(self.names[k])))
                continue
            item = sample_to_item(sample, self.resolution, flip)
            item["dataset"] = spec.kind
            return item
        raise DataError(
            f"{spec.root}: {MAX_CONSECUTIVE_SKIPS} corrupt {spec.kind} samples in a row for item {index}; "
            "is the data set readable at all?"
        )


def build_training_dataset(
    specs: list[DatasetSpec],
    resolution: tuple[int, int],
    hflip: bool,
    seed: int,
    length: int | None = None,
) -> MixedDepthDataset:
    """The mixed training data set; item ``i`` is ``{"rgb", "depth", "valid", "name", "dataset"}``.

    ``rgb`` float32 [3, H, W] in [-1, 1]; ``depth`` float32 [1, H, W] planar metres, 0 where invalid; ``valid``
    bool [1, H, W]; ``name`` the sample's name in its data set; ``dataset`` its kind. ``length`` defaults to the
    total number of samples over all specs.
    """
    return MixedDepthDataset(specs, resolution, hflip, seed, length)
