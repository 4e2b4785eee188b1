import math

import pytest
import torch

from chain_of_diffusion.metrics import knn_entropy


def test_standard_gaussian_2d():
    x = torch.randn(5000, 2, generator=torch.Generator().manual_seed(0))
    expected = 0.5 * 2 * math.log(2 * math.pi * math.e)
    assert knn_entropy(x, k=1) == pytest.approx(expected, abs=0.1)
    assert knn_entropy(x, k=3) == pytest.approx(expected, abs=0.1)


@pytest.mark.parametrize("dim", [2, 8])
def test_isotropic_gaussian_within_5_percent(dim):
    sigma = 1.7
    x = sigma * torch.randn(20_000, dim, generator=torch.Generator().manual_seed(dim))
    expected = 0.5 * dim * math.log(2 * math.pi * math.e * sigma**2)
    assert knn_entropy(x) == pytest.approx(expected, rel=0.05)


def test_scaling_adds_d_log_s():
    x = torch.randn(2000, 3, generator=torch.Generator().manual_seed(1))
    # H(sX) = H(X) + d log s, exactly for the estimator as well.
    assert knn_entropy(3.0 * x) - knn_entropy(x) == pytest.approx(3 * math.log(3.0), abs=1e-4)


def test_duplicates_are_finite_and_lower():
    x = torch.randn(400, 4, generator=torch.Generator().manual_seed(2))
    dup = torch.cat([x[:200], x[:200]])
    h_dup = knn_entropy(dup)
    assert math.isfinite(h_dup)
    assert h_dup < knn_entropy(x)


def test_all_identical_is_finite():
    h = knn_entropy(torch.full((30, 5), 2.5))
    assert math.isfinite(h) and h < -50


def test_needs_k_plus_one_points():
    with pytest.raises(ValueError):
        knn_entropy(torch.randn(2, 3), k=2)
