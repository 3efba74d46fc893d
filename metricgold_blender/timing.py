"""Fast mode and the expected time of a prediction (pure Python: no bpy, torch or Pillow).

Fast mode: trailing timestep spacing and 1-4 denoising steps, as single-step fine-tuned diffusion depth models are
run. The checkpoint says which: its ``model_index.json`` defaults are used as they are when they already are a
fast mode (trailing, at most 4 steps; the built-in demo model is); otherwise its optional ``fast_num_inference_steps``
/ ``fast_ensemble_size`` keys, else 4 steps x 1 member.

Expected time: every finished prediction is remembered (seconds and work done: steps x members x pixels) per model
and device, in a small JSON file. The expected time of the next run is a line ``a + b x work`` fitted through the
remembered runs (through the origin while there is only one), so the first run on a device is its measurement.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

FAST_MAX_STEPS = 4
FAST_FALLBACK = {"num_inference_steps": 4, "ensemble_size": 1}
MAX_REMEMBERED = 20  # runs per (model, device); the newest are kept


def read_model_defaults(model_dir: str | None) -> dict[str, Any]:
    """The checkpoint's ``model_index.json`` (its inference defaults live there), or {} if unreadable/absent."""
    if not model_dir:
        return {}
    try:
        data = json.loads((Path(model_dir) / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def is_fast(defaults: dict[str, Any]) -> bool:
    steps = defaults.get("default_num_inference_steps")
    return defaults.get("default_timestep_spacing") == "trailing" and isinstance(steps, int) and steps <= FAST_MAX_STEPS


def apply_fast_mode(options: dict[str, Any], defaults: dict[str, Any] | None) -> dict[str, Any]:
    """Predict options with fast mode filled in where the user left them to the model (None). ``defaults``: the
    checkpoint's model_index.json ({} / None: the built-in model, whose defaults are fast, or a model that is not a
    local MetricGold folder)."""
    out = dict(options)
    if not defaults or is_fast(defaults) or "default_num_inference_steps" not in defaults:
        return out  # built-in model, a fast checkpoint, or not a diffusion checkpoint (another backend)
    fast_steps = defaults.get("fast_num_inference_steps", FAST_FALLBACK["num_inference_steps"])
    fast_ensemble = defaults.get("fast_ensemble_size", FAST_FALLBACK["ensemble_size"])
    if out.get("num_inference_steps") is None:
        out["num_inference_steps"] = max(1, min(int(fast_steps), FAST_MAX_STEPS))
    if out.get("ensemble_size") is None:
        out["ensemble_size"] = max(1, int(fast_ensemble))
    if out.get("timestep_spacing") is None:
        out["timestep_spacing"] = "trailing"
    return out


def work_of(settings: dict[str, Any]) -> float:
    """Work of one run from the settings the worker reports: steps x members x processed pixels."""
    h, w = settings.get("padded_size") or settings.get("processing_size") or (0, 0)
    return float(settings.get("num_inference_steps", 0)) * float(settings.get("ensemble_size", 0)) * h * w


def _key(model: str | None, device: str) -> str:
    return f"{model or '<built-in>'}|{device}"


def load_runs(path: str | os.PathLike[str]) -> dict[str, list[list[float]]]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def remember_run(path: str | os.PathLike[str], model: str | None, device: str, settings: dict[str, Any],
                 seconds: float) -> None:
    """Add one finished run (atomic write: a crash leaves the old file). ``device``: as the user chose it (auto,
    cpu, cuda...), the key the UI asks with."""
    work = work_of(settings)
    if work <= 0 or not seconds > 0:
        return
    runs = load_runs(path)
    key = _key(model, device)
    runs[key] = (runs.get(key, []) + [[work, float(seconds)]])[-MAX_REMEMBERED:]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(runs, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def expected_seconds(runs: list[list[float]], work: float) -> float | None:
    """Least-squares line seconds = a + b x work through remembered (work, seconds) pairs; None without runs."""
    if not runs or work <= 0:
        return None
    xs = [r[0] for r in runs]
    ys = [r[1] for r in runs]
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx <= 1e-12 * max(mx * mx, 1.0):  # one work size only: proportional
        return my * work / mx
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    a = my - b * mx
    if b <= 0 or a < 0:  # noise: fall back to proportional through the mean
        return my * work / mx
    return a + b * work


def expected_text(path: str | os.PathLike[str], model: str | None, device: str, options: dict[str, Any],
                  defaults: dict[str, Any] | None = None) -> str:
    """A line for the UI: the expected time of a run with these predict options (a 4:3 photo), or how it will be
    known. Options left to the model (None) take the checkpoint's defaults; where those are unknown too (built-in
    model), the last run's work is assumed."""
    runs = load_runs(path).get(_key(model, device))
    if not runs:
        return "Expected time: measured by the first run on this device"
    defaults = defaults or {}
    steps = options.get("num_inference_steps") or defaults.get("default_num_inference_steps")
    ensemble = options.get("ensemble_size") or defaults.get("default_ensemble_size")
    res = options.get("processing_resolution")
    res = defaults.get("default_processing_resolution") if res is None else res
    if steps and ensemble and res:
        work = float(steps) * float(ensemble) * res * (res * 3 // 4)
    else:
        work = runs[-1][0]
    seconds = expected_seconds(runs, work)
    if seconds is None:
        return "Expected time: unknown"
    return f"Expected time: about {seconds:.0f} s" if seconds >= 10 else f"Expected time: about {seconds:.1f} s"
