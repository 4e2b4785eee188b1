"""Precision, recall, density and coverage of generated features against real ones (no I/O).

Kynkäänniemi et al. 2019 (precision/recall: k-NN manifolds) and Naeem et al. 2020 (density/
coverage). With r_i the distance from real i to its k-th nearest other real, and s_j likewise for
fake j among fakes:

- precision = share of fakes inside some real ball:  exists i, d(f_j, x_i) <= r_i
- recall    = share of reals inside some fake ball:  exists j, d(x_i, f_j) <= s_j
- density   = (1 / kM) sum_j #{i : d(f_j, x_i) <= r_i}   (can exceed 1)
- coverage  = share of reals whose ball holds a fake: d(x_i, NN fake) <= r_i

Everything is computed chunk by chunk (memory O(chunk_size * N)), never as an N x M matrix.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .frechet import check_same_dims
from .neighbors import knn_distances

DEFAULT_K = 5


def _count_in_balls(queries: Tensor, centres: Tensor, radii: Tensor, chunk_size: int) -> Tensor:
    """For each query, how many balls (centres[i], radii[i]) contain it. (N, D), (M, D), (M,) -> (N,)."""
    c = centres.to(dtype=torch.float32)
    c_sq = (c * c).sum(dim=1)
    r_sq = radii.to(device=c.device, dtype=torch.float32) ** 2
    counts = torch.empty(queries.shape[0], dtype=torch.long, device=c.device)
    for start in range(0, queries.shape[0], chunk_size):
        q = queries[start : start + chunk_size].to(device=c.device, dtype=torch.float32)
        sq = ((q * q).sum(dim=1, keepdim=True) + c_sq.unsqueeze(0) - 2.0 * (q @ c.T)).clamp_(min=0.0)
        counts[start : start + q.shape[0]] = (sq <= r_sq.unsqueeze(0)).sum(dim=1)
    return counts


def prdc(real: Tensor, fake: Tensor, k: int = DEFAULT_K, chunk_size: int = 2048) -> dict[str, float]:
    """Precision, recall, density and coverage.

    Args:
        real: (N, D) real features, N >= k + 1.
        fake: (M, D) generated features, M >= k + 1.
        k: neighbours defining each ball (5 in both papers).

    Returns:
        {"precision", "recall", "density", "coverage"}: floats, all in [0, 1] except density (>= 0).
    """
    for name, x in (("real", real), ("fake", fake)):
        if x.ndim != 2 or x.shape[0] < k + 1:
            raise ValueError(f"prdc with k={k} needs (N, D) {name} features with N >= {k + 1}, got {tuple(x.shape)}")
    check_same_dims(real, fake, "precision/recall/density/coverage")
    real_radii = knn_distances(real, real, k=k, chunk_size=chunk_size, exclude_self=True)[:, -1]
    fake_radii = knn_distances(fake, fake, k=k, chunk_size=chunk_size, exclude_self=True)[:, -1]
    # fakes against real balls: precision and density in one pass
    fake_counts = _count_in_balls(fake, real, real_radii, chunk_size)
    real_counts = _count_in_balls(real, fake, fake_radii, chunk_size)
    nearest_fake = knn_distances(real, fake, k=1, chunk_size=chunk_size)[:, 0]
    return {
        "precision": float((fake_counts > 0).double().mean()),
        "recall": float((real_counts > 0).double().mean()),
        "density": float(fake_counts.double().sum() / (k * fake.shape[0])),
        "coverage": float((nearest_fake <= real_radii.to(nearest_fake.device)).double().mean()),
    }
