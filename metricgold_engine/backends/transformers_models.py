"""transformers' metric depth models behind the :class:`DepthEstimator` interface: Depth Pro, Depth Anything V2
(metric) and ZoeDepth.

All processing is transformers' own: ``AutoImageProcessor``'s default choice for the folder (as transformers'
depth-estimation pipeline makes it; the PIL and torchvision processors differ by ~2e-3 in depth), the model class,
and the processor's ``post_process_depth_estimation``. With the default options the depth is what transformers gives.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from .base import DepthEstimator, DepthPrediction, ModelInfo, ProgressCallback
from .errors import ModelLoadError

#: kind -> transformers model class name.
MODEL_CLASSES = {
    "depth_pro": "DepthProForDepthEstimation",
    "depth_anything": "DepthAnythingForDepthEstimation",
    "zoedepth": "ZoeDepthForDepthEstimation",
}

#: Options per kind, with their defaults. ZoeDepth's ``flip_average`` is its authors' test-time augmentation
#: (the mean with the prediction for the mirrored photo, through transformers' ``outputs_flipped``); off by default
#: so the default depth is exactly transformers' plain one.
KIND_OPTIONS: dict[str, dict[str, Any]] = {
    "depth_pro": {},
    "depth_anything": {},
    "zoedepth": {"flip_average": False},
}


class TransformersDepthEstimator(DepthEstimator):
    """One transformers depth model and its image processor, on one device."""

    def __init__(self, model: Any, processor: Any, kind: str, name: str, *, licence: str | None = None):
        if kind not in MODEL_CLASSES:
            raise ValueError(f"unknown transformers depth model kind {kind!r} (known: {', '.join(MODEL_CLASSES)})")
        self.model = model
        self.processor = processor
        self.kind = kind
        self.name = name
        self.licence = licence

    @classmethod
    def from_folder(
        cls,
        folder: str | os.PathLike[str],
        kind: str,
        device: str = "auto",
        dtype: str = "auto",
        *,
        name: str | None = None,
        licence: str | None = None,
    ) -> TransformersDepthEstimator:
        """Load a transformers depth model folder (``config.json``, safetensors weights, preprocessor config)."""
        import transformers
        from transformers import AutoImageProcessor

        from ..devices import pick_device, pick_dtype

        root = Path(folder)
        if kind not in MODEL_CLASSES:
            raise ModelLoadError(f"{root}: unknown model kind {kind!r}")
        if not any(root.glob("*.safetensors")):
            hint = (" (.bin/.pt weights are not loaded: convert them to safetensors)"
                    if any(root.glob("*.bin")) or any(root.glob("*.pt")) else "")
            raise ModelLoadError(f"{root}: no .safetensors weights{hint}")
        if not (root / "preprocessor_config.json").is_file():
            raise ModelLoadError(f"{root}: no preprocessor_config.json (the image processor's settings)")
        dev = pick_device(device)
        torch_dtype = pick_dtype(dev, dtype)
        model_class = getattr(transformers, MODEL_CLASSES[kind])
        try:
            processor = AutoImageProcessor.from_pretrained(root)
            model = model_class.from_pretrained(root, dtype=torch_dtype, use_safetensors=True)
        except (OSError, ValueError, KeyError, RuntimeError, ImportError) as exc:
            raise ModelLoadError(f"{root}: could not load the {kind} model: {str(exc).splitlines()[0]}") from None
        model.to(dev).eval()
        return cls(model, processor, kind, name or str(folder), licence=licence)

    # ------------------------------------------------------------------------------------------ interface

    def default_options(self) -> dict[str, Any]:
        return dict(KIND_OPTIONS[self.kind])

    def info(self) -> ModelInfo:
        return ModelInfo(name=self.name, kind=self.kind, licence=self.licence, default_options=self.default_options())

    def predict(
        self,
        image: Any,
        *,
        focal_px: float | None = None,
        progress: ProgressCallback | None = None,
        **options: Any,
    ) -> DepthPrediction:
        import torch

        from ..image_io import load_rgb_image

        known = KIND_OPTIONS[self.kind]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ValueError(f"unknown option(s) for a {self.kind} model: {', '.join(unknown)} "
                             f"(known: {', '.join(known) or 'none'})")
        settings_opts = {**known, **{k: v for k, v in options.items() if v is not None}}
        if focal_px is not None and not (math.isfinite(focal_px) and focal_px > 0):
            raise ValueError(f"focal_px must be a positive number of pixels, got {focal_px!r}")

        photo = load_rgb_image(image)  # EXIF orientation applied: the depth is for the photo as seen
        h, w = photo.height, photo.width
        device, dtype = self.model.device, self.model.dtype
        if progress is not None:
            progress("predict", 0, 1)
        inputs = self.processor(images=photo, return_tensors="pt").to(device=device, dtype=dtype)
        with torch.inference_mode():
            outputs = self.model(**inputs)
            if self.kind == "zoedepth" and settings_opts["flip_average"]:
                flipped = self.model(pixel_values=torch.flip(inputs["pixel_values"], dims=[-1]))
            else:
                flipped = None

        estimated_focal = None
        if self.kind == "depth_pro":
            results = self.processor.post_process_depth_estimation(outputs, target_sizes=[(h, w)])
            focal = results[0].get("focal_length")
            estimated_focal = None if focal is None else float(focal)
            if focal_px is not None:
                # transformers scales Depth Pro's canonical inverse depth by width / focal, the focal coming from the
                # field of view; a known focal enters through the same formula as the field of view it implies.
                fov = outputs.field_of_view
                known_fov = math.degrees(2.0 * math.atan(0.5 * w / float(focal_px)))
                like = fov if fov is not None else outputs.predicted_depth
                outputs.field_of_view = torch.full((1,), known_fov, dtype=like.dtype, device=like.device)
                results = self.processor.post_process_depth_estimation(outputs, target_sizes=[(h, w)])
        elif self.kind == "zoedepth":
            # As transformers' depth-estimation pipeline calls it: the photo's size is ZoeDepth's ``source_sizes``,
            # which also removes the padding the processor added.
            results = self.processor.post_process_depth_estimation(
                outputs, source_sizes=[(h, w)], outputs_flipped=flipped)
        else:
            results = self.processor.post_process_depth_estimation(outputs, target_sizes=[(h, w)])
        depth = results[0]["predicted_depth"].detach().float().cpu().numpy().astype(np.float32, copy=False)
        depth = depth.reshape(h, w)
        if progress is not None:
            progress("predict", 1, 1)

        settings: dict[str, Any] = {
            **settings_opts,
            "input_size": [h, w],
            "processing_size": [int(x) for x in inputs["pixel_values"].shape[-2:]],
            "device": str(device),
            "dtype": str(dtype).replace("torch.", ""),
        }
        if self.kind == "depth_pro":
            settings["focal_px_estimated"] = estimated_focal
            settings["focal_px_used"] = float(focal_px) if focal_px is not None else estimated_focal
        return DepthPrediction(depth=depth, uncertainty=None, focal_px=estimated_focal, settings=settings)
