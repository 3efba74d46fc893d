"""Speed options keep the result: channels-last (the CPU default) gives the same depth; a float16 depth VAE decodes
in float32."""

import numpy as np
import pytest
import torch
from PIL import Image

from metricgold_engine.checkpoint import load_pipeline
from metricgold_engine.tiny_models import make_tiny_checkpoint
from metricgold_engine.speed import apply_speed_options


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", seed=4)


def _image():
    return Image.fromarray((np.random.default_rng(2).random((40, 56, 3)) * 255).astype(np.uint8))


def test_channels_last_same_depth(checkpoint):
    kwargs = dict(num_inference_steps=2, ensemble_size=2, processing_resolution=0, seed=1)
    plain = load_pipeline(checkpoint, device="cpu", dtype="float32")
    plain.set_progress_bar_config(disable=True)
    for module in (plain.unet, plain.vae, plain.depth_vae):
        module.to(memory_format=torch.contiguous_format)
    assert not plain.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    nhwc = load_pipeline(checkpoint, device="cpu", dtype="float32")  # the CPU default
    nhwc.set_progress_bar_config(disable=True)
    assert nhwc.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert apply_speed_options(nhwc, channels_last=True) is nhwc
    np.testing.assert_allclose(nhwc(_image(), **kwargs).depth, plain(_image(), **kwargs).depth, rtol=1e-4)


def test_float16_depth_vae_decodes_in_float32(checkpoint):
    pipe = load_pipeline(checkpoint, device="cpu", dtype="float16")
    latent = torch.randn(1, 4, 8, 8, dtype=torch.float16)
    # Beyond float16's range (65504) part-way through the decoder, not in float32
    with torch.no_grad():
        pipe.depth_vae.decoder.conv_in.weight.mul_(1e5)
    pipe.upcast_float16_depth_vae = False
    with torch.no_grad():
        half = pipe.depth_vae.decode(latent / pipe.depth_vae.config.scaling_factor).sample
    pipe.upcast_float16_depth_vae = True
    out = pipe.decode_depth(latent)
    assert pipe.depth_vae.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert not torch.isfinite(half).all()  # the case the upcast is for
