"""Training configuration: nested dataclasses, loaded from YAML and overridable from the command line.

Every field is documented in its ``metadata["help"]``; ``python -m trainer show-config CFG`` prints a resolved
config with those comments. The defaults are the paper's protocol (Adam, lr 5e-5, batch 2 x accumulation 16 = 32,
16 000 iterations, random horizontal flip, v-prediction, DDPM 1000 steps).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config file or override is wrong; the message names the file and the field."""


def _f(default: Any, help: str, **kwargs: Any) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help}, **kwargs)
    return field(default=default, metadata={"help": help}, **kwargs)


@dataclass
class ModelConfig:
    init_from: str = _f("", "Stable Diffusion v2 folder (diffusers layout), a Marigold checkpoint, or a MetricGold "
                            "checkpoint (e.g. the VAE stage's output) to start from")
    tiny: str = _f("", "instead of init_from: build a random tiny/small model of this size ('tiny' or 'small') "
                       "through the same code path (tests, CPU runs)")
    depth_min: float = _f(0.1, "metres; lower end of the log normalization (eq. 3); stored in the checkpoint")
    depth_max: float = _f(100.0, "metres; upper end of the log normalization (eq. 3); stored in the checkpoint")
    depth_normalization: str = _f("log", "'log' (eq. 3, the paper's) or 'linear' (eq. 2)")
    default_processing_resolution: int = _f(768, "inference default stored in the checkpoint: long side in pixels")
    default_num_inference_steps: int = _f(50, "inference default stored in the checkpoint: DDIM steps")
    default_ensemble_size: int = _f(10, "inference default stored in the checkpoint: ensemble members")
    default_timestep_spacing: str = _f("leading", "inference default stored in the checkpoint: DDIM spacing")


@dataclass
class DataConfig:
    datasets: list = _f([], "list of data sets, each {kind: hypersim|vkitti2|tartanair|folder, root: PATH, "
                            "split: train, probability: 0.9, min_depth, max_depth, skip_corrupt, split_file}")
    resolution: list = _f([480, 640], "training crop [H, W]: each sample is resized to cover it, then centre-cropped")
    hflip: bool = _f(True, "random horizontal flip (p = 0.5)")
    num_workers: int = _f(2, "data loader worker processes (0 = load in the training process)")


@dataclass
class OptimConfig:
    lr: float = _f(5e-5, "Adam learning rate (paper: 5e-5 for the UNet)")
    adam_beta1: float = _f(0.9, "Adam beta1")
    adam_beta2: float = _f(0.999, "Adam beta2")
    adam_epsilon: float = _f(1e-8, "Adam epsilon")
    weight_decay: float = _f(0.0, "decoupled weight decay (0 = plain Adam, as in the paper)")
    use_8bit_adam: bool = _f(False, "bitsandbytes' 8-bit Adam (CUDA only; less optimizer memory)")
    lr_scheduler: str = _f("constant", "diffusers get_scheduler name: constant, constant_with_warmup, linear, "
                                       "cosine, cosine_with_restarts, polynomial")
    lr_warmup_steps: int = _f(0, "optimizer steps of linear warm-up")
    max_grad_norm: float = _f(1.0, "gradient clipping by global norm (0 = off)")


@dataclass
class RunConfig:
    output_dir: str = _f("runs/metricgold", "where checkpoints/, logs/ and final/ go")
    seed: int = _f(0, "seed of data order, flips, timesteps and noise (each a function of seed and step)")
    batch_size: int = _f(2, "samples per device per micro-batch")
    gradient_accumulation_steps: int = _f(16, "micro-batches per optimizer step (2 x 16 = the paper's 32)")
    max_steps: int = _f(16000, "optimizer steps (paper: 16 000 for the UNet)")
    mixed_precision: str = _f("no", "'no', 'fp16' or 'bf16' (accelerate autocast; weights stay float32)")
    gradient_checkpointing: bool = _f(False, "trade compute for activation memory")
    ema: bool = _f(False, "keep an exponential moving average of the trained weights; checkpoints' model/ holds it")
    ema_decay: float = _f(0.999, "EMA decay")
    checkpoint_every: int = _f(500, "optimizer steps between checkpoints")
    keep_checkpoints: int = _f(3, "newest checkpoints kept (older ones are deleted)")
    log_every: int = _f(10, "optimizer steps between TensorBoard scalars")
    preview_every: int = _f(500, "optimizer steps between depth previews in TensorBoard (0 = off)")
    tensorboard: bool = _f(True, "write TensorBoard logs under output_dir/logs")


@dataclass
class VaeStageConfig:
    kl_weight: float = _f(1e-6, "weight of the KL term (SD's VAE used 1e-6)")
    reconstruction_loss: str = _f("l1", "'l1' or 'l2', on valid pixels of the 3-channel log-normalized depth")
    target: str = _f("depth", "'depth': fine-tune the depth VAE (the paper's stage 1). 'image': train the image VAE "
                              "as an RGB autoencoder, only for models with no pretrained SD VAE (the demo model); "
                              "the depth VAE then starts as a copy of it")


