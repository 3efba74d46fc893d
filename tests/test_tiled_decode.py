"""Tiled depth-VAE decode with whole-image GroupNorm statistics: equal to an untiled decode, unlike per-tile
statistics (what diffusers' enable_tiling does), and cancellable between tiles."""

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from PIL import Image

from metricgold_engine.checkpoint import init_from_stable_diffusion
from metricgold_engine.tiny_models import make_tiny_stable_diffusion
from metricgold_engine.tiled_decode import tiled_decode


@pytest.fixture(scope="module")
def sd_path(tmp_path_factory):
    return make_tiny_stable_diffusion(tmp_path_factory.mktemp("sd") / "sd", seed=3)


@pytest.fixture(scope="module")
def vae(sd_path):
    return AutoencoderKL.from_pretrained(sd_path, subfolder="vae").eval()


def _latent(b=2, h=20, w=28, seed=0):
    return torch.randn(b, 4, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("whole_max_elements", [1, 2 * 32 * 40 * 56])  # everything tiled; the low-res part whole
def test_tiled_matches_untiled(vae, whole_max_elements):
    z = _latent()
    with torch.no_grad():
        ref = vae.decode(z).sample
    calls = []
    out = tiled_decode(vae, z, tile_size=16, whole_max_elements=whole_max_elements,
                       tile_callback=lambda done, total: calls.append((done, total)))
    assert out.shape == ref.shape == (2, 3, 40, 56)
    assert (out - ref).abs().max().item() < 1e-4
    # several tiles and passes ran, and the callback counted them all up to its announced total
    assert len(calls) > 8 and calls[-1][0] == calls[-1][1] == len(calls)


def test_per_tile_statistics_are_wrong(vae):
    """The same tiles with each tile's own GroupNorm statistics: far off. Shows the test above can fail."""
    z = _latent()
    with torch.no_grad():
        ref = vae.decode(z).sample
    out = tiled_decode(vae, z, tile_size=16, statistics="tile")
    assert (out - ref).abs().max().item() > 0.05


def test_tile_callback_aborts(vae):
    class Cancelled(Exception):
        pass

    def cancel(done, total):
        if done == 3:
            raise Cancelled

    with pytest.raises(Cancelled):
        tiled_decode(vae, _latent(), tile_size=16, whole_max_elements=1, tile_callback=cancel)
    # the model is left as it was: an untiled decode still gives the same result as before
    z = _latent(seed=1)
    with torch.no_grad():
        a = vae.decode(z).sample
    assert all(type(m).__name__ != "_GlobalGroupNorm" for m in vae.modules())
    np.testing.assert_allclose(tiled_decode(vae, z, tile_size=16, whole_max_elements=1).numpy(), a.numpy(),
                               atol=1e-4)


def test_pipeline_tiles_above_threshold(sd_path):
    pipe = init_from_stable_diffusion(sd_path)
    pipe.set_progress_bar_config(disable=True)
    image = Image.fromarray((np.random.default_rng(0).random((72, 96, 3)) * 255).astype(np.uint8))
    kwargs = dict(num_inference_steps=2, ensemble_size=2, processing_resolution=0, seed=5)
    untiled = pipe(image, **kwargs).depth
    pipe.decode_tile_threshold, pipe.decode_tile_size, pipe.decode_whole_max_elements = 32 * 32, 32, 1
    calls = []
    tiled = pipe(image, decode_callback=lambda done, total: calls.append((done, total)), **kwargs).depth
    assert calls and calls[-1][0] == calls[-1][1]
    assert np.abs(np.log(tiled) - np.log(untiled)).max() < 1e-3


@pytest.mark.parametrize("ensemble_size", [1, 4])
def test_median_fast_path_matches_float64_reduction(sd_path, ensemble_size):
    """The median path converts only the middle member(s) to metres; asking for the uncertainty takes the general
    path (all members in float64 numpy, ensemble_log_depth). Even ensemble and a resize back to the input size."""
    pipe = init_from_stable_diffusion(sd_path)
    pipe.set_progress_bar_config(disable=True)
    image = Image.fromarray((np.random.default_rng(1).random((50, 70, 3)) * 255).astype(np.uint8))
    kwargs = dict(num_inference_steps=2, ensemble_size=ensemble_size, processing_resolution=48, seed=3)
    fast = pipe(image, **kwargs).depth
    # (for one member, the mean is the median and takes the general path)
    general = pipe(image, output_uncertainty=True, ensemble_reduction="median" if ensemble_size > 1 else "mean",
                   **kwargs).depth
    assert fast.shape == general.shape == (50, 70)
    np.testing.assert_allclose(fast, general, rtol=1e-5)


def test_estimator_cancel_reaches_the_tiled_decode(tiny_checkpoint):
    """Through the backend (as the worker runs it): progress is called between decode tiles, so raising in it
    (the worker's cancel) stops a long tiled decode."""
    from metricgold_engine.backends import load_estimator

    est = load_estimator(tiny_checkpoint, device="cpu", dtype="float32")
    est.pipeline.set_progress_bar_config(disable=True)
    est.pipeline.decode_tile_threshold, est.pipeline.decode_tile_size = 16 * 16, 16
    est.pipeline.decode_whole_max_elements = 1
    events = []

    class Cancelled(Exception):
        pass

    def progress(stage, step, total):
        events.append((stage, step, total))
        if len(events) == 5:  # 2 denoising steps, then tiles
            raise Cancelled

    image = Image.fromarray((np.random.default_rng(0).random((48, 64, 3)) * 255).astype(np.uint8))
    with pytest.raises(Cancelled):
        est.predict(image, progress=progress, num_inference_steps=2, ensemble_size=1, processing_resolution=0)
    assert events[:2] == [("denoise", 1, 2), ("denoise", 2, 2)]
    tiles = events[2][2]
    assert tiles > 3 and events[2:] == [("decode", 1, tiles), ("decode", 2, tiles), ("decode", 3, tiles)]
