"""Metrics of a chain generation: Fréchet/kernel distances in several feature spaces (classifier,
Inception via torch-fidelity, CLIP, DINOv2), CLIP score, precision/recall/density/coverage, memorization,
generalization, k-NN entropy and drift statistics, plus the HTML report.

Kept cheap to import (``config.py`` imports :data:`METRIC_NAMES` during validation): the report
(matplotlib) and the classifier live in submodules that are imported only where they are used.
"""

from .entropy import knn_entropy
from .frechet import frechet_distance, frechet_distance_from_stats, gaussian_stats
from .neighbors import generalization_score, knn_distances, memorization_ratio

# Names users put in ``metrics.names`` (docs: README "Evaluation"; suite.py computes them).
# fd_classifier writes ``fd_<metrics.features>``; kid_inception also writes kid_inception_std;
# saturation writes saturation_mean and saturation_std.
METRIC_NAMES = (
    "fd_classifier", "memorization", "generalization", "entropy",
    "fid_inception", "kid_inception", "fd_clip", "clip_score", "fd_dinov2",
    "precision", "recall", "density", "coverage",
    "saturation", "hf_energy", "sharpness",
)

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
