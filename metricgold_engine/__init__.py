"""MetricGold: monocular metric depth with a fine-tuned Stable Diffusion v2.

The package root imports nothing heavy: Blender's Python (no torch) imports ``metricgold_engine.client``,
``metricgold_engine.geometry``, ``metricgold_engine.depth_io`` and ``metricgold_engine.depth_codec`` through it.
The torch-based names below are resolved on first use.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "MetricGoldPipeline": "metricgold_engine.pipeline",
    "MetricGoldDepthOutput": "metricgold_engine.pipeline",
    "EmptyTextEmbedding": "metricgold_engine.model",
    "init_from_stable_diffusion": "metricgold_engine.model",
    "make_tiny_checkpoint": "metricgold_engine.model",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'metricgold_engine' has no attribute {name!r}")
