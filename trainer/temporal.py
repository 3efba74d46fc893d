"""Temporal consistency of predicted depth along a sequence with known geometry (pure numpy, float64).

The **temporal error** of a frame pair (t, t+1): frame t's predicted depth is carried into frame t+1 with the *true*
intrinsics and poses — unproject t's pixels with the predicted depth, move the points by the true relative pose,
project them into t+1 — and its log depth is compared with frame t+1's prediction (sampled bilinearly in log depth)
where the points land. The mean absolute difference over the pixels seen in both frames is the error. Which pixels
are "seen in both" is decided with the *true* depth only: a pixel of t counts when the true depth of t, carried into
t+1 the same way, agrees with t+1's true depth at the landing point within ``rel_tol`` (occluded, out-of-view and
sky pixels fail), and when the prediction's landing point is inside t+1 too.

A perfect prediction scores about 0 (the floor is the bilinear sampling of the true depth, well under ``rel_tol``).
Note that this error also grows with a *consistent* scale error under camera translation (the predicted points
move with the wrong parallax). :func:`temporal_errors` therefore also reports **flicker**: the change of the
prediction's log error along the *true* correspondence, ``|(log P1(x') - log P0(x)) - (log z' - log D0(x))|`` with
``x'`` and ``z'`` the true landing point and depth, which is 0 for any prediction whose error is the same in both
frames (e.g. a constant scale factor).

Conventions are the project's (``metricgold_engine.core.geometry``): OpenCV pixel centres, planar depth, Blender
camera space (looks down -Z, +Y up), poses are camera_to_world 4x4 (``trainer.synth.sequence``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from metricgold_engine.core.geometry import Intrinsics, unproject

__all__ = [
    "DEFAULT_REL_TOL",
    "covisible_mask",
    "project",
    "sample_log_depth",
    "temporal_errors",
    "warp_depth",
]

#: Relative depth agreement that makes a pixel "seen in both frames" (2 %: occlusion edges differ by far more).
DEFAULT_REL_TOL = 0.02


def project(points: np.ndarray, k: Intrinsics) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Blender camera-space points (..., 3) -> pixel coordinates u, v and planar depth z (= -Z). Points at or
    behind the camera get NaN."""
    p = np.asarray(points, dtype=np.float64)
    z = -p[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        ok = z > 0
        u = np.where(ok, k.fx * p[..., 0] / z + k.cx, np.nan)
        v = np.where(ok, -k.fy * p[..., 1] / z + k.cy, np.nan)
    return u, v, np.where(ok, z, np.nan)


def warp_depth(
    depth: np.ndarray, k: Intrinsics, c2w_from: np.ndarray, c2w_to: np.ndarray, k_to: Intrinsics | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Carry every pixel of ``depth`` (frame "from") into frame "to": returns u', v', z' (H x W each, float64;
    NaN where the depth is invalid or the point lands behind the camera)."""
    depth = np.asarray(depth, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        depth = np.where(np.isfinite(depth) & (depth > 0), depth, np.nan)
    pts = unproject(depth, k)  # (H, W, 3), NaN for invalid depth
    rel = np.linalg.inv(np.asarray(c2w_to, dtype=np.float64)) @ np.asarray(c2w_from, dtype=np.float64)
    moved = pts @ rel[:3, :3].T + rel[:3, 3]
    return project(moved, k_to or k)


def sample_log_depth(depth: np.ndarray, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear sample of ``log(depth)`` at pixel coordinates (u, v) (pixel centres at integers). Returns the
    samples and a mask: inside ``[0, W-1] x [0, H-1]`` with all four neighbours valid (finite, > 0)."""
    depth = np.asarray(depth, dtype=np.float64)
    h, w = depth.shape
    if h < 2 or w < 2:
        raise ValueError(f"depth must be at least 2 x 2 pixels to sample, got {depth.shape}")
    with np.errstate(invalid="ignore", divide="ignore"):
        logd = np.where(np.isfinite(depth) & (depth > 0), np.log(np.where(depth > 0, depth, 1.0)), np.nan)
        # A point landing exactly on the border row or column (up to rounding) is inside.
        eps = 1e-6
        inside = (np.isfinite(u) & np.isfinite(v) & (u >= -eps) & (u <= w - 1 + eps) & (v >= -eps)
                  & (v <= h - 1 + eps))
    uu, vv = np.where(inside, np.clip(u, 0, w - 1), 0.0), np.where(inside, np.clip(v, 0, h - 1), 0.0)
    u0 = np.clip(np.floor(uu).astype(np.int64), 0, w - 2)
    v0 = np.clip(np.floor(vv).astype(np.int64), 0, h - 2)
    a, b = uu - u0, vv - v0
    q00, q01 = logd[v0, u0], logd[v0, u0 + 1]
    q10, q11 = logd[v0 + 1, u0], logd[v0 + 1, u0 + 1]
    val = (1 - b) * ((1 - a) * q00 + a * q01) + b * ((1 - a) * q10 + a * q11)
    ok = inside & np.isfinite(q00) & np.isfinite(q01) & np.isfinite(q10) & np.isfinite(q11)
    return np.where(ok, val, np.nan), ok


def covisible_mask(
    true_from: np.ndarray,
    true_to: np.ndarray,
    k: Intrinsics,
    c2w_from: np.ndarray,
    c2w_to: np.ndarray,
    rel_tol: float = DEFAULT_REL_TOL,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pixels of frame "from" seen in frame "to" (true depth carried over agrees with "to"'s true depth within
    ``rel_tol``). Returns the mask and the true landing point u', v' and depth z'."""
    u, v, z = warp_depth(true_from, k, c2w_from, c2w_to)
    sampled, ok = sample_log_depth(true_to, u, v)
    with np.errstate(invalid="ignore", divide="ignore"):
        mask = ok & (np.abs(np.log(z) - sampled) <= math.log1p(rel_tol))
    return mask, u, v, z


def temporal_errors(
    pred_from: np.ndarray,
    pred_to: np.ndarray,
    true_from: np.ndarray,
    true_to: np.ndarray,
    k: Intrinsics,
    c2w_from: np.ndarray,
    c2w_to: np.ndarray,
    rel_tol: float = DEFAULT_REL_TOL,
) -> dict[str, Any]:
    """Temporal error and flicker of one frame pair (see the module docs). All depth maps H x W metres at the
    resolution ``k`` describes. Returns ``temporal_error``, ``flicker`` (NaN when no pixel counts), ``pixels``
    (pixels counted for the temporal error) and ``covisible_fraction`` (share of "from"'s pixels seen in both)."""
    shape = np.shape(true_from)
    for name, a in (("pred_from", pred_from), ("pred_to", pred_to), ("true_to", true_to)):
        if np.shape(a) != shape:
            raise ValueError(f"{name} has shape {np.shape(a)}, expected {shape} like true_from")
    if (k.width, k.height) != (shape[1], shape[0]):
        raise ValueError(f"intrinsics describe {k.width} x {k.height}, depth is {shape[1]} x {shape[0]}")
    covis, tu, tv, tz = covisible_mask(true_from, true_to, k, c2w_from, c2w_to, rel_tol)
    pu, pv, pz = warp_depth(pred_from, k, c2w_from, c2w_to)
    pred_at_p, ok_p = sample_log_depth(pred_to, pu, pv)
    counted = covis & ok_p & np.isfinite(pz)
    with np.errstate(invalid="ignore", divide="ignore"):
        diff = np.abs(np.log(pz) - pred_at_p)
        # Flicker: the change of the prediction's log error along the true correspondence.
        pred_at_t, ok_t = sample_log_depth(pred_to, tu, tv)
        log_pf = np.log(np.asarray(pred_from, dtype=np.float64))
        log_tf = np.log(np.asarray(true_from, dtype=np.float64))
        flick = np.abs((pred_at_t - log_pf) - (np.log(tz) - log_tf))
    flicker_mask = covis & ok_t & np.isfinite(flick)
    n = int(counted.sum())
    return {
        "temporal_error": float(diff[counted].mean()) if n else float("nan"),
        "flicker": float(flick[flicker_mask].mean()) if flicker_mask.any() else float("nan"),
        "pixels": n,
        "covisible_fraction": float(covis.mean()),
    }
