"""The generator's output folder: the trainer's plain folder format, written so that a run can be resumed.

    OUT/rgb/NAME.png             8-bit RGB, Blender's colour management (AgX, sRGB)
    OUT/depth/NAME.npy|.exr      planar depth in metres, float32; 0 = no surface (sky)
    OUT/intrinsics/NAME.json     {"fx", "fy", "cx", "cy"} in pixels (OpenCV convention)
    OUT/train.txt, OUT/val.txt   one NAME a line, split by a hash of NAME
    OUT/synth.json               the settings of the run, checked when a run is resumed

NAME is the frame index with six digits (``000123``). Every file is written atomically (temporary file, then
``os.replace``), and the RGB file is written last, so a frame is complete exactly when its three files exist:
after a kill, re-running renders the missing frames and nothing else.

No bpy here: the pure parts (names, splits, completeness, settings check) are tested without rendering.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from metricgold_engine.core.depth_io import atomic_write

__all__ = [
    "DEPTH_FORMATS",
    "SynthOutputError",
    "check_or_write_manifest",
    "frame_done",
    "frame_name",
    "frame_paths",
    "is_val",
    "write_intrinsics_json",
    "write_splits",
]

DEPTH_FORMATS: tuple[str, ...] = ("npy", "exr")
MANIFEST = "synth.json"
#: Settings that change what a frame looks like: a resumed run must use the same ones.
_FRAME_DEFINING = ("seed", "width", "height", "samples", "denoise", "kinds", "mesh_files", "depth_format", "version",
                   "sequence")


class SynthOutputError(ValueError):
    """An output folder that cannot be written or resumed; the message names the file and the problem."""


def frame_name(index: int) -> str:
    if index < 0:
        raise ValueError(f"frame index must be non-negative, got {index}")
    return f"{index:06d}"


def frame_paths(out: str | os.PathLike[str], name: str, depth_format: str = "npy") -> dict[str, Path]:
    if depth_format not in DEPTH_FORMATS:
        raise ValueError(f"depth format must be one of {', '.join(DEPTH_FORMATS)}, got {depth_format!r}")
    out = Path(out)
    return {
        "rgb": out / "rgb" / f"{name}.png",
        "depth": out / "depth" / f"{name}.{depth_format}",
        "intrinsics": out / "intrinsics" / f"{name}.json",
    }


def frame_done(out: str | os.PathLike[str], name: str, depth_format: str = "npy") -> bool:
    """True when all three files of the frame exist (each is renamed into place only when complete)."""
    return all(p.is_file() for p in frame_paths(out, name, depth_format).values())


def is_val(name: str, val_fraction: float) -> bool:
    """Whether NAME belongs to the validation split: a hash of the name, so the split does not depend on the seed,
    on the count or on which frames a run happened to render."""
    if not 0.0 <= val_fraction <= 1.0:
        raise ValueError(f"val fraction must be in [0, 1], got {val_fraction}")
    h = int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big")
    return h / 2.0**64 < val_fraction


def _write_text(path: Path, text: str) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_intrinsics_json(path: str | os.PathLike[str], record: dict[str, float]) -> Path:
    path = Path(path)
    _write_text(path, json.dumps(record, indent=1) + "\n")
    return path


def write_splits(out: str | os.PathLike[str], names: list[str], val_fraction: float) -> tuple[int, int]:
    """Write ``train.txt`` and ``val.txt`` (sorted) for ``names``; returns their lengths."""
    out = Path(out)
    val = sorted(n for n in names if is_val(n, val_fraction))
    val_set = set(val)
    train = sorted(n for n in names if n not in val_set)
    _write_text(out / "train.txt", "".join(f"{n}\n" for n in train))
    _write_text(out / "val.txt", "".join(f"{n}\n" for n in val))
    return len(train), len(val)


def check_or_write_manifest(out: str | os.PathLike[str], settings: dict[str, Any]) -> None:
    """Record the run's settings in ``OUT/synth.json``, or, when the folder already holds a run, check that the
    settings that define a frame agree (resuming with another seed or resolution would mix two data sets)."""
    out = Path(out)
    path = out / MANIFEST
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SynthOutputError(f"{path}: not a readable JSON file ({e}); remove it or use another --out") from e
        if not isinstance(old, dict):
            raise SynthOutputError(f"{path}: expected a JSON object; remove it or use another --out")
        diffs = [
            f"{k}: folder has {old.get(k)!r}, this run {settings.get(k)!r}"
            for k in _FRAME_DEFINING
            if json.loads(json.dumps(old.get(k))) != json.loads(json.dumps(settings.get(k)))
        ]
        if diffs:
            raise SynthOutputError(
                f"{path}: {out} holds frames made with other settings ({'; '.join(diffs)}); "
                "resume with the same settings or pick another --out"
            )
        merged = dict(old)
        merged["count"] = max(int(old.get("count", 0)), int(settings.get("count", 0)))
        settings = merged
    _write_text(path, json.dumps(settings, indent=1, sort_keys=True) + "\n")
