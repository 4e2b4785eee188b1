"""Pictures and metrics of point sets (data.source gaussian, gmm): what an image grid and a classifier
are to images.

:func:`scatter_image` is a generation's picture in the report (its points over the held-out real
ones, the first two coordinates); :func:`mode_coverage` is the 2-D mixture's mode count.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from PIL import Image

# a mode counts as hit when it holds at least this share of the samples a uniform spread would give it
MODE_HIT_SHARE = 0.1
MODE_RADIUS_SIGMAS = 3.0  # a sample is of a mode when within 3 standard deviations of its centre


def scatter_image(points: torch.Tensor, reference: Optional[torch.Tensor] = None, *, title: str = "",
                  limits: Optional[float] = None) -> Image.Image:
    """A square scatter plot of ``points`` (N, d >= 1; the first two coordinates) over ``reference``
    (grey) as a PIL image. ``limits``: the half-width of both axes (default: from the data), so the
    generations of one chain can share their axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    def xy(t: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        a = t.detach().float().cpu().numpy()
        return a[:, 0], (a[:, 1] if a.shape[1] > 1 else np.zeros(len(a)))

    fig = Figure(figsize=(3.2, 3.2), dpi=100)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if reference is not None:
        ax.scatter(*xy(reference), s=3, c="lightgrey", label="real (held out)")
    ax.scatter(*xy(points), s=3, c="tab:blue", label="samples")
    if limits is not None:
        ax.set_xlim(-limits, limits)
        ax.set_ylim(-limits, limits)
    ax.set_aspect("equal")
    ax.set_title(title, fontsize="small")
    ax.tick_params(labelsize="x-small")
    fig.tight_layout()
    canvas.draw()
    return Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3].copy())


def mode_coverage(points: torch.Tensor, means: np.ndarray, std: float) -> dict:
    """``modes_hit``: how many of the K modes hold at least MODE_HIT_SHARE of their uniform share N/K of
    samples within 3 std of their centre; ``mode_share``: the share of samples within 3 std of some mode
    (the rest fell between modes)."""
    centres = torch.as_tensor(means, dtype=torch.float32)
    distances = torch.cdist(points.float()[:, :2], centres)  # (N, K)
    near = distances <= MODE_RADIUS_SIGMAS * std
    per_mode = near.sum(0)
    needed = MODE_HIT_SHARE * points.shape[0] / len(centres)
    return {"modes_hit": int((per_mode >= needed).sum()), "mode_share": float(near.any(1).float().mean())}
