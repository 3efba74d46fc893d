"""Tiny random transformers depth models (Depth Pro, Depth Anything metric/relative, ZoeDepth), saved as a Hub
folder would be: ``config.json``, safetensors weights, ``preprocessor_config.json`` and optionally a model card.

For tests, the CLI and benchmarks: the same classes and processors as the published weights, far fewer channels and
a small input size, so a prediction takes well under a second on the CPU. Their depth is random but metric-shaped
(positive metres), which is all the plumbing needs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

TINY_KINDS = ("depth_pro", "depth_anything", "depth_anything_relative", "zoedepth")


def _tiny_dinov2(**overrides: Any) -> Any:
    from transformers import Dinov2Config

    kwargs: dict[str, Any] = dict(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, patch_size=8,
        image_size=32, initializer_range=0.02,
    )
    kwargs.update(overrides)
    return Dinov2Config(**kwargs)


def _depth_pro(seed: int) -> tuple[Any, Any]:
    from transformers import DepthProConfig, DepthProForDepthEstimation, DepthProImageProcessor

    # patch_size is Depth Pro's patch encoder input (384 in the real model); the image is processed at 4 patches'
    # overlap-ratio pyramid of it, so everything scales with this one number.
    patch = 32
    sub = {"image_size": patch, "patch_size": 8}
    config = DepthProConfig(
        patch_size=patch,
        fusion_hidden_size=16,
        intermediate_hook_ids=[1, 0],
        intermediate_feature_dims=[8, 8],
        scaled_images_ratios=[0.5, 1.0],
        scaled_images_overlap_ratios=[0.0, 0.5],
        scaled_images_feature_dims=[16, 16],
        use_fov_model=True,
        num_fov_head_layers=1,
        image_model_config=_tiny_dinov2(**sub).to_dict(),
        patch_model_config=_tiny_dinov2(**sub).to_dict(),
        fov_model_config=_tiny_dinov2(**sub).to_dict(),
    )
    processor = DepthProImageProcessor(size={"height": 64, "width": 64})
    return DepthProForDepthEstimation(config), processor


def _depth_anything(seed: int, depth_type: str) -> tuple[Any, Any]:
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, DPTImageProcessor

    backbone = _tiny_dinov2(patch_size=14, image_size=56, out_indices=[1, 2, 3, 4], reshape_hidden_states=False,
                            apply_layernorm=True)
    config = DepthAnythingConfig(
        backbone_config=backbone.to_dict(), patch_size=14, reassemble_hidden_size=32,
        neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16, head_hidden_size=8,
        depth_estimation_type=depth_type, max_depth=20 if depth_type == "metric" else 1,
    )
    # As the published Depth Anything processors: keep the aspect ratio, sides a multiple of the patch size.
    processor = DPTImageProcessor(size={"height": 56, "width": 56}, keep_aspect_ratio=True, ensure_multiple_of=14,
                                  do_pad=False, resample=3, image_mean=[0.485, 0.456, 0.406],
                                  image_std=[0.229, 0.224, 0.225])
    return DepthAnythingForDepthEstimation(config), processor


def _zoedepth(seed: int) -> tuple[Any, Any]:
    from transformers import ZoeDepthConfig, ZoeDepthForDepthEstimation, ZoeDepthImageProcessor

    backbone = _tiny_dinov2(patch_size=8, image_size=32, out_indices=[1, 2, 3, 4], reshape_hidden_states=False)
    config = ZoeDepthConfig(
        backbone_config=backbone.to_dict(), backbone_hidden_size=32, neck_hidden_sizes=[8, 16, 32, 32],
        fusion_hidden_size=16, reassemble_factors=[4, 2, 1, 0.5], readout_type="project",
        num_relative_features=8, bottleneck_features=16, num_attractors=[4, 2, 2, 1], bin_embedding_dim=8,
        bin_configurations=[{"n_bins": 8, "min_depth": 0.1, "max_depth": 10.0, "name": "nyu"}],
        num_patch_transformer_layers=1, patch_transformer_hidden_size=16, patch_transformer_intermediate_size=32,
        patch_transformer_num_attention_heads=2,
    )
    processor = ZoeDepthImageProcessor(size={"height": 32, "width": 32}, keep_aspect_ratio=True,
                                       ensure_multiple_of=8)
    return ZoeDepthForDepthEstimation(config), processor


def _spread_weights(model: Any, seed: int, gain: float = 1.0) -> None:
    """Redraw the matrices at unit gain (std 1/sqrt(fan_in)) and the biases at std 0.1.

    transformers' small initialisation makes a random model's depth almost constant (1e-5 relative spread), which
    would let a test of "equal to transformers to 1e-4" pass with the wrong image processor; at unit gain the depth
    varies with the photo by tens of percent.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim >= 2:
                fan_in = param[0].numel()
                param.copy_(gain * torch.randn(param.shape, generator=generator) / fan_in ** 0.5)
            elif name.endswith("bias"):
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))


def make_tiny_depth_model(
    path: str | os.PathLike[str], kind: str, *, seed: int = 0, licence: str | None = None
) -> Path:
    """Write a tiny random model of ``kind`` (one of :data:`TINY_KINDS`) to ``path``: model (safetensors) and image
    processor via ``save_pretrained``, plus a model card ``README.md`` with ``license: LICENCE`` when given."""
    import torch

    if kind not in TINY_KINDS:
        raise ValueError(f"unknown tiny model kind {kind!r} (known: {', '.join(TINY_KINDS)})")
    torch.manual_seed(seed)
    if kind == "depth_pro":
        model, processor = _depth_pro(seed)
    elif kind == "zoedepth":
        model, processor = _zoedepth(seed)
    else:
        model, processor = _depth_anything(seed, "relative" if kind.endswith("relative") else "metric")
    _spread_weights(model, seed, 2.0 if kind == "zoedepth" else 1.0)  # ZoeDepth's bins flatten unit gain
    if kind == "depth_pro":
        # Depth Pro's heads end in a ReLU (inverse depth) and a field of view in degrees: shift them to where a real
        # model works (inverse depth around 1, field of view around 55 degrees) so neither is clamped.
        with torch.no_grad():
            model.head.layers[4].bias.fill_(1.0)
            model.fov_model.head.layers[-1].bias.fill_(55.0)
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    model.eval().save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    if licence is not None:
        (out / "README.md").write_text(f"---\nlicense: {licence}\ntags:\n- depth-estimation\n---\n\n"
                                       f"# Tiny random {kind} model (tests only)\n", encoding="utf-8")
    return out
