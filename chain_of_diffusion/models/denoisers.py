"""Adapters from networks to the denoiser call the processes use: ``net(x_t, t, cond) -> prediction``.

The processes never see a diffusers UNet or a text encoder: these adapters do. ``cond`` is what
the network conditions on (caption embeddings (B, L, D) for a UNet with CLIP text).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from chain_of_diffusion.batching import fixed_batches

# The UNet's sinusoidal time embedding was made for DDPM's integer timesteps in [0, 1000); a process
# with real-valued time (flow: t in [0, 1]; dae: sigma) is fed t * 999, as Liu et al.'s code does.
CONTINUOUS_TIME_SCALE = 999.0


class UNetDenoiser:
    """A ``UNet2DConditionModel`` (or its accelerate-prepared wrapper) as ``net(x_t, t, embeddings)``.

    With ``rows`` the UNet is called on batches of exactly that many rows
    (:func:`~chain_of_diffusion.batching.fixed_batches`), so a row's output does not depend on its
    batch mates: sampling uses it; training calls the UNet on its micro-batch as it is.
    ``time_scale`` multiplies the time before the UNet sees it.
    """

    def __init__(self, unet: torch.nn.Module, rows: Optional[int] = None, time_scale: float = 1.0):
        self.unet = unet
        self.rows = rows
        self.time_scale = time_scale

    def _call(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        if self.time_scale != 1.0:
            t = t * self.time_scale
        return self.unet(x, t, encoder_hidden_states=cond).sample

    def __call__(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        if self.rows is None:
            return self._call(x, t, cond)
        return fixed_batches(self._call, self.rows, x, t, cond)


def unet_denoiser(unet: torch.nn.Module, process, rows: Optional[int] = None) -> UNetDenoiser:
    """The UNet as the denoiser ``process`` trains or samples, its time scaled where the process's is real-valued."""
    return UNetDenoiser(unet, rows, CONTINUOUS_TIME_SCALE if process.continuous_time else 1.0)
