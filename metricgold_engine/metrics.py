"""Depth-estimation metrics of the standard zero-shot protocols (NYUv2, KITTI), as MetricGold reports them.

With d the prediction and g the ground truth over the valid pixels of one image:

    AbsRel  = mean(|d - g| / g)                  SqRel   = mean((d - g)^2 / g)
    RMSE    = sqrt(mean((d - g)^2))              RMSElog = sqrt(mean((ln d - ln g)^2))
    log10   = mean(|log10 d - log10 g|)          delta_k = mean(max(d / g, g / d) < 1.25^k),  k = 1, 2, 3
    SILog   = 100 * sqrt(mean(e^2) - mean(e)^2),  e = ln d - ln g   (the KITTI / ZoeDepth / Marigold convention)

Metric depth is scored as predicted: no median or least-squares scaling. :func:`align_depth_least_squares` is the
affine fit of the relative-depth protocols, for numbers reported *separately* (``trainer eval --align``).
Every quantity is computed in float64 per image; data sets are summarised by the mean over images
(:func:`mean_metrics`), not over the pooled pixels.

Only numpy is needed here, so that evaluation tooling can import it without torch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

#: Names of the metrics, in the order tables print them. Lower is better for all but the deltas.
METRIC_NAMES: tuple[str, ...] = (
    "abs_rel",
    "sq_rel",
    "rmse",
    "rmse_log",
    "log10",
    "delta1",
    "delta2",
    "delta3",
    "silog",
)
HIGHER_IS_BETTER: frozenset[str] = frozenset({"delta1", "delta2", "delta3"})

#: Crop names understood by :func:`eval_crop_mask`.
EVAL_CROPS: tuple[str, ...] = ("garg", "eigen", "nyu_eigen")


def _as_float64_2d(name: str, x: Any) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim == 3 and arr.shape[0] == 1:  # accept [1, H, W] as produced by torch-style code
        arr = arr[0]
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D depth map (H x W), got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    return arr.astype(np.float64)


def _valid_pixels(
    pred: Any, gt: Any, valid_mask: Any | None
) -> tuple[np.ndarray, np.ndarray]:
    """The float64 prediction and ground truth at the pixels that count: mask & finite ground truth > 0."""
    d = _as_float64_2d("pred", pred)
    g = _as_float64_2d("gt", gt)
    if d.shape != g.shape:
        raise ValueError(f"pred has shape {d.shape} but gt has shape {g.shape}; resize the prediction first")
    mask = _scored_pixels(g, valid_mask, "valid_mask")
    if not mask.any():
        raise ValueError("no valid ground-truth pixel to evaluate (mask empty, or ground truth all 0/NaN)")
    d, g = d[mask], g[mask]
    # Log metrics are undefined at d <= 0; the protocols clip predictions to the set's range before scoring.
    bad = ~np.isfinite(d) | (d <= 0)
    if bad.any():
        raise ValueError(
            f"pred has {int(bad.sum())} non-positive or non-finite value(s) at valid pixels; "
            "clip predictions to the evaluation range before computing metrics"
        )
    return d, g


def _scored_pixels(gt: np.ndarray, mask: Any, name: str) -> np.ndarray:
    """Pixels with usable ground truth (finite, > 0), and inside ``mask`` ([H,W] or [1,H,W]) when one is given."""
    with np.errstate(invalid="ignore"):
        scored = np.isfinite(gt) & (gt > 0)
    if mask is not None:
        m = np.asarray(mask)
        if m.ndim == 3 and m.shape[0] == 1:
            m = m[0]
        if m.shape != gt.shape:
            raise ValueError(f"{name} has shape {m.shape} but gt has shape {gt.shape}")
        scored &= m.astype(bool)
    return scored


def compute_depth_metrics(pred: Any, gt: Any, valid_mask: Any | None = None) -> dict[str, float]:
    """AbsRel, SqRel, RMSE, RMSE-log, log10, delta1-3 and SILog of one prediction, in float64.

    ``pred`` and ``gt`` are H x W depth in metres (numpy, or anything ``np.asarray`` accepts: torch CPU tensors
    too). Pixels count where ``valid_mask`` (optional, boolean H x W) is true and the ground truth is finite and
    > 0. Raises ValueError when no pixel counts, or when the prediction is <= 0 / not finite at a counted pixel.
    """
    d, g = _valid_pixels(pred, gt, valid_mask)
    diff = d - g
    log_err = np.log(d) - np.log(g)  # e of SILog; also RMSE-log
    ratio = np.maximum(d / g, g / d)
    # mean(e^2) - mean(e)^2 is a variance: it can come out a hair below 0 in floating point when e is constant.
    silog_var = max(float(np.mean(log_err**2) - np.mean(log_err) ** 2), 0.0)
    return {
        "abs_rel": float(np.mean(np.abs(diff) / g)),
        "sq_rel": float(np.mean(diff**2 / g)),
        "rmse": float(np.sqrt(np.mean(diff**2))),
        "rmse_log": float(np.sqrt(np.mean(log_err**2))),
        "log10": float(np.mean(np.abs(np.log10(d) - np.log10(g)))),
        "delta1": float(np.mean(ratio < 1.25)),
        "delta2": float(np.mean(ratio < 1.25**2)),
        "delta3": float(np.mean(ratio < 1.25**3)),
        "silog": 100.0 * math.sqrt(silog_var),
    }


def mean_metrics(per_image: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """The protocols' data-set summary: each metric averaged over images (every image weighs the same)."""
    rows = list(per_image)
    if not rows:
        raise ValueError("no per-image metrics to average")
    return {name: float(np.mean([float(r[name]) for r in rows], dtype=np.float64)) for name in METRIC_NAMES}


