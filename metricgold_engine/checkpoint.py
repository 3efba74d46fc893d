"""Building, loading, checking and saving MetricGold checkpoints (diffusers folder layout, safetensors only).

A MetricGold checkpoint is a folder that :class:`~metricgold_engine.pipeline.MetricGoldPipeline` loads with
``from_pretrained``::

    model_index.json   components and the MetricGold config (depth range, normalization, inference defaults)
    unet/              UNet2DConditionModel with 8 input channels: cat(image_latent, depth_latent_t)
    vae/               Stable Diffusion's image VAE, frozen
    depth_vae/         the depth VAE: SD's VAE fine-tuned on log-normalized depth replicated to 3 channels
    scheduler/         DDIMScheduler, v-prediction
    text_embedding/    the empty-prompt embedding (text conditioning is off), so no text encoder is needed

The latents are concatenated in Marigold's order, image latent first, so a Marigold checkpoint can initialise
training (the paper writes the reverse order; the two differ only by a permutation of conv_in's input channels).
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

from .components import EmptyTextEmbedding, compute_empty_text_embedding, widen_conv_in
from .core.demo_model import resolve_model_path
from .core.depth_codec import DEFAULT_DEPTH_MAX, DEFAULT_DEPTH_MIN, check_depth_range
from .core.checkpoint_check import COMPONENTS, check_checkpoint_folder, check_component_folders  # noqa: F401
from .core.errors import CheckpointError
from .devices import pick_device, pick_dtype
from .pipeline import MetricGoldPipeline


def init_from_stable_diffusion(
    sd_path: str | os.PathLike[str],
    depth_min: float = DEFAULT_DEPTH_MIN,
    depth_max: float = DEFAULT_DEPTH_MAX,
    depth_normalization: str = "log",
    **pipeline_config: Any,
) -> MetricGoldPipeline:
    """A fresh MetricGold model from a Stable Diffusion v2 folder (diffusers layout) — or a Marigold one.

    - UNet: SD's, with ``conv_in`` widened to 8 channels (a Marigold UNet already has 8 and is kept as it is);
    - image VAE: SD's, frozen; depth VAE: a copy of it (stage 1 of training fine-tunes it on log depth);
    - scheduler: DDIM with SD's betas, v-prediction;
    - text conditioning: the empty prompt's embedding, computed once here and stored.
    """
    check_depth_range(depth_min, depth_max, depth_normalization)
    root = Path(sd_path)
    _require_components(root, ("unet", "vae", "scheduler"))
    unet = UNet2DConditionModel.from_pretrained(root, subfolder="unet", use_safetensors=True)
    vae = AutoencoderKL.from_pretrained(root, subfolder="vae", use_safetensors=True)
    latent_channels = vae.config.latent_channels
    if unet.config.in_channels == latent_channels:
        widen_conv_in(unet)
    elif unet.config.in_channels != 2 * latent_channels:
        raise CheckpointError(
            f"{root / 'unet'}: conv_in takes {unet.config.in_channels} channels; expected {latent_channels} "
            f"(Stable Diffusion) or {2 * latent_channels} (Marigold/MetricGold)"
        )
    if (root / "depth_vae").is_dir():
        depth_vae = AutoencoderKL.from_pretrained(root, subfolder="depth_vae", use_safetensors=True)
    else:
        depth_vae = copy.deepcopy(vae)
    if (root / "text_embedding").is_dir():
        text_embedding = EmptyTextEmbedding.from_pretrained(root, subfolder="text_embedding", use_safetensors=True)
    else:
        _require_components(root, ("text_encoder", "tokenizer"))
        embedding = compute_empty_text_embedding(root)
        text_embedding = EmptyTextEmbedding(num_tokens=embedding.shape[1], hidden_size=embedding.shape[2])
        with torch.no_grad():
            text_embedding.embedding.copy_(embedding)
    scheduler = DDIMScheduler.from_config(
        DDIMScheduler.load_config(root, subfolder="scheduler"),
        prediction_type="v_prediction",
        clip_sample=False,
        set_alpha_to_one=False,
    )
    return MetricGoldPipeline(
        unet=unet,
        vae=vae,
        depth_vae=depth_vae,
        scheduler=scheduler,
        text_embedding=text_embedding,
        depth_min=depth_min,
        depth_max=depth_max,
        depth_normalization=depth_normalization,
        **pipeline_config,
    )


# --------------------------------------------------------------------------------------- loading/saving


def save_checkpoint(pipe: MetricGoldPipeline, path: str | os.PathLike[str]) -> Path:
    """``save_pretrained`` into a temporary sibling folder, then rename into place: an interrupted save never leaves
    a half-written checkpoint at ``path`` (an existing one is replaced only once the new one is complete)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        pipe.save_pretrained(tmp, safe_serialization=True)
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            _rmtree(old)
        else:
            os.replace(tmp, target)
    except BaseException:
        _rmtree(tmp)
        raise
    return target


def _rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


#: Where checkpoints written by MetricGold 0.1 say the text embedding's class lives (model.py was since split).
LEGACY_COMPONENT_MODULES = {"metricgold_engine.model": "metricgold_engine.components"}


def _accept_legacy_component_modules(index: dict[str, Any]) -> None:
    """Let diffusers resolve a component class named under its 0.1 module path. diffusers looks modules that are not
    its own libraries up in ``sys.modules`` (it never imports what a folder names), so the old name is made an alias of
    the module that holds the class now."""
    import importlib
    import sys

    for entry in index.values():
        if isinstance(entry, list) and entry and entry[0] in LEGACY_COMPONENT_MODULES:
            sys.modules.setdefault(entry[0], importlib.import_module(LEGACY_COMPONENT_MODULES[entry[0]]))


def _require_components(root: Path, names: tuple[str, ...]) -> None:
    if not root.exists():
        raise CheckpointError(f"{root}: model folder not found")
    if not root.is_dir():
        raise CheckpointError(f"{root}: not a folder (a model is a diffusers-layout folder)")
    check_component_folders(root, names)


def load_pipeline(
    path: str | os.PathLike[str] | None,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
) -> MetricGoldPipeline:
    """Load a MetricGold checkpoint folder onto a device, checking it first so that a broken folder gives one clear
    message (which folder, which part, what is wrong) instead of a deep diffusers traceback."""

    root = resolve_model_path(path)
    # The whole folder, from its JSON and safetensors headers, before diffusers reads a byte of weights.
    index = check_checkpoint_folder(root)
    _accept_legacy_component_modules(index)
    dev = pick_device(device)
    torch_dtype = pick_dtype(dev, dtype)
    try:
        pipe = MetricGoldPipeline.from_pretrained(root, dtype=torch_dtype, use_safetensors=True)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(f"{root}: could not load the model: {exc}") from None
    latent_channels = pipe.vae.config.latent_channels
    if pipe.unet.config.in_channels != 2 * latent_channels:
        raise CheckpointError(
            f"{root / 'unet'}: conv_in takes {pipe.unet.config.in_channels} input channels; a MetricGold UNet takes "
            f"{2 * latent_channels} (image latent + depth latent)"
        )
    # The image VAE is always kept in float32 on the CPU path; on GPUs fp16 is SD's usual practice.
    pipe = pipe.to(dev)
    if dev.type == "cpu":
        # Channels-last (NHWC) weights: 1.17x on this project's CPU in float32 with depth within 0.04 %
        # (bench/cpu_options.py); the fastest CPU option that keeps depth within 1 % everywhere.
        from .speed import apply_speed_options

        apply_speed_options(pipe, channels_last=True)
    return pipe
