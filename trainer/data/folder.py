"""MetricGold's plain folder format, which any user can fill (docs/architecture.md, docs/datasets.md)::

    ROOT/rgb/NAME.png|.jpg|.jpeg       RGB image
    ROOT/depth/NAME.npy|.exr|.png      planar depth in metres (float32); .png = uint16 millimetres, 0 = invalid
    ROOT/intrinsics/NAME.json          optional: {"fx": .., "fy": .., "cx": .., "cy": ..} in pixels of the RGB image
    ROOT/train.txt, val.txt, test.txt  optional: one NAME a line; without them every NAME is in every split

NAME may contain sub-folders (``rgb/kitchen/0001.png`` is NAME ``kitchen/0001``). Depth files are read with
:func:`metricgold_engine.core.depth_io.read_depth`; 0, negative, NaN and inf are invalid.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from metricgold_engine.core.depth_io import DepthFileError, read_depth
from trainer.data.common import DataError, DepthReader, Sample, make_sample, read_rgb

RGB_SUFFIXES = (".png", ".jpg", ".jpeg")
DEPTH_SUFFIXES = (".npy", ".exr", ".png")


def read_intrinsics_json(path: Path) -> dict[str, float]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not a readable JSON file ({e})") from e
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object with fx, fy, cx, cy")
    out = {}
    for key in ("fx", "fy", "cx", "cy"):
        value = data.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise DataError(f"{path}: field {key!r} must be a finite number of pixels, got {value!r}")
        out[key] = float(value)
    if out["fx"] <= 0 or out["fy"] <= 0:
        raise DataError(f"{path}: focal lengths must be positive, got fx={out['fx']}, fy={out['fy']}")
    return out


class FolderReader(DepthReader):
    kind = "folder"
    default_min_depth = 1e-5
    default_max_depth = 1000.0

    def list_names(self) -> list[str]:
        rgb_dir = self.root / "rgb"
        if not rgb_dir.is_dir():
            raise DataError(f"{rgb_dir}: no such folder (the folder format needs ROOT/rgb and ROOT/depth)")
        found = {
            p.relative_to(rgb_dir).with_suffix("").as_posix()
            for p in rgb_dir.rglob("*")
            if p.is_file() and p.suffix.lower() in RGB_SUFFIXES and not p.name.startswith(".")
        }
        return sorted(found)

    def _find(self, folder: str, name: str, suffixes: tuple[str, ...], what: str) -> Path:
        base = self.root / folder / name
        for suffix in suffixes:
            for s in (suffix, suffix.upper()):
                p = base.with_name(base.name + s)
                if p.is_file():
                    return p
        tried = ", ".join(base.name + s for s in suffixes)
        raise DataError(f"{base.parent}: no {what} file for sample {name!r} (looked for {tried})")

    def paths(self, name: str) -> tuple[Path, Path]:
        return (
            self._find("rgb", name, RGB_SUFFIXES, "RGB"),
            self._find("depth", name, DEPTH_SUFFIXES, "depth"),
        )

    def load(self, name: str) -> Sample:
        rgb_path, depth_path = self.paths(name)
        rgb = read_rgb(rgb_path)
        try:
            depth = read_depth(depth_path)
        except DepthFileError as e:
            raise DataError(str(e)) from e
        intr_path = self.root / "intrinsics" / f"{name}.json"
        intrinsics = read_intrinsics_json(intr_path) if intr_path.is_file() else None
        return make_sample(
            name, rgb, depth, self.min_depth, self.max_depth, intrinsics=intrinsics, source=depth_path
        )
