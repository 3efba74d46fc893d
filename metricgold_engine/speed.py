"""CPU/GPU speed options applied to a loaded pipeline: ``torch.compile`` and channels-last memory format.

The dtype is chosen at load time (``load_pipeline(dtype=...)``); bfloat16 weights on a CPU with AMX/AVX512-BF16 run
the convolutions and attention in bfloat16 with float32 accumulation. bench/cpu_options.py measures each option
against float32 eager and prints the depth difference next to the speed-up.
"""

from __future__ import annotations

from typing import Any

import torch


def apply_speed_options(pipe: Any, compile: bool = False, channels_last: bool = False) -> Any:
    """In place, and returns ``pipe``. ``compile``: ``torch.compile`` the UNet (the call that repeats; the first
    prediction at a new size pays the compile time). ``channels_last``: NHWC weights for the UNet and both VAEs,
    which oneDNN's convolutions prefer on some CPUs."""
    if channels_last:
        for module in (pipe.unet, pipe.vae, pipe.depth_vae):
            module.to(memory_format=torch.channels_last)
    if compile:
        pipe.unet.compile()
    return pipe
