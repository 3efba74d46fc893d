"""Depth models behind one interface: :class:`~metricgold_engine.backends.base.DepthEstimator`.

MetricGold (the diffusion model this project trains) is the first backend; transformers' metric depth models sit
beside it, each in a module of its own. The CLI, the worker and the evaluation see only the interface.
"""

from .base import DepthEstimator, DepthPrediction, ModelInfo, ProgressCallback
from .loading import KINDS, ModelLoadError, detect_kind, load_estimator, read_licence

__all__ = [
    "KINDS",
    "DepthEstimator",
    "DepthPrediction",
    "ModelInfo",
    "ModelLoadError",
    "ProgressCallback",
    "detect_kind",
    "load_estimator",
    "read_licence",
]