@dataclass
class UnetStageConfig:
    multires_noise: bool = _f(False, "Marigold-style multi-resolution (pyramid) noise instead of white noise")
    multires_noise_strength: float = _f(0.9, "weight ratio between pyramid levels")
    multires_noise_annealed: bool = _f(True, "scale the pyramid strength with t / T")
    timesteps: str = _f("uniform", "'uniform': t ~ U{0..T-1} (the paper). 'final': always t = T-1, single-step "
                                   "fine-tuning (E2E-FT, Garcia et al. 2024): one trailing DDIM step then returns "
                                   "the model's depth, and the loss (v at t = T-1, within 0.3 % of the clean-latent "
                                   "error) cannot be lowered without the image; for small from-scratch models that "
                                   "otherwise learn only the depth prior. Infer with 1 step, trailing spacing")


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    vae: VaeStageConfig = field(default_factory=VaeStageConfig)
    unet: UnetStageConfig = field(default_factory=UnetStageConfig)

    def validate(self) -> None:
        """Cross-field checks, with messages that name the field."""
        from metricgold_engine.core.depth_codec import check_depth_range

        try:
            check_depth_range(self.model.depth_min, self.model.depth_max, self.model.depth_normalization)
        except ValueError as exc:
            raise ConfigError(f"model.depth_min/depth_max/depth_normalization: {exc}") from None
        if bool(self.model.init_from) == bool(self.model.tiny):
            raise ConfigError("model: set exactly one of init_from (a model folder) and tiny ('tiny' or 'small')")
        if self.model.tiny and self.model.tiny not in ("tiny", "small"):
            raise ConfigError(f"model.tiny: must be 'tiny' or 'small', got {self.model.tiny!r}")
        if not self.data.datasets:
            raise ConfigError("data.datasets: at least one data set is needed")
        res = self.data.resolution
        if (len(res) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in res)
                or min(res) < 8):
            raise ConfigError(f"data.resolution: expected [H, W], two integers of at least 8 pixels, got {res!r}")
        if isinstance(self.run.seed, bool) or not isinstance(self.run.seed, int) or not 0 <= self.run.seed < 2**63:
            raise ConfigError(f"run.seed: must be an integer >= 0, got {self.run.seed!r}")
        out = Path(self.run.output_dir)
        if not str(self.run.output_dir).strip():
            raise ConfigError("run.output_dir: must be a folder path, got an empty string")
        for folder in (out, *out.parents):  # the folder, or the first of its parents that exists, must be a folder
            if folder.exists():
                if not folder.is_dir():
                    what = "is a file" if folder == out else f"cannot be created: {folder} is a file"
                    raise ConfigError(f"run.output_dir: {out} {what}, not a folder")
                break
        for name in ("batch_size", "gradient_accumulation_steps", "max_steps", "checkpoint_every",
                     "keep_checkpoints", "log_every"):
            if getattr(self.run, name) < 1:
                raise ConfigError(f"run.{name}: must be >= 1, got {getattr(self.run, name)}")
        if self.run.mixed_precision not in ("no", "fp16", "bf16"):
            raise ConfigError(f"run.mixed_precision: 'no', 'fp16' or 'bf16', got {self.run.mixed_precision!r}")
        if self.optim.lr <= 0:
            raise ConfigError(f"optim.lr: must be > 0, got {self.optim.lr}")
        if self.vae.target not in ("depth", "image"):
            raise ConfigError(f"vae.target: 'depth' or 'image', got {self.vae.target!r}")
        if self.unet.timesteps not in ("uniform", "final"):
            raise ConfigError(f"unet.timesteps: 'uniform' or 'final', got {self.unet.timesteps!r}")
        if self.vae.reconstruction_loss not in ("l1", "l2"):
            raise ConfigError(f"vae.reconstruction_loss: 'l1' or 'l2', got {self.vae.reconstruction_loss!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _coerce(value: Any, default: Any, where: str) -> Any:
    """Value from YAML/CLI -> the type of the field's default (YAML reads '1e-4' as a string, for one)."""
    kind = type(default)
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
                return value.lower() in ("true", "yes", "1")
            raise ValueError
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if kind is str:
            if value is None:
                return ""
            if not isinstance(value, (str, int, float)):
                raise ValueError
            return str(value)
        if kind is list:
            if not isinstance(value, list):
                raise ValueError
            return value
    except (TypeError, ValueError):
        pass
    else:
        return value
    raise ConfigError(f"{where}: expected {kind.__name__}, got {value!r}")


def _apply(section: Any, values: dict[str, Any], where: str) -> None:
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(values).__name__}")
    names = {f.name for f in dataclasses.fields(section)}
    for key, value in values.items():
        if key not in names:
            raise ConfigError(f"{where}.{key}: unknown field (known: {', '.join(sorted(names))})")
        current = getattr(section, key)
        if dataclasses.is_dataclass(current):
            _apply(current, value, f"{where}.{key}")
        else:
            setattr(section, key, _coerce(value, current, f"{where}.{key}"))


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """Defaults, then the YAML file, then ``section.field=value`` overrides (values parsed as YAML)."""
    config = TrainConfig()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from None
        _apply(config, data, str(path))
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected section.field=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        nested: dict[str, Any] = {parts[-1]: value}
        for part in reversed(parts[:-1]):
            nested = {part: nested}
        _apply(config, nested, "--set")
    return config


def dump_config(config: TrainConfig) -> str:
    """YAML of the config with each field's help as a comment."""
    lines: list[str] = []
    for section in dataclasses.fields(config):
        lines.append(f"{section.name}:")
        obj = getattr(config, section.name)
        for f in dataclasses.fields(obj):
            value = yaml.safe_dump(getattr(obj, f.name), default_flow_style=True, width=1000).strip()
            value = value.removesuffix("\n...").removesuffix("...").strip()
            lines.append(f"  # {f.metadata.get('help', '')}")
            lines.append(f"  {f.name}: {value}")
    return "\n".join(lines) + "\n"

