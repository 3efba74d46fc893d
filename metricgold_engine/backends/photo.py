"""One photo through any backend, with its camera: what the CLI, the worker and the scripts all call.

The camera's focal length comes, in order, from what the user gave, the photo's EXIF, the model's own estimate
(Depth Pro), or the default field of view (:func:`~metricgold_engine.core.geometry.resolve_camera`). A known focal
length (user or EXIF) is handed to the model too, so a model whose metric scale depends on it (Depth Pro) uses it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from ..core.geometry import Camera, exif_focal, resolve_camera
from .base import DepthEstimator, DepthPrediction, ProgressCallback


@dataclass
class PhotoPrediction:
    """A backend's prediction for one photo and the camera that goes with the depth (same size)."""

    prediction: DepthPrediction
    camera: Camera


def predict_photo(
    estimator: DepthEstimator,
    image: Any,
    *,
    fov_deg: float | None = None,
    focal_35mm: float | None = None,
    progress: ProgressCallback | None = None,
    **options: Any,
) -> PhotoPrediction:
    """Predict ``image`` (a path, PIL image or array) with ``estimator`` and resolve its camera.

    ``fov_deg`` (horizontal, degrees) or ``focal_35mm`` (35 mm equivalent focal length): what the user knows of the
    camera, ahead of the photo's EXIF. ``options`` go to the backend unchanged.
    """
    from ..image_io import load_rgb_image

    # EXIF is read from the file (or the PIL image) as given: the orientation is applied after, by load_rgb_image.
    exif = exif_focal(image) if isinstance(image, (str, os.PathLike)) or hasattr(image, "getexif") else None
    photo = load_rgb_image(image)
    width, height = photo.width, photo.height
    known = resolve_camera(width, height, fov_deg=fov_deg, focal_35mm=focal_35mm, exif=exif)
    known_focal = known.intrinsics.fx if known.focal_source in ("user", "exif") else None
    prediction = estimator.predict(photo, focal_px=known_focal, progress=progress, **options)
    h, w = prediction.depth.shape
    model_focal = None if prediction.focal_px is None else prediction.focal_px * w / width
    camera = resolve_camera(w, h, fov_deg=fov_deg, focal_35mm=focal_35mm, exif=exif, model_focal_px=model_focal)
    return PhotoPrediction(prediction, camera)
