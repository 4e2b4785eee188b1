"""``gmm``: a 2-D mixture of ``data.vectors.modes`` Gaussians evenly spaced on a circle, each of standard
deviation ``data.vectors.std``: collapse you can see on one slide (modes lost, points pulled inwards)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from chain_of_diffusion.data.sources.common import RealExample, SourceData
from chain_of_diffusion.data.sources.gaussian import DATA_SEED, POINT_CAPTION, num_points

if TYPE_CHECKING:
    from chain_of_diffusion.config import DataConfig


def mode_means(cfg: DataConfig) -> np.ndarray:
    """(modes, 2) centres on the circle of radius data.vectors.radius, the first on the x axis."""
    v = cfg.vectors
    angles = [2 * math.pi * k / v.modes for k in range(v.modes)]
    return np.array([[v.radius * math.cos(a), v.radius * math.sin(a)] for a in angles])


def load(cfg: DataConfig) -> SourceData:
    v = cfg.vectors
    rng = np.random.default_rng(DATA_SEED)
    n = num_points(cfg)
    labels = rng.integers(0, v.modes, size=n)
    points = (mode_means(cfg)[labels] + v.std * rng.standard_normal((n, 2))).astype(np.float32)
    return SourceData(
        [RealExample(image=None, text=f"mode {k}" if v.class_captions else POINT_CAPTION, label=int(k),
                     origin=f"gmm:{i}", vector=p) for i, (k, p) in enumerate(zip(labels, points))],
        class_names=[f"mode {k}" for k in range(v.modes)],
    )
