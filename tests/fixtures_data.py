"""Builders of tiny data sets in each data set's exact on-disk format, for the data and evaluation tests.

Each builder writes with the format's own tools (h5py, Pillow 16-bit PNG, numpy .npy, OpenEXR) and returns what it
wrote, so that tests compare values read back with values computed here independently of the readers.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import h5py  # type: ignore[import-untyped]
import numpy as np
from PIL import Image

HYPERSIM_CSV_HEADER = [
    "scene_name",
    "camera_name",
    "frame_id",
    "included_in_public_release",
    "exclude_reason",
    "split_partition_name",
]


def random_rgb(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def write_png16(path: Path, values: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(values, dtype=np.uint16)).save(path)


# --------------------------------------------------------------------------------------------------------------------
# Hypersim


def write_hypersim_frame(
    root: Path, scene: str, camera: str, frame: int, color: np.ndarray, distance: np.ndarray
) -> tuple[Path, Path]:
    """frame.IIII.color.hdf5 (float16 HDR) and frame.IIII.depth_meters.hdf5 (float16), dataset name "dataset"."""
    images = root / scene / "images"
    color_path = images / f"scene_{camera}_final_hdf5" / f"frame.{frame:04d}.color.hdf5"
    depth_path = images / f"scene_{camera}_geometry_hdf5" / f"frame.{frame:04d}.depth_meters.hdf5"
    entity_path = depth_path.with_name(f"frame.{frame:04d}.render_entity_id.hdf5")
    for p in (color_path, depth_path):
        p.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(color_path, "w") as f:
        f.create_dataset("dataset", data=color.astype(np.float16), compression="gzip")
    with h5py.File(depth_path, "w") as f:
        f.create_dataset("dataset", data=distance.astype(np.float16), compression="gzip")
    with h5py.File(entity_path, "w") as f:
        f.create_dataset("dataset", data=np.where(np.isfinite(distance), 7, -1).astype(np.int16))
    return color_path, depth_path


def write_hypersim_split(root: Path, rows: list[tuple[str, str, int, bool, str]]) -> Path:
    """metadata_images_split_scene_v1.csv with rows (scene, camera, frame, public, split)."""
    path = root / "metadata_images_split_scene_v1.csv"
    root.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(HYPERSIM_CSV_HEADER)
        for scene, cam, frame, public, split in rows:
            w.writerow([scene, cam, frame, str(public), "" if public else "some reason", split])
    return path


def make_hypersim(
    root: Path, h: int = 12, w: int = 16, seed: int = 0
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Two scenes: ai_001_001 cam_00 frames 0 (train), 1 (val), 2 (train, not public); ai_001_002 cam_01 frame 0
    (train); plus a CSV row of a scene that is not on disk. Returns {name: (hdr colour, distance)}; distance has NaN
    where no geometry (the top-left 2x2 block)."""
    rng = np.random.default_rng(seed)
    out = {}
    for scene, cam, frame in [("ai_001_001", "cam_00", 0), ("ai_001_001", "cam_00", 1), ("ai_001_002", "cam_01", 0)]:
        color = rng.uniform(0.0, 3.0, size=(h, w, 3)).astype(np.float16).astype(np.float32)
        distance = rng.uniform(0.5, 30.0, size=(h, w)).astype(np.float16).astype(np.float32)
        distance[:2, :2] = np.nan
        write_hypersim_frame(root, scene, cam, frame, color, distance)
        out[f"{scene}/{cam}/{frame:04d}"] = (color, distance)
    write_hypersim_split(
        root,
        [
            ("ai_001_001", "cam_00", 0, True, "train"),
            ("ai_001_001", "cam_00", 1, True, "val"),
            ("ai_001_001", "cam_00", 2, False, "train"),
            ("ai_001_002", "cam_01", 0, True, "train"),
            ("ai_999_999", "cam_00", 0, True, "train"),  # scene not downloaded
        ],
    )
    return out


# --------------------------------------------------------------------------------------------------------------------
# Virtual KITTI 2


