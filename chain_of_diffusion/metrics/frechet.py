"""Fréchet distance between two feature sets, each summarised by a Gaussian (no I/O).

The same computation as pytorch-fid / torch-fidelity, in float64 with ``scipy.linalg.sqrtm``:

    FD = ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^{1/2})

In this package the features come from a small classifier trained on the real data
(``fd_classifier``), so the value is *not* comparable to an Inception FID.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import Tensor

# Offset added to both covariances when their product is singular (pytorch-fid uses 1e-6).
SQRTM_EPS = 1e-6


def _check_features(features: Tensor, name: str = "features") -> Tensor:
    """Validate a (N, D) feature matrix with N >= 2 and return it in float64 on the CPU."""
    if features.ndim != 2:
        raise ValueError(f"{name} must be a (N, D) matrix, got shape {tuple(features.shape)}")
    n = features.shape[0]
    if n < 2:
        raise ValueError(f"a Fréchet distance needs at least 2 images, got {n}")
    return features.detach().to(device="cpu", dtype=torch.float64)


def check_same_dims(a: Tensor, b: Tensor, what: str) -> None:
    """A ValueError naming both shapes where two (N, D) feature sets differ in D (features of images
    of two sizes, or of two spaces), instead of a broadcast error or a silently wrong number."""
    if a.ndim == 2 and b.ndim == 2 and a.shape[1] != b.shape[1]:
        raise ValueError(f"{what} needs features of one dimension, got {tuple(a.shape)} and {tuple(b.shape)} "
                         "(images of two sizes, or features of two spaces)")


def gaussian_stats(features: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of a feature set.

    Args:
        features: (N, D), any float dtype, N >= 2.

    Returns:
        mu: float64 (D,); sigma: float64 (D, D), the unbiased (N - 1) covariance like np.cov.
    """
    x = _check_features(features).numpy()
    mu = x.mean(axis=0)
    sigma = np.cov(x, rowvar=False)
    # np.cov returns a 0-d array for D == 1; keep the (D, D) shape.
    return mu, np.atleast_2d(sigma)


def _sqrtm_product(sigma1: np.ndarray, sigma2: np.ndarray) -> np.ndarray:
    """(sigma1 @ sigma2)^{1/2}, retried with an eps*I offset when the product is singular.

    Shapes: (D, D), (D, D) -> (D, D), possibly complex (the caller takes the real part).
    """
    # Imported here: config validation imports this package and should not pay for scipy.linalg.
    import scipy.linalg

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    singular = any("singular" in str(w.message).lower() for w in caught)
    if singular or not np.isfinite(covmean).all():
        # Rank-deficient covariances (fewer images than feature dims, dead features) make the
        # Schur square root unstable; a tiny ridge on both sides is the pytorch-fid remedy.
        offset = np.eye(sigma1.shape[0]) * SQRTM_EPS
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    return covmean


def frechet_distance_from_stats(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

    Args:
        mu1, mu2: (D,); sigma1, sigma2: (D, D). Tensors or arrays; computed in float64.

    Returns:
        The squared Fréchet (2-Wasserstein) distance, a float >= 0 up to rounding.
    """
    mu1, mu2 = (np.atleast_1d(np.asarray(m, dtype=np.float64)) for m in (mu1, mu2))
    sigma1, sigma2 = (np.atleast_2d(np.asarray(s, dtype=np.float64)) for s in (sigma1, sigma2))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(
            f"statistics do not match: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape}"
        )
    diff = mu1 - mu2
    # Small imaginary parts are rounding noise of sqrtm on a near-PSD product.
    covmean = np.real(_sqrtm_product(sigma1, sigma2))
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def trace_sqrt_product_from_features(a: Tensor, b: Tensor) -> float:
    """Tr (S_a S_b)^{1/2} of the two sets' covariances, exactly, from the features themselves.

    With A, B the centred features, S_a S_b = A^T (A B^T B) / c has the nonzero eigenvalues of
    (A B^T)(A B^T)^T, so the trace is the sum of the singular values of the (N, M) matrix A B^T over
    sqrt(c), c = (N - 1)(M - 1). Costs O(N M D + min(N, M)^2 max(N, M)) instead of sqrtm's O(D^3),
    and needs no ridge where fewer images than dimensions make the covariances singular.

    Args:
        a: (N, D), b: (M, D); float64 recommended.
    """
    x = _check_features(a, "a")
    y = _check_features(b, "b")
    cross = (x - x.mean(dim=0)) @ (y - y.mean(dim=0)).T
    return float(torch.linalg.svdvals(cross).sum()) / float(np.sqrt((x.shape[0] - 1) * (y.shape[0] - 1)))


def frechet_distance(a: Tensor, b: Tensor) -> float:
    """Fréchet distance between the Gaussians fitted to two feature sets.

    With at least as many images as feature dims (classifier or Inception features of a large set)
    this is the pytorch-fid computation (sqrtm of the covariance product); with fewer images than
    dims (pixel features of a small set: 3,072 dims at 32x32) the trace term comes exactly from the
    features (:func:`trace_sqrt_product_from_features`), which is fast and needs no ridge.

    Args:
        a: (N, D) features, N >= 2.
        b: (M, D) features, M >= 2.
    """
    check_same_dims(a, b, "a Fréchet distance")
    if min(a.shape[0], b.shape[0]) >= a.shape[1]:
        return frechet_distance_from_stats(*gaussian_stats(a), *gaussian_stats(b))
    # fewer images than dims: Tr S is the sum of the per-dim variances, no D x D covariance needed
    x, y = _check_features(a, "a"), _check_features(b, "b")
    diff = (x.mean(dim=0) - y.mean(dim=0)).numpy()
    variances = float(x.var(dim=0).sum() + y.var(dim=0).sum())
    return float(diff @ diff + variances - 2.0 * trace_sqrt_product_from_features(x, y))
