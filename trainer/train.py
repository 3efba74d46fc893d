"""The MetricGold fine-tuning protocol: stage 1 fine-tunes the depth VAE, stage 2 the UNet.

Both stages share one loop, run through Hugging Face accelerate (one CPU/GPU by default; ``accelerate launch`` or
``torchrun`` for many GPUs and nodes).

Stage 1 (``vae``): the depth VAE, initialised from SD's image VAE, learns to reconstruct log-normalized metric depth
replicated to 3 channels: reconstruction loss on valid pixels + ``kl_weight`` x KL.

Stage 2 (``unet``): image latent from the frozen image VAE, depth latent from the (stage-1) depth VAE, noise at a
random timestep of SD2's 1000-step DDPM schedule, v-prediction target, MSE on latent pixels whose whole footprint is
valid depth; the UNet sees ``cat(image_latent, noisy_depth_latent)`` and the stored empty-prompt embedding.

Exact resume: item ``i`` of the data is a function of (seed, i), and the timesteps and noise of each micro-batch are
drawn from a generator seeded by (seed, step, micro-batch, rank). A checkpoint therefore needs only the weights,
the optimizer, the LR schedule and the step to continue exactly as an uninterrupted run would.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from metricgold_engine.core.depth_codec import denormalize_depth, normalize_depth
from metricgold_engine.core.errors import CheckpointError
from metricgold_engine.checkpoint import init_from_stable_diffusion, load_pipeline, save_checkpoint
from metricgold_engine.tiny_models import make_tiny_stable_diffusion
from metricgold_engine.pipeline import MetricGoldPipeline

from .config import ConfigError, TrainConfig

logger = logging.getLogger("trainer")

STAGES = ("vae", "unet")
CHECKPOINT_PREFIX = "step-"


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf; the run stops and keeps its last good checkpoint."""


# ------------------------------------------------------------------------------------------------ model


def build_model(cfg: TrainConfig) -> MetricGoldPipeline:
    """The model to train, on the CPU in float32: from SD/Marigold (init_from_stable_diffusion), from a MetricGold
    checkpoint (e.g. stage 1's output), or a random tiny one."""
    m = cfg.model
    defaults = dict(
        default_processing_resolution=m.default_processing_resolution,
        default_num_inference_steps=m.default_num_inference_steps,
        default_ensemble_size=m.default_ensemble_size,
        default_timestep_spacing=m.default_timestep_spacing,
    )
    if m.tiny:
        with tempfile.TemporaryDirectory() as tmp:
            sd = make_tiny_stable_diffusion(Path(tmp) / "sd", seed=cfg.run.seed, size=m.tiny)
            return init_from_stable_diffusion(sd, m.depth_min, m.depth_max, m.depth_normalization, **defaults)
    root = Path(m.init_from)
    index_path = root / "model_index.json"
    index = json.loads(index_path.read_text()) if index_path.is_file() else {}
    if "depth_vae" in index and "text_embedding" in index:
        pipe = load_pipeline(root, device="cpu", dtype="float32")
        saved = (pipe.config.depth_min, pipe.config.depth_max, pipe.config.depth_normalization)
        if saved != (m.depth_min, m.depth_max, m.depth_normalization):
            raise ConfigError(
                f"model.depth_min/depth_max/depth_normalization: {root} was trained with {saved[0]}..{saved[1]} m "
                f"({saved[2]}); the config asks for {m.depth_min}..{m.depth_max} m ({m.depth_normalization})"
            )
        pipe.register_to_config(**defaults)
        return pipe
    return init_from_stable_diffusion(root, m.depth_min, m.depth_max, m.depth_normalization, **defaults)