def make_vkitti2(
    root: Path, h: int = 10, w: int = 20, seed: int = 0, with_intrinsics: bool = True
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Scene01/clone/Camera_0 frames 00000, 00001 and Scene02/fog/Camera_1 frame 00000 in the official tarball
    layout. Depth in cm with a sky band (65535) in row 0 and a 9000 cm (90 m, beyond 80) pixel at (1, 0).
    Returns {name: (rgb written, depth_cm)}."""
    rng = np.random.default_rng(seed)
    out = {}
    for scene, variant, cam, frame in [
        ("Scene01", "clone", 0, 0),
        ("Scene01", "clone", 0, 1),
        ("Scene02", "fog", 1, 0),
    ]:
        rgb = random_rgb(rng, h, w)
        depth_cm = rng.integers(100, 7000, size=(h, w)).astype(np.uint16)
        depth_cm[0, :] = 65535
        depth_cm[1, 0] = 9000
        frames_dir = Path(scene) / variant / "frames"
        rgb_path = root / "vkitti_2.0.3_rgb" / frames_dir / "rgb" / f"Camera_{cam}" / f"rgb_{frame:05d}.jpg"
        rgb_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).save(rgb_path, quality=95)
        depth_path = root / "vkitti_2.0.3_depth" / frames_dir / "depth" / f"Camera_{cam}" / f"depth_{frame:05d}.png"
        write_png16(depth_path, depth_cm)
        out[f"{scene}/{variant}/Camera_{cam}/{frame:05d}"] = (rgb, depth_cm)
    if with_intrinsics:
        intr = root / "vkitti_2.0.3_textgt" / "Scene01" / "clone" / "intrinsic.txt"
        intr.parent.mkdir(parents=True, exist_ok=True)
        intr.write_text(
            "frame cameraID K[0,0] K[1,1] K[0,2] K[1,2]\n"
            "0 0 725.0087 725.0087 620.5 187\n0 1 725.0087 725.0087 620.5 187\n"
            "1 0 700.5 701.5 610.25 180.75\n1 1 700.5 701.5 610.25 180.75\n"
        )
    return out


# --------------------------------------------------------------------------------------------------------------------
# TartanAir


def make_tartanair(root: Path, h: int = 8, w: int = 12, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """abandonedfactory/Easy/P000 frames 000000, 000001 and abandonedfactory/Hard/P001 frame 000000; depth float32
    metres with sky (1e4 m) in row 0. Returns {name: (rgb, depth)}."""
    rng = np.random.default_rng(seed)
    out = {}
    for diff, traj, frame in [("Easy", "P000", 0), ("Easy", "P000", 1), ("Hard", "P001", 0)]:
        base = root / "abandonedfactory" / diff / traj
        (base / "image_left").mkdir(parents=True, exist_ok=True)
        (base / "depth_left").mkdir(parents=True, exist_ok=True)
        rgb = random_rgb(rng, h, w)
        depth = rng.uniform(0.5, 60.0, size=(h, w)).astype(np.float32)
        depth[0, :] = 10000.0
        Image.fromarray(rgb).save(base / "image_left" / f"{frame:06d}_left.png")
        np.save(base / "depth_left" / f"{frame:06d}_left_depth.npy", depth)
        out[f"abandonedfactory/{diff}/{traj}/{frame:06d}"] = (rgb, depth)
        (base / "pose_left.txt").write_text("0 0 0 0 0 0 1\n")
    return out


# --------------------------------------------------------------------------------------------------------------------
# Plain folder format


def make_folder(
    root: Path,
    names_formats: dict[str, str],
    h: int = 8,
    w: int = 10,
    seed: int = 0,
    intrinsics: dict[str, dict[str, float]] | None = None,
    splits: dict[str, list[str]] | None = None,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """ROOT/rgb/NAME.png + ROOT/depth/NAME.{npy,exr,png}; {name: format}. Depth in metres, with 0 at (0, 0)
    (invalid); PNG depth is whole millimetres. Returns {name: (rgb, depth metres as written)}."""
    import OpenEXR  # type: ignore[import-not-found]

    rng = np.random.default_rng(seed)
    out = {}
    for name, fmt in names_formats.items():
        rgb = random_rgb(rng, h, w)
        rgb_path = root / "rgb" / f"{name}.png"
        rgb_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).save(rgb_path)
        depth = rng.uniform(0.5, 40.0, size=(h, w)).astype(np.float32)
        depth[0, 0] = 0.0
        depth_path = root / "depth" / f"{name}.{fmt}"
        depth_path.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "npy":
            np.save(depth_path, depth)
        elif fmt == "png":
            mm = np.round(depth * 1000.0).astype(np.uint16)
            write_png16(depth_path, mm)
            depth = mm.astype(np.float32) / 1000.0
        elif fmt == "exr":
            header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
            with OpenEXR.File(header, {"Y": depth}) as f:
                f.write(str(depth_path))
        else:
            raise ValueError(fmt)
        out[name] = (rgb, depth)
    for name, intr in (intrinsics or {}).items():
        p = root / "intrinsics" / f"{name}.json"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(intr))
    for split, names in (splits or {}).items():
        (root / f"{split}.txt").write_text("".join(n + "\n" for n in names))
    return out


# --------------------------------------------------------------------------------------------------------------------
# Evaluation sets


def make_nyuv2(root: Path, n: int = 2, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Marigold's extracted layout at full 480 x 640: test/SCENE/rgb_NNNN.png + depth_NNNN.png (uint16 mm).
    Depth rises 1..8 m left to right, times (1 + 0.1 i) for image i; a 0 (invalid) block at the top left.
    Returns {rgb path relative to root: (rgb, depth in metres)}."""
    rng = np.random.default_rng(seed)
    out = {}
    h, w = 480, 640
    base_depth = np.tile(np.linspace(1.0, 8.0, w, dtype=np.float64), (h, 1))
    for i in range(n):
        scene = "bathroom" if i % 2 == 0 else "kitchen"
        folder = root / "test" / scene
        folder.mkdir(parents=True, exist_ok=True)
        rgb = random_rgb(rng, h, w)
        mm = np.round(base_depth * 1000.0 * (1.0 + 0.1 * i)).astype(np.uint16)
        mm[:20, :20] = 0
        Image.fromarray(rgb).save(folder / f"rgb_{i:04d}.png")
        write_png16(folder / f"depth_{i:04d}.png", mm)
        out[f"test/{scene}/rgb_{i:04d}.png"] = (rgb, mm.astype(np.float32) / 1000.0)
    return out


def make_kitti(
    root: Path, n: int = 2, seed: int = 0, h: int = 375, w: int = 1242
) -> tuple[Path, dict[str, np.ndarray]]:
    """KITTI raw RGB + annotated GT PNGs (uint16, metres * 256, 0 = invalid, sparse) and an Eigen split file with
    one extra line whose GT is None. Returns (split file, {rgb rel path: GT metres at full size})."""
    rng = np.random.default_rng(seed)
    lines = []
    out = {}
    for i in range(n):
        rgb_rel = f"2011_09_26/2011_09_26_drive_0002_sync/image_02/data/{i:010d}.png"
        gt_rel = f"2011_09_26_drive_0002_sync/proj_depth/groundtruth/image_02/{i:010d}.png"
        (root / rgb_rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(random_rgb(rng, h, w)).save(root / rgb_rel)
        metres = rng.uniform(2.0, 70.0, size=(h, w))
        raw = np.round(metres * 256.0).astype(np.uint16)
        raw[rng.random((h, w)) < 0.8] = 0  # LiDAR ground truth is sparse
        write_png16(root / gt_rel, raw)
        out[rgb_rel] = raw.astype(np.float32) / 256.0
        lines.append(f"{rgb_rel} {gt_rel} 721.5377")
    lines.insert(1, "2011_09_26/2011_09_26_drive_0002_sync/image_02/data/0000000099.png None 721.5377")
    split = root / "eigen_test_files_with_gt.txt"
    split.write_text("\n".join(lines) + "\n")
    return split, out
