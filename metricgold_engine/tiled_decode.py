"""Tiled VAE decode whose GroupNorm statistics are those of the whole image.

diffusers' ``AutoencoderKL.enable_tiling()`` decodes each tile on its own, so every GroupNorm normalises with that
tile's statistics: whole tiles shift, by 0.3-0.5 median in log depth on the depth VAE. Here the statistics are the
whole image's, so the result equals an untiled decode up to float rounding:

1. ``post_quant_conv``, ``conv_in``, the mid-block (with its global attention) and any later block whose output is
   small enough (``whole_max_elements``) run whole, with the modules' own GroupNorms.
2. The remaining full-resolution blocks run tile by tile. Each tile is cut from the last whole tensor with a halo
   wider than the receptive field of the tiled layers, so its core is exact. For every GroupNorm in turn, one pass
   over the tiles accumulates that layer's input statistics over the tile cores (Chan's parallel mean/variance in
   float64), with all earlier GroupNorms already using their global statistics; a last pass writes the cores of the
   output. When a block's output fits ``whole_max_elements``, it is assembled whole and becomes the new start, so
   later passes do not recompute it.

Memory grows with the tile and ``whole_max_elements``, not with the photo (apart from the output itself). The price
is recomputation: the pass for the k-th tiled GroupNorm reruns the tiled layers before it. ``tile_callback(done,
total)`` runs after every tile of every pass; raising in it aborts the decode (the worker's cancel).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

#: Decoder output elements (per member) above which the pipeline decodes in tiles: about 1024 x 1024 px x 128
#: channels, ~0.5 GB per full-resolution feature map in float32.
DEFAULT_TILE_THRESHOLD_PIXELS = 1024 * 1024
DEFAULT_TILE_SIZE = 512
#: Largest intermediate (elements, all channels) assembled whole: 2**24 floats = 64 MB.
DEFAULT_WHOLE_MAX_ELEMENTS = 2**24

TileCallback = Callable[[int, int], None]


class _Stop(Exception):
    """Ends a statistics pass at the GroupNorm whose input it has measured."""


class _Final(nn.Module):
    """The decoder's post-process (norm, activation, conv_out) as one block."""

    def __init__(self, decoder: nn.Module):
        super().__init__()
        self.conv_norm_out, self.conv_act, self.conv_out = decoder.conv_norm_out, decoder.conv_act, decoder.conv_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv_act(self.conv_norm_out(x)))


class _GlobalGroupNorm(nn.Module):
    """Stands in for one ``nn.GroupNorm`` while tiles run: normalises with given whole-image statistics, or measures
    its input's core for them (then stops the pass)."""

    def __init__(self, norm: nn.GroupNorm, state: "_TileState"):
        super().__init__()
        self.norm, self.state = norm, state
        self.mean: torch.Tensor | None = None  # [B, G] float64
        self.var: torch.Tensor | None = None
        self.count: float = 0.0
        self.m2: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.norm.num_groups
        b, c = x.shape[:2]
        if self.state.measuring is self:
            top, left, h, w = self.state.core(x)
            core = x[:, :, top:top + h, left:left + w].double().reshape(b, g, -1)
            n = core.shape[-1]
            mean = core.mean(-1)
            m2 = ((core - mean[..., None]) ** 2).sum(-1)
            if self.m2 is None:
                self.count, self.mean, self.m2 = float(n), mean, m2
            else:  # Chan et al.'s pairwise update: exact merging of partial means and squared deviations
                total = self.count + n
                delta = mean - self.mean
                self.mean = self.mean + delta * (n / total)
                self.m2 = self.m2 + m2 + delta**2 * (self.count * n / total)
                self.count = total
            raise _Stop
        if self.var is None:
            raise RuntimeError("tiled decode: a GroupNorm ran before its statistics were measured")
        scale = torch.rsqrt(self.var + self.norm.eps).to(x.dtype)
        shift = self.mean.to(x.dtype)
        y = (x.reshape(b, g, -1) - shift[..., None]) * scale[..., None]
        y = y.reshape(x.shape)
        if self.norm.affine:
            y = y * self.norm.weight.to(x.dtype)[None, :, None, None] + self.norm.bias.to(x.dtype)[None, :, None, None]
        return y

    def finish(self) -> None:
        self.var = self.m2 / self.count
        self.m2 = None


