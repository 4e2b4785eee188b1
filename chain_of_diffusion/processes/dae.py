"""The denoising autoencoder at one noise level (the setting of Zhu et al. 2024's collapse theorem).

The network learns D(x + sigma * noise) ~ x. Generation applies it recursively: starting from
``noise``, each of ``steps`` steps computes x <- D(x + sigma * eps) with fresh noise eps. One step
from data is exactly what a generation of the theorem's chain does to its training set; many
steps from pure noise make it a sampler (a Markov chain whose fixed point the chain explores).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

from chain_of_diffusion.processes.base import Denoiser, guided


class DenoisingAutoencoder:
    """The ``dae`` objective at noise level ``sigma`` (``train.dae_sigma``). The network's time input
    is the constant ``sigma``, so a time-conditioned network sees the level it was trained at."""

    name = "dae"
    continuous_time = True  # t is the noise level sigma

    def __init__(self, sigma: float):
        if sigma <= 0:
            raise ValueError(f"the DAE noise level must be > 0, got {sigma}")
        self.sigma = float(sigma)

    def draw_t(self, generator: torch.Generator, n: int) -> Tensor:
        return torch.full((n,), self.sigma)

    def training_pair(self, x1: Tensor, noise: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        return x1 + self.sigma * noise, x1

    def loss_weights(self, t: Tensor) -> Optional[Tensor]:
        return None

    def num_calls(self, steps: int) -> int:
        return steps

    @torch.no_grad()
    def sample(self, net: Denoiser, noise: Tensor, cond: Any, uncond: Any, *, steps: int,
               guidance: Optional[list[float]] = None, generators: Optional[list[torch.Generator]] = None,
               progress=None) -> Tensor:
        """``steps`` applications of x <- D(x + sigma * eps) from x = ``noise``. The per-step noise of
        row i comes from ``generators[i]`` (one per row, so a row does not depend on its batch mates);
        without them, from one generator seeded 0 for the batch."""
        guidance = guidance if guidance is not None else [1.0] * steps
        if len(guidance) != steps:
            raise ValueError(f"{len(guidance)} guidance scales for {steps} steps")
        x = noise
        t = torch.full((x.shape[0],), self.sigma, device=x.device)
        shared = torch.Generator().manual_seed(0)
        for i in range(steps):
            if generators is not None:
                eps = torch.stack([torch.randn(x.shape[1:], generator=g) for g in generators])
            else:
                eps = torch.randn(x.shape, generator=shared)
            x = guided(net, x + self.sigma * eps.to(x.device, x.dtype), t, cond, uncond, guidance[i])
            if progress is not None:
                progress(i)
        return x
