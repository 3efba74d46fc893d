"""Check a MetricGold checkpoint folder as a whole before anything heavy touches it (ground floor: stdlib only).

Only the JSON files and the safetensors *headers* are read (the first bytes of each weights file: tensor names, dtypes,
shapes and offsets), so a tampered or half-copied folder is refused in milliseconds, before torch is imported, with
one line naming the file and the field. ``load_pipeline`` and the worker's ``--model`` call it first; the client calls
it before starting a worker for a model.

What is checked (everything diffusers would otherwise trip over, deep inside, seconds later):

- ``model_index.json``: a JSON object; each component a ``[library, class]`` pair; the MetricGold config
  (``depth_min`` < ``depth_max``, numbers; ``depth_normalization``; the inference defaults' types and ranges);
- each component folder: its config is a JSON object; its weights are safetensors whose header is well formed and
  whose data is all there (a half-copied file is shorter than its header says);
- the weights fit the config: the VAEs' and the UNet's key tensors exist with the shapes their configs imply (so a VAE
  whose file was swapped with another component's is caught), the UNet takes image + depth latents, and the text
  embedding is as wide as the UNet's cross-attention.
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path
from typing import Any

from .errors import CheckpointError
from .options import NORMALIZATION_MODES, TIMESTEP_SPACINGS

#: Components of a MetricGold checkpoint folder, in the order they are checked.
COMPONENTS = ("unet", "vae", "depth_vae", "scheduler", "text_embedding")
#: Components with weights (the scheduler has only a config).
WEIGHTED = ("unet", "vae", "depth_vae", "text_embedding")
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
#: A safetensors header lists names, dtypes and shapes: megabytes at most, even for SD-sized models.
MAX_HEADER_BYTES = 64 << 20

#: The inference defaults stored in model_index.json: (check, what it must be).
_DEFAULTS: dict[str, tuple[Any, str]] = {
    "default_processing_resolution": (lambda v: _is_int(v) and v >= 0, "an integer >= 0 (0 = the photo's own size)"),
    "default_num_inference_steps": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "default_ensemble_size": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "default_timestep_spacing": (lambda v: v in TIMESTEP_SPACINGS, "one of " + ", ".join(TIMESTEP_SPACINGS)),
}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _show(value: Any) -> str:
    if isinstance(value, str):
        return f"{json.dumps(value)} (a string)"
    text = json.dumps(value) if value is None or isinstance(value, (bool, int, float)) else type(value).__name__
    return text if len(text) <= 60 else text[:57] + "..."


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON file that must hold an object; CheckpointError naming the file otherwise."""
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {_show(data)}")
    return data


