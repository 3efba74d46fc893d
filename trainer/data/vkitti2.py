"""Virtual KITTI 2 (Cabon et al. 2020), read from the data set's own files.

Layout under ``root`` (the official tarballs unpacked side by side; ``rgb``/``depth``/``textgt`` also accepted as
the top folder names)::

    vkitti_2.0.3_rgb/SceneNN/VARIANT/frames/rgb/Camera_C/rgb_FFFFF.jpg
    vkitti_2.0.3_depth/SceneNN/VARIANT/frames/depth/Camera_C/depth_FFFFF.png    uint16 centimetres, 65535 = sky
    vkitti_2.0.3_textgt/SceneNN/VARIANT/intrinsic.txt                           optional

Sample names are ``SceneNN/VARIANT/Camera_C/FFFFF``. Depth is planar, metres = value / 100; 65535 (655.35 m) is sky
and always invalid. Intrinsics come from ``intrinsic.txt`` (``frame cameraID K[0,0] K[1,1] K[0,2] K[1,2]``) when it
is there, else the data set's documented values fx = fy = 725.0087, cx = 620.5, cy = 187.

Virtual KITTI 2 has no official split. ``root/{split}.txt`` (or the spec's ``split_file``), one sample name a
line, selects one; without it every frame is in every split.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from trainer.data.common import DataError, DepthReader, Sample, make_sample, read_png_uint16, read_rgb

SKY_CM = 65535
DEFAULT_INTRINSICS = {"fx": 725.0087, "fy": 725.0087, "cx": 620.5, "cy": 187.0}
_TOP = {
    "rgb": ("vkitti_2.0.3_rgb", "rgb"),
    "depth": ("vkitti_2.0.3_depth", "depth"),
    "textgt": ("vkitti_2.0.3_textgt", "textgt"),
}
_RGB_RE = re.compile(r"rgb_(\d+)\.jpg$")


def depth_cm_to_metres(depth_cm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(metres as float32, sky mask) of a uint16 centimetre depth map."""
    sky = depth_cm == SKY_CM
    return (depth_cm.astype(np.float32) / np.float32(100.0)), sky


def parse_intrinsics_file(path: Path) -> dict[tuple[int, int], dict[str, float]]:
    """``intrinsic.txt`` as {(frame, camera): {"fx", "fy", "cx", "cy"}}."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise DataError(f"{path}: cannot read the intrinsics file ({e})") from e
    table: dict[tuple[int, int], dict[str, float]] = {}
    for line_no, line in enumerate(lines, start=1):
        parts = line.split()
        if not parts or parts[0] == "frame":  # header
            continue
        try:
            frame, cam = int(parts[0]), int(parts[1])
            fx, fy, cx, cy = (float(p) for p in parts[2:6])
        except (ValueError, IndexError):
            raise DataError(f"{path}, line {line_no}: expected 'frame cameraID fx fy cx cy', got {line!r}") from None
        table[(frame, cam)] = {"fx": fx, "fy": fy, "cx": cx, "cy": cy}
    return table


class VKITTI2Reader(DepthReader):
    kind = "vkitti2"
    default_min_depth = 1e-5
    default_max_depth = 80.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # DepthReader's arguments
        super().__init__(*args, **kwargs)
        self._intrinsics: dict[Path, dict[tuple[int, int], dict[str, float]] | None] = {}

    def _top(self, what: str) -> Path:
        for candidate in _TOP[what]:
            if (self.root / candidate).is_dir():
                return self.root / candidate
        if what == "textgt":
            return self.root / _TOP[what][0]
        raise DataError(f"{self.root}: no Virtual KITTI 2 {what} folder (expected {' or '.join(_TOP[what])})")

    def list_names(self) -> list[str]:
        names = []
        for path in sorted(self._top("rgb").glob("Scene*/*/frames/rgb/Camera_*/rgb_*.jpg")):
            m = _RGB_RE.search(path.name)
            if m is not None:
                scene, variant = path.parts[-6], path.parts[-5]
                names.append(f"{scene}/{variant}/{path.parent.name}/{m.group(1)}")
        return names

    def paths(self, name: str) -> tuple[Path, Path]:
        try:
            scene, variant, camera, frame = name.split("/")
        except ValueError:
            raise DataError(f"Virtual KITTI 2 sample name {name!r} is not 'SceneNN/VARIANT/Camera_C/FFFFF'") from None
        rgb = self._top("rgb") / scene / variant / "frames" / "rgb" / camera / f"rgb_{frame}.jpg"
        depth = self._top("depth") / scene / variant / "frames" / "depth" / camera / f"depth_{frame}.png"
        return rgb, depth

    def intrinsics(self, name: str) -> dict[str, float]:
        scene, variant, camera, frame = name.split("/")
        path = self._top("textgt") / scene / variant / "intrinsic.txt"
        if path not in self._intrinsics:
            self._intrinsics[path] = parse_intrinsics_file(path) if path.is_file() else None
        table = self._intrinsics[path]
        if table is None:
            return dict(DEFAULT_INTRINSICS)
        key = (int(frame), int(camera.rsplit("_", 1)[-1]))
        if key not in table:
            raise DataError(f"{path}: no intrinsics for frame {key[0]} camera {key[1]}")
        return dict(table[key])

    def load(self, name: str) -> Sample:
        rgb_path, depth_path = self.paths(name)
        rgb = read_rgb(rgb_path)
        depth_m, sky = depth_cm_to_metres(read_png_uint16(depth_path))
        return make_sample(
            name,
            rgb,
            depth_m,
            self.min_depth,
            self.max_depth,
            intrinsics=self.intrinsics(name),
            extra_invalid=sky,  # sky is invalid even if a user raises max_depth above 655 m
            source=depth_path,
        )
