"""What a prediction through the worker returns: progress events and the result, whose arrays are read on first use."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from .errors import WorkerError
from .geometry import Camera

@dataclass(frozen=True)
class Progress:
    """One `progress` notification: ``stage`` is "load_model", "load_image", "denoise" (MetricGold) or "predict"
    (a one-pass model), or "save"; ``step`` of ``total``."""

    stage: str
    step: int
    total: int


@dataclass(frozen=True)
class PredictionResult:
    """What the worker wrote. The arrays are read from disk on first access.

    ``camera``: the camera of the depth (fx, fy, cx, cy, width, height, focal_source, focal_35mm, description;
    :meth:`get_camera` parses it); ``model``: the model's info (name, kind, licence, default_options, demo_model);
    ``ignored_options``: options sent that this model does not have (MetricGold's, to a one-pass model).
    """

    depth_path: str
    uncertainty_path: str | None
    shape: tuple[int, int]
    depth_min: float | None
    depth_max: float | None
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    camera: dict[str, Any] | None = None
    model: dict[str, Any] | None = None
    ignored_options: tuple[str, ...] = ()

    def get_camera(self) -> Camera | None:
        """The camera as :class:`~metricgold_engine.core.geometry.Camera`, or None when the worker sent none."""
        return None if self.camera is None else Camera.from_json(self.camera, "predict result camera")

    @functools.cached_property
    def depth(self) -> np.ndarray:
        """Depth in metres, float32, H x W."""
        return _load_npy(self.depth_path, self.shape)

    @functools.cached_property
    def uncertainty(self) -> np.ndarray | None:
        """Ensemble uncertainty in metres, float32, H x W; None when it was not asked for."""
        return None if self.uncertainty_path is None else _load_npy(self.uncertainty_path, self.shape)

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> PredictionResult:
        try:
            height, width = value["shape"]
            return cls(
                depth_path=str(value["depth_path"]),
                uncertainty_path=None if value.get("uncertainty_path") is None else str(value["uncertainty_path"]),
                shape=(int(height), int(width)),
                depth_min=None if value.get("depth_min") is None else float(value["depth_min"]),
                depth_max=None if value.get("depth_max") is None else float(value["depth_max"]),
                settings=dict(value.get("settings") or {}),
                seconds=float(value.get("seconds", 0.0)),
                camera=None if value.get("camera") is None else dict(value["camera"]),
                model=None if value.get("model") is None else dict(value["model"]),
                ignored_options=tuple(str(x) for x in value.get("ignored_options") or ()),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise WorkerError(f"malformed predict result from the worker ({exc!r}): {value!r}") from None


def _load_npy(path: str, shape: tuple[int, int]) -> np.ndarray:
    array = np.load(path, allow_pickle=False)  # never unpickle: the file could have been replaced
    if array.shape != shape:
        raise WorkerError(f"{path}: expected an array of shape {list(shape)}, found {list(array.shape)}")
    return array.astype(np.float32, copy=False)
