"""Diffusion processes behind one protocol (:class:`~chain_of_diffusion.processes.base.Process`):
``model.objective`` names one; adding a process is one file here and one line in :data:`PROCESSES`."""

from __future__ import annotations

from typing import Any

from chain_of_diffusion.processes.base import Denoiser, Process, guided
from chain_of_diffusion.processes.dae import DenoisingAutoencoder
from chain_of_diffusion.processes.ddpm import DDPMProcess
from chain_of_diffusion.processes.flow import RectifiedFlow
from chain_of_diffusion.processes.guidance import guidance_scales

# model.objective -> the process, from the model's noise scheduler and the options that concern it
PROCESSES = {
    "eps": lambda sched, o: DDPMProcess(sched, "eps", sampler=o.get("sampler", "ddim"), snr_gamma=o.get("snr_gamma")),
    "v": lambda sched, o: DDPMProcess(sched, "v", sampler=o.get("sampler", "ddim"), snr_gamma=o.get("snr_gamma")),
    "flow": lambda sched, o: RectifiedFlow(sampler=o.get("sampler", "euler"), t_sampling=o.get("t_sampling", "uniform")),
    "dae": lambda sched, o: DenoisingAutoencoder(o.get("dae_sigma", 0.5)),
}


def make_process(objective: str, noise_scheduler: Any = None, **options) -> Process:
    """The process of ``objective``; options: ``sampler`` (eps / v: a diffusers scheduler name; flow: euler
    or heun), ``snr_gamma`` (eps / v), ``t_sampling`` (flow), ``dae_sigma`` (dae). eps / v need the model's
    noise scheduler (its training noise schedule)."""
    return PROCESSES[objective](noise_scheduler, options)


__all__ = ["PROCESSES", "DDPMProcess", "Denoiser", "DenoisingAutoencoder", "Process", "RectifiedFlow",
           "guidance_scales", "guided", "make_process"]
