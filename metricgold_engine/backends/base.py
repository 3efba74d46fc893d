"""The interface every depth model implements: a photo in, metric depth (and what else the model knows) out."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

#: ``progress(stage, step, total)``: called by a backend as it works; raising in it aborts the prediction.
ProgressCallback = Callable[[str, int, int], None]


@dataclass
class DepthPrediction:
    """One photo's prediction.

    ``depth``: float32 metres, H x W at the photo's size (after EXIF orientation); ``uncertainty``: float32 metres,
    same size, or None; ``focal_px``: the focal length in pixels of the photo that the model itself estimated
    (Depth Pro), or None; ``settings``: the JSON-able options actually used.
    """

    depth: np.ndarray
    uncertainty: np.ndarray | None = None
    focal_px: float | None = None
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelInfo:
    """What a user must know about a model before using it: ``licence`` is shown by the CLI, the worker's
    ``hello`` and the add-on, because several popular weights are non-commercial."""

    name: str  # the folder or Hub id it was loaded from
    kind: str  # "metricgold", "depth_pro", "depth_anything", "zoedepth"
    licence: str | None = None  # from the model card's metadata where present, else None ("unknown")
    default_options: dict[str, Any] = field(default_factory=dict)
    demo_model: bool = False  # the built-in demo checkpoint (rough depth: say so)

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "licence": self.licence,
                "default_options": dict(self.default_options), "demo_model": self.demo_model}


class DepthEstimator(abc.ABC):
    """A loaded metric depth model. ``predict`` takes a path, PIL image or H x W x 3 array."""

    @abc.abstractmethod
    def predict(
        self,
        image: Any,
        *,
        focal_px: float | None = None,
        progress: ProgressCallback | None = None,
        **options: Any,
    ) -> DepthPrediction:
        """Metric depth for one photo. ``focal_px`` is a known focal length in pixels of the photo (user or EXIF);
        a model whose metric scale depends on it (Depth Pro) uses it. Unknown ``options`` raise ValueError."""

    @abc.abstractmethod
    def info(self) -> ModelInfo:
        """Name, kind, licence and default options."""
