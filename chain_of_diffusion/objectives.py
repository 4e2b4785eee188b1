"""Training objectives as small functions: what the network sees and what it must predict.

No I/O and no model here: an objective maps a clean batch, its noise and its timesteps to a
:class:`TrainingPair`. ``eps`` and ``v`` follow the diffusers scheduler conventions, so a model
trained here samples with any diffusers scheduler of the same ``prediction_type``. ``flow`` and
``dae`` slot in as further entries of :data:`OBJECTIVES`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import torch
from diffusers import DDPMScheduler


@dataclass
class TrainingPair:
    noisy: torch.Tensor  # (B, C, H, W) the network input
    target: torch.Tensor  # (B, C, H, W) what the network should output


def eps_pair(scheduler: DDPMScheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> TrainingPair:
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps; predict eps. Shapes: x0, noise (B, C, H, W); t (B,)."""
    return TrainingPair(scheduler.add_noise(x0, noise, t), noise)


def v_pair(scheduler: DDPMScheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> TrainingPair:
    """Same x_t as :func:`eps_pair`; predict v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0."""
    return TrainingPair(scheduler.add_noise(x0, noise, t), scheduler.get_velocity(x0, noise, t))


OBJECTIVES: dict[str, Callable[..., TrainingPair]] = {"eps": eps_pair, "v": v_pair}


def mse_loss(pred: torch.Tensor, target: torch.Tensor, weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean squared error, optionally weighted per sample (weights: (B,)), in fp32."""
    per_sample = (pred.float() - target.float()).pow(2).flatten(1).mean(1)
    if weights is not None:
        per_sample = per_sample * weights
    return per_sample.mean()


def min_snr_weights(scheduler: DDPMScheduler, t: torch.Tensor, gamma: float, objective: str) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023), shape (B,) for timesteps t (B,).

    The loss on eps is weighted by min(SNR, gamma) / SNR; on v by min(SNR, gamma) / (SNR + 1),
    which is the same weighting of the x0 error.
    """
    from diffusers.training_utils import compute_snr

    snr = compute_snr(scheduler, t).float()
    clipped = torch.clamp(snr, max=gamma)
    return clipped / (snr + 1) if objective == "v" else clipped / snr
