"""Evaluation sets of the standard zero-shot metric-depth protocols, read from their usual on-disk layouts.

Each set is a sequence of :class:`EvalSample` and carries its protocol: valid depth range (ground truth outside it
is ignored and predictions are clipped to it) and evaluation crop (:func:`metricgold_engine.metrics.eval_crop_mask`).

NYUv2 (654 test images, 480 x 640), the layout of Marigold's ``nyu_labeled_extracted``::

    ROOT/test/SCENE/rgb_NNNN.png       RGB
    ROOT/test/SCENE/depth_NNNN.png     raw depth, uint16 millimetres (metres = value / 1000), 0 = invalid

Without a split file every ``rgb_*.png`` under ``ROOT/test`` (or ROOT) with a ``depth_*.png`` beside it is used;
a split file (``--split-file``) lists ``RGB_REL DEPTH_REL [...]`` per line, relative to ROOT (Marigold's
``filename_list_test.txt`` works as is). Protocol: 1e-3 < d < 10 m, Eigen crop rows 45:471, cols 41:601.

KITTI Eigen test split (652 images with ground truth), BTS/AdaBins-style split file
``eigen_test_files_with_gt.txt``, one ``RGB_REL GT_REL FOCAL`` a line::

    2011_09_26/2011_09_26_drive_0002_sync/image_02/data/0000000069.png
        2011_09_26_drive_0002_sync/proj_depth/groundtruth/image_02/0000000069.png 721.5377

RGB paths are relative to ROOT (the raw data), GT paths to ``gt_root`` (default ROOT); lines whose GT is ``None``
are skipped. GT is the annotated depth PNG, uint16, metres = value / 256, 0 = invalid. Both images are cut to the
KITTI benchmark crop 352 x 1216 (bottom centre) before prediction, then scored with the Garg (default) or Eigen
crop, 1e-3 < d < 80 m.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from metricgold_engine.metrics import kb_crop_box
from trainer.data.common import DataError, read_png_uint16, read_rgb
from trainer.data.folder import FolderReader

DATASETS: tuple[str, ...] = ("nyuv2", "kitti", "folder")
KITTI_SPLIT_NAME = "eigen_test_files_with_gt.txt"


@dataclass
class EvalSample:
    name: str
    rgb: np.ndarray  # uint8 H x W x 3
    depth: np.ndarray  # float32 H x W metres; 0 or NaN = no ground truth
    focal: float | None = None


def _split_lines(path: Path) -> list[tuple[int, list[str]]]:
    if not path.is_file():
        raise DataError(f"{path}: split file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read the split file ({e})") from e
    return [(n, line.split()) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]


class NYUv2TestSet:
    name = "nyuv2"
    min_depth = 1e-3
    max_depth = 10.0
    crop: str | None = "nyu_eigen"

    def __init__(self, root: str | Path, split_file: str | Path | None = None) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"{self.root}: NYUv2 data root not found")
        self.pairs: list[tuple[Path, Path]] = []
        if split_file is not None:
            split_path = Path(split_file)
            for line_no, parts in _split_lines(split_path):
                if len(parts) < 2:
                    raise DataError(f"{split_path}, line {line_no}: expected 'RGB_REL DEPTH_REL', got {parts}")
                self.pairs.append((self.root / parts[0], self.root / parts[1]))
        else:
            base = self.root / "test" if (self.root / "test").is_dir() else self.root
            for rgb in sorted(base.rglob("rgb_*.png")):
                depth = rgb.with_name("depth_" + rgb.name[len("rgb_") :])
                if depth.is_file():
                    self.pairs.append((rgb, depth))
        if not self.pairs:
            raise DataError(f"{self.root}: no NYUv2 rgb_NNNN.png / depth_NNNN.png pairs found")

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> EvalSample:
        rgb_path, depth_path = self.pairs[index]
        rgb = read_rgb(rgb_path)
        depth = read_png_uint16(depth_path).astype(np.float32) / np.float32(1000.0)
        if depth.shape != rgb.shape[:2]:
            raise DataError(f"{depth_path}: size {depth.shape} differs from the RGB's {rgb.shape[:2]}")
        return EvalSample(rgb_path.relative_to(self.root).as_posix(), rgb, depth)


class KittiEigenTestSet:
    name = "kitti"
    min_depth = 1e-3
    max_depth = 80.0

    def __init__(
        self,
        root: str | Path,
        split_file: str | Path | None = None,
        gt_root: str | Path | None = None,
        crop: str = "garg",
        kb_crop: bool = True,
    ) -> None:
        if crop not in ("garg", "eigen"):
            raise ValueError(f"KITTI crop must be 'garg' or 'eigen', got {crop!r}")
        self.root = Path(root)
        self.gt_root = Path(gt_root) if gt_root is not None else self.root
        self.crop: str | None = crop
        self.kb_crop = kb_crop
        split_path = Path(split_file) if split_file is not None else self.root / KITTI_SPLIT_NAME
        if split_file is None and not split_path.is_file():
            raise DataError(f"{split_path}: KITTI Eigen split file not found; pass --split-file")
        self.entries: list[tuple[Path, Path, float | None]] = []
        for line_no, parts in _split_lines(split_path):
            if len(parts) < 2:
                raise DataError(f"{split_path}, line {line_no}: expected 'RGB_REL GT_REL [FOCAL]', got {parts}")
            if parts[1] == "None":
                continue  # no ground truth for this frame
            try:
                focal = float(parts[2]) if len(parts) > 2 else None
            except ValueError:
                raise DataError(f"{split_path}, line {line_no}: focal {parts[2]!r} is not a number") from None
            self.entries.append((self.root / parts[0], self.gt_root / parts[1], focal))
        if not self.entries:
            raise DataError(f"{split_path}: no KITTI entries with ground truth")

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> EvalSample:
        rgb_path, gt_path, focal = self.entries[index]
        rgb = read_rgb(rgb_path)
        depth = read_png_uint16(gt_path).astype(np.float32) / np.float32(256.0)
        if depth.shape != rgb.shape[:2]:
            raise DataError(f"{gt_path}: size {depth.shape} differs from the RGB's {rgb.shape[:2]}")
        if self.kb_crop:
            try:
                top, left, bottom, right = kb_crop_box(*depth.shape)
            except ValueError as e:
                raise DataError(f"{gt_path}: {e}") from e
            rgb, depth = rgb[top:bottom, left:right], depth[top:bottom, left:right]
        return EvalSample(rgb_path.relative_to(self.root).as_posix(), np.ascontiguousarray(rgb), depth, focal)


class FolderEvalSet:
    """MetricGold's plain folder format (``ROOT/test.txt`` if present); range 1e-3..80 m unless given, no crop."""

    name = "folder"
    crop: str | None = None

    def __init__(
        self,
        root: str | Path,
        split_file: str | Path | None = None,
        min_depth: float = 1e-3,
        max_depth: float = 80.0,
    ) -> None:
        self.min_depth, self.max_depth = min_depth, max_depth
        # The reader's own range is wide open; the protocol range is applied by the evaluation.
        self.reader = FolderReader(root, "test", min_depth=0.0, max_depth=np.inf, split_file=split_file)
        self.names = self.reader.names()
        if not self.names:
            raise DataError(f"{root}: no samples in the folder data set")

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> EvalSample:
        s = self.reader.load(self.names[index])
        return EvalSample(s.name, s.rgb, s.depth, s.intrinsics["fx"] if s.intrinsics else None)


