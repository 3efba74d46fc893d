"""MetricGold, the diffusion model this project trains, behind the :class:`DepthEstimator` interface."""

from __future__ import annotations

import os
from typing import Any

from .base import DepthEstimator, DepthPrediction, ModelInfo, ProgressCallback
from .card import read_licence

#: The pipeline's options a caller may set; everything else is refused (a typo must not be silently ignored).
METRICGOLD_OPTIONS = (
    "num_inference_steps", "ensemble_size", "processing_resolution", "seed", "timestep_spacing",
    "ensemble_reduction", "batch_size", "output_uncertainty", "match_input_resolution",
)

#: The built-in demo model is this project's own weights (trained from random initialisation on the project's own
#: synthetic scenes), so it carries the project's licence.
DEMO_MODEL_LICENCE = "GPL-3.0-or-later"


class MetricGoldEstimator(DepthEstimator):
    """A loaded :class:`~metricgold_engine.pipeline.MetricGoldPipeline`. ``pipeline`` stays reachable for callers that
    need the diffusers object itself (progress bar settings, offloading)."""

    kind = "metricgold"

    def __init__(self, pipeline: Any, name: str, *, licence: str | None = None, demo_model: bool = False):
        self.pipeline = pipeline
        self.name = name
        self.licence = licence
        self.demo_model = demo_model

    @classmethod
    def from_folder(
        cls,
        path: str | os.PathLike[str] | None,
        device: str = "auto",
        dtype: str = "auto",
        *,
        name: str | None = None,
        licence: str | None = None,
    ) -> MetricGoldEstimator:
        """Load a MetricGold checkpoint folder (None: the built-in demo model), checked as ``load_pipeline`` does."""
        from ..checkpoint import load_pipeline
        from ..core.demo_model import is_demo_model, resolve_model_path

        root = resolve_model_path(path)
        demo = is_demo_model(root)
        pipe = load_pipeline(root, device=device, dtype=dtype)
        if licence is None:
            licence = read_licence(root) or (DEMO_MODEL_LICENCE if demo else None)
        return cls(pipe, name or ("demo model" if demo else str(path)), licence=licence, demo_model=demo)

    def default_options(self) -> dict[str, Any]:
        cfg = self.pipeline.config
        return {
            "num_inference_steps": cfg.default_num_inference_steps,
            "ensemble_size": cfg.default_ensemble_size,
            "processing_resolution": cfg.default_processing_resolution,
            "timestep_spacing": cfg.default_timestep_spacing,
            "ensemble_reduction": "median",
            "seed": None,
            "batch_size": 0,
            "output_uncertainty": False,
        }

    def predict(
        self,
        image: Any,
        *,
        focal_px: float | None = None,
        progress: ProgressCallback | None = None,
        **options: Any,
    ) -> DepthPrediction:
        # focal_px is not used: MetricGold's metric scale is learnt from the image alone (the camera only places
        # the points in 3D afterwards).
        unknown = sorted(set(options) - set(METRICGOLD_OPTIONS))
        if unknown:
            raise ValueError(f"unknown option(s) for a MetricGold model: {', '.join(unknown)} "
                             f"(known: {', '.join(METRICGOLD_OPTIONS)})")
        options = {k: v for k, v in options.items() if v is not None}  # None: the checkpoint's default
        callback = decode_callback = None
        if progress is not None:

            def callback(step: int, total: int) -> None:
                progress("denoise", step, total)

            def decode_callback(tile: int, tiles: int) -> None:
                # A tiled decode of a large image takes a while: reported tile by tile, so that the user sees it
                # move and a cancel (raised from progress) stops it between tiles.
                progress("decode", tile, tiles)
        out = self.pipeline(image, step_callback=callback, decode_callback=decode_callback, **options)
        return DepthPrediction(depth=out.depth, uncertainty=out.uncertainty, focal_px=None,
                               settings=dict(out.settings))

    def info(self) -> ModelInfo:
        return ModelInfo(name=self.name, kind=self.kind, licence=self.licence,
                         default_options=self.default_options(), demo_model=self.demo_model)

