"""trainer: configs, losses and masks, learning, exact resume, divergence, two-process DDP, loadable checkpoints."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from metricgold_engine.core.depth_codec import normalize_depth
from trainer.config import ConfigError, TrainConfig, dump_config, load_config
from trainer.train import (
    Trainer,
    TrainingDiverged,
    _collate,
    build_model,
    latent_valid_mask,
    list_checkpoints,
    multires_noise,
    step_generator,
    train,
    v_prediction_loss,
)

REPO = Path(__file__).resolve().parents[1]


def make_learnable_folder(root: Path, n: int = 8, size: int = 32, seed: int = 0) -> Path:
    """Tilted planes whose colour encodes their log depth: something a tiny model can learn in a few dozen steps.
    The plain folder format (rgb/NAME.png, depth/NAME.npy), with a few invalid pixels in each."""
    rng = np.random.default_rng(seed)
    (root / "rgb").mkdir(parents=True)
    (root / "depth").mkdir()
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    for i in range(n):
        a = rng.uniform(0, 2 * np.pi)
        t = np.cos(a) * xx + np.sin(a) * yy
        t = (t - t.min()) / np.ptp(t)
        near, far = rng.uniform(0.5, 3), rng.uniform(5, 40)
        depth = (near * (far / near) ** t).astype(np.float32)
        g = 1 - np.log(depth / 0.5) / np.log(80)
        rgb = np.stack([g, 0.8 * g, 1 - g], -1)
        Image.fromarray((rgb * 255).clip(0, 255).astype(np.uint8)).save(root / "rgb" / f"{i:03d}.png")
        depth[0, :3] = 0.0
        np.save(root / "depth" / f"{i:03d}.npy", depth)
    return root


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_learnable_folder(tmp_path_factory.mktemp("data") / "planes")


def tiny_config(data_root: Path, output_dir: Path, **run: object) -> TrainConfig:
    cfg = load_config(None, [
        "model.tiny=tiny", "model.default_processing_resolution=32", "model.default_num_inference_steps=4",
        "model.default_ensemble_size=1", "model.default_timestep_spacing=trailing",
        f"data.resolution=[32, 32]", "data.num_workers=0", "optim.lr=1e-3",
        "run.batch_size=2", "run.gradient_accumulation_steps=2", "run.max_steps=6", "run.checkpoint_every=2",
        "run.log_every=1", "run.preview_every=0", "run.tensorboard=false", f"run.output_dir={output_dir}",
    ])
    cfg.data.datasets = [{"kind": "folder", "root": str(data_root)}]
    for key, value in run.items():
        setattr(cfg.run, key, value)
    return cfg


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    yield
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()


def read_log(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "loss_log.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------------------------ config


def test_config_yaml_overrides_and_errors(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 1e-4\nrun:\n  max_steps: 10\n")
    cfg = load_config(path, ["run.batch_size=4", "unet.multires_noise=true", "data.resolution=[64, 96]"])
    assert cfg.optim.lr == 1e-4 and isinstance(cfg.optim.lr, float)  # YAML 1.1 reads 1e-4 as a string
    assert cfg.run.max_steps == 10 and cfg.run.batch_size == 4 and cfg.unet.multires_noise is True
    assert cfg.data.resolution == [64, 96]
    # the paper's defaults
    d = TrainConfig()
    assert (d.optim.lr, d.run.batch_size * d.run.gradient_accumulation_steps, d.run.max_steps) == (5e-5, 32, 16000)
    assert d.data.hflip is True
    with pytest.raises(ConfigError, match=r"c\.yaml\.optim\.lrr: unknown field"):
        path.write_text("optim:\n  lrr: 1\n")
        load_config(path)
    with pytest.raises(ConfigError, match=r"--set\.run\.max_steps: expected int, got 'many'"):
        load_config(None, ["run.max_steps=many"])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="exactly one of init_from"):
        TrainConfig().validate()


def test_dumped_config_reloads_identically(tmp_path):
    cfg = load_config(None, ["optim.lr=3e-5", "model.tiny=tiny", "run.ema=true"])
    (tmp_path / "d.yaml").write_text(dump_config(cfg))
    assert load_config(tmp_path / "d.yaml").to_dict() == cfg.to_dict()


def test_shipped_configs_load_and_validate():
    for path in sorted((REPO / "configs").glob("*.yaml")):
        cfg = load_config(path)
        cfg.validate()
        assert cfg.data.datasets, path


# ------------------------------------------------------------------------------------------ pure parts


def test_latent_mask_needs_the_whole_footprint_valid():
    valid = torch.ones(1, 1, 4, 6, dtype=torch.bool)
    valid[0, 0, 0, 0] = False  # one bad pixel spoils latent (0, 0) only
    valid[0, 0, 3, 5] = False
    mask = latent_valid_mask(valid, 2)
    assert mask.shape == (1, 1, 2, 3)
    assert mask[0, 0].tolist() == [[False, True, True], [True, True, False]]


def test_step_generator_and_multires_noise():
    a = torch.randn(3, generator=step_generator(0, 5, 1, 0))
    assert torch.equal(a, torch.randn(3, generator=step_generator(0, 5, 1, 0)))
    for other in ((1, 5, 1, 0), (0, 6, 1, 0), (0, 5, 2, 0), (0, 5, 1, 1)):
        assert not torch.equal(a, torch.randn(3, generator=step_generator(*other)))
    n = multires_noise((2, 4, 32, 32), torch.Generator().manual_seed(0), strength=0.9)
    torch.testing.assert_close(n.std(dim=(1, 2, 3)), torch.ones(2), atol=1e-5, rtol=0)
    white = multires_noise((2, 4, 32, 32), torch.Generator().manual_seed(0), strength=0.0)
    # strength 0 leaves white noise; 0.9 adds low frequencies: neighbouring pixels correlate
    corr = lambda x: float((x[..., 1:] * x[..., :-1]).mean())  # noqa: E731
    assert corr(n) > 0.2 and abs(corr(white)) < 0.05


# ------------------------------------------------------------------------------------------- training


def _eval_loss(pipe, cfg, batch) -> float:
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    with torch.no_grad():
        return float(np.mean([float(v_prediction_loss(pipe, pipe.unet, scheduler, batch, step_generator(99, k, 0, 0), cfg)[0])
                              for k in range(8)]))


def test_unet_stage_learns_and_checkpoint_predicts(data_root, tmp_path):
    from metricgold_engine.checkpoint import load_pipeline
    from trainer.data import DatasetSpec, build_training_dataset

    cfg = tiny_config(data_root, tmp_path / "run", max_steps=24, gradient_accumulation_steps=1, batch_size=4,
                      checkpoint_every=8, keep_checkpoints=2)
    final = train(cfg, "unet")
    dataset = build_training_dataset([DatasetSpec(kind="folder", root=str(data_root))], (32, 32), False, 1, length=8)
    batch = _collate([dataset[i] for i in range(8)])
    before = _eval_loss(build_model(cfg), cfg, batch)  # same seed -> the same initial weights
    pipe = load_pipeline(final, device="cpu")
    after = _eval_loss(pipe, cfg, batch)
    assert after < 0.6 * before, (before, after)
    # old checkpoints pruned, newest kept; each checkpoint's model/ loads too
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step-000016", "step-000024"]
    load_pipeline(tmp_path / "run" / "checkpoints" / "step-000016" / "model", device="cpu")
    out = pipe(str(data_root / "rgb" / "000.png"))
    assert out.depth.shape == (32, 32) and np.isfinite(out.depth).all()


class Killed(Exception):
    pass


def test_killed_and_resumed_run_matches_uninterrupted(data_root, tmp_path, monkeypatch):
    reference = tiny_config(data_root, tmp_path / "ref", ema=True)
    train(reference, "unet")
    expected = read_log(tmp_path / "ref")

    cfg = tiny_config(data_root, tmp_path / "run", ema=True)
    original = Trainer._micro_loss

    def dies_in_step_5(self, batch, micro):
        if self.step == 4 and micro == 1:  # after step 4 was logged, before checkpoint 6
            raise Killed
        return original(self, batch, micro)

    monkeypatch.setattr(Trainer, "_micro_loss", dies_in_step_5)
    with pytest.raises(Killed):
        train(cfg, "unet")
    monkeypatch.setattr(Trainer, "_micro_loss", original)
    assert [r["step"] for r in read_log(tmp_path / "run")] == [1, 2, 3, 4]
    assert list_checkpoints(tmp_path / "run")[-1].name == "step-000004"
    train(tiny_config(data_root, tmp_path / "run", ema=True), "unet", resume="latest")
    resumed = read_log(tmp_path / "run")
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose([r["loss"] for r in resumed], [r["loss"] for r in expected], rtol=1e-6, atol=1e-7)
    # and the final weights agree too
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "ref" / "final" / "unet" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(tmp_path / "run" / "final" / "unet" / "diffusion_pytorch_model.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(data_root, tmp_path, monkeypatch):
    cfg = tiny_config(data_root, tmp_path / "run")
    original = Trainer._micro_loss

    def nan_at_step_3(self, batch, micro):
        loss, extra = original(self, batch, micro)
        return (loss * float("nan") if self.step == 2 else loss), extra

    monkeypatch.setattr(Trainer, "_micro_loss", nan_at_step_3)
    with pytest.raises(TrainingDiverged, match=r"loss became nan at step 3 .*step-000002"):
        train(cfg, "unet")
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step-000002"]
    assert not (tmp_path / "run" / "final").exists()
    from metricgold_engine.checkpoint import load_pipeline

    load_pipeline(tmp_path / "run" / "checkpoints" / "step-000002" / "model", device="cpu")


def test_vae_stage_improves_reconstruction(data_root, tmp_path):
    cfg = tiny_config(data_root, tmp_path / "vae", max_steps=12, gradient_accumulation_steps=1, batch_size=4,
                      checkpoint_every=100)
    cfg.optim.lr = 3e-4
    final = train(cfg, "vae")
    log = read_log(tmp_path / "vae")
    assert np.mean([r["abs_rel"] for r in log[-3:]]) < np.mean([r["abs_rel"] for r in log[:3]])
    # the UNet stage starts from the VAE stage's checkpoint
    unet_cfg = tiny_config(data_root, tmp_path / "unet", max_steps=1)
    unet_cfg.model.tiny, unet_cfg.model.init_from = "", str(final)
    train(unet_cfg, "unet")
    from safetensors.torch import load_file

    a = load_file(str(final / "depth_vae" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(tmp_path / "unet" / "final" / "depth_vae" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # frozen in stage 2


def test_two_process_ddp_keeps_replicas_identical(data_root, tmp_path):
    """Two CPU processes (gloo) through torchrun, as `accelerate launch` would start them."""
    cfg = tiny_config(data_root, tmp_path / "ddp", max_steps=3, gradient_accumulation_steps=2, checkpoint_every=2)
    (tmp_path / "ddp.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    with socket.socket() as s:  # a free loopback port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(port), "-m", "trainer", "unet", "--config", str(tmp_path / "ddp.yaml")],
        capture_output=True, text=True, timeout=300, env=env, cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for checkpoint in list_checkpoints(tmp_path / "ddp"):
        state = json.loads((checkpoint / "training" / "state.json").read_text())
        assert state["world_size"] == 2
        prints = state["weight_fingerprints"]
        assert len(prints) == 2 and prints[0] == prints[1]
    assert [r["step"] for r in read_log(tmp_path / "ddp")] == [1, 2, 3]


def test_resume_with_a_different_world_size_is_refused(data_root, tmp_path):
    cfg = tiny_config(data_root, tmp_path / "run", max_steps=2)
    train(cfg, "unet")
    state_path = list_checkpoints(tmp_path / "run")[-1] / "training" / "state.json"
    state = json.loads(state_path.read_text())
    state["world_size"] = 4
    state_path.write_text(json.dumps(state))
    with pytest.raises(ConfigError, match="saved by 4 process"):
        Trainer(tiny_config(data_root, tmp_path / "run", max_steps=4), "unet", resume="latest")


def test_image_vae_target_trains_the_image_vae_and_seeds_the_depth_vae(data_root, tmp_path):
    """`vae.target: image` (models without a pretrained SD VAE): the image VAE learns RGB, and the saved depth VAE
    starts as a copy of it."""
    from safetensors.torch import load_file

    cfg = tiny_config(data_root, tmp_path / "img", max_steps=10, gradient_accumulation_steps=1, batch_size=4,
                      checkpoint_every=100)
    cfg.vae.target, cfg.optim.lr = "image", 1e-3
    final = train(cfg, "vae")
    log = read_log(tmp_path / "img")
    assert np.mean([r["psnr"] for r in log[-3:]]) > np.mean([r["psnr"] for r in log[:3]])
    vae = load_file(str(final / "vae" / "diffusion_pytorch_model.safetensors"))
    depth_vae = load_file(str(final / "depth_vae" / "diffusion_pytorch_model.safetensors"))
    initial = build_model(cfg).vae.state_dict()
    assert all(torch.equal(vae[k], depth_vae[k]) for k in vae)
    assert any(not torch.equal(vae[k], initial[k]) for k in vae)  # it did train


def test_final_timesteps_train_a_one_step_model(data_root, tmp_path, monkeypatch):
    """``unet.timesteps: final`` (single-step fine-tuning) trains only at t = T-1, and its loss is the clean-latent
    error of one trailing DDIM step scaled by sqrt(1 - alpha_bar_{T-1}) (checked by hand below)."""
    from diffusers import DDIMScheduler, DDPMScheduler

    cfg = tiny_config(data_root, tmp_path / "run", max_steps=1)
    cfg.unet.timesteps = "final"
    cfg.validate()
    pipe = build_model(cfg)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    T = scheduler.config.num_train_timesteps
    seen: list[torch.Tensor] = []
    forward = pipe.unet.forward
    monkeypatch.setattr(pipe.unet, "forward", lambda x, t, **kw: (seen.append(t), forward(x, t, **kw))[1])

    from trainer.data import DatasetSpec, build_training_dataset

    dataset = build_training_dataset([DatasetSpec(kind="folder", root=str(data_root))], (32, 32), False, 1, length=4)
    batch = _collate([dataset[i] for i in range(4)])
    batch["valid"][:] = True  # the whole latent counts, so the hand computation below needs no mask
    with torch.no_grad():
        loss, _ = v_prediction_loss(pipe, pipe.unet, scheduler, batch, step_generator(3, 0, 0, 0), cfg)
    assert len(seen) == 1 and seen[0].tolist() == [T - 1] * 4

    # the same noise, by hand: one trailing DDIM step from x_T gives x0_hat = sqrt(ab) x_T - sqrt(1 - ab) v_hat
    generator = step_generator(3, 0, 0, 0)
    torch.randint(0, T, (4,), generator=generator)
    with torch.no_grad():
        x0 = pipe.encode_depth(normalize_depth(batch["depth"], cfg.model.depth_min, cfg.model.depth_max)).float()
        noise = torch.randn(x0.shape, generator=generator)
        ab = float(scheduler.alphas_cumprod[T - 1])
        x_t = ab**0.5 * x0 + (1 - ab) ** 0.5 * noise
        image_latent = pipe.encode_image(batch["rgb"]).float()
        text = pipe.text_embedding.embedding.repeat(4, 1, 1)
        v_hat = forward(torch.cat([image_latent, x_t], 1), torch.full((4,), T - 1), encoder_hidden_states=text).sample
        ddim = DDIMScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
        ddim.set_timesteps(1)
        assert ddim.timesteps.tolist() == [T - 1]
        x0_hat = ddim.step(v_hat, ddim.timesteps[0], x_t).pred_original_sample
    expected = float(((x0_hat - x0) ** 2).mean()) / (1 - ab)
    assert float(loss) == pytest.approx(expected, rel=1e-4)

    cfg.unet.timesteps = "last"
    with pytest.raises(ConfigError, match="unet.timesteps"):
        cfg.validate()