def open_eval_set(
    dataset: str,
    root: str | Path,
    split_file: str | Path | None = None,
    crop: str | None = None,
    gt_root: str | Path | None = None,
    min_depth: float | None = None,
    max_depth: float | None = None,
) -> NYUv2TestSet | KittiEigenTestSet | FolderEvalSet:
    """The evaluation set named ``dataset`` (nyuv2 | kitti | folder). ``min_depth``/``max_depth`` override the
    protocol's range (for the folder format; for NYUv2/KITTI only when deliberately leaving the protocol)."""
    es: NYUv2TestSet | KittiEigenTestSet | FolderEvalSet
    if dataset == "nyuv2":
        if crop not in (None, "nyu_eigen"):
            raise ValueError(f"NYUv2 is evaluated with the Eigen crop; --crop {crop} is for KITTI")
        es = NYUv2TestSet(root, split_file)
    elif dataset == "kitti":
        es = KittiEigenTestSet(root, split_file, gt_root=gt_root, crop=crop or "garg")
    elif dataset == "folder":
        es = FolderEvalSet(root, split_file)
        if crop is not None:
            es.crop = crop
    else:
        raise ValueError(f"evaluation data set must be one of {DATASETS}, got {dataset!r}")
    if min_depth is not None:
        es.min_depth = float(min_depth)
    if max_depth is not None:
        es.max_depth = float(max_depth)
    return es
