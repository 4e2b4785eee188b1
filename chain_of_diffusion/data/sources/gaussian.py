"""``gaussian``: points from N(mean, covariance) in ``data.vectors.dim`` dimensions (the setting of the
Gaussian-refitting and linear-DAE theory)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from chain_of_diffusion.data.sources.common import RealExample, SourceData
from chain_of_diffusion.data.split import points_to_draw

if TYPE_CHECKING:
    from chain_of_diffusion.config import DataConfig

POINT_CAPTION = "a point"  # every point's caption where the points have no classes
DATA_SEED = 0  # the points are the data set, the same for every chain seed (which only splits them)


def num_points(cfg: DataConfig) -> int:
    """How many points a vector source draws: data.max_images, else held-out + training."""
    return points_to_draw(cfg)


def covariance_matrix(cfg: DataConfig) -> np.ndarray:
    v = cfg.vectors
    if v.covariance is None:
        return np.eye(v.dim)
    cov = np.asarray(v.covariance, dtype=np.float64)
    return np.diag(cov) if cov.ndim == 1 else cov


def load(cfg: DataConfig) -> SourceData:
    v = cfg.vectors
    rng = np.random.default_rng(DATA_SEED)
    mean = np.zeros(v.dim) if v.mean is None else np.asarray(v.mean, dtype=np.float64)
    points = rng.multivariate_normal(mean, covariance_matrix(cfg), size=num_points(cfg)).astype(np.float32)
    return SourceData([RealExample(image=None, text=POINT_CAPTION, label=None, origin=f"gaussian:{i}", vector=p)
                       for i, p in enumerate(points)])
