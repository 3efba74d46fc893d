"""MetricGoldPipeline: checked against diffusers' MarigoldDepthPipeline on shared weights, and on its own terms."""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, MarigoldDepthPipeline
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from transformers import CLIPTextModel, CLIPTokenizer

from metricgold_engine.core.depth_codec import denormalize_depth
from metricgold_engine.checkpoint import init_from_stable_diffusion
from metricgold_engine.tiny_models import make_tiny_stable_diffusion
from metricgold_engine.pipeline import MAD_TO_STD, ensemble_log_depth


def random_image(h, w, seed=0):
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def shared_weights(tmp_path_factory):
    """Our pipeline and diffusers' Marigold pipeline on the same UNet, VAE (= depth VAE), scheduler and prompt."""
    sd = make_tiny_stable_diffusion(tmp_path_factory.mktemp("sd") / "sd", seed=2)
    ours = init_from_stable_diffusion(sd, depth_min=0.2, depth_max=60.0)
    ours.set_progress_bar_config(disable=True)
    with torch.no_grad():  # as after training: the image and depth halves of conv_in differ, so order matters
        ours.unet.conv_in.weight.add_(0.05 * torch.randn_like(ours.unet.conv_in.weight))
    marigold = MarigoldDepthPipeline(
        unet=ours.unet, vae=ours.vae, scheduler=DDIMScheduler.from_config(ours.scheduler.config),
        text_encoder=CLIPTextModel.from_pretrained(sd, subfolder="text_encoder"),
        tokenizer=CLIPTokenizer.from_pretrained(sd, subfolder="tokenizer"),
        prediction_type="depth", scale_invariant=False, shift_invariant=False,
    )
    marigold.set_progress_bar_config(disable=True)
    return ours, marigold


@pytest.mark.parametrize("ensemble_size", [1, 3])
def test_matches_diffusers_marigold_pipeline(shared_weights, ensemble_size):
    """Marigold's [0, 1] output p maps to our metres by eq. (3) inverted on 2p - 1: the same denoiser, noise and
    decoding, with only the depth parameterisation differing. diffusers' Marigold cannot ensemble absolute depth
    (its ensemble_depth rejects scale_invariant=shift_invariant=False), so each member runs there on its own, from
    the very noise our pipeline draws, and the median is taken here in float64."""
    ours, marigold = shared_weights
    image = Image.fromarray(random_image(64, 48))
    out = ours(image, num_inference_steps=3, ensemble_size=ensemble_size, processing_resolution=0,
               generator=torch.Generator().manual_seed(7))
    latent_shape = (ensemble_size, 4, 64 // ours.vae_scale_factor, 48 // ours.vae_scale_factor)
    noise = randn_tensor(latent_shape, generator=torch.Generator().manual_seed(7), dtype=torch.float32)
    members = []
    for k in range(ensemble_size):
        ref = marigold(image, num_inference_steps=3, ensemble_size=1, processing_resolution=0,
                       latents=noise[k:k + 1], output_type="pt")
        p = ref.prediction[0, 0].double().numpy()
        members.append(denormalize_depth(2 * p - 1, 0.2, 60.0, "log"))
    expected = np.median(np.stack(members), axis=0)
    assert out.depth.shape == expected.shape == (64, 48)
    np.testing.assert_allclose(out.depth, expected, rtol=2e-4)


def test_deterministic_per_seed_and_independent_of_batch_size(tiny_pipeline):
    img = random_image(40, 56)
    a = tiny_pipeline(img, ensemble_size=3, seed=5)
    b = tiny_pipeline(img, ensemble_size=3, seed=5)
    c = tiny_pipeline(img, ensemble_size=3, seed=6)
    d = tiny_pipeline(img, ensemble_size=3, seed=5, batch_size=1)
    np.testing.assert_array_equal(a.depth, b.depth)
    assert np.abs(a.depth - c.depth).max() > 1e-3
    np.testing.assert_allclose(a.depth, d.depth, rtol=1e-4)


def test_sizes_padding_and_range(tiny_pipeline):
    out = tiny_pipeline(random_image(37, 53), processing_resolution=64, seed=0)
    assert out.depth.shape == (37, 53) and out.depth.dtype == np.float32
    s = out.settings
    assert max(s["processing_size"]) == 64 and s["processing_size"] == [45, 64]
    assert all(v % 8 == 0 for v in s["padded_size"]) and s["padded_size"] == [48, 64]
    cfg = tiny_pipeline.config
    assert cfg.depth_min - 1e-6 <= out.depth.min() and out.depth.max() <= cfg.depth_max + 1e-4
    native = tiny_pipeline(random_image(37, 53), processing_resolution=64, seed=0, match_input_resolution=False)
    assert native.depth.shape == (45, 64)


def test_input_types_agree(tiny_pipeline, tmp_path):
    arr = random_image(32, 32)
    Image.fromarray(arr).save(tmp_path / "x.png")
    results = [tiny_pipeline(x, seed=1).depth for x in (arr, Image.fromarray(arr), tmp_path / "x.png", str(tmp_path / "x.png"))]
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])


