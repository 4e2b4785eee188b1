"""Metrics of a chain generation: Fréchet distance in classifier features, memorization,
generalization and k-NN entropy, plus the HTML report.

Kept cheap to import (``config.py`` imports :data:`METRIC_NAMES` during validation): the report
(matplotlib) and the classifier live in submodules that are imported only where they are used.
"""

from .entropy import knn_entropy
from .frechet import frechet_distance, frechet_distance_from_stats, gaussian_stats
from .neighbors import generalization_score, knn_distances, memorization_ratio

# Names users put in ``metrics.names``.
METRIC_NAMES = ("fd_classifier", "memorization", "generalization", "entropy")

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
