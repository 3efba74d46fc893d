"""MetricGold: monocular metric depth with a fine-tuned Stable Diffusion v2.

Three floors, each importing only the ones below it:

- ``metricgold_engine.core``: pure Python + numpy (depth codec, geometry, depth files, the worker protocol and its
  client, the error family). Blender's Python imports it; it never imports torch or Pillow.
- the engine (this package's other modules): the MetricGold components, checkpoints, ``MetricGoldPipeline``, image
  decoding, metrics, the model backends, the worker and the CLI (torch, diffusers, transformers, Pillow).
- the users: ``trainer`` and ``metricgold_blender`` (the latter reaches the engine only through the worker).

The package root imports nothing heavy; the names below are resolved on first use.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "MetricGoldPipeline": "metricgold_engine.pipeline",
    "MetricGoldDepthOutput": "metricgold_engine.pipeline",
    "EmptyTextEmbedding": "metricgold_engine.components",
    "init_from_stable_diffusion": "metricgold_engine.checkpoint",
    "load_pipeline": "metricgold_engine.checkpoint",
    "save_checkpoint": "metricgold_engine.checkpoint",
    "make_tiny_checkpoint": "metricgold_engine.tiny_models",
    "load_estimator": "metricgold_engine.backends.loading",
    "predict_photo": "metricgold_engine.backends.photo",
    "WorkerClient": "metricgold_engine.core.client",
    "MetricGoldError": "metricgold_engine.core.errors",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'metricgold_engine' has no attribute {name!r}")
