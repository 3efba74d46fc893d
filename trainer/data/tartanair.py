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

from trainer.data.common import DataError, DepthReader, Sample, make_sample, read_npy_depth, read_rgb

INTRINSICS = {"fx": 320.0, "fy": 320.0, "cx": 320.0, "cy": 240.0}
_SUFFIX = "_left.png"


class TartanAirReader(DepthReader):
    kind = "tartanair"
    default_min_depth = 1e-5
    default_max_depth = 80.0

    def list_names(self) -> list[str]:
        # ENV/Easy/P000/image_left (3 levels) or ENV/ENV/Easy/P000/image_left (4 levels).
        dirs = sorted(self.root.glob("*/*/*/image_left")) + sorted(self.root.glob("*/*/*/*/image_left"))
        names = []
        for d in dirs:
            traj = d.parent.relative_to(self.root).as_posix()
            for img in sorted(d.glob("*" + _SUFFIX)):
                names.append(f"{traj}/{img.name[: -len(_SUFFIX)]}")
        return names

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