def align_depth_least_squares(
    pred: Any, gt: Any, mask: Any | None = None
) -> tuple[np.ndarray, float, float]:
    """Affine least-squares alignment: scale s and shift t minimising sum((s * pred + t - gt)^2) over ``mask``.

    Returns ``(s * pred + t, s, t)``; the aligned map is float64 over the whole image. This is the alignment of the
    relative-depth protocols (Marigold's ``align_depth_least_square``) and serves only for the separately reported
    ``--align`` numbers: metric results are never aligned. The caller clips the aligned map to the evaluation range.
    """
    p = _as_float64_2d("pred", pred)
    g = _as_float64_2d("gt", gt)
    if p.shape != g.shape:
        raise ValueError(f"pred has shape {p.shape} but gt has shape {g.shape}")
    m = _scored_pixels(g, mask, "mask") & np.isfinite(p)
    if m.sum() < 2:
        raise ValueError("affine alignment needs at least 2 valid pixels")
    a = np.stack([p[m], np.ones(int(m.sum()))], axis=1)
    (scale, shift), *_ = np.linalg.lstsq(a, g[m], rcond=None)
    return scale * p + shift, float(scale), float(shift)


def eval_crop_mask(shape: tuple[int, ...], crop: str | None) -> np.ndarray:
    """Boolean H x W mask of an evaluation crop, as fractions of the ground truth's size.

    - ``"garg"`` (KITTI, Garg et al.): rows int(0.40810811 H):int(0.99189189 H),
      cols int(0.03594771 W):int(0.96405229 W)
    - ``"eigen"`` (KITTI, Eigen et al.): rows int(0.3324324 H):int(0.91351351 H),
      cols int(0.0359477 W):int(0.96405229 W)
    - ``"nyu_eigen"`` (NYUv2, 480 x 640): rows 45:471, cols 41:601 (scaled with the size for other sizes)
    - ``None``: every pixel
    """
    h, w = int(shape[0]), int(shape[1])
    mask = np.zeros((h, w), dtype=bool)
    if crop is None:
        mask[:] = True
    elif crop == "garg":
        mask[int(0.40810811 * h) : int(0.99189189 * h), int(0.03594771 * w) : int(0.96405229 * w)] = True
    elif crop == "eigen":
        mask[int(0.3324324 * h) : int(0.91351351 * h), int(0.0359477 * w) : int(0.96405229 * w)] = True
    elif crop == "nyu_eigen":
        # 45:471 x 41:601 are the published bounds at 480 x 640; keep them exact there.
        mask[round(45 * h / 480) : round(471 * h / 480), round(41 * w / 640) : round(601 * w / 640)] = True
    else:
        raise ValueError(f"unknown evaluation crop {crop!r}; expected one of {EVAL_CROPS} or None")
    return mask


def kb_crop_box(height: int, width: int) -> tuple[int, int, int, int]:
    """The KITTI benchmark crop to 352 x 1216, bottom-centre: (top, left, bottom, right).

    top = H - 352, left = (W - 1216) // 2. Raises ValueError for images smaller than 352 x 1216.
    """
    if height < 352 or width < 1216:
        raise ValueError(f"KITTI benchmark crop needs at least 352 x 1216 pixels, got {height} x {width}")
    top, left = height - 352, (width - 1216) // 2
    return top, left, top + 352, left + 1216


def format_metrics_markdown(
    tables: Mapping[str, Mapping[str, float]], title: str | None = None, decimals: int = 4
) -> str:
    """A Markdown table, one row per entry of ``tables`` (e.g. {"metric": {...}, "aligned": {...}})."""
    header = "| | " + " | ".join(METRIC_NAMES) + " |"
    rule = "|---|" + "---:|" * len(METRIC_NAMES)
    lines = [f"## {title}", ""] if title else []
    lines += [header, rule]
    for row_name, values in tables.items():
        cells = [f"{float(values[n]):.{decimals}f}" for n in METRIC_NAMES]
        lines.append(f"| {row_name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
