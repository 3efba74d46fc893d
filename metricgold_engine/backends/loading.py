"""``load_estimator``: one entry point for every model a user can name with ``--model``.

A local folder's kind is read from its ``model_index.json`` (a diffusers pipeline: MetricGold) or ``config.json``
(a transformers model: ``model_type``). A Hub id (``org/name``) that is not a local path is fetched with
``huggingface_hub.snapshot_download`` into the user's normal Hugging Face cache, once; nothing is ever downloaded
unless a Hub id is given.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from .base import DepthEstimator
from .card import read_licence
from .errors import ModelLoadError

#: ``config.json`` ``model_type`` -> backend kind.
TRANSFORMERS_KINDS = {"depth_pro": "depth_pro", "depth_anything": "depth_anything", "zoedepth": "zoedepth"}
KINDS = ("metricgold", *TRANSFORMERS_KINDS.values())

#: Pipelines that predict depth only up to scale and shift (or not depth at all): refused, this is a metric tool.
_RELATIVE_PIPELINES = {
    "MarigoldDepthPipeline": "Marigold depth is affine-invariant (relative)",
    "MarigoldNormalsPipeline": "Marigold normals predicts surface normals, not depth",
    "MarigoldIntrinsicsPipeline": "Marigold intrinsics predicts materials, not depth",
}
_SUPPORTED = ("a MetricGold checkpoint, Depth Pro, Depth Anything V2 metric or ZoeDepth "
              "(see README 'Which model?')")

#: What is fetched from the Hub: configs, model card and safetensors weights only (never pickled .bin/.pt files).
HUB_CONFIG_PATTERNS = ["*.json", "README.md"]
HUB_WEIGHT_PATTERNS = ["*.safetensors"]

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path}: expected a JSON object")
    return data


def detect_kind(folder: str | os.PathLike[str]) -> str:
    """The backend kind of a local model folder: one of :data:`KINDS`. Relative-depth models are refused."""
    root = Path(folder)
    if not root.is_dir():
        raise ModelLoadError(f"{root}: model folder not found" if not root.exists() else f"{root}: not a folder")
    index_path, config_path = root / "model_index.json", root / "config.json"
    if index_path.is_file():
        class_name = _read_json(index_path).get("_class_name")
        if class_name == "MetricGoldPipeline":
            return "metricgold"
        if class_name in _RELATIVE_PIPELINES:
            raise ModelLoadError(f"{root}: {_RELATIVE_PIPELINES[class_name]}; MetricGold needs a metric depth "
                                 f"model: {_SUPPORTED}")
        raise ModelLoadError(f"{index_path}: a {class_name or 'diffusers'} pipeline is not a depth model MetricGold "
                             f"can run; use {_SUPPORTED}")
    if config_path.is_file():
        config = _read_json(config_path)
        model_type = config.get("model_type")
        kind = TRANSFORMERS_KINDS.get(str(model_type))
        if kind is None:
            raise ModelLoadError(f"{config_path}: model_type {model_type!r} is not a metric depth model MetricGold "
                                 f"can run; use {_SUPPORTED}")
        if kind == "depth_anything" and config.get("depth_estimation_type", "relative") != "metric":
            raise ModelLoadError(
                f"{root}: this Depth Anything model predicts relative depth (depth_estimation_type "
                f"{config.get('depth_estimation_type', 'relative')!r}), not metres; use a metric one, e.g. "
                "depth-anything/Depth-Anything-V2-Metric-Indoor-Small-hf")
        return kind
    raise ModelLoadError(f"{root}: neither model_index.json (MetricGold) nor config.json (transformers) found; "
                         f"not a model folder")


def is_hub_id(model: str | os.PathLike[str]) -> bool:
    """``org/name`` that is not an existing local path (a local folder always wins)."""
    text = str(model)
    return not Path(text).exists() and bool(_HUB_ID.match(text))


def _hub_offline() -> bool:
    # Read now, not at import time as huggingface_hub.constants does, so that a caller's setting always counts.
    return os.environ.get("HF_HUB_OFFLINE", os.environ.get("TRANSFORMERS_OFFLINE", "")).strip().upper() in (
        "1", "ON", "YES", "TRUE")


def fetch_from_hub(repo_id: str) -> Path:
    """Download (once, into the Hugging Face cache, with a progress bar) the configs, model card and safetensors
    weights of ``repo_id``; return the snapshot folder. The configs come first so that a model MetricGold cannot
    run is refused before gigabytes of weights are fetched."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = _hub_offline()
    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=HUB_CONFIG_PATTERNS, local_files_only=offline))
        detect_kind(folder)
        folder = Path(snapshot_download(repo_id, allow_patterns=HUB_CONFIG_PATTERNS + HUB_WEIGHT_PATTERNS,
                                        local_files_only=offline))
    except GatedRepoError:
        raise ModelLoadError(f"{repo_id}: this Hub model is gated: accept its terms on huggingface.co and log in "
                             "(`hf auth login`), or pass a local model folder") from None
    except (RepositoryNotFoundError, RevisionNotFoundError):
        raise ModelLoadError(f"{repo_id}: no such model on the Hugging Face Hub (or it is private): check the id, "
                             "or pass a local model folder") from None
    except LocalEntryNotFoundError:
        if offline:
            raise ModelLoadError(
                f"{repo_id}: not a local folder and not in the Hugging Face cache, and downloads are off "
                "(HF_HUB_OFFLINE is set): unset HF_HUB_OFFLINE and go online once to download it, or pass a local "
                "model folder") from None
        raise ModelLoadError(
            f"{repo_id}: could not reach the Hugging Face Hub to download it (no network?) and it is not in the "
            "cache: go online once, or pass a local model folder") from None
    except HfHubHTTPError as exc:
        raise ModelLoadError(f"{repo_id}: the Hugging Face Hub refused the download ({exc.__class__.__name__}: "
                             f"{str(exc).splitlines()[0]}); try again later or pass a local model folder") from None
    if not any(folder.rglob("*.safetensors")):
        raise ModelLoadError(f"{repo_id}: the Hub model has no .safetensors weights (MetricGold never loads "
                             "pickled .bin/.pt files); convert it, or use another model")
    return folder


def load_estimator(
    model: str | os.PathLike[str] | None = None,
    device: str = "auto",
    dtype: str = "auto",
) -> DepthEstimator:
    """Load any supported metric depth model.

    ``model``: None (the built-in demo MetricGold model), a local folder (kind detected from its files) or a Hub id
    ``org/name`` (downloaded into the Hugging Face cache once). Raises :class:`ModelLoadError` (a ValueError) with
    one line naming the model and what to do.
    """
    if model is None or str(model) == "":
        from .metricgold import MetricGoldEstimator

        return MetricGoldEstimator.from_folder(None, device=device, dtype=dtype)
    name = str(model)
    if is_hub_id(name):
        folder = fetch_from_hub(name)
    else:
        folder = Path(name).expanduser()
    kind = detect_kind(folder)
    licence = read_licence(folder)
    if kind == "metricgold":
        from .metricgold import MetricGoldEstimator

        return MetricGoldEstimator.from_folder(folder, device=device, dtype=dtype, name=name, licence=licence)
    from .transformers_models import TransformersDepthEstimator

    return TransformersDepthEstimator.from_folder(folder, kind, device=device, dtype=dtype, name=name,
                                                  licence=licence)