def test_ensemble_reduction_by_hand():
    members = np.array([1.0, 2.0, 4.0]).reshape(3, 1, 1)
    log_d, unc = ensemble_log_depth(members, "median", with_uncertainty=True)
    np.testing.assert_allclose(np.exp(log_d), 2.0)
    np.testing.assert_allclose(unc, MAD_TO_STD * 1.0)  # |1-2|, |2-2|, |4-2| -> median 1
    log_d, unc = ensemble_log_depth(members, "mean", with_uncertainty=True)
    np.testing.assert_allclose(np.exp(log_d), 2.0)  # geometric mean of 1, 2, 4
    np.testing.assert_allclose(unc, np.std([1.0, 2.0, 4.0]))
    assert ensemble_log_depth(members, "mean")[1] is None


def test_uncertainty_output(tiny_pipeline):
    img = random_image(32, 40)
    assert tiny_pipeline(img, ensemble_size=1, output_uncertainty=True, seed=0).uncertainty is None
    out = tiny_pipeline(img, ensemble_size=3, output_uncertainty=True, seed=0, ensemble_reduction="mean")
    assert out.uncertainty.shape == (32, 40) and out.uncertainty.dtype == np.float32
    assert (out.uncertainty >= 0).all() and out.uncertainty.max() > 0


def test_timestep_spacing(tiny_pipeline):
    trailing = tiny_pipeline._scheduler_for("trailing")
    trailing.set_timesteps(1)
    assert trailing.timesteps.tolist() == [999]  # one step starts from pure noise
    leading = tiny_pipeline._scheduler_for("leading")
    leading.set_timesteps(4)
    assert leading.timesteps.tolist() == [751, 501, 251, 1]
    img = random_image(32, 32)
    a = tiny_pipeline(img, num_inference_steps=1, timestep_spacing="trailing", seed=0)
    b = tiny_pipeline(img, num_inference_steps=1, timestep_spacing="leading", seed=0)
    assert a.settings["timestep_spacing"] == "trailing"
    assert np.abs(a.depth - b.depth).max() > 1e-4


def test_step_callback_and_abort(tiny_pipeline):
    calls = []
    tiny_pipeline(random_image(32, 32), num_inference_steps=3, ensemble_size=4, batch_size=2,
                  step_callback=lambda s, t: calls.append((s, t)), seed=0)
    assert calls == [(i, 6) for i in range(1, 7)]

    class Stop(Exception):
        pass

    def stop_at_two(step, total):
        if step == 2:
            raise Stop

    with pytest.raises(Stop):
        tiny_pipeline(random_image(32, 32), num_inference_steps=3, step_callback=stop_at_two, seed=0)


@pytest.mark.parametrize("kwargs, message", [
    ({"num_inference_steps": 0}, "num_inference_steps"),
    ({"ensemble_size": 0}, "ensemble_size"),
    ({"processing_resolution": -1}, "processing_resolution"),
    ({"timestep_spacing": "random"}, "timestep_spacing"),
    ({"ensemble_reduction": "max"}, "ensemble_reduction"),
    ({"seed": -3}, "seed"),
    ({"ensemble_size": 2.5}, "ensemble_size"),
    ({"num_inference_steps": 1001}, "num_inference_steps must be <= 1000"),
    ({"num_inference_steps": 1000, "timestep_spacing": "leading"}, "too many for timestep_spacing 'leading'"),
])
def test_bad_arguments(tiny_pipeline, kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_pipeline(random_image(16, 16), **kwargs)


def test_bfloat16_path_runs_on_cpu(tiny_checkpoint, tiny_pipeline):
    from metricgold_engine.checkpoint import load_pipeline

    pipe = load_pipeline(tiny_checkpoint, device="cpu", dtype="bfloat16")
    pipe.set_progress_bar_config(disable=True)
    img = random_image(32, 32)
    low = pipe(img, seed=0)
    assert low.settings["dtype"] == "bfloat16" and np.isfinite(low.depth).all()
    full = tiny_pipeline(img, seed=0)
    assert np.median(np.abs(np.log(low.depth) - np.log(full.depth))) < 0.1
