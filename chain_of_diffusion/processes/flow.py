"""Rectified flow (Liu et al. 2022), in the convention of their code (gnobitab/RectifiedFlow).

x_t = t x1 + (1 - t) x0 with x0 noise and x1 data, t in [0, 1]; the network predicts the velocity
x1 - x0. Sampling integrates dx/dt = v(x, t) from t = 0 (noise) to t = 1 (data) on a uniform grid
(Euler or Heun); :meth:`RectifiedFlow.invert` integrates the same ODE backwards, data to noise,
which is what Reflow's couplings and RA Reflow's real pairs are made of.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

from chain_of_diffusion.processes.base import Denoiser, guided

FLOW_SAMPLERS = ("euler", "heun")
T_SAMPLINGS = ("uniform", "logit_normal")


def _per_row(t: Tensor, like: Tensor) -> Tensor:
    """(B,) times broadcast over the other axes of ``like`` (B, ...)."""
    return t.view(-1, *([1] * (like.dim() - 1))).to(like.dtype)


class RectifiedFlow:
    """The ``flow`` objective. ``t_sampling``: ``uniform`` on [eps, 1] (Liu et al.) or ``logit_normal``
    (sigmoid of a standard normal, as in Esser et al. 2024); ``sampler``: ``euler`` or ``heun``."""

    name = "flow"
    continuous_time = True  # t in [0, 1]

    def __init__(self, *, sampler: str = "euler", t_sampling: str = "uniform", eps: float = 1e-3):
        if sampler not in FLOW_SAMPLERS:
            raise ValueError(f"rectified flow samples with {' or '.join(FLOW_SAMPLERS)}, not {sampler!r}")
        if t_sampling not in T_SAMPLINGS:
            raise ValueError(f"t_sampling is one of {', '.join(T_SAMPLINGS)}, not {t_sampling!r}")
        self.sampler, self.t_sampling, self.eps = sampler, t_sampling, eps

    def draw_t(self, generator: torch.Generator, n: int) -> Tensor:
        if self.t_sampling == "logit_normal":
            return torch.sigmoid(torch.randn(n, generator=generator))
        return self.eps + (1 - self.eps) * torch.rand(n, generator=generator)

    def training_pair(self, x1: Tensor, noise: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        tt = _per_row(t, x1)
        return tt * x1 + (1 - tt) * noise, x1 - noise

    def loss_weights(self, t: Tensor) -> Optional[Tensor]:
        return None

    def num_calls(self, steps: int) -> int:
        return steps if self.sampler == "euler" else 2 * steps

    @torch.no_grad()
    def sample(self, net: Denoiser, noise: Tensor, cond: Any, uncond: Any, *, steps: int,
               guidance: Optional[list[float]] = None, generators=None, progress=None) -> Tensor:
        """Noise (t = 0) to data (t = 1)."""
        return self._integrate(net, noise, cond, uncond, steps, guidance, forward=True, progress=progress)

    @torch.no_grad()
    def invert(self, net: Denoiser, x1: Tensor, cond: Any, uncond: Any, *, steps: int,
               guidance: Optional[list[float]] = None, progress=None) -> Tensor:
        """Data (t = 1) back to noise (t = 0), the same ODE run backwards on the same grid."""
        return self._integrate(net, x1, cond, uncond, steps, guidance, forward=False, progress=progress)

    @torch.no_grad()
    def straightness(self, net: Denoiser, noise: Tensor, cond: Any, uncond: Any, *, steps: int,
                     guidance: Optional[list[float]] = None) -> float:
        """Liu et al.'s straightness S = int_0^1 E ||(Z1 - Z0) - v(Z_t, t)||^2 dt of the sampler's own
        trajectories from ``noise``, on its grid: the velocity at the start of each step, squared error
        averaged over the steps, the samples and their elements (0 for a perfectly straight flow)."""
        velocities: list[Tensor] = []
        x1 = self._integrate(net, noise, cond, uncond, steps, guidance, forward=True, velocities=velocities)
        chord = x1 - noise
        return float(torch.stack([(chord - v).pow(2).mean() for v in velocities]).mean())

    def _integrate(self, net: Denoiser, x: Tensor, cond, uncond, steps: int, guidance, *, forward: bool,
                   progress=None, velocities: Optional[list[Tensor]] = None) -> Tensor:
        calls = self.num_calls(steps)
        guidance = guidance if guidance is not None else [1.0] * calls
        if len(guidance) != calls:
            raise ValueError(f"{len(guidance)} guidance scales for {calls} network calls")
        grid = torch.linspace(0.0, 1.0, steps + 1).tolist()
        if not forward:
            grid = grid[::-1]
        n = x.shape[0]

        def velocity(x: Tensor, t: float, call: int) -> Tensor:
            return guided(net, x, torch.full((n,), t, device=x.device), cond, uncond, guidance[call])

        for i in range(steps):
            t, t_next = grid[i], grid[i + 1]
            dt = t_next - t  # negative when inverting
            v = velocity(x, t, i if self.sampler == "euler" else 2 * i)
            if velocities is not None:
                velocities.append(v)
            if self.sampler == "euler":
                x = x + dt * v
            else:  # Heun: the trapezoid of the velocities at both ends of the step
                v_next = velocity(x + dt * v, t_next, 2 * i + 1)
                x = x + dt * (v + v_next) / 2
            if progress is not None:
                progress(i)
        return x
