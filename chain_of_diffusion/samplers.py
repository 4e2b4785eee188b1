"""Sampling loops over diffusers schedulers with classifier-free guidance (no I/O).

Determinism: the UNet is always called on batches of exactly :data:`~chain_of_diffusion.batching.UNET_ROWS`
rows (:func:`~chain_of_diffusion.batching.fixed_batches`), so an image depends on its own noise and
caption alone, not on which other images share its batch or process.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Optional

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
)

from chain_of_diffusion.batching import UNET_ROWS, fixed_batches

SCHEDULERS = {
    "ddim": DDIMScheduler,
    "ddpm": DDPMScheduler,
    "dpmsolver++": DPMSolverMultistepScheduler,
    "euler": EulerDiscreteScheduler,
    "pndm": PNDMScheduler,  # StableDiffusionPipeline's default for SD 1.x
}


def guidance_scales(schedule: str, start: float, end: float, steps: int) -> list[float]:
    """The CFG scale at each of ``steps`` denoising steps, from ``start`` (first) to ``end`` (last).

    linear: start + (end - start) i/(steps-1); cosine: end + (start - end)(1 + cos(pi i/(steps-1)))/2;
    exponential: start (end/start)^(i/(steps-1)); constant: start.
    """
    if schedule == "constant" or steps == 1:
        return [float(start)] * steps
    fractions = [i / (steps - 1) for i in range(steps)]
    if schedule == "linear":
        return [start + (end - start) * f for f in fractions]
    if schedule == "cosine":
        return [end + (start - end) * (1 + math.cos(math.pi * f)) / 2 for f in fractions]
    if schedule == "exponential":
        if start <= 0 or end <= 0:
            raise ValueError("exponential guidance schedule needs positive start and end scales")
        return [start * (end / start) ** f for f in fractions]
    raise ValueError(f"unknown guidance schedule {schedule!r}")


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


def num_denoising_calls(name: str, steps: int, train_scheduler_config: dict) -> int:
    """How many UNet evaluations (timesteps) ``steps`` sampling steps take: one more for PNDM,
    whose PLMS start repeats a timestep. Guidance schedules need one scale per evaluation."""
    sched = make_scheduler(name, train_scheduler_config)
    sched.set_timesteps(steps)
    return len(sched.timesteps)


def _denoise(unet, x: torch.Tensor, t, emb: torch.Tensor) -> torch.Tensor:
    timesteps = torch.full((UNET_ROWS,), int(t), device=x.device)
    return fixed_batches(lambda xs, es: unet(xs, timesteps, encoder_hidden_states=es).sample, UNET_ROWS, x, emb)


@torch.no_grad()
def sample(
    unet,
    train_scheduler_config: dict,
    noise: torch.Tensor,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    *,
    scheduler: str = "ddim",
    steps: int = 20,
    guidance: Optional[list[float]] = None,
    generators: Optional[list[torch.Generator]] = None,
    progress: Optional[Callable[[int], None]] = None,
) -> torch.Tensor:
    """Denoise ``noise`` into samples with classifier-free guidance.

    Shapes: noise (N, C, H, W); cond (N, L, D) caption embeddings; uncond (1, L, D) the embedding
    of "". ``guidance`` holds one scale per step (:func:`guidance_scales`); at a scale of
    exactly 1 the unconditional half is skipped, since it cannot change the result. Stochastic
    schedulers (ddpm) draw their per-step noise from ``generators``, one per image.
    Returns (N, C, H, W) in the model's space (pixels or latents).
    """
    sched = make_scheduler(scheduler, train_scheduler_config)
    sched.set_timesteps(steps, device=noise.device)
    guidance = guidance if guidance is not None else [1.0] * steps
    if len(guidance) != len(sched.timesteps):
        raise ValueError(f"{len(guidance)} guidance scales for {len(sched.timesteps)} steps")
    x = noise * sched.init_noise_sigma
    n = x.shape[0]
    uncond_rows = uncond.expand(n, *uncond.shape[1:])
    extra = {"generator": generators} if generators is not None and scheduler == "ddpm" else {}
    for i, t in enumerate(sched.timesteps):
        model_in = sched.scale_model_input(x, t)
        scale = guidance[i]
        if scale == 1.0:
            pred = _denoise(unet, model_in, t, cond)
        else:
            both = _denoise(unet, torch.cat([model_in, model_in]), t, torch.cat([uncond_rows, cond]))
            pred_uncond, pred_cond = both[:n], both[n:]
            pred = pred_uncond + scale * (pred_cond - pred_uncond)
        x = sched.step(pred, t, x, **extra).prev_sample
        if progress is not None:
            progress(i)
    return x