def step_generator(seed: int, step: int, micro: int, rank: int) -> torch.Generator:
    """The generator of one micro-batch's timesteps and noise: a pure function of its position in the run."""
    state = np.random.SeedSequence([seed, step, micro, rank]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def multires_noise(
    shape: tuple[int, ...], generator: torch.Generator, strength: float | torch.Tensor, levels: int = 10
) -> torch.Tensor:
    """Pyramid noise (Marigold's multi-resolution noise): white noise plus upsampled coarser noise, level i weighted
    by strength**i, rescaled to unit variance. ``strength`` may be per-sample ([B]) for annealing with t."""
    b, c, h, w = shape
    noise = torch.randn(shape, generator=generator)
    strength_t = torch.as_tensor(strength, dtype=torch.float32).reshape(-1, 1, 1, 1)
    for i in range(1, levels):
        sh, sw = max(1, h >> i), max(1, w >> i)
        coarse = torch.randn((b, c, sh, sw), generator=generator)
        noise = noise + F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False) * strength_t**i
        if sh == 1 or sw == 1:
            break
    return noise / noise.std(dim=(1, 2, 3), keepdim=True)


def latent_valid_mask(valid: torch.Tensor, factor: int) -> torch.Tensor:
    """Pixel mask [B,1,H,W] -> latent mask [B,1,H/f,W/f]: a latent pixel counts only if its whole f x f footprint
    is valid depth (f is the VAE's own downsample factor)."""
    return ~(F.max_pool2d((~valid).float(), kernel_size=factor, stride=factor) > 0)


# ------------------------------------------------------------------------------------------------ losses


def v_prediction_loss(
    pipe: MetricGoldPipeline, unet: torch.nn.Module, noise_scheduler: Any, batch: dict[str, torch.Tensor],
    generator: torch.Generator, cfg: TrainConfig,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Stage 2: the v-prediction MSE on valid latent pixels (paper §3.2); ``unet.timesteps: final`` trains at t = T-1 only."""
    device = batch["rgb"].device
    c = pipe.config
    with torch.no_grad():
        image_latent = pipe.encode_image(batch["rgb"]).float()
        depth_normalized = normalize_depth(batch["depth"], c.depth_min, c.depth_max, c.depth_normalization)
        depth_latent = pipe.encode_depth(depth_normalized).float()
    b = depth_latent.shape[0]
    num_train_timesteps = noise_scheduler.config.num_train_timesteps
    timesteps = torch.randint(0, num_train_timesteps, (b,), generator=generator)
    if cfg.unet.timesteps == "final":  # single-step fine-tuning; still draw above so the noise stream is the same
        timesteps = torch.full_like(timesteps, num_train_timesteps - 1)
    if cfg.unet.multires_noise:
        strength = cfg.unet.multires_noise_strength
        if cfg.unet.multires_noise_annealed:
            strength = strength * timesteps.float() / num_train_timesteps
        noise = multires_noise(tuple(depth_latent.shape), generator, strength)
    else:
        noise = torch.randn(depth_latent.shape, generator=generator)
    timesteps, noise = timesteps.to(device), noise.to(device)
    noisy = noise_scheduler.add_noise(depth_latent, noise, timesteps)
    target = noise_scheduler.get_velocity(depth_latent, noise, timesteps)
    text = pipe.text_embedding.embedding.to(device).repeat(b, 1, 1)  # a copy: attention is slow on expanded views
    pred = unet(torch.cat([image_latent, noisy], dim=1), timesteps, encoder_hidden_states=text).sample.float()
    mask = latent_valid_mask(batch["valid"], pipe.vae_scale_factor).expand_as(pred)
    if not mask.any():  # nothing valid: a zero loss that still touches every parameter (keeps DDP in step)
        return pred.sum() * 0.0, {"valid_fraction": 0.0}
    loss = F.mse_loss(pred[mask], target[mask])
    return loss, {"valid_fraction": float(mask.float().mean())}


def _autoencode(
    vae: torch.nn.Module, target: torch.Tensor, valid: torch.Tensor | None, generator: torch.Generator,
    cfg: TrainConfig,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Encode ``target``, sample the posterior, decode: (reconstruction, reconstruction loss over ``valid`` pixels
    (all when None), KL per pixel so that the weight does not depend on resolution)."""
    posterior = vae.encode(target).latent_dist
    z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator).to(target.device)
    recon = vae.decode(z).sample.float()
    diff = recon - target if valid is None else recon[valid] - target[valid]
    reconstruction = diff.abs().mean() if cfg.vae.reconstruction_loss == "l1" else diff.square().mean()
    kl = posterior.kl().mean() / target[0].numel()
    return recon, reconstruction, kl


