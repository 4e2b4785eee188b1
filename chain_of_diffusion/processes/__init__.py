"""Diffusion processes behind one protocol (:class:`~chain_of_diffusion.processes.base.Process`):
``model.objective`` names one; adding a process is one file here and one line in :data:`PROCESSES`."""

from __future__ import annotations

from typing import Any

from chain_of_diffusion.processes.base import Denoiser, Process, guided
from chain_of_diffusion.processes.ddpm import DDPMProcess
from chain_of_diffusion.processes.guidance import guidance_scales

# model.objective -> how to build the process from the model's noise scheduler and the options
PROCESSES = {
    "eps": lambda noise_scheduler, **options: DDPMProcess(noise_scheduler, "eps", **options),
    "v": lambda noise_scheduler, **options: DDPMProcess(noise_scheduler, "v", **options),
}


def make_process(objective: str, noise_scheduler: Any, **options) -> Process:
    """The process of ``objective`` over the model's noise scheduler (``sampler``, ``snr_gamma``, ...)."""
    return PROCESSES[objective](noise_scheduler, **options)


__all__ = ["PROCESSES", "DDPMProcess", "Denoiser", "Process", "guidance_scales", "guided", "make_process"]