class _TileState:
    def __init__(self) -> None:
        self.measuring: _GlobalGroupNorm | None = None
        self.tile_in_shape: tuple[int, int] = (1, 1)
        self.core_box: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, left, h, w in the start tensor's pixels

    def core(self, x: torch.Tensor) -> tuple[int, int, int, int]:
        """The tile's core in ``x``'s pixels (``x`` is the tile at some later, upsampled layer)."""
        sy = x.shape[-2] // self.tile_in_shape[0]
        sx = x.shape[-1] // self.tile_in_shape[1]
        top, left, h, w = self.core_box
        return top * sy, left * sx, h * sy, w * sx


def decoder_blocks(decoder: nn.Module) -> list[nn.Module]:
    """The decoder's layers after the mid-block, as a list of blocks each run on the previous one's output."""
    blocks: list[nn.Module] = []
    for up in decoder.up_blocks:
        if type(up).__name__ != "UpDecoderBlock2D":
            raise NotImplementedError(f"tiled decode supports UpDecoderBlock2D, not {type(up).__name__}")
        for resnet in up.resnets:
            if resnet.upsample is not None or resnet.downsample is not None or resnet.time_emb_proj is not None:
                raise NotImplementedError("tiled decode: resnet with resampling or time embedding")
            blocks.append(resnet)
        blocks.extend(up.upsamplers or [])
    if not isinstance(decoder.conv_norm_out, nn.GroupNorm):
        raise NotImplementedError("tiled decode: the decoder's output norm is not a GroupNorm")
    blocks.append(_Final(decoder))
    return blocks