def image_vae_loss(
    vae: torch.nn.Module, batch: dict[str, torch.Tensor], generator: torch.Generator, cfg: TrainConfig,
) -> tuple[torch.Tensor, dict[str, float]]:
    """RGB autoencoder loss for the image VAE (``vae.target: image``): reconstruction + kl_weight x KL; PSNR."""
    target = batch["rgb"]
    recon, reconstruction, kl = _autoencode(vae, target, None, generator, cfg)
    with torch.no_grad():
        mse = ((recon - target).clamp(-2, 2) / 2).square().mean()  # images in [-1, 1] -> PSNR on [0, 1]
        psnr = -10.0 * torch.log10(mse.clamp(min=1e-10))
    return reconstruction + cfg.vae.kl_weight * kl, {"psnr": float(psnr), "kl": float(kl.detach())}


def depth_vae_loss(
    pipe: MetricGoldPipeline, depth_vae: torch.nn.Module, batch: dict[str, torch.Tensor],
    generator: torch.Generator, cfg: TrainConfig,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Stage 1: the depth VAE's loss, reconstruction of 3-channel log-normalized depth on valid pixels + kl_weight x
    KL; AbsRel in metres."""
    c = pipe.config
    depth, valid = batch["depth"], batch["valid"]
    target = normalize_depth(depth, c.depth_min, c.depth_max, c.depth_normalization).expand(-1, 3, -1, -1)
    recon, reconstruction, kl = _autoencode(depth_vae, target, valid.expand_as(target), generator, cfg)
    if not valid.any():  # nothing valid: a zero loss that still touches every parameter (keeps DDP in step)
        return recon.sum() * 0.0, {"abs_rel": float("nan")}
    with torch.no_grad():
        pred_m = denormalize_depth(recon.mean(dim=1, keepdim=True), c.depth_min, c.depth_max, c.depth_normalization)
        abs_rel = ((pred_m - depth).abs() / depth.clamp(min=1e-6))[valid].mean()
    return reconstruction + cfg.vae.kl_weight * kl, {"abs_rel": float(abs_rel), "kl": float(kl.detach())}


# ----------------------------------------------------------------------------------------------- data


class RankBatchSampler(torch.utils.data.Sampler):
    """Batches of item indices for one rank, from a given micro-batch on: global micro-batch g holds items
    ``(g * world + rank) * B + b``. Resuming at step s starts at g = s * accumulation."""

    def __init__(self, start_micro: int, total_micro: int, world: int, rank: int, batch_size: int):
        self.start, self.total, self.world, self.rank, self.batch_size = start_micro, total_micro, world, rank, batch_size

    def __iter__(self) -> Iterator[list[int]]:
        for g in range(self.start, self.total):
            first = (g * self.world + self.rank) * self.batch_size
            yield list(range(first, first + self.batch_size))

    def __len__(self) -> int:
        return max(0, self.total - self.start)


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in items[0]:
        values = [item[key] for item in items]
        out[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return out


# ------------------------------------------------------------------------------------------ checkpoints


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders of interrupted saves start with a dot)."""
    folder = output_dir / "checkpoints"
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)
             and (p / "training" / "state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def resolve_resume(output_dir: Path, resume: str | None) -> Path | None:
    if not resume:
        return None
    if resume == "latest":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / "training" / "state.json").is_file():
        raise ConfigError(f"--resume {resume}: not a training checkpoint (no training/state.json)")
    return path


def replace_folder(tmp: Path, target: Path) -> None:
    """Move the complete folder ``tmp`` to ``target``. An existing ``target`` is set aside, not deleted, until its
    replacement is in place; :func:`recover_interrupted_saves` puts it back if a kill comes in between."""
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)


def recover_interrupted_saves(output_dir: Path) -> None:
    """A checkpoint set aside by :func:`replace_folder` whose replacement never arrived goes back in place."""
    folder = output_dir / "checkpoints"
    if not folder.is_dir():
        return
    for old in folder.glob(f".{CHECKPOINT_PREFIX}*.old"):
        target = old.with_name(old.name[1:-len(".old")])
        if not target.exists():
            os.replace(old, target)
            logger.warning("restored %s, set aside by a save that was interrupted", target)


