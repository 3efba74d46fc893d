"""MetricGoldPipeline: one photograph in, metric depth in metres out.

The algorithm (paper §3.3): encode the image with SD's VAE; start the depth latent from Gaussian noise; denoise it
with the UNet conditioned on ``cat(image_latent, depth_latent_t)`` and the stored empty-prompt embedding, by DDIM
with v-prediction; decode with the depth VAE; average the 3 channels; invert the log normalization to metres. An
ensemble of runs from different noise is reduced in log-depth space — metric depth needs no scale/shift alignment
between members, unlike affine-invariant Marigold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, DiffusionPipeline, UNet2DConditionModel
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from .components import EmptyTextEmbedding
from .core.depth_codec import DEFAULT_DEPTH_MAX, DEFAULT_DEPTH_MIN, check_depth_range, denormalize_depth
from .core.errors import InvalidParams
from .core.options import ENSEMBLE_REDUCTIONS, NATIVE_RESOLUTION, TIMESTEP_SPACINGS
from .image_io import load_rgb_image
from .tiled_decode import DEFAULT_TILE_SIZE, DEFAULT_TILE_THRESHOLD_PIXELS, DEFAULT_WHOLE_MAX_ELEMENTS, tiled_decode

#: Consistency constant: 1.4826 * MAD estimates the standard deviation of a normal distribution.
MAD_TO_STD = 1.4826


@dataclass
class MetricGoldDepthOutput(BaseOutput):
    """``depth``: float32 metres, HxW. ``uncertainty``: float32 metres, HxW (spread of the ensemble members: their
    standard deviation for ``mean``, 1.4826 x median absolute deviation for ``median``), or None.
    ``settings``: the JSON-able settings actually used. ``depth_latent``: the final (clean) depth latent of every
    ensemble member, [E,C,h,w] float32 on the CPU, to warm-start the next frame of a sequence
    (``depth_latent_init``)."""

    depth: np.ndarray
    uncertainty: np.ndarray | None
    settings: dict[str, Any]
    depth_latent: torch.Tensor | None = None


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InvalidParams(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


class MetricGoldPipeline(DiffusionPipeline):
    """Monocular metric depth with a fine-tuned Stable Diffusion v2 (MetricGold).

    Components: ``unet`` (8 input channels), ``vae`` (image VAE), ``depth_vae``, ``scheduler`` (DDIM,
    v-prediction), ``text_embedding`` (stored empty prompt). The config holds the checkpoint's depth range and
    normalization and its inference defaults.
    """

    model_cpu_offload_seq = "vae->unet->depth_vae"

    def __init__(
        self,
        unet: UNet2DConditionModel,
        vae: AutoencoderKL,
        depth_vae: AutoencoderKL,
        scheduler: DDIMScheduler,
        text_embedding: EmptyTextEmbedding,
        depth_min: float = DEFAULT_DEPTH_MIN,
        depth_max: float = DEFAULT_DEPTH_MAX,
        depth_normalization: str = "log",
        default_processing_resolution: int = 768,
        default_num_inference_steps: int = 50,
        default_ensemble_size: int = 10,
        default_timestep_spacing: str = "leading",
    ):
        super().__init__()
        check_depth_range(depth_min, depth_max, depth_normalization)
        self.register_modules(
            unet=unet, vae=vae, depth_vae=depth_vae, scheduler=scheduler, text_embedding=text_embedding
        )
        self.register_to_config(
            depth_min=float(depth_min),
            depth_max=float(depth_max),
            depth_normalization=depth_normalization,
            default_processing_resolution=default_processing_resolution,
            default_num_inference_steps=default_num_inference_steps,
            default_ensemble_size=default_ensemble_size,
            default_timestep_spacing=default_timestep_spacing,
        )

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    # ------------------------------------------------------------------------------------------ helpers

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """RGB in [-1, 1], [B,3,H,W] -> image latent (posterior mean x scaling factor)."""
        latent = self.vae.encode(image.to(_dtype(self.vae))).latent_dist.mean
        return latent * self.vae.config.scaling_factor

    def encode_depth(self, depth_normalized: torch.Tensor) -> torch.Tensor:
        """Normalized depth [B,1,H,W] in [-1, 1] -> depth latent (replicated to 3 channels; posterior mean)."""
        x = depth_normalized.expand(-1, 3, -1, -1).to(_dtype(self.depth_vae))
        return self.depth_vae.encode(x).latent_dist.mean * self.depth_vae.config.scaling_factor

    #: Output pixels per member above which the depth VAE decodes in tiles (whole-image GroupNorm statistics, so the
    #: result matches an untiled decode; see tiled_decode.py). Instance attributes may override these.
    decode_tile_threshold: int = DEFAULT_TILE_THRESHOLD_PIXELS
    decode_tile_size: int = DEFAULT_TILE_SIZE
    decode_whole_max_elements: int = DEFAULT_WHOLE_MAX_ELEMENTS
    #: SD2's VAE overflows to NaN/inf in float16 at some sizes: a float16 depth VAE is moved to float32 before its
    #: first decode (bfloat16 has float32's range and is kept). Set False to decode in float16 anyway.
    upcast_float16_depth_vae: bool = True

    def decode_depth(
        self, depth_latent: torch.Tensor, tile_callback: Callable[[int, int], None] | None = None
    ) -> torch.Tensor:
        """Depth latent -> normalized depth [B,H,W] in [-1, 1]: depth VAE decode, mean of the 3 channels, clip.

        Above ``decode_tile_threshold`` output pixels, members decode one at a time and in tiles, calling
        ``tile_callback(done, total)`` after each tile (raising in it aborts)."""
        if _dtype(self.depth_vae) == torch.float16 and self.upcast_float16_depth_vae:
            self.depth_vae.to(torch.float32)
        latent = depth_latent.to(_dtype(self.depth_vae)) / self.depth_vae.config.scaling_factor
        pixels = latent.shape[-2] * latent.shape[-1] * self.vae_scale_factor**2
        if pixels <= self.decode_tile_threshold:
            decoded = self.depth_vae.decode(latent).sample
            return decoded.float().mean(dim=1).clamp(-1.0, 1.0)
        out = []
        for i, member in enumerate(latent.split(1)):
            def member_callback(done: int, total: int, i: int = i) -> None:
                if tile_callback is not None:
                    tile_callback(i * total + done, latent.shape[0] * total)
            decoded = tiled_decode(self.depth_vae, member, self.decode_tile_size, self.decode_whole_max_elements,
                                   tile_callback=member_callback)
            out.append(decoded.float().mean(dim=1).clamp(-1.0, 1.0))
        return torch.cat(out)

    def _device(self) -> torch.device:
        """Where the models run: the UNet's device, unless offloading hooks decide (then diffusers' own answer).
        ``_execution_device`` walks every submodule of every component, milliseconds per prediction."""
        device = next(self.unet.parameters()).device
        if device.type == "meta" or any(hasattr(m, "_hf_hook") or hasattr(m, "_diffusers_hook")
                                        for m in (self.unet, self.vae, self.depth_vae)):
            return self._execution_device
        return device

    def _scheduler_for(self, timestep_spacing: str) -> DDIMScheduler:
        if self.scheduler.config.get("timestep_spacing") == timestep_spacing and isinstance(
            self.scheduler, DDIMScheduler
        ):
            return self.scheduler
        # Built once per spacing (from_config inspects signatures: milliseconds per call), again if the scheduler is
        # replaced (the entry holds the source, so the identity check is sound).
        entry = self.__dict__.get("_spacing_scheduler")
        if entry is None or entry[0] is not self.scheduler or entry[1] != timestep_spacing:
            entry = (self.scheduler, timestep_spacing,
                     DDIMScheduler.from_config(self.scheduler.config, timestep_spacing=timestep_spacing))
            self.__dict__["_spacing_scheduler"] = entry
        return entry[2]

    def _prepare_image(
        self, image: Image.Image, processing_resolution: int
    ) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
        """Resize so the long side is ``processing_resolution`` (NATIVE_RESOLUTION keeps the photo's size), then pad bottom/right by
        edge replication to a multiple of 8 (and of the VAE factor) — padding instead of stretching keeps the
        camera geometry of the photo exact. Returns the tensor, the unpadded size and the padded size."""
        if processing_resolution != NATIVE_RESOLUTION:
            scale = processing_resolution / max(image.width, image.height)
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            if size != image.size:
                image = image.resize(size, Image.Resampling.BICUBIC)
        rgb = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)[None] / 127.5 - 1.0
        h, w = rgb.shape[-2:]
        multiple = math.lcm(8, self.vae_scale_factor)
        ph, pw = (-h) % multiple, (-w) % multiple
        if ph or pw:
            rgb = F.pad(rgb, (0, pw, 0, ph), mode="replicate")
        return rgb, (h, w), (h + ph, w + pw)

    def check_inputs(
        self,
        num_inference_steps: int | None,
        ensemble_size: int | None,
        processing_resolution: int | None,
        batch_size: int,
        timestep_spacing: str | None,
        ensemble_reduction: str,
        seed: int | None,
        denoise_strength: float = 1.0,
        depth_latent_init: torch.Tensor | None = None,
    ) -> dict[str, Any]:
        """Check every option (diffusers' convention: before any work) and fill in the checkpoint's defaults.
        Raises InvalidParams (a ValueError) naming the option."""
        cfg = self.config
        steps = _check_int("num_inference_steps", cfg.default_num_inference_steps if num_inference_steps is None
                           else num_inference_steps, 1)
        ensemble = _check_int("ensemble_size", cfg.default_ensemble_size if ensemble_size is None else ensemble_size, 1)
        resolution = _check_int("processing_resolution", cfg.default_processing_resolution
                                if processing_resolution is None else processing_resolution, NATIVE_RESOLUTION)
        batch = _check_int("batch_size", batch_size, 0)
        spacing = timestep_spacing or cfg.default_timestep_spacing
        if spacing not in TIMESTEP_SPACINGS:
            raise InvalidParams(f"timestep_spacing must be one of {TIMESTEP_SPACINGS}, got {spacing!r}")
        if ensemble_reduction not in ENSEMBLE_REDUCTIONS:
            raise InvalidParams(f"ensemble_reduction must be one of {ENSEMBLE_REDUCTIONS}, got {ensemble_reduction!r}")
        if seed is not None:
            _check_int("seed", seed, 0)
        if (isinstance(denoise_strength, bool) or not isinstance(denoise_strength, (int, float))
                or not 0.0 < denoise_strength <= 1.0):
            raise InvalidParams(f"denoise_strength must be a number in (0, 1], got {denoise_strength!r}")
        if denoise_strength < 1.0 and depth_latent_init is None:
            raise InvalidParams("denoise_strength < 1 needs depth_latent_init (the latent to start from)")
        if depth_latent_init is not None and not isinstance(depth_latent_init, torch.Tensor):
            raise InvalidParams(f"depth_latent_init must be a torch.Tensor, got {type(depth_latent_init).__name__}")
        scheduler = self._scheduler_for(spacing)
        train_steps = scheduler.config.num_train_timesteps
        if steps > train_steps:
            raise InvalidParams(f"num_inference_steps must be <= {train_steps} (the schedule's length), got {steps}")
        scheduler.set_timesteps(steps)
        if int(scheduler.timesteps.max()) >= train_steps:  # "leading" + steps_offset can step past the schedule
            raise InvalidParams(f"num_inference_steps={steps} is too many for timestep_spacing '{spacing}'; use "
                                "fewer steps or 'trailing'")
        # A warm start runs the last `steps` steps of a `steps / strength`-step schedule: they start near
        # strength * T and keep the scheduler's own step size (DDIM derives the previous timestep from it).
        schedule_steps = steps if denoise_strength >= 1.0 else max(steps, round(steps / denoise_strength))
        if schedule_steps > train_steps:
            raise InvalidParams(f"num_inference_steps / denoise_strength = {schedule_steps} must be <= {train_steps} "
                                "(the schedule's length); use fewer steps or a larger denoise_strength")
        return {"num_inference_steps": steps, "ensemble_size": ensemble, "processing_resolution": resolution,
                "batch_size": batch or ensemble, "timestep_spacing": spacing, "schedule_steps": schedule_steps,
                "denoise_strength": float(denoise_strength)}

    # --------------------------------------------------------------------------------------- inference

    @torch.no_grad()
    def __call__(
        self,
        image: Any,
        num_inference_steps: int | None = None,
        ensemble_size: int | None = None,
        processing_resolution: int | None = None,
        match_input_resolution: bool = True,
        batch_size: int = 0,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        timestep_spacing: str | None = None,
        output_uncertainty: bool = False,
        ensemble_reduction: str = "median",
        step_callback: Callable[[int, int], None] | None = None,
        depth_latent_init: torch.Tensor | None = None,
        denoise_strength: float = 1.0,
        decode_callback: Callable[[int, int], None] | None = None,
    ) -> MetricGoldDepthOutput:
        """Predict metric depth for one image (a path, PIL image or HxWx3 array).

        Args:
            num_inference_steps: DDIM steps (checkpoint default; the paper uses 50).
            ensemble_size: runs from different noise, reduced in log-depth space (paper: 10).
            processing_resolution: long side the model sees; NATIVE_RESOLUTION (0) = the photo's own size.
            match_input_resolution: return depth at the input's size (else at the processing size).
            batch_size: ensemble members per UNet batch; 0 picks one.
            generator / seed: noise source; a seed makes the result deterministic.
            timestep_spacing: "leading" (the paper's DDIM), "trailing" (good at 1-4 steps), "linspace".
            output_uncertainty: also return the ensemble spread (needs ensemble_size > 1).
            ensemble_reduction: "median" (robust, default) or "mean".
            step_callback: ``f(step, total)`` after every denoising step; raising in it aborts the prediction.
            depth_latent_init / denoise_strength: warm start (SDEdit) for video frames. ``depth_latent_init`` is a
                clean depth latent ([1 or E, C, h, w], e.g. the previous frame's ``output.depth_latent``), noised
                with this call's initial noise to t_start ~ denoise_strength * T; the ``num_inference_steps`` DDIM
                steps then run from t_start to 0. 1.0 (default) starts from pure noise: an independent prediction.
            decode_callback: ``f(tile, total)`` after every tile of a tiled depth decode (large images; see
                ``decode_depth``); raising in it aborts.
        """
        # 0. Settings: the checkpoint's defaults where not given, all checked before any work
        settings = self.check_inputs(
            num_inference_steps, ensemble_size, processing_resolution, batch_size, timestep_spacing,
            ensemble_reduction, seed, denoise_strength, depth_latent_init,
        )
        num_inference_steps, ensemble_size = settings["num_inference_steps"], settings["ensemble_size"]
        processing_resolution, batch_size = settings["processing_resolution"], settings["batch_size"]
        timestep_spacing = settings["timestep_spacing"]
        if seed is not None and generator is None:
            generator = torch.Generator(device="cpu").manual_seed(int(seed))
        cfg = self.config
        device = self._device()

        # 1. Image -> [-1, 1] tensor at the processing resolution, padded to a multiple of 8
        pil = load_rgb_image(image)
        input_size = (pil.height, pil.width)
        rgb, (h, w), padded_size = self._prepare_image(pil, processing_resolution)

        # 2. Image latent, computed once and shared by all ensemble members
        image_latent = self.encode_image(rgb.to(device))
        unet_dtype = _dtype(self.unet)
        text = self.text_embedding.embedding.to(device=device, dtype=unet_dtype)

        # 3. DDIM timesteps (a warm start: the last num_inference_steps of a longer schedule)
        scheduler = self._scheduler_for(timestep_spacing)
        scheduler.set_timesteps(settings["schedule_steps"], device=device)
        timesteps = scheduler.timesteps[-num_inference_steps:]

        # 4. Initial noise of every member, drawn at once so results do not depend on batch_size
        noise = randn_tensor(
            (ensemble_size, *image_latent.shape[1:]), generator=generator, device=device, dtype=torch.float32
        )
        if denoise_strength < 1.0:  # SDEdit: the given clean latent, noised to the first timestep run
            init = depth_latent_init.to(device=device, dtype=torch.float32)
            if init.ndim != 4 or init.shape[0] not in (1, ensemble_size) or init.shape[1:] != noise.shape[1:]:
                raise InvalidParams(f"depth_latent_init must have shape [1 or {ensemble_size}, "
                                    f"{', '.join(map(str, noise.shape[1:]))}] (this image's latent), "
                                    f"got {list(init.shape)}")
            noise = scheduler.add_noise(init.expand_as(noise), noise, timesteps[:1].repeat(ensemble_size))

        # 5. Denoise: the UNet predicts v from cat(image_latent, depth_latent_t); DDIM steps in float32
        members, latents = [], []
        c = image_latent.shape[1]
        total = num_inference_steps * math.ceil(ensemble_size / batch_size)
        step = 0
        with self.progress_bar(total=total) as progress:
            for depth_latent in noise.split(batch_size):
                n = depth_latent.shape[0]
                # A real copy, not a stride-0 view: attention on an expanded tensor runs ~3x slower on the CPU.
                batch_text = text.repeat(n, 1, 1)
                # One input buffer per batch: the image half is written once, the depth half at every step.
                unet_input = torch.empty((n, 2 * c, *image_latent.shape[2:]), dtype=unet_dtype, device=device)
                unet_input[:, :c] = image_latent
                for t in timesteps:
                    unet_input[:, c:] = depth_latent
                    v = self.unet(unet_input, t, encoder_hidden_states=batch_text, return_dict=False)[0]
                    depth_latent = scheduler.step(v.float(), t, depth_latent).prev_sample
                    step += 1
                    progress.update()
                    if step_callback is not None:
                        step_callback(step, total)
                # 6. Decode with the depth VAE; mean of 3 channels; drop the padding
                latents.append(depth_latent.float().cpu())
                members.append(self.decode_depth(depth_latent, decode_callback)[:, :h, :w])

        # 7. Metres, then the ensemble reduced in log-depth space
        normalized = torch.cat(members).cpu()
        out_size = input_size if match_input_resolution else (h, w)
        uncertainty = None
        if ensemble_reduction == "median" and not (output_uncertainty and ensemble_size > 1):
            # Depth is monotone in the normalized value, so the median member(s) can be picked before converting:
            # only 1 or 2 maps (not E) go through float64 metres and logs. Same result as the general path.
            middle = normalized.sort(dim=0).values[(ensemble_size - 1) // 2: ensemble_size // 2 + 1] \
                if ensemble_size > 1 else normalized
            middle_depth = denormalize_depth(middle.numpy().astype(np.float64), cfg.depth_min, cfg.depth_max,
                                             cfg.depth_normalization)
            if middle.shape[0] == 1 and tuple(out_size) == (h, w):
                depth = middle_depth[0].astype(np.float32)
            else:
                depth = np.exp(_resize(np.log(middle_depth).mean(axis=0), out_size)).astype(np.float32)
        else:
            depth_members = denormalize_depth(normalized.numpy().astype(np.float64), cfg.depth_min, cfg.depth_max,
                                              cfg.depth_normalization)
            log_depth, uncertainty = ensemble_log_depth(
                depth_members, ensemble_reduction, with_uncertainty=output_uncertainty and ensemble_size > 1
            )
            # 8. Back to the input resolution (bilinear in log depth, so edges interpolate geometrically)
            depth = np.exp(_resize(log_depth, out_size)).astype(np.float32)
            if uncertainty is not None:
                uncertainty = np.maximum(_resize(uncertainty, out_size), 0.0).astype(np.float32)

        settings = {
            "num_inference_steps": num_inference_steps,
            "ensemble_size": ensemble_size,
            "processing_resolution": processing_resolution,
            "timestep_spacing": timestep_spacing,
            "ensemble_reduction": ensemble_reduction,
            "seed": None if seed is None else int(seed),
            "batch_size": batch_size,
            "match_input_resolution": match_input_resolution,
            "input_size": list(input_size),
            "processing_size": [h, w],
            "padded_size": list(padded_size),
            "depth_min": cfg.depth_min,
            "depth_max": cfg.depth_max,
            "depth_normalization": cfg.depth_normalization,
            "device": str(device),
            "dtype": str(self.unet.dtype).replace("torch.", ""),
            "denoise_strength": float(denoise_strength),
        }
        self.maybe_free_model_hooks()  # diffusers' convention: offloaded models go back to the CPU
        return MetricGoldDepthOutput(depth=depth, uncertainty=uncertainty, settings=settings,
                                     depth_latent=torch.cat(latents))


def ensemble_log_depth(
    depth_members: np.ndarray, reduction: str = "median", with_uncertainty: bool = False
) -> tuple[np.ndarray, np.ndarray | None]:
    """Reduce ensemble members [E,H,W] (metres) in log-depth space -> (log depth [H,W], uncertainty [H,W] or None).

    The median in log space is the median in metres (log is monotone); the mean in log space is the geometric mean,
    right for depth, whose errors are multiplicative. Uncertainty, in metres: the members' standard deviation
    (``mean``) or 1.4826 x their median absolute deviation from the result (``median``).
    """
    if reduction not in ENSEMBLE_REDUCTIONS:
        raise InvalidParams(f"ensemble_reduction must be one of {ENSEMBLE_REDUCTIONS}, got {reduction!r}")
    log_members = np.log(depth_members)
    log_depth = np.median(log_members, axis=0) if reduction == "median" else log_members.mean(axis=0)
    if not with_uncertainty:
        return log_depth, None
    if reduction == "median":
        return log_depth, MAD_TO_STD * np.median(np.abs(depth_members - np.exp(log_depth)), axis=0)
    return log_depth, depth_members.std(axis=0)


def _dtype(module: torch.nn.Module) -> torch.dtype:
    """A module's dtype from its first parameter: diffusers' ``.dtype`` walks every submodule on each access, a
    measurable part of a 1-step prediction on a small model."""
    return next(module.parameters()).dtype


def _resize(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of an HxW float array (pixel-centre aligned, as image resampling should be)."""
    if tuple(array.shape) == tuple(size):
        return array
    t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float64))[None, None]
    antialias = size[0] < array.shape[0] or size[1] < array.shape[1]
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=antialias)[0, 0].numpy()
