"""Building, loading and saving MetricGold models (diffusers folder layout, safetensors only).

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
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin  # noqa: F401  (diffusers finds the load method through it)
from torch import nn

from .depth_codec import DEFAULT_DEPTH_MAX, DEFAULT_DEPTH_MIN, check_depth_range

if TYPE_CHECKING:
    from .pipeline import MetricGoldPipeline

#: Components of a MetricGold checkpoint folder, in the order they are checked.
COMPONENTS = ("unet", "vae", "depth_vae", "scheduler", "text_embedding")

#: The built-in demo checkpoint (a small model trained by this project on its own synthetic data), used when no
#: model folder is given. See README "Demo model".
DEMO_MODEL_PATH = Path(__file__).resolve().parent / "demo_model"
DEMO_MODEL_NOTE = ("small, trained only on synthetic scenes rendered by trainer.synth: expect rough depth; "
                   "see README 'Demo model'")


class CheckpointError(ValueError):
    """A model folder is missing, incomplete or not a MetricGold checkpoint; the message names the folder and part."""


class EmptyTextEmbedding(ModelMixin, ConfigMixin):
    """The empty prompt through Stable Diffusion's text encoder ([BOS, EOS] only: shape ``[1, 2, hidden]``).

    Text conditioning is off in MetricGold; storing this one embedding as a pipeline component means neither
    inference nor training needs a text encoder or tokenizer.
    """

    @register_to_config
    def __init__(self, num_tokens: int = 2, hidden_size: int = 1024):
        super().__init__()
        self.embedding = nn.Parameter(torch.zeros(1, num_tokens, hidden_size), requires_grad=False)

    def forward(self, batch_size: int = 1) -> torch.Tensor:
        return self.embedding.expand(batch_size, -1, -1)


# --------------------------------------------------------------------------------------------------- devices


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> cuda if available, else mps, else cpu. Any other value is checked and returned as a device."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but this torch has no CUDA device")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device {device!r} requested but MPS is not available")
    return dev


_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def pick_dtype(device: torch.device, dtype: str | torch.dtype = "auto") -> torch.dtype:
    """``"auto"`` -> float16 on GPUs (half the memory, tensor cores), float32 on the CPU."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.float16 if device.type in ("cuda", "mps") else torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be 'auto' or one of {sorted(_DTYPES)}, got {dtype!r}")
    return _DTYPES[dtype]


# -------------------------------------------------------------------------------------------- building


def widen_conv_in(unet: UNet2DConditionModel) -> UNet2DConditionModel:
    """Double ``conv_in``'s input channels for ``cat(image_latent, depth_latent)`` (paper §3.2).

    The pretrained kernel is duplicated along the input channels and halved, so that with equal halves the widened
    layer gives exactly the original layer's output: the UNet starts from what Stable Diffusion already knows.
    """
    old = unet.conv_in
    new = nn.Conv2d(
        old.in_channels * 2, old.out_channels, kernel_size=old.kernel_size, stride=old.stride, padding=old.padding
    )
    with torch.no_grad():
        new.weight.copy_(torch.cat([old.weight, old.weight], dim=1) * 0.5)
        if old.bias is not None:
            new.bias.copy_(old.bias)
    new.to(device=old.weight.device, dtype=old.weight.dtype)
    unet.conv_in = new
    unet.register_to_config(in_channels=old.in_channels * 2)
    return unet


def compute_empty_text_embedding(sd_path: str | os.PathLike[str]) -> torch.Tensor:
    """Run SD's text encoder on the empty prompt ([BOS, EOS], no padding) -> ``[1, 2, hidden]``."""
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(sd_path, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(sd_path, subfolder="text_encoder", use_safetensors=True)
    ids = tokenizer("", padding="do_not_pad", return_tensors="pt").input_ids
    with torch.no_grad():
        return text_encoder(ids)[0].float()


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
    from .pipeline import MetricGoldPipeline

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


# ----------------------------------------------------------------------------------------- tiny models

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
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _require_components(root: Path, names: tuple[str, ...]) -> None:
    if not root.exists():
        raise CheckpointError(f"{root}: model folder not found")
    if not root.is_dir():
        raise CheckpointError(f"{root}: not a folder (a model is a diffusers-layout folder)")
    for name in names:
        folder = root / name
        if not folder.is_dir():
            raise CheckpointError(f"{folder}: missing component '{name}'")
        if name in ("scheduler", "tokenizer"):
            continue
        if not (folder / "config.json").is_file():
            raise CheckpointError(f"{folder}: missing config.json")
        if not any(folder.glob("*.safetensors")):
            hint = " (.bin/.pt weights are not loaded: convert them to safetensors)" if any(
                folder.glob("*.bin")) or any(folder.glob("*.pt")) else ""
            raise CheckpointError(f"{folder}: no .safetensors weights{hint}")


def resolve_model_path(path: str | os.PathLike[str] | None) -> Path:
    """The model folder to use: ``path``, or the built-in demo model when ``path`` is None."""
    if path is None or str(path) == "":
        if not (DEMO_MODEL_PATH / "model_index.json").is_file():
            raise CheckpointError(
                f"no model given and the built-in demo model is missing at {DEMO_MODEL_PATH}; pass --model PATH "
                "(a MetricGold checkpoint folder)"
            )
        return DEMO_MODEL_PATH
    return Path(path)


def load_pipeline(
    path: str | os.PathLike[str] | None,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
) -> MetricGoldPipeline:
    """Load a MetricGold checkpoint folder onto a device, checking it first so that a broken folder gives one clear
    message (which folder, which part, what is wrong) instead of a deep diffusers traceback."""
    from .pipeline import MetricGoldPipeline

    root = resolve_model_path(path)
    _require_components(root, ())
    index_path = root / "model_index.json"
    if not index_path.is_file():
        raise CheckpointError(f"{root}: no model_index.json (not a diffusers-layout model folder)")
    try:
        index = json.loads(index_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{index_path}: not valid JSON ({exc})") from None
    missing = [name for name in COMPONENTS if name not in index]
    if missing:
        raise CheckpointError(
            f"{index_path}: not a MetricGold checkpoint, missing component(s) {', '.join(missing)}"
        )
    _require_components(root, COMPONENTS)
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
    return pipe.to(dev)
