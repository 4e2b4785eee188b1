"""Per-generation drift statistics of an image set (no I/O): colour saturation, high-frequency
energy and sharpness, the quantities the Chain of Diffusion papers watch (high CFG drives
saturated, high-frequency artefacts; low CFG blur and low-frequency blotches).

Metric names (all computed per image, then summarised over the set):

- ``saturation_mean`` / ``saturation_std``: HSV saturation (max - min) / max of RGB in [0, 1],
  averaged over each image's pixels; mean and standard deviation of that over the images.
- ``hf_energy``: share of an image's spectral power (grey level, mean removed) at radial frequency
  above half Nyquist (|f| > 0.25 cycles/pixel), averaged over the images. 0 for flat images.
- ``sharpness``: variance of the 4-neighbour Laplacian of the grey level in [0, 1] (interior
  pixels), averaged over the images.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

DRIFT_NAMES = ("saturation_mean", "saturation_std", "hf_energy", "sharpness")
HALF_NYQUIST = 0.25  # cycles per pixel (Nyquist is 0.5)
_LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


def _unit(images: Tensor) -> Tensor:
    """(N, C, H, W) in [-1, 1] (or uint8) -> float64 RGB in [0, 1]."""
    x = images.double() / 255.0 if images.dtype == torch.uint8 else (images.double().clamp(-1, 1) + 1) / 2
    return x.repeat(1, 3, 1, 1) if x.shape[1] == 1 else x


def _grey(x: Tensor) -> Tensor:
    """(N, 3, H, W) in [0, 1] -> (N, H, W) luma (ITU-R 601, as PIL's convert("L"))."""
    w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype)
    return (x * w.view(1, 3, 1, 1)).sum(dim=1)


def saturation(images: Tensor) -> Tensor:
    """Mean HSV saturation per image: (N, C, H, W) -> (N,)."""
    x = _unit(images)
    mx, mn = x.amax(dim=1), x.amin(dim=1)
    sat = torch.where(mx > 0, (mx - mn) / mx.clamp(min=1e-12), torch.zeros_like(mx))
    return sat.flatten(1).mean(dim=1)


def high_frequency_energy(images: Tensor) -> Tensor:
    """Share of spectral power above half Nyquist per image: (N, C, H, W) -> (N,) in [0, 1]."""
    g = _grey(_unit(images))
    g = g - g.mean(dim=(1, 2), keepdim=True)
    power = torch.fft.fft2(g).abs() ** 2  # (N, H, W)
    fy = torch.fft.fftfreq(g.shape[1], dtype=g.dtype).view(-1, 1)
    fx = torch.fft.fftfreq(g.shape[2], dtype=g.dtype).view(1, -1)
    high = (fx**2 + fy**2).sqrt() > HALF_NYQUIST
    total = power.sum(dim=(1, 2))
    return torch.where(total > 0, (power * high).sum(dim=(1, 2)) / total.clamp(min=1e-300), torch.zeros_like(total))


def laplacian_variance(images: Tensor) -> Tensor:
    """Variance of the Laplacian of the grey level per image: (N, C, H, W) -> (N,), H, W >= 3."""
    g = _grey(_unit(images)).unsqueeze(1)
    lap = F.conv2d(g, _LAPLACIAN.to(g.dtype).view(1, 1, 3, 3))
    return lap.flatten(1).var(dim=1)


def drift_statistics(images: Tensor | Sequence[Tensor]) -> dict[str, float]:
    """The four drift statistics of an image set.

    Args:
        images: (N, C, H, W), or a list of (C, H, W) of mixed sizes (grouped by size); in [-1, 1]
            or uint8; N >= 1.
    """
    items = list(images.unbind(0)) if isinstance(images, Tensor) else list(images)
    if not items:
        raise ValueError("drift statistics need at least 1 image, got 0")
    groups: dict[tuple, list[Tensor]] = {}
    for im in items:
        groups.setdefault(tuple(im.shape), []).append(im)
    sat, hf, sharp = [], [], []
    for group in groups.values():
        batch = torch.stack(group)
        sat.append(saturation(batch))
        hf.append(high_frequency_energy(batch))
        sharp.append(laplacian_variance(batch))
    sat_all = torch.cat(sat)
    return {
        "saturation_mean": float(sat_all.mean()),
        "saturation_std": float(sat_all.std(unbiased=False)),
        "hf_energy": float(torch.cat(hf).mean()),
        "sharpness": float(torch.cat(sharp).mean()),
    }
