"""The diffusion-process protocol: how a process trains and samples a denoiser of any data shape.

A *denoiser* is any callable ``net(x_t, t, cond) -> prediction`` over batches ``(B, ...)``: a UNet
with CLIP text behind an adapter (:mod:`chain_of_diffusion.models.denoisers`), or a small MLP on
vectors. A *process* knows nothing of files, captions or models: it draws times, turns clean
data and noise into the (input, target) the network learns, weighs the loss, and integrates the
learned dynamics from noise to data. ``eps``/``v`` over diffusers schedulers are one process
(:mod:`.ddpm`); rectified flow and the denoising autoencoder are the next ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional, Protocol

import torch
from torch import Tensor

# net(x_t (B, ...), t (B,), cond) -> (B, ...): what the process asks the network for
Denoiser = Callable[[Tensor, Tensor, Any], Tensor]


class Process(Protocol):
    name: str  # the model.objective it implements
    continuous_time: bool  # t is a real number (flow: [0, 1]; dae: sigma), not a DDPM timestep index

    def draw_t(self, generator: torch.Generator, n: int) -> Tensor:
        """(n,) training times, drawn from ``generator`` only (resume and process-count invariance)."""
        ...

    def training_pair(self, x1: Tensor, noise: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """(network input x_t, regression target) for clean data ``x1`` (B, ...), noise of the same
        shape and times ``t`` (B,)."""
        ...

    def loss_weights(self, t: Tensor) -> Optional[Tensor]:
        """(B,) per-sample loss weights, or None for plain MSE."""
        ...

    def sample(self, net: Denoiser, noise: Tensor, cond: Any, uncond: Any, *, steps: int,
               guidance: Optional[list[float]] = None, generators: Optional[list[torch.Generator]] = None) -> Tensor:
        """Integrate from ``noise`` (N, ...) to data with classifier-free guidance between ``cond``
        (N rows) and ``uncond`` (1 row); ``guidance`` has one scale per network evaluation
        (:meth:`num_calls`); stochastic samplers draw their noise from ``generators``, one per row."""
        ...

    def num_calls(self, steps: int) -> int:
        """How many network evaluations ``steps`` sampling steps take (one guidance scale each)."""
        ...


def guided(net: Denoiser, x: Tensor, t: Tensor, cond: Tensor, uncond: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance: uncond + scale (cond - uncond), both halves in one call.

    ``uncond`` is one row, broadcast over the batch; at a scale of exactly 1 the unconditional
    half cannot change the result and is skipped.
    """
    if scale == 1.0:
        return net(x, t, cond)
    n = x.shape[0]
    uncond_rows = uncond.expand(n, *uncond.shape[1:])
    both = net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([uncond_rows, cond]))
    pred_uncond, pred_cond = both[:n], both[n:]
    return pred_uncond + scale * (pred_cond - pred_uncond)