def _save_file_atomic(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------- loop


class Trainer:
    """One training run of one stage. ``run()`` trains to ``max_steps`` and returns the final model folder."""

    def __init__(self, cfg: TrainConfig, stage: str, resume: str | None = None):
        from accelerate import Accelerator, DistributedDataParallelKwargs
        from accelerate.utils import ProjectConfiguration

        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        cfg.validate()
        self.cfg, self.stage = cfg, stage
        self.output_dir = Path(cfg.run.output_dir)
        self.accelerator = Accelerator(
            # Without a GPU backend, accelerate must be told it is on CPUs to run several processes over gloo.
            cpu=not _has_accelerator_device(),
            mixed_precision=cfg.run.mixed_precision,
            log_with="tensorboard" if cfg.run.tensorboard and _has_tensorboard() else None,
            project_config=ProjectConfiguration(project_dir=str(self.output_dir),
                                                logging_dir=str(self.output_dir / "logs")),
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)],
        )
        acc = self.accelerator
        self.rank, self.world = acc.process_index, acc.num_processes
        if acc.is_main_process:
            recover_interrupted_saves(self.output_dir)
        acc.wait_for_everyone()
        self.resume_from = resolve_resume(self.output_dir, resume)

        # Model: everything frozen but the stage's trainable part.
        self.pipe = build_model(cfg)
        self.pipe.set_progress_bar_config(disable=True)
        for module in (self.pipe.unet, self.pipe.vae, self.pipe.depth_vae, self.pipe.text_embedding):
            module.requires_grad_(False)
            module.eval()
        self.pipe.to(acc.device)
        self.image_target = stage == "vae" and cfg.vae.target == "image"
        trainable = self.pipe.unet if stage == "unet" else self.pipe.vae if self.image_target else self.pipe.depth_vae
        trainable.requires_grad_(True)
        trainable.train()
        if cfg.run.gradient_checkpointing:
            trainable.enable_gradient_checkpointing()
        self.trainable = trainable
        self.params = [p for p in trainable.parameters() if p.requires_grad]

        from diffusers import DDPMScheduler
        from diffusers.optimization import get_scheduler

        # SD2's 1000-step DDPM schedule (scaled-linear betas), v-prediction.
        self.noise_scheduler = DDPMScheduler.from_config(self.pipe.scheduler.config, prediction_type="v_prediction")
        optimizer = self._make_optimizer()
        self.lr_scheduler = get_scheduler(cfg.optim.lr_scheduler, optimizer,
                                          num_warmup_steps=cfg.optim.lr_warmup_steps,
                                          num_training_steps=cfg.run.max_steps)
        self.model, self.optimizer = acc.prepare(trainable, optimizer)
        self.ema = None
        if cfg.run.ema:
            from diffusers.training_utils import EMAModel

            self.ema = EMAModel(self.params, decay=cfg.run.ema_decay)

        self.step = 0
        self.resumed_step: int | None = None  # the step of the checkpoint resumed from
        if self.resume_from is not None:
            self._load_state(self.resume_from)
            self.resumed_step = self.step

        from trainer.data import DatasetSpec, build_training_dataset

        specs = [DatasetSpec.from_dict(dict(d)) for d in cfg.data.datasets]
        per_step = cfg.run.batch_size * cfg.run.gradient_accumulation_steps * self.world
        self.dataset = build_training_dataset(
            specs, tuple(cfg.data.resolution), cfg.data.hflip, cfg.run.seed, length=cfg.run.max_steps * per_step
        )
        # Before step 0: a file missing from a split is reported now, all of them at once, not when first drawn.
        self.dataset.check_files()

    def _make_optimizer(self) -> torch.optim.Optimizer:
        o = self.cfg.optim
        kwargs = dict(lr=o.lr, betas=(o.adam_beta1, o.adam_beta2), eps=o.adam_epsilon, weight_decay=o.weight_decay)
        if o.use_8bit_adam:
            try:
                import bitsandbytes as bnb
            except ImportError:
                raise ConfigError("optim.use_8bit_adam: needs the bitsandbytes package "
                                  "(pip install bitsandbytes) and a CUDA GPU") from None
            return bnb.optim.AdamW8bit(self.params, **kwargs)
        # AdamW with weight_decay 0 is exactly Adam, the paper's optimizer.
        return torch.optim.AdamW(self.params, **kwargs)

    # -------------------------------------------------------------------------------------- state

    def _fingerprint(self) -> float:
        """A float64 checksum of the trained weights; DDP replicas must agree on it exactly."""
        with torch.no_grad():
            return float(sum(p.double().sum() * (i + 1) for i, p in enumerate(self.params)))

    def _check_replicas(self) -> list[float]:
        prints = torch.tensor([self._fingerprint()], dtype=torch.float64, device=self.accelerator.device)
        gathered = self.accelerator.gather(prints).cpu().tolist()
        if len(set(gathered)) > 1:
            raise RuntimeError(f"data-parallel replicas diverged at step {self.step}: weight checksums {gathered}")
        return gathered

    def _save(self, final: bool = False) -> Path:
        """Checkpoint: model/ (a loadable MetricGold folder; EMA weights when EMA is on) and training/ (raw weights,
        optimizer, schedule, step). Written to a temporary folder and renamed, so a kill never leaves half a one."""
        from safetensors.torch import save_file

        acc = self.accelerator
        fingerprints = self._check_replicas()
        acc.wait_for_everyone()
        target = self.output_dir / "checkpoints" / f"{CHECKPOINT_PREFIX}{self.step:06d}"
        # Resuming a finished run trains nothing: the checkpoint it resumed from is this very state, and is kept as
        # it is (never deleted and rewritten); only final/ is written again if needed.
        unchanged = (self.resumed_step == self.step and self.resume_from is not None and target.exists()
                     and self.resume_from.resolve() == target.resolve())
        if acc.is_main_process and not unchanged:
            tmp = target.with_name(f".{target.name}.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            (tmp / "training").mkdir(parents=True)
            raw = {k: v.detach().cpu().contiguous() for k, v in self.trainable.state_dict().items()}
            save_file(raw, str(tmp / "training" / "trained.safetensors"))
            torch.save(self.optimizer.state_dict(), tmp / "training" / "optimizer.pt")
            ema_state = None
            if self.ema is not None:
                ema_state = {k: v for k, v in self.ema.state_dict().items() if k != "shadow_params"}
                save_file({str(i): p.detach().cpu().contiguous() for i, p in enumerate(self.ema.shadow_params)},
                          str(tmp / "training" / "ema.safetensors"))
            state = {
                "stage": self.stage, "step": self.step, "world_size": self.world,
                "lr_scheduler": self.lr_scheduler.state_dict(), "ema": ema_state,
                "weight_fingerprints": fingerprints, "config": self.cfg.to_dict(), "time": time.time(),
            }
            (tmp / "training" / "state.json").write_text(json.dumps(state, indent=2, default=str))
            with self._inference_weights():
                if self.image_target:  # the depth VAE starts from the image VAE, as it starts from SD's
                    self.pipe.depth_vae.load_state_dict(self.pipe.vae.state_dict())
                self.pipe.save_pretrained(tmp / "model", safe_serialization=True)
            replace_folder(tmp, target)  # an existing checkpoint goes only once its replacement is complete
            for old in list_checkpoints(self.output_dir)[: -self.cfg.run.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        if acc.is_main_process and final:
            with self._inference_weights():
                if self.image_target:
                    self.pipe.depth_vae.load_state_dict(self.pipe.vae.state_dict())
                save_checkpoint(self.pipe, self.output_dir / "final")
        acc.wait_for_everyone()
        return target

    @contextlib.contextmanager
    def _inference_weights(self) -> Iterator[None]:
        if self.ema is None:
            yield
            return
        self.ema.store(self.params)
        self.ema.copy_to(self.params)
        try:
            yield
        finally:
            self.ema.restore(self.params)

    def _load_state(self, checkpoint: Path) -> None:
        from safetensors.torch import load_file

        state = json.loads((checkpoint / "training" / "state.json").read_text())
        if state["stage"] != self.stage:
            raise ConfigError(f"--resume {checkpoint}: a {state['stage']}-stage checkpoint, not {self.stage}")
        if state["world_size"] != self.world:
            raise ConfigError(f"--resume {checkpoint}: saved by {state['world_size']} process(es), resumed with "
                              f"{self.world}; the data order would change")
        raw = load_file(str(checkpoint / "training" / "trained.safetensors"))
        self.trainable.load_state_dict(raw)
        optim_state = torch.load(checkpoint / "training" / "optimizer.pt", map_location="cpu", weights_only=True)
        self.optimizer.load_state_dict(optim_state)
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        if self.ema is not None:
            if state.get("ema") is None:
                raise ConfigError(f"--resume {checkpoint}: saved without EMA, but run.ema is on")
            shadow = load_file(str(checkpoint / "training" / "ema.safetensors"))
            self.ema.load_state_dict({**state["ema"], "shadow_params": [shadow[str(i)] for i in range(len(shadow))]})
        self.step = int(state["step"])
        logger.info("resumed from %s at step %d", checkpoint, self.step)

    # ---------------------------------------------------------------------------------------- run

    def _micro_loss(self, batch: dict[str, Any], micro: int) -> tuple[torch.Tensor, dict[str, float]]:
        generator = step_generator(self.cfg.run.seed, self.step, micro, self.rank)
        if self.stage == "unet":
            return v_prediction_loss(self.pipe, self.model, self.noise_scheduler, batch, generator, self.cfg)
        if self.image_target:
            return image_vae_loss(self.model, batch, generator, self.cfg)
        return depth_vae_loss(self.pipe, self.model, batch, generator, self.cfg)

    def _log_path(self) -> Path:
        return self.output_dir / "loss_log.jsonl"

    def _trim_log(self) -> None:
        """After a resume, drop log lines past the checkpoint's step (the killed run may have written them)."""
        path = self._log_path()
        if not path.is_file():
            return
        kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= self.step]
        _save_file_atomic(path, lambda tmp: tmp.write_text("".join(line + "\n" for line in kept)))

    def run(self) -> Path:
        from tqdm.auto import tqdm

        acc, cfg = self.accelerator, self.cfg
        ga = cfg.run.gradient_accumulation_steps
        if acc.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
            self._trim_log()
        if acc.log_with:
            acc.init_trackers(f"metricgold-{self.stage}")
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=RankBatchSampler(self.step * ga, cfg.run.max_steps * ga, self.world, self.rank,
                                           cfg.run.batch_size),
            num_workers=cfg.data.num_workers, collate_fn=_collate,
            persistent_workers=cfg.data.num_workers > 0,
        )
        batches = iter(loader)
        progress = tqdm(total=cfg.run.max_steps, initial=self.step, desc=f"{self.stage} stage", unit="step",
                        disable=not acc.is_main_process, dynamic_ncols=True)
        started, start_step = time.perf_counter(), self.step
        while self.step < cfg.run.max_steps:
            step_started = time.perf_counter()
            losses, extras = [], []
            for micro in range(ga):
                batch = next(batches)
                batch = {k: v.to(acc.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                sync = micro == ga - 1
                with (contextlib.nullcontext() if sync else acc.no_sync(self.model)), acc.autocast():
                    loss, extra = self._micro_loss(batch, micro)
                    mean_loss = acc.reduce(loss.detach().clone(), reduction="mean")
                    if not torch.isfinite(mean_loss):
                        self._diverged(float(mean_loss), micro)
                    acc.backward(loss / ga)
                losses.append(float(mean_loss))
                extras.append(extra)
            if cfg.optim.max_grad_norm > 0:
                acc.clip_grad_norm_(self.params, cfg.optim.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.lr_scheduler.step()
            if self.ema is not None:
                self.ema.step(self.params)
            self.step += 1

            record = {"step": self.step, "loss": float(np.mean(losses)), "lr": self.lr_scheduler.get_last_lr()[0],
                      "seconds": time.perf_counter() - step_started}
            if acc.device.type == "cuda":
                record["peak_memory_gib"] = torch.cuda.max_memory_allocated(acc.device) / 2**30
            for key in extras[0]:
                record[key] = float(np.nanmean([e[key] for e in extras]))
            if acc.is_main_process:
                with open(self._log_path(), "a") as log:
                    log.write(json.dumps(record) + "\n")
            if self.step % cfg.run.log_every == 0 and acc.log_with:
                acc.log({f"train/{k}": v for k, v in record.items() if k != "step"}, step=self.step)
            rate = (self.step - start_step) / max(time.perf_counter() - started, 1e-9)
            progress.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}", it_s=f"{rate:.2f}")
            progress.update()
            if cfg.run.preview_every and self.step % cfg.run.preview_every == 0:
                self._preview()
            if self.step % cfg.run.checkpoint_every == 0 and self.step < cfg.run.max_steps:
                self._save()
        progress.close()
        self._save(final=True)
        if acc.log_with:
            acc.end_training()
        return self.output_dir / "final"

    def _diverged(self, value: float, micro: int) -> None:
        found = list_checkpoints(self.output_dir)
        kept = f"the last good checkpoint is {found[-1]}" if found else "no checkpoint was written yet"
        raise TrainingDiverged(
            f"loss became {value} at step {self.step + 1} (micro-batch {micro + 1}); training stopped, {kept}. "
            "Try a lower optim.lr, run.mixed_precision=no, or check the data for bad depth values."
        )

    def _preview(self) -> None:
        """Depth of the first training item, predicted (UNet stage) or reconstructed (VAE stage), to TensorBoard."""
        acc = self.accelerator
        if not (acc.is_main_process and acc.log_with) or self.image_target:
            return
        from metricgold_engine.core.depth_io import colorize_depth

        item = self.dataset[0]
        depth = item["depth"][0].numpy()
        valid = item["valid"][0].numpy()
        rgb = ((item["rgb"].permute(1, 2, 0).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
        self.trainable.eval()
        try:
            with torch.no_grad(), self._inference_weights():
                if self.stage == "unet":
                    pred = self.pipe(rgb, num_inference_steps=10, ensemble_size=1, processing_resolution=0,
                                     timestep_spacing="trailing", seed=0).depth
                else:
                    c = self.pipe.config
                    x = normalize_depth(item["depth"][None].to(acc.device), c.depth_min, c.depth_max,
                                        c.depth_normalization)
                    pred = denormalize_depth(self.pipe.decode_depth(self.pipe.encode_depth(x))[0].cpu().numpy(),
                                             c.depth_min, c.depth_max, c.depth_normalization)
        finally:
            self.trainable.train()
        lo, hi = float(np.percentile(depth[valid], 2)) if valid.any() else 0.1, float(depth.max() or 1.0)
        panel = np.concatenate([rgb, colorize_depth(np.where(valid, depth, np.nan), lo, hi),
                                colorize_depth(pred, lo, hi)], axis=1)
        tracker = acc.get_tracker("tensorboard", unwrap=True)
        tracker.add_image("preview/rgb_gt_pred", panel, self.step, dataformats="HWC")


def _has_accelerator_device() -> bool:
    mps = getattr(torch.backends, "mps", None)
    xpu = getattr(torch, "xpu", None)
    return bool(torch.cuda.is_available() or (mps is not None and mps.is_available())
                or (xpu is not None and xpu.is_available()))


def _has_tensorboard() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def train(cfg: TrainConfig, stage: str, resume: str | None = None) -> Path:
    """Train one stage; returns the final MetricGold checkpoint folder (``output_dir/final``)."""
    try:
        return Trainer(cfg, stage, resume).run()
    except CheckpointError as exc:
        raise ConfigError(f"model.init_from: {exc}") from None


__all__ = ["Trainer", "TrainingDiverged", "build_model", "latent_valid_mask", "list_checkpoints", "multires_noise",
           "step_generator", "train", "v_prediction_loss", "depth_vae_loss", "image_vae_loss"]
