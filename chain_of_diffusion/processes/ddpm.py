"""The DDPM family: ``eps`` and ``v`` prediction over a diffusers noise schedule.

Training follows the diffusers conventions (``add_noise``, ``get_velocity``, integer timesteps
uniform over the training schedule), so a model trained here samples with any diffusers scheduler
of the same ``prediction_type``, and sampling runs the diffusers schedulers' own ``step``.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    PNDMScheduler,
)
from torch import Tensor

from chain_of_diffusion.processes.base import Denoiser, guided

SCHEDULERS = {
    "ddim": DDIMScheduler,
    "ddpm": DDPMScheduler,
    "dpmsolver++": DPMSolverMultistepScheduler,
    "euler": EulerDiscreteScheduler,
    "pndm": PNDMScheduler,  # StableDiffusionPipeline's default for SD 1.x
    "heun": HeunDiscreteScheduler,  # two network calls per step (Karras et al. 2022)
}


def make_scheduler(name: str, train_scheduler_config: dict):
    """A fresh sampling scheduler of kind ``name`` sharing the training noise schedule."""
    cls = SCHEDULERS[name]
    kwargs = {}
    if name == "dpmsolver++":
        kwargs["algorithm_type"] = "dpmsolver++"
    if name == "ddim":
        kwargs["set_alpha_to_one"] = False
    if name == "pndm":
        kwargs["skip_prk_steps"] = True  # PLMS only, as Stable Diffusion's scheduler config sets
    return cls.from_config(train_scheduler_config, **kwargs)


class DDPMProcess:
    """x_t = sqrt(abar_t) x + sqrt(1 - abar_t) eps over ``noise_scheduler``'s schedule; the network
    predicts eps (``prediction="eps"``) or v = sqrt(abar_t) eps - sqrt(1 - abar_t) x (``"v"``)."""

    def __init__(self, noise_scheduler: DDPMScheduler, prediction: str = "eps", *, sampler: str = "ddim",
                 snr_gamma: Optional[float] = 0.0):
        if prediction not in ("eps", "v"):
            raise ValueError(f"DDPMProcess predicts eps or v, not {prediction!r}")
        self.name = prediction
        self.continuous_time = False  # the network sees the scheduler's integer timesteps
        self.noise_scheduler = noise_scheduler
        self.sampler = sampler
        self.snr_gamma = snr_gamma

    @property
    def num_timesteps(self) -> int:
        return int(self.noise_scheduler.config.num_train_timesteps)

    def draw_t(self, generator: torch.Generator, n: int) -> Tensor:
        return torch.randint(0, self.num_timesteps, (n,), generator=generator)

    def training_pair(self, x1: Tensor, noise: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        x_t = self.noise_scheduler.add_noise(x1, noise, t)
        target = noise if self.name == "eps" else self.noise_scheduler.get_velocity(x1, noise, t)
        return x_t, target

    def loss_weights(self, t: Tensor) -> Optional[Tensor]:
        """Min-SNR-gamma weights (Hang et al. 2023) when ``snr_gamma`` > 0: the eps loss is weighted
        by min(SNR, gamma) / SNR, the v loss by min(SNR, gamma) / (SNR + 1) (the same x0 weighting)."""
        if not self.snr_gamma:
            return None
        return min_snr_weights(self.noise_scheduler, t, self.snr_gamma, self.name)

    def num_calls(self, steps: int) -> int:
        """PNDM's PLMS start repeats a timestep: one more network call than steps."""
        sched = make_scheduler(self.sampler, self.noise_scheduler.config)
        sched.set_timesteps(steps)
        return len(sched.timesteps)

    @torch.no_grad()
    def sample(self, net: Denoiser, noise: Tensor, cond: Any, uncond: Any, *, steps: int,
               guidance: Optional[list[float]] = None, generators: Optional[list[torch.Generator]] = None,
               progress=None) -> Tensor:
        sched = make_scheduler(self.sampler, self.noise_scheduler.config)
        sched.set_timesteps(steps, device=noise.device)
        guidance = guidance if guidance is not None else [1.0] * len(sched.timesteps)
        if len(guidance) != len(sched.timesteps):
            raise ValueError(f"{len(guidance)} guidance scales for {len(sched.timesteps)} steps")
        x = noise * sched.init_noise_sigma
        extra = {"generator": generators} if generators is not None and self.sampler == "ddpm" else {}
        for i, t in enumerate(sched.timesteps):
            model_in = sched.scale_model_input(x, t)
            t_rows = torch.full((x.shape[0],), int(t), device=x.device)
            pred = guided(net, model_in, t_rows, cond, uncond, guidance[i])
            x = sched.step(pred, t, x, **extra).prev_sample
            if progress is not None:
                progress(i)
        return x


def min_snr_weights(scheduler: DDPMScheduler, t: Tensor, gamma: float, objective: str) -> Tensor:
    """Min-SNR-gamma loss weights, shape (B,) for integer timesteps t (B,)."""
    from diffusers.training_utils import compute_snr

    snr = compute_snr(scheduler, t).float()
    clipped = torch.clamp(snr, max=gamma)
    return clipped / (snr + 1) if objective == "v" else clipped / snr
