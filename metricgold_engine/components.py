"""The parts MetricGold adds to Stable Diffusion v2 (paper §3.2): the stored empty-prompt embedding and the widened
``conv_in``. Checkpoint loading and saving live in :mod:`metricgold_engine.checkpoint`."""

from __future__ import annotations

import os

import torch
from diffusers import UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin  # noqa: F401  (diffusers finds the load method through it)
from torch import nn


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

