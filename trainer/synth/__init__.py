"""Synthetic RGB-D data rendered by Blender: procedural rooms, tabletops and streets with exact metric depth.

``python -m trainer.synth --out DIR --count N --resolution 256x192 --seed S`` writes the trainer's plain folder
format (see ``docs/synthetic_data.md``); from Python, ``trainer.synth.generate.generate``. Importing this package
does not import bpy: the scene sampler
(:mod:`.scenes`), the camera model (:mod:`.camera`) and the output folder logic (:mod:`.output`) are pure; only
:mod:`.blender_scene` (imported when rendering) needs Blender.
"""

from __future__ import annotations

from .camera import blender_camera_intrinsics, lens_from_horizontal_fov
from .output import frame_done, frame_name, is_val
from .scenes import SCENE_KINDS, SceneSpec, frame_rng, sample_scene

__all__ = [
    "SCENE_KINDS",
    "SceneSpec",
    "blender_camera_intrinsics",
    "frame_done",
    "frame_name",
    "frame_rng",
    "is_val",
    "lens_from_horizontal_fov",
    "sample_scene",
]