def _block_out(block: nn.Module, shape: tuple[int, ...]) -> tuple[tuple[int, ...], float]:
    """(output shape, halo the block adds in its input's pixels) for a block given its input shape."""
    b, _, h, w = shape
    if type(block).__name__ == "Upsample2D":
        if block.use_conv_transpose or not block.interpolate or not block.use_conv:
            raise NotImplementedError("tiled decode: Upsample2D without nearest upsampling + conv")
        conv = block.conv if block.name == "conv" else block.Conv2d_0
        return (b, conv.out_channels, 2 * h, 2 * w), (conv.kernel_size[0] // 2) / 2
    if isinstance(block, _Final):
        conv = block.conv_out
        return (b, conv.out_channels, h, w), conv.kernel_size[0] // 2
    return (b, block.conv2.out_channels, h, w), block.conv1.kernel_size[0] // 2 + block.conv2.kernel_size[0] // 2


def _numel(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


@torch.no_grad()
def tiled_decode(
    vae: Any,
    latent: torch.Tensor,
    tile_size: int = DEFAULT_TILE_SIZE,
    whole_max_elements: int = DEFAULT_WHOLE_MAX_ELEMENTS,
    tile_callback: TileCallback | None = None,
    statistics: str = "global",
) -> torch.Tensor:
    """Decode ``latent`` (already divided by the scaling factor) with ``vae`` (an ``AutoencoderKL``) -> the same
    tensor as ``vae.decode(latent).sample``, computed tile by tile above the whole-tensor budget.

    ``tile_size``: tile core side in output pixels. ``statistics="tile"`` normalises each tile with its own
    statistics (what diffusers' tiling does) — only to show in tests and benches how wrong that is.
    """
    if statistics not in ("global", "tile"):
        raise ValueError(f"statistics must be 'global' or 'tile', got {statistics!r}")
    if tile_size < 8:
        raise ValueError(f"tile_size must be >= 8 output pixels, got {tile_size}")
    decoder = vae.decoder
    latent = latent.to(vae.dtype)
    if vae.post_quant_conv is not None:
        latent = vae.post_quant_conv(latent)
    x = decoder.conv_in(latent)
    up_dtype = next(iter(decoder.up_blocks.parameters())).dtype
    x = decoder.mid_block(x, None).to(up_dtype)
    blocks = decoder_blocks(decoder)

    # Plan: blocks run whole while their output fits the budget; the rest form tiled segments, each ending at a
    # block whose output fits (assembled whole) or at the decoder's output.
    shapes = [tuple(x.shape)]
    halos = []
    for block in blocks:
        out, halo = _block_out(block, shapes[-1])
        shapes.append(out)
        halos.append(halo)
    segments: list[tuple[str, int, int]] = []  # (kind, first block, last block + 1)
    i = 0
    while i < len(blocks):
        if statistics == "global" and _numel(shapes[i + 1]) <= whole_max_elements and \
                _numel(shapes[i]) <= whole_max_elements:
            segments.append(("whole", i, i + 1))
            i += 1
            continue
        j = i + 1
        while j < len(blocks) and _numel(shapes[j]) > whole_max_elements:
            j += 1
        segments.append(("tiled", i, j))
        i = j

    def grid(seg_first: int, seg_end: int) -> tuple[list[tuple[int, int, int, int]], int]:
        h, w = shapes[seg_first][-2:]
        upscale = shapes[seg_end][-1] // w
        step = max(1, math.ceil(tile_size / upscale))
        boxes = [(top, left, min(step, h - top), min(step, w - left))
                 for top in range(0, h, step) for left in range(0, w, step)]
        scale, halo = 1, 0.0
        for k in range(seg_first, seg_end):  # halo in the start tensor's pixels
            halo += halos[k] / scale
            if shapes[k + 1][-1] != shapes[k][-1]:
                scale *= shapes[k + 1][-1] // shapes[k][-1]
        return boxes, math.ceil(halo) + 1

    # Progress total: one pass per tiled GroupNorm plus the output pass, per tiled segment.
    plan = []
    total = 0
    for kind, first, end in segments:
        if kind == "whole":
            plan.append((kind, first, end, [], 0))
            continue
        norms = [m for b in blocks[first:end] for m in b.modules() if isinstance(m, nn.GroupNorm)]
        boxes, halo = grid(first, end)
        passes = (len(norms) if statistics == "global" else 0) + 1
        total += passes * len(boxes)
        plan.append((kind, first, end, boxes, halo))
    done = 0

    for kind, first, end, boxes, halo in plan:
        seg = blocks[first:end]
        if kind == "whole":
            x = _call(seg[0], x)
            continue
        if statistics == "tile":
            x, done = _run_tiles(seg, x, boxes, halo, shapes[end], [], _TileState(), None, tile_callback, done,
                                 total)
            continue
        state = _TileState()
        swapped = _swap_norms(seg, state)
        try:
            wrappers = [w for _, _, w in swapped]
            for wrapper in wrappers:
                _, done = _run_tiles(seg, x, boxes, halo, None, wrappers, state, wrapper, tile_callback, done, total)
                wrapper.finish()
            x, done = _run_tiles(seg, x, boxes, halo, shapes[end], wrappers, state, None, tile_callback, done, total)
        finally:
            for parent, name, wrapper in swapped:
                setattr(parent, name, wrapper.norm)
    return x


def _call(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return block(x, None) if type(block).__name__ == "ResnetBlock2D" else block(x)


def _swap_norms(seg: list[nn.Module], state: _TileState) -> list[tuple[nn.Module, str, _GlobalGroupNorm]]:
    swapped = []
    for block in seg:
        for parent in list(block.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.GroupNorm):
                    wrapper = _GlobalGroupNorm(child, state)
                    setattr(parent, name, wrapper)
                    swapped.append((parent, name, wrapper))
    return swapped


def _run_tiles(seg, x, boxes, halo, out_shape, wrappers, state, measuring, callback, done, total):
    """One pass over the tiles: measure ``measuring``'s input statistics, or (``out_shape`` given) assemble the
    segment's output from the tile cores."""
    h, w = x.shape[-2:]
    out = None if out_shape is None else torch.empty(out_shape, dtype=x.dtype, device=x.device)
    state.measuring = measuring
    for top, left, th, tw in boxes:
        y0, x0 = max(0, top - halo), max(0, left - halo)
        y1, x1 = min(h, top + th + halo), min(w, left + tw + halo)
        tile = x[:, :, y0:y1, x0:x1]
        state.tile_in_shape = tuple(tile.shape[-2:])
        state.core_box = (top - y0, left - x0, th, tw)
        try:
            y = tile
            for block in seg:
                y = _call(block, y)
        except _Stop:
            y = None
        if out is not None:
            ct, cl, ch, cw = state.core(y)
            sy, sx = y.shape[-2] // tile.shape[-2], y.shape[-1] // tile.shape[-1]
            out[:, :, top * sy:top * sy + ch, left * sx:left * sx + cw] = y[:, :, ct:ct + ch, cl:cl + cw]
        done += 1
        if callback is not None:
            callback(done, total)
    state.measuring = None
    return out, done