def read_safetensors_header(path: Path) -> dict[str, list[int]]:
    """Tensor name -> shape from a safetensors file's header, after checking the header's form and that the file
    holds every byte the header describes. Reads only the header."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path}: not a safetensors file ({size} bytes)")
            (length,) = struct.unpack("<Q", head)
            if length > min(size - 8, MAX_HEADER_BYTES):
                raise CheckpointError(f"{path}: not a safetensors file, or cut short: its header claims {length} bytes "
                                      f"in a file of {size}")
            raw = f.read(length)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{path}: not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: not a safetensors file (its header is not a JSON object)")
    shapes: dict[str, list[int]] = {}
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        shape = info.get("shape") if isinstance(info, dict) else None
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(info, dict) and isinstance(info.get("dtype"), str)
                and isinstance(shape, list) and all(_is_int(n) and n >= 0 for n in shape)
                and isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(n) for n in offsets)
                and 0 <= offsets[0] <= offsets[1]):
            raise CheckpointError(f"{path}: tensor {name!r}: malformed header entry")
        shapes[name] = shape
        end = max(end, offsets[1])
    if 8 + length + end > size:
        raise CheckpointError(f"{path}: cut short: {size} bytes, but its header describes {8 + length + end} (a "
                              "half-copied or truncated file; copy it again)")
    return shapes


def _weights_files(folder: Path) -> list[Path]:
    """The safetensors files diffusers would load from a component folder (sharded ones through their index)."""
    single = folder / WEIGHTS_NAME
    if single.is_file():
        return [single]
    index = folder / (WEIGHTS_NAME + ".index.json")
    if index.is_file():
        weight_map = read_json_object(index).get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckpointError(f"{index}: weight_map: expected an object of tensor name -> shard file")
        shards = [folder / name for name in sorted(set(weight_map.values()))]
        for shard in shards:
            if not shard.is_file():
                raise CheckpointError(f"{index}: weight_map: shard {shard.name} is missing")
        return shards
    return sorted(folder.glob("*.safetensors"))


def _require_folder(root: Path, name: str, config_name: str) -> Path:
    folder = root / name
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: missing component '{name}'")
    if not (folder / config_name).is_file():
        raise CheckpointError(f"{folder}: missing {config_name}")
    return folder


def check_component_folders(root: Path, names: tuple[str, ...]) -> None:
    """Each named component folder exists with its config and (except the scheduler and tokenizer) safetensors."""
    for name in names:
        if name == "tokenizer":
            if not (root / name).is_dir():
                raise CheckpointError(f"{root / name}: missing component '{name}'")
            continue
        folder = _require_folder(root, name, "scheduler_config.json" if name == "scheduler" else "config.json")
        if name != "scheduler" and not any(folder.glob("*.safetensors")):
            hint = " (.bin/.pt weights are not loaded: convert them to safetensors)" if any(
                folder.glob("*.bin")) or any(folder.glob("*.pt")) else ""
            raise CheckpointError(f"{folder}: no .safetensors weights{hint}")


def _check_index(index_path: Path, index: dict[str, Any]) -> None:
    missing = [name for name in COMPONENTS if name not in index]
    if missing:
        raise CheckpointError(f"{index_path}: not a MetricGold checkpoint, missing component(s) {', '.join(missing)}")
    for name in COMPONENTS:
        entry = index[name]
        if not (isinstance(entry, list) and len(entry) == 2 and all(isinstance(s, str) and s for s in entry)):
            raise CheckpointError(f"{index_path}: {name}: expected [library, class] such as [\"diffusers\", "
                                  f"\"AutoencoderKL\"], got {_show(entry)}")
    for field in ("depth_min", "depth_max"):
        if field in index and not _is_number(index[field]):
            raise CheckpointError(f"{index_path}: {field}: must be a finite number of metres, got {_show(index[field])}")
    mode = index.get("depth_normalization", "log")
    if mode not in NORMALIZATION_MODES:
        raise CheckpointError(f"{index_path}: depth_normalization: must be one of {', '.join(NORMALIZATION_MODES)}, "
                              f"got {_show(mode)}")
    d_min, d_max = index.get("depth_min", 0.1), index.get("depth_max", 100.0)
    if not d_min < d_max:
        raise CheckpointError(f"{index_path}: depth_min: must be below depth_max, got depth_min={d_min}, "
                              f"depth_max={d_max}")
    if mode == "log" and d_min <= 0:
        raise CheckpointError(f"{index_path}: depth_min: log normalization needs depth_min > 0, got {d_min}")
    for field, (ok, expected) in _DEFAULTS.items():
        if field in index and not ok(index[field]):
            raise CheckpointError(f"{index_path}: {field}: must be {expected}, got {_show(index[field])}")


def _looks_like(shapes: dict[str, list[int]]) -> str:
    if "time_embedding.linear_1.weight" in shapes or "conv_in.weight" in shapes:
        return " (they look like a UNet's)"
    if "encoder.conv_in.weight" in shapes:
        return " (they look like a VAE's)"
    if "embedding" in shapes:
        return " (they look like the text embedding's)"
    return ""


def _expect(path: Path, shapes: dict[str, list[int]], name: str, shape: list[Any], kind: str, config: Path) -> None:
    """Tensor ``name`` exists with ``shape`` (None entries: any size)."""
    if name not in shapes:
        raise CheckpointError(f"{path}: no tensor '{name}': these are not {kind} weights{_looks_like(shapes)}")
    got = shapes[name]
    if len(got) != len(shape) or any(want is not None and want != have for want, have in zip(shape, got)):
        want = "[" + ", ".join("*" if w is None else str(w) for w in shape) + "]"
        raise CheckpointError(f"{path}: {name}: shape {got} does not match {config} (expected {want})")


def _int_or_none(config: dict[str, Any], key: str) -> int | None:
    value = config.get(key)
    return value if _is_int(value) else None


def _check_vae(folder: Path, config: dict[str, Any], path: Path, shapes: dict[str, list[int]]) -> None:
    cfg = folder / "config.json"
    blocks = config.get("block_out_channels")
    first = blocks[0] if isinstance(blocks, list) and blocks and _is_int(blocks[0]) else None
    last = blocks[-1] if isinstance(blocks, list) and blocks and _is_int(blocks[-1]) else None
    latent = _int_or_none(config, "latent_channels")
    _expect(path, shapes, "encoder.conv_in.weight", [first, _int_or_none(config, "in_channels"), None, None],
            "AutoencoderKL", cfg)
    _expect(path, shapes, "encoder.conv_out.weight", [None if latent is None else 2 * latent, last, None, None],
            "AutoencoderKL", cfg)
    _expect(path, shapes, "decoder.conv_out.weight", [_int_or_none(config, "out_channels"), first, None, None],
            "AutoencoderKL", cfg)


def _check_unet(folder: Path, config: dict[str, Any], path: Path, shapes: dict[str, list[int]],
                latent_channels: int | None) -> None:
    cfg = folder / "config.json"
    blocks = config.get("block_out_channels")
    first = blocks[0] if isinstance(blocks, list) and blocks and _is_int(blocks[0]) else None
    in_channels = _int_or_none(config, "in_channels")
    if latent_channels is not None and in_channels is not None and in_channels != 2 * latent_channels:
        raise CheckpointError(f"{folder}: conv_in takes {in_channels} input channels; a MetricGold UNet takes "
                              f"{2 * latent_channels} (image latent + depth latent)")
    _expect(path, shapes, "conv_in.weight", [first, in_channels, None, None], "UNet2DConditionModel", cfg)
    _expect(path, shapes, "conv_out.weight", [_int_or_none(config, "out_channels"), first, None, None],
            "UNet2DConditionModel", cfg)
    width = _int_or_none(config, "cross_attention_dim")
    if width is not None:
        for name, shape in shapes.items():
            if name.endswith("attn2.to_k.weight") and (len(shape) != 2 or shape[1] != width):
                raise CheckpointError(f"{path}: {name}: shape {shape} does not take the {width}-wide text features "
                                      f"that {cfg} (cross_attention_dim) says")


def _check_text_embedding(folder: Path, config: dict[str, Any], path: Path, shapes: dict[str, list[int]],
                          unet_width: int | None, unet_config: Path) -> None:
    cfg = folder / "config.json"
    _expect(path, shapes, "embedding", [1, _int_or_none(config, "num_tokens"), _int_or_none(config, "hidden_size")],
            "EmptyTextEmbedding", cfg)
    width = shapes["embedding"][2]
    if unet_width is not None and width != unet_width:
        raise CheckpointError(f"{path}: embedding: {width} wide, but the UNet's cross_attention_dim is {unet_width} "
                              f"({unet_config}): the text embedding belongs to another model")


def check_checkpoint_folder(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Check a MetricGold checkpoint folder as a whole (JSON and safetensors headers only; milliseconds) and return
    its model_index.json. Raises CheckpointError with one line naming the file and the field at the first problem."""
    root = Path(path)
    if not root.exists():
        raise CheckpointError(f"{root}: model folder not found")
    if not root.is_dir():
        raise CheckpointError(f"{root}: not a folder (a model is a diffusers-layout folder)")
    index_path = root / "model_index.json"
    if not index_path.is_file():
        raise CheckpointError(f"{root}: no model_index.json (not a diffusers-layout model folder)")
    index = read_json_object(index_path)
    _check_index(index_path, index)
    check_component_folders(root, COMPONENTS)
    scheduler_config = root / "scheduler" / "scheduler_config.json"
    steps = read_json_object(scheduler_config).get("num_train_timesteps", 1000)
    if not (_is_int(steps) and steps >= 1):
        raise CheckpointError(f"{scheduler_config}: num_train_timesteps: must be an integer >= 1, got {_show(steps)}")

    configs: dict[str, dict[str, Any]] = {}
    shapes: dict[str, dict[str, list[int]]] = {}
    files: dict[str, Path] = {}
    for name in WEIGHTED:
        folder = root / name
        configs[name] = read_json_object(folder / "config.json")
        merged: dict[str, list[int]] = {}
        for file in _weights_files(folder):
            merged.update(read_safetensors_header(file))
        shapes[name] = merged
        files[name] = _weights_files(folder)[0]
    classes = {name: index[name][1] for name in COMPONENTS}
    latent = None
    for name in ("vae", "depth_vae"):
        if classes[name] == "AutoencoderKL":
            _check_vae(root / name, configs[name], files[name], shapes[name])
    if classes["vae"] == "AutoencoderKL":
        latent = _int_or_none(configs["vae"], "latent_channels")
    unet_width = None
    if classes["unet"] == "UNet2DConditionModel":
        _check_unet(root / "unet", configs["unet"], files["unet"], shapes["unet"], latent)
        unet_width = _int_or_none(configs["unet"], "cross_attention_dim")
    if classes["text_embedding"] == "EmptyTextEmbedding":
        _check_text_embedding(root / "text_embedding", configs["text_embedding"], files["text_embedding"],
                              shapes["text_embedding"], unet_width, root / "unet" / "config.json")
    return index


def is_metricgold_folder(root: Path) -> bool:
    """Whether a folder is meant as a MetricGold checkpoint: its model_index.json names MetricGoldPipeline, or cannot be
    read as a JSON object at all (then the check names the file). Other backends' folders have a config.json only, or
    another pipeline class; their own loaders check them."""
    index_path = root / "model_index.json"
    if not index_path.is_file():
        return False
    try:
        index = json.loads(index_path.read_bytes().decode("utf-8"))
    except (OSError, ValueError):
        return True
    return not isinstance(index, dict) or index.get("_class_name", "MetricGoldPipeline") == "MetricGoldPipeline"


def check_local_model(model: str | os.PathLike[str]) -> None:
    """The fast, torch-free part of loading a model given by local path: the folder exists, and a MetricGold folder
    passes :func:`check_checkpoint_folder`. (Hub ids are not paths: callers pass them by.)"""
    root = Path(model).expanduser()
    if not root.exists():
        raise CheckpointError(f"{root}: model folder not found")
    if not root.is_dir():
        raise CheckpointError(f"{root}: not a folder (a model is a folder)")
    if is_metricgold_folder(root):
        check_checkpoint_folder(root)
