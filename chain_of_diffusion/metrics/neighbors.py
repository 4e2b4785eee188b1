"""Nearest-neighbour distances and the memorization / generalization metrics built on them (no I/O).

Distances are Euclidean, in whatever feature space the caller passes (pixels, classifier features).
"""

from __future__ import annotations

import torch
from torch import Tensor


def _check_pair(queries: Tensor, refs: Tensor) -> None:
    if queries.ndim != 2 or refs.ndim != 2:
        raise ValueError(
            f"queries and refs must be (N, D) and (M, D), got {tuple(queries.shape)} and {tuple(refs.shape)}"
        )
    if queries.shape[1] != refs.shape[1]:
        raise ValueError(f"feature dims differ: queries D={queries.shape[1]}, refs D={refs.shape[1]}")


def _sq_dists_fast(q: Tensor, r: Tensor, r_sq: Tensor) -> Tensor:
    """Squared distances by |q|^2 + |r|^2 - 2 q.r (one matmul); (n, D), (M, D), (M,) -> (n, M).

    Cancellation makes this inexact for near neighbours, so it is used only to *rank* them.
    """
    q_sq = (q * q).sum(dim=1, keepdim=True)
    return (q_sq + r_sq.unsqueeze(0) - 2.0 * (q @ r.T)).clamp_(min=0.0)


def knn_distances(
    queries: Tensor,
    refs: Tensor,
    k: int,
    chunk_size: int = 2048,
    exclude_self: bool = False,
) -> Tensor:
    """Distances from each query to its k nearest references, ascending.

    Works chunk by chunk over the queries, so memory is O(chunk_size * M), never O(N * M).
    Candidates are ranked with the fast matmul expansion in float32 and their distances are then
    recomputed directly, so an exact duplicate has distance exactly 0.

    Args:
        queries: (N, D).
        refs: (M, D), on any device (moved to the queries' device).
        k: neighbours per query; needs k <= M (k <= M - 1 with ``exclude_self``).
        chunk_size: queries per chunk.
        exclude_self: ``queries`` *is* ``refs`` (same rows, same order): reference i is skipped for
            query i. Done by index, not by value, so other identical rows still count (at distance 0).

    Returns:
        (N, k) float32 distances on the queries' device.
    """
    _check_pair(queries, refs)
    if exclude_self and queries.shape[0] != refs.shape[0]:
        raise ValueError("exclude_self needs queries to be refs (same number of rows)")
    available = refs.shape[0] - int(exclude_self)
    if not 1 <= k <= available:
        raise ValueError(f"k={k} needs 1 <= k <= {available} reference points")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")

    device = queries.device
    q_all = queries.detach().to(dtype=torch.float32)
    r = refs.detach().to(device=device, dtype=torch.float32)
    r_sq = (r * r).sum(dim=1)
    out = torch.empty(q_all.shape[0], k, dtype=torch.float32, device=device)

    for start in range(0, q_all.shape[0], chunk_size):
        q = q_all[start : start + chunk_size]
        sq = _sq_dists_fast(q, r, r_sq)
        if exclude_self:
            rows = torch.arange(q.shape[0], device=device)
            sq[rows, rows + start] = float("inf")
        idx = sq.topk(k, dim=1, largest=False).indices  # (n, k)
        exact = (q.unsqueeze(1) - r[idx]).norm(dim=2)  # (n, k, D) -> (n, k)
        out[start : start + q.shape[0]] = exact.sort(dim=1).values
    return out


def memorization_ratio(samples: Tensor, train: Tensor, ratio: float = 1.0 / 3.0) -> float:
    """Share of samples that sit much closer to one training point than to any other.

    A sample x is memorized when d(x, NN1) / d(x, NN2) < ratio, NN1 and NN2 its two nearest
    training points (the criterion of Yoon et al. 2023 / Shi et al. 2025). A sample identical to a
    training image has d1 = 0 and counts; when d2 is 0 as well (a duplicated training image) the
    0/0 case also counts as memorized.

    Args:
        samples: (N, D) generated features; train: (M, D) training features, M >= 2.

    Returns:
        A fraction in [0, 1].
    """
    if samples.shape[0] == 0:
        raise ValueError("memorization_ratio needs at least 1 sample, got 0")
    d = knn_distances(samples, train, k=2).double()
    d1, d2 = d[:, 0], d[:, 1]
    memorized = torch.where(d2 > 0, d1 / d2.clamp(min=torch.finfo(torch.float64).tiny) < ratio, True)
    return float(memorized.double().mean())


def generalization_score(samples: Tensor, train: Tensor) -> float:
    """Mean distance from each sample to its nearest training point (larger: farther from the
    training set, i.e. less copying).

    Args:
        samples: (N, D); train: (M, D).
    """
    if samples.shape[0] == 0:
        raise ValueError("generalization_score needs at least 1 sample, got 0")
    return float(knn_distances(samples, train, k=1)[:, 0].double().mean())
