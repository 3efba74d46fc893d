"""TartanAir v1 (Wang et al. 2020), read from the data set's own files.

Layout under ``root`` (one folder per environment, as the download script unpacks it; an extra level
``ENV/ENV/Easy/...`` as some zips have it is found too)::

    ENV/{Easy,Hard}/PNNN/image_left/FFFFFF_left.png              640 x 480 RGB
    ENV/{Easy,Hard}/PNNN/depth_left/FFFFFF_left_depth.npy        planar depth in metres (float32)

Sample names are ``ENV/DIFFICULTY/PNNN/FFFFFF`` (relative path of the trajectory folder, then the frame). Sky has
huge depth (~1e4 m) and is invalid above ``max_depth`` (default 80 m). Intrinsics are the data set's fixed
fx = fy = 320, cx = 320, cy = 240 (90 degrees field of view).

TartanAir has no official split; ``root/{split}.txt`` (or the spec's ``split_file``), one name a line, selects
one; without it every frame is in every split.
"""

from __future__ import annotations

from pathlib import Path

from trainer.data.common import DataError, Sample, make_sample, read_name_list, read_npy_depth, read_rgb

INTRINSICS = {"fx": 320.0, "fy": 320.0, "cx": 320.0, "cy": 240.0}
_SUFFIX = "_left.png"


class TartanAirReader:
    kind = "tartanair"
    default_min_depth = 1e-5
    default_max_depth = 80.0

    def __init__(
        self,
        root: str | Path,
        split: str,
        min_depth: float | None = None,
        max_depth: float | None = None,
        split_file: str | Path | None = None,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.min_depth = self.default_min_depth if min_depth is None else min_depth
        self.max_depth = self.default_max_depth if max_depth is None else max_depth
        self.split_file = Path(split_file) if split_file else self.root / f"{split}.txt"
        self._names: list[str] | None = None

    def names(self) -> list[str]:
        if self._names is None:
            if self.split_file.is_file():
                self._names = read_name_list(self.split_file)
            else:
                # ENV/Easy/P000/image_left (3 levels) or ENV/ENV/Easy/P000/image_left (4 levels).
                dirs = sorted(self.root.glob("*/*/*/image_left")) + sorted(self.root.glob("*/*/*/*/image_left"))
                names = []
                for d in dirs:
                    traj = d.parent.relative_to(self.root).as_posix()
                    for img in sorted(d.glob("*" + _SUFFIX)):
                        names.append(f"{traj}/{img.name[: -len(_SUFFIX)]}")
                self._names = names
        return self._names

    def paths(self, name: str) -> tuple[Path, Path]:
        traj, _, frame = name.rpartition("/")
        if not traj or not frame:
            raise DataError(f"TartanAir sample name {name!r} is not 'ENV/DIFFICULTY/PNNN/FFFFFF'")
        base = self.root / traj
        return base / "image_left" / f"{frame}_left.png", base / "depth_left" / f"{frame}_left_depth.npy"

    def load(self, name: str) -> Sample:
        rgb_path, depth_path = self.paths(name)
        rgb = read_rgb(rgb_path)
        depth = read_npy_depth(depth_path)
        return make_sample(
            name, rgb, depth, self.min_depth, self.max_depth, intrinsics=dict(INTRINSICS), source=depth_path
        )
