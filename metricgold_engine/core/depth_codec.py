"""Depth normalization of the MetricGold paper, eqs. (1)-(3).

Metric depth in metres is mapped to [-1, 1] before the depth VAE encodes it, and mapped back after decoding:

    linear:  x = clip(2 * (d - d_min) / (d_max - d_min) - 1, -1, 1)
    log:     x = clip(2 * log(d / d_min) / log(d_max / d_min) - 1, -1, 1)      (the paper's choice)

The functions take numpy arrays or torch tensors and return the same type. torch is never imported here: this
module belongs to the torch-free ground floor that Blender's Python imports.

Invalid depth (0, negative, NaN, inf) never reaches the arithmetic: it is replaced by ``invalid_value`` in the
normalized output, and :func:`valid_depth_mask` tells callers which pixels to exclude from losses and metrics.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np

from .options import NORMALIZATION_MODES

NormalizationMode = Literal["log", "linear"]

#: Default metric range of a checkpoint: 10 cm to 100 m covers rooms and streets (the authors' code uses the same
#: range; driving data is usually filtered at 80 m, which stays inside it). Each checkpoint stores its own range.
DEFAULT_DEPTH_MIN = 0.1
DEFAULT_DEPTH_MAX = 100.0


def _is_torch(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


def check_depth_range(d_min: float, d_max: float, mode: str = "log") -> None:
    """Raise ValueError unless (d_min, d_max, mode) describe a usable normalization."""
    if mode not in NORMALIZATION_MODES:
        raise ValueError(f"depth normalization mode must be one of {NORMALIZATION_MODES}, got {mode!r}")
    if not (math.isfinite(d_min) and math.isfinite(d_max)):
        raise ValueError(f"depth range must be finite, got d_min={d_min}, d_max={d_max}")
    if d_max <= d_min:
        raise ValueError(f"depth range needs d_max > d_min, got d_min={d_min}, d_max={d_max}")
    if mode == "log" and d_min <= 0:
        raise ValueError(f"log depth normalization needs d_min > 0, got d_min={d_min}")


def valid_depth_mask(depth: Any, d_min: float | None = None, d_max: float | None = None) -> Any:
    """Boolean mask of usable depth: finite and > 0, and inside [d_min, d_max] where those are given."""
    if _is_torch(depth):
        import torch

        mask = torch.isfinite(depth) & (depth > 0)
    else:
        depth = np.asarray(depth)
        with np.errstate(invalid="ignore"):
            mask = np.isfinite(depth) & (depth > 0)
    with np.errstate(invalid="ignore"):
        if d_min is not None:
            mask = mask & (depth >= d_min)
        if d_max is not None:
            mask = mask & (depth <= d_max)
    return mask


def _float_like(x: Any) -> Any:
    """x as a floating array/tensor (at least float32), keeping float64 where given."""
    if _is_torch(x):
        import torch

        return x.float() if x.dtype not in (torch.float32, torch.float64) else x
    x = np.asarray(x)
    return x.astype(np.float32) if x.dtype not in (np.float32, np.float64) else x


def _output_dtype(x: Any) -> Any:
    if _is_torch(x):
        return x.dtype if x.is_floating_point() else None
    x = np.asarray(x)
    return x.dtype if np.issubdtype(x.dtype, np.floating) else np.dtype(np.float32)


def normalize_depth(
    depth_m: Any,
    d_min: float = DEFAULT_DEPTH_MIN,
    d_max: float = DEFAULT_DEPTH_MAX,
    mode: str = "log",
    invalid_value: float = 0.0,
) -> Any:
    """Metres -> [-1, 1] by eq. (2) (``mode="linear"``) or eq. (3) (``mode="log"``), clipped at both ends.

    Pixels that are not valid depth (see :func:`valid_depth_mask`) come out as ``invalid_value``.
    The result has the input's floating dtype (float32 for integer input).
    """
    check_depth_range(d_min, d_max, mode)
    out_dtype = _output_dtype(depth_m)
    d = _float_like(depth_m)
    valid = valid_depth_mask(d)
    if _is_torch(d):
        import torch

        safe = torch.where(valid, d, torch.full_like(d, d_min))
        if mode == "log":
            x = 2.0 * torch.log(safe / d_min) / math.log(d_max / d_min) - 1.0
        else:
            x = 2.0 * (safe - d_min) / (d_max - d_min) - 1.0
        x = torch.where(valid, x.clamp(-1.0, 1.0), torch.full_like(x, invalid_value))
        return x.to(out_dtype) if out_dtype is not None else x
    safe = np.where(valid, d, d.dtype.type(d_min))
    if mode == "log":
        x = 2.0 * np.log(safe / d_min) / math.log(d_max / d_min) - 1.0
    else:
        x = 2.0 * (safe - d_min) / (d_max - d_min) - 1.0
    x = np.where(valid, np.clip(x, -1.0, 1.0), invalid_value)
    return x.astype(out_dtype, copy=False)


def denormalize_depth(
    x: Any,
    d_min: float = DEFAULT_DEPTH_MIN,
    d_max: float = DEFAULT_DEPTH_MAX,
    mode: str = "log",
) -> Any:
    """[-1, 1] -> metres, the inverse of :func:`normalize_depth`. Input is clipped to [-1, 1] first, so any decoder
    output maps into [d_min, d_max]."""
    check_depth_range(d_min, d_max, mode)
    out_dtype = _output_dtype(x)
    x = _float_like(x)
    if _is_torch(x):
        x = x.clamp(-1.0, 1.0)
        if mode == "log":
            d = d_min * (x * 0.5 + 0.5).mul(math.log(d_max / d_min)).exp()
        else:
            d = (x + 1.0) * 0.5 * (d_max - d_min) + d_min
        return d.to(out_dtype) if out_dtype is not None else d
    x = np.clip(x, -1.0, 1.0)
    if mode == "log":
        d = d_min * np.exp((x + 1.0) * 0.5 * math.log(d_max / d_min))
    else:
        d = (x + 1.0) * 0.5 * (d_max - d_min) + d_min
    return d.astype(out_dtype, copy=False)


# The paper's own name for eq. (3), so that a reader finds it by that name.
def log_normalize_depth(depth_m: Any, d_min: float = DEFAULT_DEPTH_MIN, d_max: float = DEFAULT_DEPTH_MAX) -> Any:
    """Eq. (3): ``clip(2 * log(d / d_min) / log(d_max / d_min) - 1, -1, 1)``."""
    return normalize_depth(depth_m, d_min, d_max, mode="log")
