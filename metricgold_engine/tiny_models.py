"""Randomly initialised models with Stable Diffusion v2's classes and folder layout, for tests, CPU demos and GPU
benchmarks (no weights can be downloaded there): they go through the same code path as the real model."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from .checkpoint import init_from_stable_diffusion, save_checkpoint

#: Architectures for tests and CPU demos: same classes as SD2, far fewer channels. The VAE's downsample factor is
#: 2 ** (len(block_out_channels) - 1).
TINY_SIZES: dict[str, dict[str, Any]] = {
    "tiny": {
        "unet": dict(block_out_channels=(32, 64), layers_per_block=2, attention_head_dim=(2, 4),
                     down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                     up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), norm_num_groups=32),
        "vae": dict(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=32),
        "text_hidden": 32,
    },
    # The demo model: VAE downsample 4, a three-level UNet; ~10 MB of weights in all.
    "small": {
        "unet": dict(block_out_channels=(32, 64, 96), layers_per_block=1, attention_head_dim=(2, 4, 6),
                     down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                     up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), norm_num_groups=32),
        "vae": dict(block_out_channels=(32, 32, 64), layers_per_block=1, norm_num_groups=32),
        "text_hidden": 64,
    },
    # Stable Diffusion v2's own UNet and VAE shapes with random weights (~1.3 B parameters in all): for benchmarks
    # of speed and memory on GPUs, where no weights can be downloaded.
    "sd2": {
        "unet": dict(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, attention_head_dim=(5, 10, 20, 20),
                     down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                     up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, norm_num_groups=32,
                     sample_size=96),
        "vae": dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32,
                    sample_size=768),
        "text_hidden": 1024,
    },
}


def make_tiny_stable_diffusion(path: str | os.PathLike[str], seed: int = 0, size: str = "tiny") -> Path:
    """Write a randomly initialised, SD2-shaped folder (unet, vae, text_encoder, tokenizer, scheduler) to ``path``.

    ``size``: "tiny" (tests), "small" (the demo model) or "sd2" (SD2's full UNet/VAE shapes, for benchmarks).

    Same classes and folder layout as stabilityai/stable-diffusion-2, so :func:`init_from_stable_diffusion` runs on
    it exactly as on the real model.
    """
    from diffusers import PNDMScheduler
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    if size not in TINY_SIZES:
        raise ValueError(f"size must be one of {sorted(TINY_SIZES)}, got {size!r}")
    spec = TINY_SIZES[size]
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    hidden = spec["text_hidden"]
    unet = UNet2DConditionModel(
        **{"sample_size": 32, **spec["unet"]}, in_channels=4, out_channels=4, cross_attention_dim=hidden,
        use_linear_projection=True,
    )
    vae = AutoencoderKL(
        **{"sample_size": 64, **spec["vae"]}, in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * len(spec["vae"]["block_out_channels"]),
        up_block_types=("UpDecoderBlock2D",) * len(spec["vae"]["block_out_channels"]),
    )
    # A byte-less toy vocabulary is enough: the empty prompt only ever uses BOS and EOS.
    vocab = {chr(i): i - 33 for i in range(33, 127)}
    vocab.update({chr(i) + "</w>": len(vocab) + i - 33 for i in range(33, 127)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)  # SD2: 77 tokens
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, projection_dim=hidden,
    ))
    scheduler = PNDMScheduler(  # SD2's own scheduler config
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1, prediction_type="v_prediction",
    )
    unet.save_pretrained(root / "unet", safe_serialization=True)
    vae.save_pretrained(root / "vae", safe_serialization=True)
    # Not text_encoder.save_pretrained: under torch.distributed, transformers writes only on rank 0, and every rank
    # of a multi-process run builds its own copy of this folder.
    from safetensors.torch import save_file

    text_encoder.config.save_pretrained(root / "text_encoder")
    save_file({k: v.contiguous() for k, v in text_encoder.state_dict().items()},
              str(root / "text_encoder" / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save_pretrained(root / "tokenizer")
    scheduler.save_pretrained(root / "scheduler")
    (root / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "PNDMScheduler"],
    }, indent=2))
    return root


def make_tiny_checkpoint(
    path: str | os.PathLike[str], seed: int = 0, size: str = "tiny", **pipeline_config: Any
) -> Path:
    """A small, randomly initialised MetricGold checkpoint at ``path``, made through the real code path:
    a tiny SD2-shaped folder, then :func:`init_from_stable_diffusion`, then ``save_pretrained``."""
    with tempfile.TemporaryDirectory() as tmp:
        sd_path = make_tiny_stable_diffusion(Path(tmp) / "sd", seed=seed, size=size)
        pipe = init_from_stable_diffusion(sd_path, **pipeline_config)
        save_checkpoint(pipe, path)
    return Path(path)


