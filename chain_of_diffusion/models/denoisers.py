"""Adapters from networks to the denoiser call the processes use: ``net(x_t, t, cond) -> prediction``.

The processes never see a diffusers UNet or a text encoder: these adapters do. ``cond`` is what
the network conditions on (caption embeddings (B, L, D) for a UNet with CLIP text).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from chain_of_diffusion.batching import fixed_batches


class UNetDenoiser:
    """A ``UNet2DConditionModel`` (or its accelerate-prepared wrapper) as ``net(x_t, t, embeddings)``.

    With ``rows`` the UNet is called on batches of exactly that many rows
    (:func:`~chain_of_diffusion.batching.fixed_batches`), so a row's output does not depend on its
    batch mates: sampling uses it; training calls the UNet on its micro-batch as it is.
    """

    def __init__(self, unet: torch.nn.Module, rows: Optional[int] = None):
        self.unet = unet
        self.rows = rows

    def _call(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        return self.unet(x, t, encoder_hidden_states=cond).sample

    def __call__(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        if self.rows is None:
            return self._call(x, t, cond)
        return fixed_batches(self._call, self.rows, x, t, cond)
