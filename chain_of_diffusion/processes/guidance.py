"""Classifier-free guidance scales over the denoising steps (ReDiFine's CFG schedule)."""

from __future__ import annotations

import math


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
