"""Metrics of a chain generation: Fréchet/kernel distances in several feature spaces (classifier,
Inception via torch-fidelity, CLIP, DINOv2), CLIP score, precision/recall/density/coverage, memorization,
generalization, k-NN entropy and drift statistics, plus the HTML report.

Kept cheap to import: the report (matplotlib) and the classifier live in submodules that are
imported only where they are used. The metric names live in :mod:`chain_of_diffusion.config`
(validating a config imports nothing of this package) and are re-exported here.
"""

from chain_of_diffusion.config import METRIC_NAMES

from .entropy import knn_entropy
from .frechet import frechet_distance, frechet_distance_from_stats, gaussian_stats
from .neighbors import generalization_score, knn_distances, memorization_ratio

__all__ = [
    "METRIC_NAMES",
    "frechet_distance",
    "frechet_distance_from_stats",
    "gaussian_stats",
    "generalization_score",
    "knn_distances",
    "knn_entropy",
    "memorization_ratio",
]
